"""Errors a user can meet: one line and a hint on stderr, never a traceback."""

from __future__ import annotations

import http.server
import json
import os
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from cliutil import (
    assert_user_error,
    chat_ok,
    checkpoints,
    records,
    replay,
    run,
    run_process,
)

import rxcontext
from rxcontext import ContextWindow, RecordType, StreamInterrupted
from rxcontext.cli.errors import describe, unreadable_value
from rxcontext.providers import ScriptedModel
from rxcontext.store.base import RecordDraft

pytestmark = pytest.mark.e2e  # a program built on the library: run with -m e2e (setup.cfg)

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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_a_named_pipe_as_database_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    """The command hung: SQLite opened the pipe and waited for a writer. In a process of its
    own (``run_process`` gives up after 60 s), so a hang fails the test instead of the run."""
    pipe = tmp_path / "pipe.db"
    os.mkfifo(pipe)
    for args in (("contexts",), ("chat", "--replay", replay(tmp_path, "r", [{"text": "x"}]), "hi")):
        result = run_process(env, *args, "--db", str(pipe))
        assert_user_error(result, "is a named pipe, not a database file", "--db")


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


# -- arguments checked before anything else ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("chat", ""), "the prompt is empty"),
        (("chat", "  ", " "), "the prompt is empty"),
        (("chat", "--max-tokens", "0", "hi"), "--max-tokens"),
        (("chat", "--max-tokens", "-5", "hi"), "--max-tokens"),
        (("chat", "--max-tokens", "lots", "hi"), "--max-tokens"),
        (("chat", "--context-window", "0", "hi"), "--context-window"),
        (("chat", "--context", "", "hi"), "the context name is empty"),
        (("resume", "abc"), "invalid int value"),
        (("contexts", "show", ""), "needs a context name"),
        (("contexts", "clone", "default", ""), "needs SRC and DEST"),
        (("contexts", "frobnicate"), "invalid choice"),
        (("chat", "--model", "", "hi"), "provider:model"),
    ],
)
def test_bad_arguments_are_usage_errors_without_a_key(
    env: dict[str, str], tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    db = tmp_path / "args.db"
    chat_ok(env, tmp_path, db, "x", "hi")
    before = records(db)
    result = run(env, *args, "--db", str(db))  # no API key in env: the usage error comes first
    assert_user_error(result, needle)
    assert "API key" not in result.stderr
    if result.stderr.count("see rxcontext"):
        assert result.returncode == 2
    assert records(db) == before


def test_max_tokens_is_the_reply_limit_and_context_window_the_budget(
    env: dict[str, str], tmp_path: Path
) -> None:
    from localserver import openai_server

    db = tmp_path / "limits.db"
    with openai_server(["Short."]) as server:
        result = run(
            env, "chat", "--db", str(db), "--model", "openai:local", "--base-url", server.url,
            "--max-tokens", "50", "--context-window", "1000", "hi",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Short.\n"
    (sent,) = server.requests
    assert sent["max_tokens"] == 50  # what OpenAI-compatible servers read
    assert "max_completion_tokens" not in sent
    assert "/1,000 tokens" in result.stderr  # the status line's budget


@pytest.mark.parametrize(
    ("provider", "base_url", "param"),
    [
        ("openai", None, "max_completion_tokens"),
        ("openai", "http://127.0.0.1:1/v1", "max_tokens"),
        ("openai-responses", None, "max_output_tokens"),
        ("anthropic", None, "max_tokens"),
        ("gemini", None, "max_output_tokens"),
    ],
)
def test_output_limit_is_named_as_each_sdk_names_it(
    provider: str, base_url: str | None, param: str
) -> None:
    from rxcontext.cli.common import output_limit

    assert output_limit(provider, base_url, 64) == {param: 64}


# -- the checkpoint, the confirmation and the base URL come before the API key ----------------


def test_resume_names_the_checkpoint_problem_before_the_key(
    env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "r.db"
    chat_ok(env, tmp_path, db, "x", "hi")
    missing = run(env, "resume", "99", "--db", str(db))  # no key, no --replay
    assert_user_error(missing, "no checkpoint with id 99", "rxcontext checkpoints")

    cut = replay(tmp_path, "cut", [{"text": "one two three four five", "cut_after": 2}])
    assert run(env, "chat", "--db", str(db), "--replay", cut, "count").returncode == 1
    rest = replay(tmp_path, "rest", [{"text": "three four five"}])
    (cp,) = checkpoints(db)
    assert run(env, "resume", str(cp.id), "--db", str(db), "--replay", rest).returncode == 0
    again = run(env, "resume", str(cp.id), "--db", str(db))  # resolved, and still no key
    assert_user_error(again, "already resumed")


def test_openai_base_url_env_needs_no_key_like_the_option(
    env: dict[str, str], tmp_path: Path
) -> None:
    from localserver import openai_server

    with openai_server(["From the env URL."]) as server:
        db = tmp_path / "env.db"
        by_env = run({**env, "OPENAI_BASE_URL": server.url}, "chat", "--db", str(db), "hi")
        by_option = run(env, "chat", "--db", str(db), "--base-url", server.url, "again")
    assert by_env.returncode == 0, by_env.stderr
    assert by_option.returncode == 0, by_option.stderr
    assert by_env.stdout == by_option.stdout == "From the env URL.\n"
    assert len(server.requests) == 2
    # The SDK insists on a key; a placeholder goes to the local server, never a real one.
    assert {h.get("authorization") for h in server.headers} == {"Bearer not-needed"}


def test_openai_base_url_env_names_the_url_when_unreachable(
    env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    result = run({**env, "OPENAI_BASE_URL": url}, "chat", "--db", str(tmp_path / "u.db"), "hi")
    assert_user_error(result, f"cannot reach {url}")


@pytest.mark.parametrize("given", ["option", "env"])
def test_a_base_url_password_is_left_out_of_the_error(
    env: dict[str, str], tmp_path: Path, given: str
) -> None:
    """A proxy's ``user:password@`` in ``--base-url`` (or ``$OPENAI_BASE_URL``) is not
    printed, as a ``--db`` URL's is not; the rest of the URL still says where."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://bob:hunter2pass@127.0.0.1:{port}/v1"
    db = str(tmp_path / "u.db")
    if given == "option":
        result = run(env, "chat", "--db", db, "--model", "openai:m", "--base-url", url, "hi")
    else:
        result = run({**env, "OPENAI_BASE_URL": url}, "chat", "--db", db, "hi")
    assert_user_error(result, f"cannot reach http://bob@127.0.0.1:{port}/v1")
    assert "hunter2pass" not in result.stdout + result.stderr


KEY = "gw9f3c1a7e5b2d4f60Zx81QaPL"


@pytest.mark.parametrize(
    ("model", "query"),
    [
        ("openai:m", f"/v1?api-key={KEY}"),
        ("openai:m", f"/v1?key={KEY}&x=1"),
        ("gemini:g", f"/?key={KEY}"),
    ],
)
def test_a_key_in_the_base_urls_query_is_left_out_of_the_error(
    env: dict[str, str], tmp_path: Path, model: str, query: str
) -> None:
    """Google's APIs and some gateways take the key as ?key=…: "cannot reach" printed it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env["GEMINI_API_KEY"] = "AIzaDummyDummyDummyDummyDummyDummy12"
    url = f"http://127.0.0.1:{port}{query}"
    db = str(tmp_path / "u.db")
    result = run(env, "chat", "--db", db, "--model", model, "--base-url", url, "hi")
    path = query.split("?", 1)[0]
    assert_user_error(result, f"cannot reach http://127.0.0.1:{port}{path}:")
    assert KEY not in result.stdout + result.stderr and "key=" not in result.stderr


@pytest.mark.parametrize(
    ("base_url", "shown"),
    [
        ("http://h/v1?key=Zq8SecretPw4711", "http://h/v1"),
        ("http://h/v1#key=Zq8SecretPw4711", "http://h/v1"),
        ("https://bob:Zq8Secret@h:8/v1?api-key=Zq8SecretPw4711", "https://bob@h:8/v1"),
        ("https://bob:Zq8Sec?ret@h/v1", "https://bob@h/v1"),
        ("https://bob:Zq8Sec/ret@h/v1?k=Zq8SecretPw4711#f", "https://bob@h/v1"),
        ("http://h/v1", "http://h/v1"),
    ],
)
def test_a_base_url_is_shown_without_its_password_query_or_fragment(
    base_url: str, shown: str
) -> None:
    exc = rxcontext.ProviderError("refused", provider="openai", error_type="connection_error")
    message, _ = describe(exc, base_url)
    assert message == f"cannot reach {shown}: refused"


def test_summarize_in_a_script_refuses_before_sending_anything(
    env: dict[str, str], tmp_path: Path
) -> None:
    from localserver import openai_server

    db = tmp_path / "s.db"
    chat_ok(env, tmp_path, db, "Paris.", "Capital of France?")
    before = records(db)
    with openai_server(["A summary nobody asked for."]) as server:
        args = ("summarize", "--db", str(db), "--model", "openai:m", "--base-url", server.url)
        refused = run(env, *args)
    assert_user_error(refused, "nothing was sent", "--yes")
    assert server.requests == []  # nothing paid for
    assert records(db) == before


def test_an_import_file_that_is_not_text_or_nested_too_deeply_is_a_user_error(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Not a bug report: a file that is not UTF-8, or JSON nested past what the parser
    takes, says what is wrong with the file."""
    binary = tmp_path / "photo.json"
    binary.write_bytes(b"\xff\xd8\xff\xe0 not text")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    db = str(tmp_path / "i.db")
    assert_user_error(run(env, "contexts", "import", str(binary), "--db", db), "not UTF-8")
    assert_user_error(run(env, "contexts", "import", str(deep), "--db", db), "nested too deeply")


def test_a_database_of_a_newer_rxcontext_gets_its_own_hint(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The hint for a file path ("pass --db with a writable file path") does not fit a
    database a newer rxcontext made."""
    db = tmp_path / "newer.db"
    chat_ok(env, tmp_path, db, "x", "hi")
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_migrations (name) VALUES ('zz_from_the_future')")
    conn.commit()
    conn.close()
    assert_user_error(run(env, "contexts", "--db", str(db)), "upgrade rxcontext")


# -- a store's refusal is not a damaged database --------------------------------------------


def test_a_store_refusal_is_not_called_an_unreadable_value(target: str) -> None:
    """The store refuses on purpose (a ``ValueError`` it raises itself: nothing to keep, a
    stale summary): reported with its own message, never as a value it cannot read."""
    with rxcontext.open(target) as store:
        cw = ContextWindow(store, ScriptedModel([[ConnectionError("refused")]]), retry=None)
        cw.add_prompt("hi")
        with pytest.raises(StreamInterrupted) as cut:
            cw.call()
        refusals = []
        with pytest.raises(ValueError) as empty:
            store.keep_checkpoint(cut.value.checkpoint.id)
        refusals.append(empty.value)
        with pytest.raises(ValueError) as stale:
            store.replace_records(cw.context_id, [10**6], RecordDraft(RecordType.PROMPT, "s"))
        refusals.append(stale.value)
    for refusal in refusals:
        assert not unreadable_value(refusal)
        message, hint = describe(refusal, None, Path(target))
        assert message == str(refusal)
        assert "cannot read" not in message + hint and "bug" not in hint
