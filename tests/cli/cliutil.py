"""Helpers for driving the ``rxcontext`` command as a script and as a person would.

Replies come from ``--replay FILE`` / ``$RXCONTEXT_REPLAY``: canned replies framed as the
OpenAI Chat SSE stream and parsed by the real ``openai`` SDK, so everything but the network
runs for real. Terminal sessions run under ``pexpect`` in a pseudo-terminal of a chosen
size and wait on output (with timeouts), never on sleeps.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import rxcontext

pexpect = pytest.importorskip(
    "pexpect", reason="pexpect is in the test extra: pip install -e '.[test]'"
)

LONG = " ".join(f"word{i}" for i in range(300))
TIMEOUT = 20
WIDTHS = (60, 80, 120)

# What a terminal acts on: CSI (colours, cursor moves), OSC (titles, hyperlinks), the rest.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def clean_env(tmp_path: Path) -> dict[str, str]:
    """No API keys, no base URLs, no default database, HOME in the test folder."""
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_BASE_URL"))
        and not k.startswith("RXCONTEXT_")
        and k not in ("NO_COLOR", "COLUMNS", "LINES", "CI")
    }
    out.update(
        HOME=str(tmp_path / "home"),
        XDG_DATA_HOME=str(tmp_path / "home" / "data"),
        TERM="xterm-256color",
        PYTHONUNBUFFERED="1",
    )
    return out


def replay(tmp_path: Path, name: str, replies: Sequence[dict[str, Any]], delay: float = 0) -> str:
    """A ``--replay`` file of canned replies; its path."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"delay": delay, "replies": list(replies)}))
    return str(path)


def run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``rxcontext ARGS`` with pipes for stdin, stdout and stderr (not a terminal).

    It runs :func:`rxcontext.cli.main` in this process, as the ``rxcontext`` script does,
    with ``env`` as the whole environment: a fresh interpreter per command would cost the
    suite most of its time on a loaded machine. :func:`run_process` is the real thing, for
    the tests about the process itself.
    """
    from rxcontext.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_stdin = dict(os.environ), sys.stdin
    handlers = list(logging.getLogger().handlers)
    os.environ.clear()
    os.environ.update(env)
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(list(args))
            except SystemExit as exit_:  # --help, --version
                status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.stdin = saved_stdin
        logging.getLogger().handlers[:] = handlers  # main's basicConfig wrote to `err`
    return subprocess.CompletedProcess(["rxcontext", *args], status, out.getvalue(), err.getvalue())


def run_process(
    env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``python -m rxcontext ARGS`` in a new process, with pipes (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "rxcontext", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    # across exec: a suite run with `&` (or under nohup) would see Ctrl-C do nothing.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(env: dict[str, str], *args: str, columns: int = 120, rows: int = 40) -> Any:
    """``python -m rxcontext ARGS`` in a pseudo-terminal ``columns`` wide."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "rxcontext", *args],
        env=env,
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(rows, columns),
        preexec_fn=_default_sigint,
    )


def screen_text(raw: str) -> str:
    """Terminal output with escape sequences and carriage returns removed."""
    return _ANSI.sub("", raw).replace("\r", "")


def run_pty(env: dict[str, str], columns: int, *args: str) -> tuple[str, str, int]:
    """Run to the end in a terminal; (raw output, its text, exit status)."""
    child = spawn(env, *args, columns=columns)
    child.expect(pexpect.EOF)
    child.close()
    raw = child.before or ""
    return raw, screen_text(raw), child.exitstatus


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """One error line and one hint line on stderr, a failing status, no traceback."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("rxcontext: error: "), result.stderr
    assert lines[1].startswith("hint: "), result.stderr
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
    with rxcontext.open(db) as store:
        found = store.checkpoints(store.get_context_by_name(context).id, include_resolved=True)
    # Replies the CLI discarded because nothing arrived are kept for audit only.
    return [cp for cp in found if cp.state is not rxcontext.ReplyState.DISCARDED]
