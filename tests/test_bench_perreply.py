"""The per-reply benchmark (benchmarks/perreply.py) at toy scale, so it cannot rot: it runs on
SQLite and prints its figures. No timing thresholds: the figures belong to
docs/benchmarks.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "perreply.py"


def test_toy_run() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--sqlite", "--replies", "3", "--chunks", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = re.search(r"SQLite file, 3 replies of 2 chunks: per reply wall ([0-9.]+) ms, CPU", out)
    assert found and float(found.group(1)) > 0, out
