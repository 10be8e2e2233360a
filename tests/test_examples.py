"""Every example in examples/, and every code sample in README.md and docs/, runs as written.

Each runs in a process of its own as ``python examples/NN_name.py`` would (or the sample
saved to a file), forked from one that has imported the SDKs already (tests/zygote.py;
``ZYGOTE=0``: a fresh interpreter each), from a scratch working directory, with no API keys
and a dead proxy in the environment. The web chat (05) is a server: its test in a real browser is
tests/test_webchat.py; here it only has to start and answer. The README's sample also runs
against a local OpenAI-compatible server (``OPENAI_BASE_URL``), as a user with a key would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zygote

import rxcontext
from rxcontext import RecordType

pytestmark = pytest.mark.e2e  # a program built on the library: run with -m e2e (setup.cfg)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), EXAMPLES / "README.md"]


def offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    # No network either: any request that left the replay transport would hit a dead proxy.
    dead = "http://127.0.0.1:9"
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, ALL_PROXY=dead, NO_PROXY="127.0.0.1")
    env.update(extra)
    return env


_zygote: zygote.Zygote | None = None


@pytest.fixture(scope="module", autouse=True)
def _warm_processes() -> Iterator[None]:
    """The module's scripts fork from one process that imported the SDKs (tests/zygote.py)."""
    yield
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None


def run_script(path: Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    global _zygote
    if zygote.wanted():
        if _zygote is None:
            _zygote = zygote.Zygote()
        result = _zygote.run(path, cwd, env or offline_env(), timeout=120)
    else:
        result = subprocess.run(
            [sys.executable, str(path)],
            cwd=cwd,
            env=env or offline_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def run_example(name: str, tmp_path: Path) -> str:
    return run_script(EXAMPLES / name, tmp_path)


def code_blocks_in(text: str, language: str) -> list[str]:
    """The fenced ``language`` blocks of Markdown ``text``, in order."""
    pattern = re.compile(rf"^```{language}\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    return pattern.findall(text)


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced ``language`` blocks of a Markdown file, in order."""
    return code_blocks_in(path.read_text(encoding="utf-8"), language)


def python_samples() -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(ROOT)}#{i}", code)
        for path in DOCS
        for i, code in enumerate(code_blocks(path, "python"), 1)
    ]


def test_every_example_is_tested() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert scripts == [
        "01_subscribe.py",
        "02_pipeline.py",
        "03_tools.py",
        "04_asyncio.py",
        "05_webchat.py",
        "06_attachments.py",
        "07_structured_output.py",
        "08_cost.py",
        "09_tracing.py",
    ]


def test_07_structured_output(tmp_path: Path) -> None:
    out = run_example("07_structured_output.py", tmp_path)
    partials = [json.loads(line[9:]) for line in out.splitlines() if line.startswith("partial: ")]
    assert len(partials) >= 6  # the object grows as its JSON streams
    assert partials[0] == {"country": "Portugal"}
    assert [r["name"] for r in partials[-1]["rivers"]] == ["Tagus", "Douro", "Guadiana"]
    assert "asked for: json_schema Rivers strict: True" in out
    assert '"length_km": 829}]}' in out.split("stored parsed: ")[1].splitlines()[0]
    assert "longest: Tagus" in out
    assert "not valid: 1 validation error for Rivers / rivers.0.length_km" in out
    assert "stored: True" in out


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


def test_06_attachments(tmp_path: Path) -> None:
    out = run_example("06_attachments.py", tmp_path)
    assert "sent parts: ['text', 'image_url', 'file', 'image_url']" in out
    assert "image sent as: data:image/png;base64," in out
    assert "file sent as: report.pdf data:application/pdf;base64," in out
    assert "the next request sends the history's attachments again: 3" in out
    assert (
        "dot.png (image/png, 69), report.pdf (application/pdf, 34), cat.jpg (image/jpeg, URL)"
        in out
    )
    assert "4 attachments, 2 distinct contents" in out
    assert "export carries the bytes once: 2 blobs" in out
    assert "refused before sending: OpenAI Chat Completions does not take" in out
    assert out.rstrip().endswith("records now: 4 · requests sent: 2")


def test_08_cost(tmp_path: Path) -> None:
    pytest.importorskip("genai_prices", reason="needs rxcontext[prices]")
    out = run_example("08_cost.py", tmp_path)
    lines = out.splitlines()
    assert re.fullmatch(r"The Tagus, the Douro and the Ebro\.  \[\$0\.\d{4}\]", lines[0])
    assert lines[2].startswith("refused before sending: context 'default' would go over")
    assert "budget of $0.0500" in lines[2]
    assert re.fullmatch(r"context total: \$0\.\d{4} over 2 replies", lines[3])
    assert lines[4] == "requests sent: 2"


def test_09_tracing(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk")
    out = run_example("09_tracing.py", tmp_path)
    spans = re.findall(r"^(\S.*?)  \[(\w+)", out, re.MULTILINE)
    assert spans == [
        ("chat gpt-4o-mini", "UNSET"),
        ("execute_tool weather", "UNSET"),
        ("chat gpt-4o-mini", "ERROR"),
    ]
    assert "gen_ai.response.finish_reasons = ('tool_calls', 'stop')" in out
    assert "gen_ai.usage.input_tokens = 155" in out
    assert re.search(r"cut: checkpoint (\d+)\n[\s\S]*rxcontext.checkpoint.id = \1\n", out)
    assert "Porto?" not in out  # no prompt text without capture_content


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
        send = urllib.request.Request(
            url + "/api/send",
            data=json.dumps({"context": "webchat", "prompt": "hi"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(send, timeout=30) as response:
            reply_id = json.load(response)["reply_id"]
        with urllib.request.urlopen(f"{url}/api/watch?reply={reply_id}", timeout=30) as response:
            events = response.read().decode()
        assert '"type": "done"' in events
        assert (tmp_path / "chat.db").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- README.md and docs/ ----------------------------------------------------------------------


@pytest.mark.parametrize(("where", "code"), python_samples(), ids=[w for w, _ in python_samples()])
def test_every_python_sample_runs_as_written(tmp_path: Path, where: str, code: str) -> None:
    script = tmp_path / "sample.py"
    script.write_text(code, encoding="utf-8")
    run_script(script, tmp_path)


def _readme_sample(tmp_path: Path) -> Path:
    code = code_blocks(ROOT / "README.md", "python")[0]  # "In code", the first one
    script = tmp_path / "sample.py"
    script.write_text(code, encoding="utf-8")
    return script


def _stored(db: Path) -> tuple[list[rxcontext.Record], list[rxcontext.Checkpoint]]:
    with rxcontext.open(db) as store:
        ctx = store.get_context_by_name("rivers")
        return store.records(ctx.id), store.checkpoints(ctx.id, include_resolved=True)


def test_readme_sample_without_a_key_says_why_and_leaves_one_checkpoint(tmp_path: Path) -> None:
    script = _readme_sample(tmp_path)
    no_key = "no complete reply: openai: no API key: set OPENAI_API_KEY"
    first = run_script(script, tmp_path)
    assert no_key in first
    assert "checkpoint 1 keeps the 0 characters received; run again to resume" in first
    assert first == run_script(script, tmp_path)  # the second run resumes the same checkpoint
    records, checkpoints = _stored(tmp_path / "chat.db")
    assert [(r.type, r.content) for r in records if r.live] == [
        (RecordType.SYSTEM_PROMPT, "You are terse."),
        (RecordType.PROMPT, "Name three rivers."),
    ]
    (cp,) = checkpoints
    assert cp.text == "" and not cp.resolved


def test_readme_sample_with_a_server_streams_stores_and_finishes_a_cut_reply(
    tmp_path: Path,
) -> None:
    from localserver import openai_server

    script = _readme_sample(tmp_path)
    run_script(script, tmp_path)  # without a key: the prompt and its empty checkpoint
    answer = "The Tagus, the Douro and the Ebro."
    with openai_server([answer]) as server:
        env = offline_env(OPENAI_API_KEY="sk-test-not-real", OPENAI_BASE_URL=server.url)
        out = run_script(script, tmp_path, env)
    assert out == answer + "\n(stored)\n"
    (sent,) = server.requests  # the original request, sent once
    assert [m["content"] for m in sent["messages"]] == ["You are terse.", "Name three rivers."]
    records, (cp,) = _stored(tmp_path / "chat.db")
    assert [(r.type, r.content) for r in records if r.live][-2:] == [
        (RecordType.PROMPT, "Name three rivers."),
        (RecordType.MODEL_RESP, answer),
    ]
    assert cp.resolved


def test_readme_commands_are_the_ones_tested() -> None:
    (commands,) = code_blocks(ROOT / "README.md", "sh")[:1]
    lines = [line for line in commands.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
        "rxcontext demo --db demo.db",
        "pip install -e '.[test]' && python -m pytest -q",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -e .\n" in ci  # .ci/run installs the base alone, runs the demo
    assert 'rxcontext" demo --db demo.db' in ci


def test_readme_demo_command_runs_as_written(tmp_path: Path) -> None:
    # The first command's last step, with the console script pip installed (no --fast).
    script = Path(sys.executable).with_name("rxcontext")
    result = subprocess.run(
        [str(script), "demo", "--db", "demo.db"],
        cwd=tmp_path,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Run the demo again" in result.stdout
    assert (tmp_path / "demo.db").exists()


def test_readme_lifecycle_sample_prints_what_the_readme_says(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Replies have an id and a state") :]
    code = code_blocks_in(section, "python")[0]
    printed = section[section.index("prints\n\n```\n") + len("prints\n\n```\n") :]
    printed = printed[: printed.index("```")]
    script = tmp_path / "lifecycle.py"
    script.write_text(code, encoding="utf-8")
    assert run_script(script, tmp_path) == printed


def test_readme_options_and_structured_samples_print_what_the_readme_says(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    options = text[text.index("## Per-call options") : text.index("## Structured output")]
    script = tmp_path / "options.py"
    script.write_text(code_blocks_in(options, "python")[0], encoding="utf-8")
    assert run_script(script, tmp_path) == "Tagus 0 5 ('\\n',)\nrefused: tool_choice\n"
    assert "prints `Tagus 0 5 ('\\n',)` then `refused: tool_choice`" in options
    section = text[text.index("## Structured output") :]
    printed = section[section.index("prints\n\n```\n") + len("prints\n\n```\n") :]
    printed = printed[: printed.index("```")]
    script = tmp_path / "structured.py"
    script.write_text(code_blocks_in(section, "python")[0], encoding="utf-8")
    assert run_script(script, tmp_path) == printed


@pytest.mark.parametrize("section", ["## Cost and budgets", "## Tracing (OpenTelemetry)"])
def test_readme_cost_and_tracing_samples_print_what_the_readme_says(
    tmp_path: Path, section: str
) -> None:
    pytest.importorskip("genai_prices", reason="needs rxcontext[prices]")
    pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    part = text[text.index(section) :]
    code = code_blocks_in(part, "python")[0]
    script = tmp_path / "sample.py"
    script.write_text(code, encoding="utf-8")
    out = run_script(script, tmp_path)
    if "prints\n\n```\n" in part[: part.index("\n## ", 3)]:
        printed = part[part.index("prints\n\n```\n") + len("prints\n\n```\n") :]
        assert out == printed[: printed.index("```")]
    else:
        said = re.search(r"prints `([^`]+)`", part)
        assert said is not None and out == said.group(1) + "\n"


def test_readme_attachments_sample_prints_what_the_readme_says(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Attachments (images and files)") :]
    code = code_blocks_in(section, "python")[0]
    printed = section[section.index("prints\n\n```\n") + len("prints\n\n```\n") :]
    printed = printed[: printed.index("```")]
    script = tmp_path / "attachments.py"
    script.write_text(code, encoding="utf-8")
    assert run_script(script, tmp_path) == printed
