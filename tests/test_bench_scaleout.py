"""The scale-out benchmark (benchmarks/scaleout.py) at toy scale, so it cannot rot: it runs,
every chunk an owner delivered reaches the watcher process, and its figures are sane. No
timing thresholds: the figures themselves belong to docs/benchmarks.md."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redistest

pytestmark = pytest.mark.e2e  # a program built on the library: run with -m e2e (setup.cfg)

pytest.importorskip("redis")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "scaleout.py"


@pytest.fixture
def shared() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


@pytest.mark.parametrize("method", ["window", "cut-at-end"])
def test_toy_run(pg_url: str, shared: tuple[str, str], tmp_path: Path, method: str) -> None:
    """Both methods: the measured window (from ``--warmup`` to the end; the last replies run
    on and are not counted) and the whole run with every last reply cut at the end."""
    redis_url, prefix = shared
    out = tmp_path / "summary.json"
    toy = ["--streams", "2", "--workers", "2", "--seconds", "0.6", "--chunks", "4"]
    toy += ["--warmup", "0"] if method == "window" else ["--cut-at-end"]
    where = ["--url", pg_url, "--redis", redis_url, "--prefix", prefix, "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *toy, *where],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    s = json.loads(out.read_text())
    assert s["failures"] == []
    assert s["fanout_drained"]
    assert s["chunks"] > 0 and s["replies"] >= 2  # both streams streamed
    assert s["replies_watched"] == s["replies"]  # every reply was watched to its end...
    assert s["chunks_received"] == s["chunks"]  # ...and every chunk reached the watcher
    for key in ("commit_e2e", "commit_call", "begin_call", "owner_to_watcher", "late"):
        p = s[key]
        assert p["n"] > 0, key
        assert 0 <= p["p50"] <= p["p95"] <= p["p99"] <= p["max"] < 60_000, (key, p)
    if method == "cut-at-end":
        assert s["commit_e2e"]["n"] == s["commit_call"]["n"] == s["replies"]
        assert s["owner_to_watcher"]["n"] == s["chunks_in_window"] == s["chunks"]
    else:  # replies that end after the end are not counted
        assert s["commit_e2e"]["n"] <= s["replies"] and s["commit_call"]["n"] <= s["replies"]
        assert s["owner_to_watcher"]["n"] == s["chunks_in_window"] <= s["chunks"]
    assert set(s["cpu"]) == {"owner-0", "owner-1", "watcher-0"}
    assert all(0 <= v < 400 and not math.isnan(v) for v in s["cpu"].values())
    # The servers are sampled from the start to the end (--seconds): commits of replies that
    # end at or after it may fall outside, so only "some" (every reply was stored: the
    # watcher ends each watch on the stored record, above).
    assert s["servers"]["commits"] > 0
    assert "| commit: DONE yielded" in done.stdout  # the Markdown table
