"""The suite's own rules: its Hypothesis profile, skips that turn into failures in CI, and the
spread of a fault matrix that the default run keeps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matrix import spread
from needs import unavailable

ROOT = Path(__file__).resolve().parents[1]


def test_the_loaded_machine_profile_is_active() -> None:
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check


@settings(max_examples=3)
@given(st.integers())
def test_a_per_test_setting_keeps_the_profile(value: int) -> None:
    assert settings().deadline is None  # the decorator above did not bring the deadline back


@pytest.mark.parametrize(
    ("ci", "outcome"), [("", pytest.skip.Exception), ("true", pytest.fail.Exception)]
)
def test_unavailable_skips_except_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no frobnicator"):
        unavailable("no frobnicator")


def test_the_browser_test_fails_in_ci_without_a_browser() -> None:
    # Outside CI the same test skips (the suite's summary shows it where Chromium is absent).
    env = {k: v for k, v in os.environ.items() if k != "RXCONTEXT_CHROMIUM"}
    env.update(PATH=str(Path(sys.executable).parent), CI="true")  # no chromium on this PATH
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", "-n", "0",
         "-m", "e2e", str(ROOT / "tests" / "test_webchat.py"), "-k", "complete_reply"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "no Chromium for the web chat test" in result.stdout, result.stdout
    assert result.returncode == 1 and "1 error" in result.stdout, result.stdout  # setup fails
    assert "CI must provide it" in result.stdout


def test_a_matrix_spread_keeps_its_ends_and_marks_the_rest() -> None:
    params = spread(range(28))
    kept = [p for p in params if isinstance(p, int)]
    rest = [p for p in params if not isinstance(p, int)]
    assert kept == [0, 1, 2, 4, 8, 12, 16, 20, 24, 25, 26, 27]
    assert [p.values[0] for p in rest] == sorted(set(range(28)) - set(kept))
    assert all([m.name for m in p.marks] == ["matrix"] for p in rest)
    assert spread(range(5)) == [0, 1, 2, 3, 4]  # too short to split
