"""Table layout and safe text, in this process (the PTY tests check them on a terminal)."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console

from rxcontext.cli.tables import GAP, Column, layout, rich_table
from rxcontext.cli.text import one_line, preview, printable, to_json

COLUMNS = (
    Column("id", fixed=True, justify="right"),
    Column("type", fixed=True),
    Column("state", fixed=True),
    Column("count", fixed=True, drop=1),
    Column("name", min_width=8),
    Column("error", min_width=20, drop=2),
    Column("content", min_width=10, weight=2),
)

cells = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=80)
rows = st.lists(
    st.tuples(
        st.integers(0, 10**6).map(str),
        st.sampled_from(["PROMPT", "MODEL_RESP", "SYSTEM_PROMPT"]),
        st.sampled_from(["interrupted", "completed", "discarded"]),
        st.integers(0, 10**5).map(str),
        cells,
        cells,
        cells,
    ),
    max_size=6,
)


@given(rows=rows, width=st.integers(60, 200))
def test_fixed_columns_are_whole_and_the_table_fits(
    rows: list[tuple[str, ...]], width: int
) -> None:
    plan = layout(COLUMNS, rows, width)
    for i, w in zip(plan.shown, plan.widths, strict=True):
        natural = max([cell_len(COLUMNS[i].header), *(cell_len(r[i]) for r in rows)])
        if COLUMNS[i].fixed:
            assert w == natural  # never cut
        else:
            assert w <= natural
    assert {0, 1, 2} <= set(plan.shown)  # id, type and state are never hidden
    assert sum(plan.widths) + GAP * (len(plan.shown) - 1) <= width
    assert plan.hidden == tuple(c.header for i, c in enumerate(COLUMNS) if i not in plan.shown)


@given(rows=rows, width=st.integers(60, 200))
def test_rendered_lines_fit_and_keep_the_key_cells(rows: list[tuple[str, ...]], width: int) -> None:
    console = Console(width=width, record=True, markup=False, emoji=False, file=io.StringIO())
    table, _ = rich_table("t", COLUMNS, rows, width)
    console.print(table)
    lines = console.export_text().splitlines()
    assert all(cell_len(line) <= width for line in lines)
    body = lines[3:]  # title, header, rule
    assert len(body) == len(rows)  # one line per row: nothing wraps
    for line, row in zip(body, rows, strict=True):
        assert line.split()[:3] == [row[0], row[1], row[2]]


def test_columns_are_hidden_in_drop_order_only_when_needed() -> None:
    row = ("1", "PROMPT", "interrupted", "12345", "a-context-name", "E" * 40, "text " * 30)
    # Fixed columns take 18 cells; name, error and content need 8 + 20 + 10 at least.
    assert layout(COLUMNS, [row], 80).hidden == ()
    assert layout(COLUMNS, [row], 60).hidden == ("error",)
    assert layout(COLUMNS, [row], 45).hidden == ("count", "error")


def test_flexible_columns_share_room_short_cells_first() -> None:
    row = ("1", "PROMPT", "interrupted", "9", "short", "", "x" * 200)
    plan = layout(COLUMNS, [row], 80)
    widths = dict(zip((COLUMNS[i].header for i in plan.shown), plan.widths, strict=True))
    assert widths["name"] == len("short")  # fits whole: not cut to share
    assert widths["error"] == len("error")  # an empty column keeps its header
    assert sum(plan.widths) + GAP * (len(plan.shown) - 1) == 80  # the rest goes to content


def test_printable_shows_controls_and_keeps_text() -> None:
    assert printable("a\x1b]0;title\x07b") == "a␛]0;title␇b"
    assert printable("clear\x1b[2J\x9bX") == "clear␛[2J\ufffdX"
    assert printable("tab\tnew\nline\r\n") == "tab\tnew\nline\n"
    assert printable("over\rwrite") == "over␍write"
    assert printable("[/INST] [link=x]é😀") == "[/INST] [link=x]é😀"
    assert printable(b"bytes\xff") == "bytes\ufffd"
    assert printable(42) == "42" and printable(None) == ""


def test_one_line_and_preview() -> None:
    assert one_line(" a\n\tb  \x1b ") == "a b ␛"
    assert preview("word " * 20, 10) == "word word…"


def test_to_json_escapes_every_control_character() -> None:
    value = {"text": "a\x1b[2J\x9b\x7fé"}
    text = to_json(value)
    assert not any((0x00 <= ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "é" in text and json.loads(text) == value
