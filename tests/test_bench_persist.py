"""The store benchmarks (benchmarks/bench_persist.py, ``bench_store``) at two rounds, so they
cannot rot unseen: the persister's API they time changed with the reply lifecycle and they
failed for a day before anyone ran them. Each checks what it stored. No timing thresholds:
the figures belong to docs/benchmarks.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # a program built on the library: run with -m e2e (setup.cfg)

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_store_runs_and_checks_what_it_stored(tmp_path: Path) -> None:
    # Its own --basetemp: the inner session leaves the outer one's temporary folders alone.
    inner = ["bench_persist.py", "-k", "bench_store", "-q", "--basetemp", str(tmp_path / "t")]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *inner],
        cwd=BENCHMARKS,
        # Not as an xdist worker (pytest-benchmark turns itself off under xdist).
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        | {"RXCONTEXT_BENCH_PERSIST_ROUNDS": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 passed" in done.stdout
