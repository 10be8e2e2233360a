"""Tables in terminals 60, 80 and 120 columns wide, and stored text that looks like markup.

A database is data written by models and people: a record may hold ``[/INST]``, a path in
brackets, rich's ``[link=...]`` or raw terminal escape sequences. The command shows them
as text: no markup error, no live hyperlink, no title change or screen clear. Odd values
(a bad date, an unknown record type, bad JSON) end in one error line, not a traceback.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cliutil import (
    WIDTHS,
    assert_user_error,
    chat_ok,
    pexpect,
    replay,
    run,
    run_pty,
    screen_text,
)
from rich.cells import cell_len

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, StreamInterrupted
from rxcontext.providers import ScriptedModel

pytestmark = pytest.mark.e2e  # a program built on the library: run with -m e2e (setup.cfg)

CONTEXT = "notes [/INST]"
SYSTEM = "Answer in [/usr/local/bin] style."
PROMPT = "[link=https://evil.example]click me[/link] and \x1b]0;pwned\x07 a title"
REPLY = "Sure [/INST] done \x1b[2J\x1b[H cleared? [bold]no[/bold] \x9b31m eight-bit"
PARTIAL = "Cut [/usr/local/bin] here \x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\ "
ERROR = "[/INST] broke \x1b]0;error-title\x07"
CONTINUATION = "and the rest [/x]."

# Sequences that must never reach the terminal from stored text (the title change, the
# screen clear, an 8-bit CSI, an OSC 8 hyperlink).
FORBIDDEN = ("\x1b]0;", "\x1b[2J", "\x9b", "\x1b]8;")


def _hostile_db(path: Path) -> tuple[int, int]:
    """A database whose text is hostile; (open checkpoint id, resolved checkpoint id)."""
    model = ScriptedModel(
        [
            [Chunk(ChunkKind.TEXT, REPLY)],
            [Chunk(ChunkKind.TEXT, PARTIAL), RuntimeError(ERROR)],
            [Chunk(ChunkKind.TEXT, PARTIAL), RuntimeError(ERROR)],
            [Chunk(ChunkKind.TEXT, CONTINUATION)],
        ]
    )
    with rxcontext.open(path) as store:
        cw = ContextWindow(store, model, context=CONTEXT, retry=None)
        cw.set_system_prompt(SYSTEM)
        cw.add_prompt(PROMPT)
        cw.call()
        ids = []
        for prompt in ("second \x1b[2J", "third [/INST]"):
            cw.add_prompt(prompt)
            with pytest.raises(StreamInterrupted) as cut:
                cw.call()
            ids.append(cut.value.checkpoint.id)
        cw.resume_call(ids[1])
        other = ContextWindow(store, model, context="plain")
        other.add_prompt("hello")
    return ids[0], ids[1]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    db = tmp_path_factory.mktemp("hostile") / "hostile.db"
    open_id, resolved_id = _hostile_db(db)
    return db, open_id, resolved_id


SEP = r"[\s│┃|]+"  # between cells: spaces, whatever box lines a table uses
LEAD = rf"^(?:{SEP})?"  # before the first cell


def _fits(text: str, width: int) -> None:
    for line in text.splitlines():
        assert cell_len(line) <= width, f"{cell_len(line)} > {width}: {line!r}"


def _clean_terminal(raw: str) -> None:
    assert "Traceback" not in raw and "MarkupError" not in raw
    for sequence in FORBIDDEN:
        assert sequence not in raw, sequence


@pytest.mark.parametrize("width", WIDTHS)
def test_contexts_show_at_each_width(
    env: dict[str, str], hostile: tuple[Path, int, int], width: int
) -> None:
    db, open_id, _ = hostile
    raw, text, status = run_pty(env, width, "contexts", "show", CONTEXT, "--db", str(db))
    assert status == 0, text
    _clean_terminal(raw)
    _fits(text, width)
    # The id, type and live columns are whole on each record's line, whatever the width.
    for rid, kind in (
        (1, "SYSTEM_PROMPT"),
        (2, "PROMPT"),
        (3, "MODEL_RESP"),
        (4, "PROMPT"),
        (5, "PROMPT"),
        (6, "MODEL_RESP"),
    ):
        assert re.search(rf"{LEAD}{rid}{SEP}{kind}{SEP}(yes|no)\b", text, re.M), (kind, text)
    # Stored text is shown as text: the brackets are there, literally.
    assert "[/usr/local/bin]" in text
    assert "[link=https://evil.example]" in text or width < 100
    assert "[/INST]" in text  # the context name, at least
    if width <= 80:
        assert "…" in text  # content is cut to fit, not wrapped letter by letter
    # The open checkpoint is listed under the records.
    assert re.search(rf"{LEAD}{open_id}{SEP}", text, re.M)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("all_", [False, True], ids=["open", "all"])
def test_checkpoints_at_each_width(
    env: dict[str, str], hostile: tuple[Path, int, int], width: int, all_: bool
) -> None:
    db, open_id, resolved_id = hostile
    args = ["checkpoints", "--db", str(db)] + (["--all"] if all_ else [])
    raw, text, status = run_pty(env, width, *args)
    assert status == 0, text
    _clean_terminal(raw)
    _fits(text, width)
    assert re.search(rf"{LEAD}{open_id}{SEP}.*\binterrupted\b", text, re.M), text
    resolved_row = re.search(rf"{LEAD}{resolved_id}{SEP}.*\bcompleted\b", text, re.M)
    assert bool(resolved_row) == all_, text
    # A header line names the id and state columns.
    assert re.search(r"\bid\b.*\bstate\b", text), text


@pytest.mark.parametrize("width", WIDTHS)
def test_contexts_list_at_each_width(
    env: dict[str, str], hostile: tuple[Path, int, int], width: int
) -> None:
    db, _, _ = hostile
    raw, text, status = run_pty(env, width, "contexts", "--db", str(db))
    assert status == 0, text
    _clean_terminal(raw)
    _fits(text, width)
    # Each context is one line: its name starts a row, followed by its record count.
    assert re.search(rf"{LEAD}notes \[/INST\]{SEP}6\b", text, re.M), text
    assert re.search(rf"{LEAD}plain{SEP}1\b", text, re.M), text


@pytest.mark.parametrize("width", WIDTHS)
def test_demo_tables_at_each_width(env: dict[str, str], tmp_path: Path, width: int) -> None:
    db = tmp_path / "demo.db"
    assert run(env, "demo", "--db", str(db), "--fast").returncode == 0  # the first run
    _, text, status = run_pty(env, width, "demo", "--db", str(db), "--fast")
    assert status == 0, text
    table = text[text.rindex("context 'demo' in") :]
    _fits(table, width)
    for kind in ("SYSTEM_PROMPT", "PROMPT", "MODEL_RESP", "TOOL_CALL", "TOOL_OUTPUT"):
        assert re.search(rf"{LEAD}\d+{SEP}{kind}{SEP}yes\b", table, re.M), table


def test_chat_shows_hostile_checkpoints_and_history_as_text(
    spawn: Any, hostile: tuple[Path, int, int], tmp_path: Path
) -> None:
    db, open_id, _ = hostile
    unused = replay(tmp_path, "unused", [{"text": "never asked"}])
    child = spawn("chat", "--db", str(db), "--context", CONTEXT, "--replay", unused, columns=80)
    child.expect("you> ")
    child.sendline("/checkpoints")
    child.expect("you> ")
    raw = child.before
    text = screen_text(raw)
    _clean_terminal(raw)
    _fits(text, 80)
    assert re.search(rf"{LEAD}{open_id}{SEP}.*\binterrupted\b", text, re.M), text
    assert "[/usr/local/bin]" in text
    child.sendeof()
    child.expect(pexpect.EOF)


def test_plain_output_shows_stored_text_without_escapes(
    env: dict[str, str], hostile: tuple[Path, int, int]
) -> None:
    db, _, _ = hostile
    for args in (
        ("contexts", "show", CONTEXT),
        ("checkpoints", "--all"),
        ("contexts",),
    ):
        result = run(env, *args, "--db", str(db))
        assert result.returncode == 0, result.stderr
        for sequence in FORBIDDEN:
            assert sequence not in result.stdout
        assert "\x1b" not in result.stdout  # piped: no styling either
    shown = run(env, "contexts", "show", CONTEXT, "--db", str(db)).stdout
    assert "[link=https://evil.example]click me[/link]" in shown
    # Export is data: the exact text, escaped the JSON way.
    exported = run(env, "contexts", "export", CONTEXT, "--db", str(db))
    assert PROMPT in [r["content"] for r in json.loads(exported.stdout)["records"]]


def test_an_error_quoting_hostile_text_stays_text(
    env: dict[str, str], hostile: tuple[Path, int, int]
) -> None:
    db, _, _ = hostile
    result = run(env, "contexts", "show", "[/nope] \x1b]0;t\x07", "--db", str(db))
    assert_user_error(result, "no context named")
    for sequence in FORBIDDEN:
        assert sequence not in result.stderr


# -- odd values in a database -----------------------------------------------------------------


ODD = {
    "bad record date": ("UPDATE records SET ts = 'yesterday' WHERE id = 2", ("contexts", "show")),
    "unknown record type": ("UPDATE records SET source = 9 WHERE id = 2", ("contexts", "show")),
    "bad record JSON": ("UPDATE records SET metadata = '{bad' WHERE id = 2", ("contexts", "show")),
    "bad checkpoint date": ("UPDATE checkpoints SET created_at = 'soon'", ("checkpoints",)),
    "bad checkpoint JSON": ("UPDATE checkpoints SET tool_calls = '[bad'", ("checkpoints",)),
    "bad context date": ("UPDATE contexts SET start_time = 'never'", ("contexts",)),
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_database_values_are_one_error_line(
    env: dict[str, str], tmp_path: Path, case: str
) -> None:
    db = tmp_path / "odd.db"
    chat_ok(env, tmp_path, db, "Lisbon.", "Capital?")
    cut = run(env, "chat", "--db", str(db), "--replay", _cut_file(tmp_path), "again")
    assert cut.returncode == 1
    sql, command = ODD[case]
    with sqlite3.connect(db) as conn:
        assert conn.execute(sql).rowcount >= 1
    args = [*command, "default"] if command == ("contexts", "show") else list(command)
    result = run(env, *args, "--db", str(db))
    assert_user_error(result, f"database {db}", "cannot read")


def test_non_text_content_is_shown_not_crashed_on(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "blob.db"
    chat_ok(env, tmp_path, db, "Lisbon.", "Capital?")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE records SET content = X'4361706974616c1b5b324a3f' WHERE id = 1")
    result = run(env, "contexts", "show", "default", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s*1\s+PROMPT\s+live\s+\d+\s+Capital␛\[2J\?$", result.stdout, re.M), (
        result.stdout
    )


def _cut_file(tmp_path: Path) -> str:
    return replay(tmp_path, "cut", [{"text": "one two three four five", "cut_after": 2}])
