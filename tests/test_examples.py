"""Every example in examples/ runs offline, as written, and prints what it promises.

Each runs in a fresh interpreter (``python examples/NN_name.py``) from a scratch working
directory, with no API keys and a dead proxy in the environment. The web chat (05) is a
server: its test in a real browser is tests/test_webchat.py; here it only has to start and
answer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    # No network either: any request that left the replay transport would hit a dead proxy.
    dead = "http://127.0.0.1:9"
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, ALL_PROXY=dead, NO_PROXY="")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_every_example_is_tested() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert scripts == [
        "01_subscribe.py",
        "02_pipeline.py",
        "03_tools.py",
        "04_asyncio.py",
        "05_webchat.py",
    ]


def test_01_subscribe(tmp_path: Path) -> None:
    out = run_example("01_subscribe.py", tmp_path)
    assert out.startswith("Three rivers of Iberia: the Tagus")
    assert "the Ebro, draining to the Mediterranean.\n[completed]\n" in out
    assert re.search(r"stored: record \d+, MODEL_RESP, 162 characters", out)


def test_02_pipeline(tmp_path: Path) -> None:
    out = run_example("02_pipeline.py", tmp_path)
    lines = out.splitlines()
    assert lines[0] == "[log] request sent"
    batches = [line for line in lines if line.startswith("[ui] +")]
    assert 1 <= len(batches) < 46  # batched, not one repaint per word
    assert "[log] done: stop" in lines
    assert "[log] reply complete (already stored)" in lines
    assert re.search(r"\[rate\] \d+ tokens at \d+ tokens/s", out)
    assert lines[-1].endswith("equals the batches: True")


def test_03_tools(tmp_path: Path) -> None:
    out = run_example("03_tools.py", tmp_path)
    assert "[model calls weather · id call_weather_1]" in out
    assert "[tides answered: Porto: high tide at 17:42]" in out
    kinds = re.findall(r"^  (PROMPT|MODEL_RESP|TOOL_CALL|TOOL_OUTPUT)", out, re.MULTILINE)
    assert kinds == [
        "PROMPT",
        "MODEL_RESP",
        "TOOL_CALL",
        "TOOL_CALL",
        "TOOL_OUTPUT",
        "TOOL_OUTPUT",
        "MODEL_RESP",
    ]
    assert "sent back to the model: [('call_weather_1'," in out


def test_04_asyncio(tmp_path: Path) -> None:
    out = run_example("04_asyncio.py", tmp_path)
    for city in ("Lisbon", "Porto", "Coimbra", "Faro", "Braga"):
        assert f"{city} is lovely in spring." in out
    assert "5 replies streamed concurrently" in out
    assert re.search(r"cancelled after 8 chunks; checkpoint \d+ kept", out)
    assert "same as received: True; reason: CancelledError" in out
    assert "holds the whole story: True" in out
    assert out.rstrip().endswith("open checkpoints now: 0")


def test_05_webchat_starts_and_serves_the_page(tmp_path: Path) -> None:
    args = ["--port", "0", "--db", "chat.db", "--delay", "0"]
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "05_webchat.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on http://"), line
        url = line.split()[2]
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"rxcontext web chat" in response.read()
        with urllib.request.urlopen(url + "/api/chat?prompt=hi", timeout=30) as response:
            events = response.read().decode()
        assert '"type": "done"' in events
        assert (tmp_path / "chat.db").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
