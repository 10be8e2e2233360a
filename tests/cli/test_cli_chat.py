"""The demo and ``chat``: one-shot, piped, interactive, cancelled with Ctrl-C."""

from __future__ import annotations

import http.server
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cliutil import (
    LONG,
    checkpoints,
    pexpect,
    records,
    replay,
    run,
    run_process,
)

from rxcontext import RecordType
from rxcontext.cli import default_db
from rxcontext.providers.replay import ScriptedReply, chat_sse

pytestmark = pytest.mark.e2e  # a program built on the library: run with -m e2e (setup.cfg)

# -- demo -------------------------------------------------------------------------------------


def test_demo_plain_twice_streams_stores_cuts_and_resumes(
    env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "demo.db"
    first = run_process(env, "demo", "--db", str(db), "--fast")
    assert first.returncode == 0, first.stderr
    assert "\x1b[" not in first.stdout  # no redraws when not a terminal
    assert "## What just happened" in first.stdout
    assert "Run the demo again" in first.stdout
    replies = [r for r in records(db, "demo") if r.type is RecordType.MODEL_RESP]
    assert len(replies) == 1 and replies[0].streamed
    assert replies[0].content.startswith("## What just happened")

    second = run_process(env, "demo", "--db", str(db), "--fast")
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


def test_demo_cut_by_ctrl_c_keeps_its_checkpoint_and_the_next_run_finishes_it(
    spawn: Any, env: dict[str, str], tmp_path: Path
) -> None:
    """The README's first command, interrupted: the reply shown so far is kept and the
    message says how to finish it; the next run resumes it (with the demo's own model, no
    key) instead of asking the question again."""
    from importlib import resources

    full = resources.files("rxcontext").joinpath("data", "demo_reply.md").read_text("utf-8")
    db = tmp_path / "demo.db"
    child = spawn("demo", "--db", str(db), columns=300)
    child.expect("What just happened")  # the reply's first chunk is on the screen
    child.sendintr()
    child.expect(r"checkpoint (\d+) is kept \((\d+) characters\): rxcontext demo --db ")
    cp_id = int(child.match.group(1))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    (cp,) = checkpoints(db, "demo")
    assert cp.id == cp_id and not cp.resolved and full.startswith(cp.text) and cp.text != full

    again = run_process(env, "demo", "--db", str(db), "--fast")  # no API key in env
    assert again.returncode == 0, again.stderr
    assert f"resuming checkpoint {cp_id}" in again.stdout
    assert f"checkpoint {cp_id} resolved" in again.stdout
    assert "Run the demo again" in again.stdout
    (cp,) = checkpoints(db, "demo")
    assert cp.resolved
    live = [(r.type, r.content) for r in records(db, "demo") if r.live]
    assert [kind for kind, _ in live] == [
        RecordType.SYSTEM_PROMPT,
        RecordType.PROMPT,
        RecordType.MODEL_RESP,
    ]
    assert live[2][1] == full
    assert len([r for r in records(db, "demo") if r.type is RecordType.PROMPT]) == 1

    third = run_process(env, "demo", "--db", str(db), "--fast")  # on to the second part
    assert third.returncode == 0, third.stderr
    assert "[tool call] weather" in third.stdout


# -- chat -------------------------------------------------------------------------------------


def test_chat_one_shot_plain_output_is_the_reply(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    text = "Rivers: the *Tagus*, the Douro and the Mondego."
    file = replay(tmp_path, "r", [{"text": text, "usage": [20, 12]}])
    args = ("chat", "--db", str(db), "--replay", file, "--system", "Be terse.", "Rivers?")
    result = run_process(env, *args)
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
    child.expect(f"{cp_id}.*interrupted")
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


def test_interactive_resume_of_another_contexts_checkpoint_gives_cli_advice(
    spawn: Any, env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "o.db"
    cut = replay(tmp_path, "cut", [{"text": "one two three four", "cut_after": 2}])
    assert run(env, "chat", "--db", str(db), "--replay", cut, "-c", "trip", "count").returncode
    (cp,) = checkpoints(db, "trip")
    child = spawn("chat", "--db", str(db), "--replay", cut, "-c", "notes")
    child.expect("you> ")
    child.sendline(f"/resume {cp.id}")
    child.expect(f"checkpoint {cp.id} belongs to context 'trip'")
    child.expect(f"rxcontext resume {cp.id}")
    child.expect("you> ")
    said = child.before or ""
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "switch_context" not in said and "resuming checkpoint" not in said
    assert not checkpoints(db, "trip")[0].resolved


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
    child.expect(r"word40\b")  # well past the first cut (word10), at 0.05 s a word
    child.sendintr()
    child.expect(f"checkpoint {cp_id} is kept")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    (cp,) = checkpoints(db)
    assert not cp.resolved and "word40" in cp.text and LONG.startswith(cp.text)

    rest = replay(tmp_path, "rest", [{"text": LONG[len(cp.text) :]}])
    child = spawn("resume", str(cp_id), "--db", str(db), "--replay", rest)
    child.expect(f"resuming checkpoint {cp_id}")
    child.expect(f"checkpoint {cp_id} resolved")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert checkpoints(db)[0].resolved
    assert records(db)[-1].content == LONG


def test_sigterm_keeps_what_was_shown_as_ctrl_c_does(spawn: Any, tmp_path: Path) -> None:
    """SIGTERM (``kill``, ``timeout``, ``docker stop``) ends a chat as Ctrl-C does: the
    reply's checkpoint holds what was printed, and the status says terminated (143)."""
    db = tmp_path / "t.db"
    file = replay(tmp_path, "t", [{"text": LONG}], delay=0.05)
    child = spawn("chat", "--db", str(db), "--replay", file, "count")
    child.expect(r"word10\b")
    child.kill(signal.SIGTERM)
    child.expect(r"checkpoint (\d+) is kept")
    child.expect("terminated")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 143
    (cp,) = checkpoints(db)
    assert not cp.resolved and "word10" in cp.text and LONG.startswith(cp.text)


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
        tail = child.before
        child.close()
    assert child.exitstatus == 0, tail
    assert checkpoints(db) == []
    (prompt,) = records(db)
    assert prompt.content == "anyone there?" and not prompt.live


@contextmanager
def _held_stream(text: str, first_events: int) -> Iterator[tuple[str, threading.Event]]:
    """A server streaming ``text``: ``first_events`` SSE events, then the rest once the
    event it yields is set. Its base URL and that event."""
    frames = chat_sse(ScriptedReply(text))
    go = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()  # no length: the stream ends when the connection closes
            self.wfile.write(b"".join(frames[:first_events]))
            self.wfile.flush()
            go.wait(60)
            self.wfile.write(b"".join(frames[first_events:]))

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", go
    finally:
        go.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_dumb_terminal_gets_the_reply_as_it_streams(
    spawn: Any, env: dict[str, str], tmp_path: Path
) -> None:
    """``TERM=dumb`` (Emacs' shell, some IDE consoles) cannot redraw, so rich's live view
    would show nothing until the end: the reply is written as it arrives instead, with no
    escape sequences."""
    env["TERM"] = "dumb"
    text = " ".join(f"w{i}" for i in range(40))
    with _held_stream(text, first_events=3) as (url, go):
        child = spawn(
            "chat", "--db", str(tmp_path / "d.db"), "-m", "openai:m", "--base-url", url, "go"
        )
        child.expect("w0 w1 w2 w3 ")  # shown while the server holds the rest back
        go.set()
        child.expect("w39")
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 0
    assert "\x1b[" not in (child.before or "")
    assert records(tmp_path / "d.db")[-1].content == text
