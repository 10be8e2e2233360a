"""The ``rxcontext`` command, driven as a person (pseudo-terminal) and as a script would.

Replies come from ``--replay FILE`` / ``$RXCONTEXT_REPLAY``: canned replies framed as the
OpenAI Chat SSE stream and parsed by the real ``openai`` SDK, so everything but the network
runs for real. Terminal sessions run under ``pexpect`` and wait on output (with timeouts),
never on sleeps; the stored records are then read back with ``rxcontext.open``.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import rxcontext
from rxcontext import RecordType
from rxcontext.cli import default_db

pexpect = pytest.importorskip(
    "pexpect", reason="pexpect is in the test extra: pip install -e '.[test]'"
)

LONG = " ".join(f"word{i}" for i in range(300))
TIMEOUT = 20


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no API keys, no default database, HOME in the test folder."""
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("RXCONTEXT_")
    }
    out.update(
        HOME=str(tmp_path / "home"),
        XDG_DATA_HOME=str(tmp_path / "home" / "data"),
        TERM="xterm-256color",
        PYTHONUNBUFFERED="1",
    )
    out.pop("NO_COLOR", None)
    return out


def replay(tmp_path: Path, name: str, replies: Sequence[dict[str, Any]], delay: float = 0) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"delay": delay, "replies": list(replies)}))
    return str(path)


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rxcontext", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def spawn(env: dict[str, str]) -> Iterator[Any]:
    children: list[Any] = []

    def start(*args: str) -> Any:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "rxcontext", *args],
            env=env,
            encoding="utf-8",
            timeout=TIMEOUT,
            dimensions=(40, 120),
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.isalive():
            child.terminate(force=True)


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """One error line and one hint line on stderr, a failing status, no traceback."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("rxcontext: error: ")
    assert lines[1].startswith("hint: ")
    for needle in needles:
        assert needle in result.stderr


def chat_ok(env: dict[str, str], tmp_path: Path, db: Path, reply: str, *args: str) -> None:
    """One replayed ``chat`` exchange that must succeed (to set a database up)."""
    file = replay(tmp_path, "setup", [{"text": reply}])
    result = run(env, "chat", "--db", str(db), "--replay", file, *args)
    assert result.returncode == 0, result.stderr


def records(db: Path, context: str = "default") -> list[rxcontext.Record]:
    with rxcontext.open(db) as store:
        return store.records(store.get_context_by_name(context).id)


def checkpoints(db: Path, context: str = "default") -> list[rxcontext.Checkpoint]:
    """Interrupted and completed replies' checkpoints (not those discarded as empty)."""
    with rxcontext.open(db) as store:
        found = store.checkpoints(store.get_context_by_name(context).id, include_resolved=True)
    return [cp for cp in found if cp.state is not rxcontext.ReplyState.DISCARDED]


# -- demo -------------------------------------------------------------------------------------


def test_demo_plain_twice_streams_stores_cuts_and_resumes(
    env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "demo.db"
    first = run(env, "demo", "--db", str(db), "--fast")
    assert first.returncode == 0, first.stderr
    assert "\x1b[" not in first.stdout  # no redraws when not a terminal
    assert "## What just happened" in first.stdout
    assert "Run the demo again" in first.stdout
    replies = [r for r in records(db, "demo") if r.type is RecordType.MODEL_RESP]
    assert len(replies) == 1 and replies[0].streamed
    assert replies[0].content.startswith("## What just happened")

    second = run(env, "demo", "--db", str(db), "--fast")
    assert second.returncode == 0, second.stderr
    assert "[tool call] weather" in second.stdout
    (cp,) = checkpoints(db, "demo")
    assert f"checkpoint {cp.id} saved" in second.stdout
    assert f"checkpoint {cp.id} resolved" in second.stdout
    kinds = [r.type for r in records(db, "demo")]
    assert kinds[-4:] == [
        RecordType.PROMPT,
        RecordType.TOOL_CALL,
        RecordType.TOOL_OUTPUT,
        RecordType.MODEL_RESP,
    ]
    (cp,) = checkpoints(db, "demo")
    assert cp.resolved
    assert records(db, "demo")[-1].content.startswith(cp.text)


def test_demo_in_a_terminal_renders_live(spawn: Any, tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    child = spawn("demo", "--db", str(db), "--fast")
    child.expect("streaming a reply")
    child.expect("tok/s")
    child.expect("stored in one transaction")
    child.expect("MODEL_RESP")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    child = spawn("demo", "--db", str(db), "--fast")
    child.expect(r"checkpoint (\d+) saved")
    cp_id = int(child.match.group(1))
    child.expect(f"checkpoint {cp_id} resolved")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert checkpoints(db, "demo")[0].resolved


# -- chat -------------------------------------------------------------------------------------


def test_chat_one_shot_plain_output_is_the_reply(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    text = "Rivers: the *Tagus*, the Douro and the Mondego."
    file = replay(tmp_path, "r", [{"text": text, "usage": [20, 12]}])
    result = run(env, "chat", "--db", str(db), "--replay", file, "--system", "Be terse.", "Rivers?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == text + "\n"
    assert "20 in / 12 out tokens" in result.stderr and "stored as record" in result.stderr
    kinds = [(r.type, r.content) for r in records(db)]
    assert kinds == [
        (RecordType.SYSTEM_PROMPT, "Be terse."),
        (RecordType.PROMPT, "Rivers?"),
        (RecordType.MODEL_RESP, text),
    ]


def test_chat_reads_the_prompt_from_stdin_and_honours_env_defaults(
    env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "env.db"
    env = {
        **env,
        "RXCONTEXT_DB": str(db),
        "RXCONTEXT_REPLAY": replay(tmp_path, "r", [{"text": "piped"}]),
    }
    result = run(env, "chat", "--context", "pipes", stdin="from stdin\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "piped\n"
    assert [r.content for r in records(db, "pipes")] == ["from stdin", "piped"]


def test_default_database_lives_in_the_user_data_dir(env: dict[str, str], tmp_path: Path) -> None:
    file = replay(tmp_path, "r", [{"text": "ok"}])
    assert run(env, "chat", "--replay", file, "hi").returncode == 0
    db = Path(env["XDG_DATA_HOME"]) / "rxcontext" / "rxcontext.db"
    assert [r.content for r in records(db)] == ["hi", "ok"]
    listed = run(env, "contexts")
    assert listed.returncode == 0 and "default" in listed.stdout


def test_default_db_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RXCONTEXT_DB", str(tmp_path / "x.db"))
    assert default_db() == tmp_path / "x.db"
    monkeypatch.delenv("RXCONTEXT_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_db() == tmp_path / "rxcontext" / "rxcontext.db"


def test_interactive_chat_ctrl_c_cancels_reply_keeps_checkpoint_and_session(
    spawn: Any, tmp_path: Path
) -> None:
    db = tmp_path / "i.db"
    file = replay(
        tmp_path,
        "r",
        [
            {"text": LONG, "usage": [10, 300]},
            {"text": "THE END."},
            {"text": "Second **answer**.", "usage": [30, 4]},
        ],
        delay=0.05,
    )
    child = spawn("chat", "--db", str(db), "--replay", file, "--context", "talk")
    child.expect("you> ")
    child.sendline("tell me everything")
    child.expect(r"word20\b")
    child.expect("tok/s")  # the live status line
    child.sendintr()
    child.expect(r"reply cancelled; its checkpoint (\d+) is kept \((\d+) characters\)")
    cp_id, chars = int(child.match.group(1)), int(child.match.group(2))
    child.expect("Ctrl-C again to quit")
    child.expect("you> ")  # the session goes on

    (cp,) = checkpoints(db, "talk")  # stored while the session is still open
    assert cp.id == cp_id and not cp.resolved
    assert len(cp.text) == chars
    assert "word20 " in cp.text and LONG.startswith(cp.text) and cp.text != LONG

    child.sendline("/checkpoints")
    child.expect(f"{cp_id}.*open")
    child.expect("you> ")
    child.sendline("/resume")
    child.expect(f"resuming checkpoint {cp_id}")
    child.expect(f"checkpoint {cp_id} resolved")
    child.expect("you> ")
    child.sendline("and then?")
    child.expect("stored as record")
    child.expect("you> ")
    child.sendline("/nonsense")
    child.expect("unknown command /nonsense")
    child.expect("you> ")
    child.sendintr()  # Ctrl-C at the prompt ends the session
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    assert checkpoints(db, "talk")[0].resolved
    stored = [(r.type, r.content) for r in records(db, "talk")]
    assert stored == [
        (RecordType.PROMPT, "tell me everything"),
        (RecordType.MODEL_RESP, cp.text + "THE END."),
        (RecordType.PROMPT, "and then?"),
        (RecordType.MODEL_RESP, "Second **answer**."),
    ]


def test_one_shot_ctrl_c_then_resume_in_a_terminal(spawn: Any, tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    file = replay(tmp_path, "r", [{"text": LONG}], delay=0.05)
    child = spawn("chat", "--db", str(db), "--replay", file, "count")
    child.expect(r"word10\b")
    child.sendintr()
    child.expect(r"checkpoint (\d+) is kept")
    cp_id = int(child.match.group(1))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    (cp,) = checkpoints(db)
    assert not cp.resolved

    # Cut the resume too: the checkpoint grows in place and stays resumable.
    slow = replay(tmp_path, "slow", [{"text": LONG[len(cp.text) :]}], delay=0.05)
    child = spawn("resume", str(cp_id), "--db", str(db), "--replay", slow)
    child.expect(f"resuming checkpoint {cp_id}")
    child.expect(r"word150\b")
    child.sendintr()
    child.expect(f"checkpoint {cp_id} is kept")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    (cp,) = checkpoints(db)
    assert not cp.resolved and "word150" in cp.text and LONG.startswith(cp.text)

    rest = replay(tmp_path, "rest", [{"text": LONG[len(cp.text) :]}])
    child = spawn("resume", str(cp_id), "--db", str(db), "--replay", rest)
    child.expect(f"resuming checkpoint {cp_id}")
    child.expect(f"checkpoint {cp_id} resolved")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert checkpoints(db)[0].resolved
    assert records(db)[-1].content == LONG


def test_ctrl_c_while_waiting_for_a_silent_server(spawn: Any, tmp_path: Path) -> None:
    db = tmp_path / "silent.db"
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        child = spawn("chat", "--db", str(db), "--model", "openai:local", "--base-url", url)
        child.expect("you> ")
        child.sendline("anyone there?")
        child.expect("tok/s")  # the live status line is up: the request is waiting
        child.sendintr()
        child.expect("reply cancelled before anything arrived")
        child.expect("you> ")
        child.sendeof()
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 0
    assert checkpoints(db) == []
    (prompt,) = records(db)
    assert prompt.content == "anyone there?" and not prompt.live


# -- errors a user can meet -------------------------------------------------------------------


def test_unknown_model_prefix(env: dict[str, str], tmp_path: Path) -> None:
    result = run(env, "chat", "--db", str(tmp_path / "x.db"), "--model", "mistral:large", "hi")
    assert_user_error(result, "unknown model provider 'mistral'", "openai:")
    assert not (tmp_path / "x.db").exists()  # nothing written before the model was known


def test_model_without_provider(env: dict[str, str], tmp_path: Path) -> None:
    result = run(env, "chat", "--db", str(tmp_path / "x.db"), "--model", "gpt-4o", "hi")
    assert_user_error(result, "provider:model")


@pytest.mark.parametrize(
    ("model", "variable"),
    [
        ("openai:gpt-4o-mini", "OPENAI_API_KEY"),
        ("openai-responses:gpt-5-mini", "OPENAI_API_KEY"),
        ("anthropic:claude-sonnet-4-5", "ANTHROPIC_API_KEY"),
        ("gemini:gemini-2.5-flash", "GEMINI_API_KEY"),
    ],
)
def test_missing_api_key(env: dict[str, str], tmp_path: Path, model: str, variable: str) -> None:
    result = run(env, "chat", "--db", str(tmp_path / "x.db"), "--model", model, "hi")
    assert_user_error(result, f"{variable}", "rxcontext demo")


def test_unreachable_base_url(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "u.db"
    url = f"http://127.0.0.1:{port}/v1"
    result = run(env, "chat", "--db", str(db), "--model", "openai:llama", "--base-url", url, "hi")
    assert_user_error(result, f"cannot reach {url}", "--base-url")
    # Nothing arrived: no empty checkpoint, and the unanswered prompt is retired.
    assert checkpoints(db) == []
    (prompt,) = records(db)
    assert prompt.content == "hi" and not prompt.live


@pytest.mark.parametrize(
    ("status", "hint"),
    [(401, "check the API key"), (404, "check the model name")],
)
def test_server_refuses(env: dict[str, str], tmp_path: Path, status: int, hint: str) -> None:
    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.dumps({"error": {"message": f"refused with {status}", "type": "x"}})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        db = tmp_path / "refused.db"
        args = ("chat", "--db", str(db), "--model", "openai:m", "--base-url", url, "hi")
        result = run({**env, "OPENAI_API_KEY": "sk-test-0123456789abcdef"}, *args)
    finally:
        server.shutdown()
        server.server_close()
    assert_user_error(result, f"HTTP {status}", f"refused with {status}", hint)
    assert "sk-test-0123456789abcdef" not in result.stderr


def test_not_a_database(env: dict[str, str], tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for args in (("contexts",), ("chat", "--replay", replay(tmp_path, "r", [{"text": "x"}]), "hi")):
        result = run(env, *args, "--db", str(notes))
        assert_user_error(result, "not an SQLite database", "--db")
    assert notes.read_text() == "my notes\n"


def test_bad_database_paths(env: dict[str, str], tmp_path: Path) -> None:
    assert_user_error(run(env, "contexts", "--db", str(tmp_path / "none.db")), "no database at")
    file = replay(tmp_path, "r", [{"text": "x"}])
    result = run(env, "chat", "--replay", file, "--db", str(tmp_path / "no" / "dir.db"), "hi")
    assert_user_error(result, "does not exist")
    assert_user_error(run(env, "chat", "--replay", file, "--db", str(tmp_path), "hi"), "directory")


def test_unknown_context_and_checkpoint(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    chat_ok(env, tmp_path, db, "x", "hi")
    shown = run(env, "contexts", "show", "nope", "--db", str(db))
    assert_user_error(shown, "no context named 'nope'")
    file = replay(tmp_path, "r", [{"text": "x"}])
    result = run(env, "resume", "42", "--db", str(db), "--replay", file)
    assert_user_error(result, "no checkpoint with id 42", "rxcontext checkpoints")


def test_bad_replay_file(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_user_error(run(env, "chat", "--db", str(tmp_path / "x.db"), "--replay", str(bad), "hi"))


def test_no_command_prints_help(env: dict[str, str]) -> None:
    result = run(env)
    assert result.returncode == 2
    assert "demo" in result.stdout and "chat" in result.stdout


# -- a cut reply, checkpoints, resume -----------------------------------------------------------


def test_cut_reply_then_checkpoints_and_resume(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "cut.db"
    full = "one two three four five six seven eight nine ten"
    cut = replay(tmp_path, "cut", [{"text": full, "cut_after": 3}])
    result = run(env, "chat", "--db", str(db), "--replay", cut, "count")
    assert_user_error(result, "the reply was cut off", "rxcontext resume 1")
    assert result.stdout == "one two three four \n"

    listed = run(env, "checkpoints", "--db", str(db))
    assert listed.returncode == 0
    header, row = listed.stdout.strip().splitlines()
    assert header.split("\t")[:2] == ["id", "context"]
    cells = row.split("\t")
    assert (cells[0], cells[1], cells[3], cells[4]) == ("1", "default", "open", "19")
    as_json = json.loads(run(env, "checkpoints", "--json", "--db", str(db)).stdout)
    assert as_json[0]["text"] == "one two three four "

    rest = replay(tmp_path, "rest", [{"text": "five six seven eight nine ten"}])
    resumed = run(env, "resume", "1", "--db", str(db), "--replay", rest)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == full + "\n"
    assert records(db)[-1].content == full
    assert "no open checkpoints" in run(env, "checkpoints", "--db", str(db)).stdout
    again = run(env, "resume", "1", "--db", str(db), "--replay", rest)
    assert_user_error(again, "already resumed")


# -- contexts ---------------------------------------------------------------------------------


def test_contexts_list_show_export_clone_delete(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "ctx.db"
    chat_ok(env, tmp_path, db, "Lisbon.", "-c", "trip", "Capital?")

    listed = run(env, "contexts", "--db", str(db))
    assert listed.returncode == 0 and "\x1b[" not in listed.stdout
    assert listed.stdout.splitlines()[1].startswith("trip\t2\t")
    (entry,) = json.loads(run(env, "contexts", "list", "--json", "--db", str(db)).stdout)
    assert entry["name"] == "trip" and entry["replies"] == 1

    shown = run(env, "contexts", "show", "trip", "--db", str(db))
    assert "MODEL_RESP" in shown.stdout and "Lisbon." in shown.stdout

    exported = json.loads(run(env, "contexts", "export", "trip", "--db", str(db)).stdout)
    assert [r["content"] for r in exported["records"]] == ["Capital?", "Lisbon."]
    out = tmp_path / "trip.json"
    assert (
        run(env, "contexts", "export", "trip", "--out", str(out), "--db", str(db)).returncode == 0
    )
    assert json.loads(out.read_text()) == exported

    assert run(env, "contexts", "clone", "trip", "trip2", "--db", str(db)).returncode == 0
    assert [r.content for r in records(db, "trip2")] == ["Capital?", "Lisbon."]
    assert_user_error(
        run(env, "contexts", "clone", "trip", "trip2", "--db", str(db)), "already exists"
    )

    refused = run(env, "contexts", "delete", "trip2", "--db", str(db))
    assert_user_error(refused, "--yes")
    assert run(env, "contexts", "delete", "trip2", "--yes", "--db", str(db)).returncode == 0
    names = [c["name"] for c in json.loads(run(env, "contexts", "--json", "--db", str(db)).stdout)]
    assert names == ["trip"]


def test_contexts_delete_asks_in_a_terminal(
    spawn: Any, env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "d.db"
    chat_ok(env, tmp_path, db, "x", "hi")
    child = spawn("contexts", "delete", "default", "--db", str(db))
    child.expect(r"Delete context 'default' and its 2 records\? \[y/N\]")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1 and len(records(db)) == 2
    child = spawn("contexts", "delete", "default", "--db", str(db))
    child.expect(r"\[y/N\]")
    child.sendline("y")
    child.expect("deleted context 'default'")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    with rxcontext.open(db) as store:
        assert store.list_contexts() == []


# -- summarize --------------------------------------------------------------------------------


def _conversation(env: dict[str, str], tmp_path: Path, db: Path) -> None:
    # Each process replays its file from the start: one file per exchange.
    chat_ok(env, tmp_path, db, "Paris.", "Capital of France?")
    chat_ok(env, tmp_path, db, "About 2.1 million.", "Population?")


def test_summarize_in_a_script_needs_yes(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _conversation(env, tmp_path, db)
    summary = replay(tmp_path, "sum", [{"text": "The user asked about Paris."}] * 2)
    refused = run(env, "summarize", "--db", str(db), "--replay", summary)
    assert refused.returncode == 1
    assert "The user asked about Paris." in refused.stdout
    assert "not applied" in refused.stderr
    assert all(r.live for r in records(db))

    accepted = run(env, "summarize", "--yes", "--db", str(db), "--replay", summary)
    assert accepted.returncode == 0, accepted.stderr
    live = [r for r in records(db) if r.live]
    assert len(live) == 1 and live[0].content.endswith("The user asked about Paris.")
    assert live[0].metadata.get("summary") is True
    assert sum(not r.live for r in records(db)) == 4


def test_summarize_asks_in_a_terminal(spawn: Any, env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _conversation(env, tmp_path, db)
    summary = replay(tmp_path, "sum", [{"text": "Paris, 2.1 million."}])
    child = spawn("summarize", "--db", str(db), "--replay", summary)
    child.expect("Paris, 2.1 million.")
    child.expect(r"Accept this summary\? \[y/N\]")
    child.sendline("y")
    child.expect(r"summary accepted as record (\d+)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert next(r.content for r in records(db) if r.live).endswith("Paris, 2.1 million.")


def test_summarize_empty_context(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with rxcontext.open(db) as store:
        store.get_or_create_context("default")
    result = run(
        env, "summarize", "--db", str(db), "--replay", replay(tmp_path, "s", [{"text": "x"}])
    )
    assert_user_error(result, "nothing to summarize")


# -- model specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "variable", "cls"),
    [
        ("openai:gpt-4o-mini", "OPENAI_API_KEY", "OpenAIModel"),
        ("openai-responses:gpt-5-mini", "OPENAI_API_KEY", "OpenAIResponsesModel"),
        ("anthropic:claude-sonnet-4-5", "ANTHROPIC_API_KEY", "AnthropicModel"),
        ("gemini:gemini-2.5-flash", "GOOGLE_API_KEY", "GeminiModel"),
    ],
)
def test_model_from_spec(
    monkeypatch: pytest.MonkeyPatch, spec: str, variable: str, cls: str
) -> None:
    from rxcontext import providers
    from rxcontext.providers.factory import model_from_spec

    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "test-key-not-real")
    model = model_from_spec(spec)
    assert isinstance(model, getattr(providers, cls))
    assert model.name == spec


def test_model_from_spec_base_url_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from rxcontext.providers import OpenAIModel
    from rxcontext.providers.factory import ModelSpecError, model_from_spec

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    model = model_from_spec("openai:llama3.2", base_url="http://127.0.0.1:11434/v1")
    assert isinstance(model, OpenAIModel) and model.name == "openai:llama3.2"
    with pytest.raises(ModelSpecError, match="OPENAI_API_KEY"):
        model_from_spec("openai:gpt-4o-mini")
    with pytest.raises(ModelSpecError, match="unknown model provider"):
        model_from_spec("cohere:command")
