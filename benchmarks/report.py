"""Run the benchmark suite and print (or write) the tables of ratios for the README.

    python benchmarks/report.py                        # run everything, print the tables
    python benchmarks/report.py --out docs/benchmarks.md --peers /tmp/rxcontext-peers.json
    python benchmarks/report.py --json results.json    # keep pytest-benchmark's JSON too
    python benchmarks/report.py --from results.json    # tables from an earlier run, no rerun
    python benchmarks/report.py -- -k openai_chat      # extra arguments go to pytest

The tables come from one pytest-benchmark run (``--benchmark-json``): ratios between
measurements of the same run only. ``--peers`` adds the table that
benchmarks/peers/run_peers.sh wrote (it runs in its own virtual environment; run it first).
With ``--out`` the file is written from the template below: the machine, the command, the
tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _tables import render  # noqa: E402


def machine() -> str:
    """One line: CPU model, cores, Python, OS."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores (nproc), Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("openai", "anthropic", "google-genai", "httpx2", "reactivex", "pytest-benchmark"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{name} {version(name)}")
    return ", ".join(out)


def run_suite(json_path: Path, extra: list[str]) -> int:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE),
        "-q",
        f"--benchmark-json={json_path}",
        *extra,
    ]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


TEMPLATE = """\
# Benchmarks

Measured {date} on {machine}; {versions}.
{events} events per provider stream (`RXCONTEXT_BENCH_EVENTS`), {rounds} rounds per stream
benchmark. The machine is shared (2 cores, other jobs running), so absolute times are
noise: every number that matters below is a ratio between measurements of the same run
(CPU time, `time.process_time`, except the persistence wall times; stream ratios are the
median of per-round ratios from interleaved rounds).

Regenerate (about ten minutes):

```sh
pip install -e '.[bench]'
bash benchmarks/peers/run_peers.sh           # llm, litellm, LangChain, pydantic-ai: own venv
python benchmarks/report.py --out docs/benchmarks.md --peers /tmp/rxcontext-peers.json
```

or just run the suite (the same tables print at the end): `python -m pytest benchmarks`.
The unit-test command (`python -m pytest -q`) never runs these.

{notes}

{tables}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the Markdown page here")
    parser.add_argument("--json", type=Path, help="keep pytest-benchmark's JSON here")
    parser.add_argument("--from", dest="source", type=Path, help="use this JSON, do not run")
    parser.add_argument("--peers", type=Path, help="peers.json from run_peers.sh")
    parser.add_argument(
        "--notes",
        type=Path,
        default=HERE / "notes.md",
        help="Markdown inserted before the tables (default: benchmarks/notes.md)",
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()

    if args.source is not None:
        json_path = args.source
    else:
        json_path = args.json or Path(tempfile.mkdtemp()) / "benchmarks.json"
        code = run_suite(json_path, args.pytest_args)
        if code != 0:
            print(f"the benchmark run failed (pytest exit {code})", file=sys.stderr)
            return code
    data: dict[str, Any] = json.loads(json_path.read_text())
    peers = json.loads(args.peers.read_text()) if args.peers and args.peers.exists() else None
    tables = render(data.get("benchmarks", []), data.get("rxcontext_metrics", {}), peers)
    print(tables)
    if args.out is not None:
        notes = args.notes.read_text().strip() if args.notes and args.notes.exists() else ""
        page = TEMPLATE.format(
            date=datetime.now(UTC).strftime("%Y-%m-%d"),
            machine=machine(),
            versions=versions(),
            events=os.environ.get("RXCONTEXT_BENCH_EVENTS", "2000"),
            rounds=os.environ.get("RXCONTEXT_BENCH_ROUNDS", "15"),
            notes=notes,
            tables=tables,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
