"""Tables that fit the terminal: key columns whole, text columns cut, extras dropped last.

Rich sizes columns by itself, and when a table is too wide it squeezes every column,
folding ``SYSTEM_PROMPT`` one letter per line. Here the widths are decided first:

- a *fixed* column (an id, a type, a state, a number, a date) is always as wide as its
  widest cell, never cut;
- a *flexible* column (content, a name, an error) shares the room left, cut with ``…``;
  short cells keep their width and the longest ones are cut first (weights give a column
  a larger share);
- when even the flexible columns' minimum widths do not fit, optional columns are hidden,
  the least useful first, and the table says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

__all__ = ["GAP", "Column", "Layout", "layout", "rich_table"]

GAP = 2
"""Columns between two cells (one padding space and one divider space)."""


@dataclass(frozen=True)
class Column:
    """How one column behaves when room is short."""

    header: str
    fixed: bool = False
    """Always shown whole (ids, types, states, numbers, dates)."""
    justify: Literal["left", "right"] = "left"
    min_width: int = 12
    """A flexible column is not cut narrower than this (or its widest cell, if less)."""
    weight: int = 1
    """A flexible column's share of the room, relative to the others."""
    drop: int = 0
    """Above 0: the column may be hidden on a narrow terminal; the highest goes first."""


@dataclass(frozen=True)
class Layout:
    """Which columns are shown, and how wide each is."""

    shown: tuple[int, ...]
    widths: tuple[int, ...]
    hidden: tuple[str, ...]


def layout(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> Layout:
    """The widths that fit ``rows`` under ``columns`` into ``width`` terminal cells."""
    natural = [
        max([cell_len(column.header), *(cell_len(row[i]) for row in rows)])
        for i, column in enumerate(columns)
    ]
    shown = list(range(len(columns)))

    def least(i: int) -> int:
        column = columns[i]
        return natural[i] if column.fixed else min(natural[i], column.min_width)

    while True:
        needed = sum(least(i) for i in shown) + GAP * (len(shown) - 1)
        droppable = [i for i in shown if columns[i].drop > 0]
        if needed <= width or not droppable:
            break
        shown.remove(max(droppable, key=lambda i: columns[i].drop))

    flexible = [i for i in shown if not columns[i].fixed]
    room = width - GAP * (len(shown) - 1) - sum(natural[i] for i in shown if columns[i].fixed)
    widths = {i: natural[i] for i in shown}
    if sum(natural[i] for i in flexible) > room:
        widths.update(_share(flexible, columns, natural, room))
    return Layout(
        shown=tuple(shown),
        widths=tuple(widths[i] for i in shown),
        hidden=tuple(c.header for i, c in enumerate(columns) if i not in shown),
    )


def _share(
    flexible: Sequence[int], columns: Sequence[Column], natural: Sequence[int], room: int
) -> dict[int, int]:
    """Water-fill ``room`` among the flexible columns: the widest are cut to one level."""

    def widths_at(level: int) -> dict[int, int]:
        least = {i: min(natural[i], columns[i].min_width) for i in flexible}
        return {i: min(natural[i], max(least[i], level * columns[i].weight)) for i in flexible}

    low, high = 0, max(natural[i] for i in flexible)
    while low < high:  # the highest level whose widths fit
        mid = (low + high + 1) // 2
        if sum(widths_at(mid).values()) <= room:
            low = mid
        else:
            high = mid - 1
    widths = widths_at(low)
    spare = room - sum(widths.values())
    for i in sorted(flexible, key=lambda i: natural[i] - widths[i], reverse=True):
        extra = min(spare, natural[i] - widths[i])
        if extra > 0:  # what rounding left over goes to the most cut columns
            widths[i] += extra
            spare -= extra
    return widths


def rich_table(
    title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
) -> tuple[Table, tuple[str, ...]]:
    """A rich table of ``rows`` laid out for ``width``; also the headers it had to hide."""
    plan = layout(columns, rows, width)
    table = Table(
        title=Text(title, style="bold"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        header_style="bold",
    )
    for i, column_width in zip(plan.shown, plan.widths, strict=True):
        column = columns[i]
        table.add_column(
            Text(column.header),
            width=column_width,
            no_wrap=True,
            overflow="ellipsis",
            justify=column.justify,
        )
    for row in rows:
        table.add_row(*(Text(row[i]) for i in plan.shown))
    return table, plan.hidden
