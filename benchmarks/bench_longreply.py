"""Long replies: real peak RSS and the share of periodic checkpoints, 10 MB and 100 MB,
text and thinking, ASCII and not — each case in a fresh process (benchmarks/longreply.py
has the method). Targets: peak RSS ≤ 2.5× the reply's UTF-8 size; a 100 MB reply's
checkpoints ≤ 10 % of its wall time. ``RXCONTEXT_BENCH_LONG_MB`` (default "10,100")
chooses the sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import record

SIZES = [int(s) for s in os.environ.get("RXCONTEXT_BENCH_LONG_MB", "10,100").split(",")]
SCRIPT = Path(__file__).resolve().parent / "longreply.py"


def measure(mb: int, kind: str, charset: str, every: float = 1.0) -> dict[str, Any]:
    args = ["--mb", str(mb), "--kind", kind, "--charset", charset, "--every", str(every)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], check=True, capture_output=True, text=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("charset", ["ascii", "other"])
@pytest.mark.parametrize("kind", ["text", "thinking"])
@pytest.mark.parametrize("mb", SIZES)
def bench_long_reply(benchmark: Any, mb: int, kind: str, charset: str) -> None:
    benchmark.group = "long reply"
    result = benchmark.pedantic(lambda: measure(mb, kind, charset), rounds=1, iterations=1)
    assert result["exact"]
    record("long_reply", f"{mb} MB {kind}, {charset}", result)
