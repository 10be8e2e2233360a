"""How the SQLite store turns values into column values and rows back into values."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from ..attachments import Attachment
from ..chunks import Usage
from ..records import Checkpoint, Context, Record, RecordType, ReplyState
from ..tokens import utf8_size
from ._thinking import unpack
from .base import TOTAL_MAX, usage_counts

RECORD_COLUMNS = (
    "id, context_id, ts, source, content, live, est_tokens, response_id, streamed,"
    " tool_call_id, tool_name, metadata, pos, reply_id, attachments, inherited"
)
CONTEXT_COLUMNS = "id, name, start_time, use_server_side_threading, last_response_id"
CHECKPOINT_COLUMNS = (
    "id, context_id, text, thinking, tool_calls, usage, error, created_at, resolved_at,"
    " updated_at, chunks, response_id, metadata, reply_id, state, pos, epoch, owner, lease_until"
)
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cache_write_tokens",
    "web_search_requests",
)
"""A context's usage totals (both stores): its columns, named and ordered as the fields of
:class:`~rxcontext.chunks.Usage`, every one of them."""
USAGE_COLUMNS = ", ".join(f"c.{f}" for f in USAGE_FIELDS)
"""The totals as a query of ``contexts c`` selects them, in :data:`USAGE_FIELDS` order."""

Row = sqlite3.Row | tuple[Any, ...]


def stamp(when: datetime) -> str:
    """``when`` as the store writes every time: ISO 8601 in UTC with microseconds, so that
    one text sorts as the times do (``MAX(ts)`` is the latest) and reads as PostgreSQL's
    ``timestamptz`` does. A naive time is taken as UTC, as :class:`.base.RecordDraft` and
    an import take it."""
    if when.tzinfo is not UTC:
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    # What ``isoformat(timespec="microseconds")`` writes for a time in UTC, formatted here:
    # its C code formats each field through ``sprintf`` (~13,000 instructions a call, twice
    # on every reply's begin), this ~half (issue 14; the same text, tests/test_store.py).
    return _STAMP % (
        when.year,
        when.month,
        when.day,
        when.hour,
        when.minute,
        when.second,
        when.microsecond,
    )


_STAMP = "%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00"


def read_time(value: str) -> datetime:
    """A stored time, in UTC: a row an earlier version wrote with its caller's offset (an
    import's local time) reads as the same instant, as the rows written since do."""
    when = datetime.fromisoformat(value)
    if when.tzinfo is UTC:  # every time written since (fromisoformat gives UTC for +00:00)
        return when
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def time_of(value: str | None) -> datetime | None:
    """:func:`read_time` of a time that may be absent (None, or empty)."""
    return read_time(value) if value else None


def storable(text: str) -> str:
    """``text`` as SQLite can hold it: split surrogate pairs joined, lone ones replaced.

    A provider may cut an escaped emoji between two deltas ("\\ud83d" then "\\ude00"); the
    joined reply then holds a surrogate pair that UTF-8 refuses, and the whole reply would
    be lost at commit. Text without surrogates (nearly all) is returned as is.
    """
    return storable_sized(text)[0]


def storable_sized(text: str) -> tuple[str, int]:
    """:func:`storable` of ``text`` and the result's size in UTF-8 bytes (what
    :func:`~rxcontext.tokens.estimate_tokens` counts), from the one encode the check makes:
    a record's content was encoded whole twice, to check it and then to size it
    (docs/benchmarks.md, fix/anthsdk4)."""
    if text.isascii():
        return text, len(text)
    size = 0
    try:
        # A slice at a time: checking a long reply must not copy it whole.
        for i in range(0, len(text), _SLICE):
            size += len(text[i : i + _SLICE].encode("utf-8"))
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text, utf8_size(text)
    return text, size


_SLICE = 1 << 16


def slices(text: str, size: int) -> Iterator[tuple[int, int]]:
    """``text``'s slices of at most ``size`` characters, as (start, end), never cut between
    the halves of a surrogate pair (:func:`storable` joins a pair only within one value)."""
    start, n = 0, len(text)
    while n - start > size:
        end = start + size
        if "\ud800" <= text[end - 1] <= "\udbff":
            end -= 1
        yield start, end
        start = end
    yield start, n


def to_json(value: Any) -> str | None:
    if not value:
        return None
    return storable(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def from_json(value: str | None, default: Any) -> Any:
    return json.loads(value) if value else default


_RECORD_TYPES = {int(t): t for t in RecordType}


def record_metadata(text: str) -> dict[str, Any]:
    """A record's stored metadata JSON as its metadata (thinking blocks' text put back:
    see ``_thinking``)."""
    return unpack(json.loads(text))


def record(row: Row, attachments: tuple[Attachment, ...] = ()) -> Record:
    # Every request reads the live history through here: positional arguments, a dict
    # lookup instead of the enum constructor, and json only when there is metadata.
    meta = row[11]
    return Record(
        row[0],
        row[1],
        _RECORD_TYPES[row[3]],
        row[4],
        bool(row[5]),
        row[6],
        read_time(row[2]),
        row[7],
        bool(row[8]),
        row[9],
        row[10],
        record_metadata(meta) if meta else {},
        row[12],
        row[13],
        attachments,
        bool(row[15]),
    )


def context(row: Row) -> Context:
    start = time_of(row[2])
    assert start is not None
    return Context(row[0], row[1], start, bool(row[3]), row[4])


def checkpoint(row: Row, text: str, thinking: str) -> Checkpoint:
    """A checkpoint from its row; ``text``/``thinking`` are the row's plus its appended parts."""
    created = time_of(row[7])
    assert created is not None
    usage = from_json(row[5], None)
    return Checkpoint(
        id=row[0],
        context_id=row[1],
        text=text,
        thinking=thinking,
        tool_calls=tuple(from_json(row[4], [])),
        usage=Usage.from_dict(usage) if usage else None,
        error=row[6],
        created_at=created,
        resolved_at=time_of(row[8]),
        updated_at=time_of(row[9]),
        chunks=row[10],
        response_id=row[11],
        metadata=from_json(row[12], {}),
        reply_id=row[13],
        state=ReplyState(row[14]),
        pos=row[15],
        epoch=row[16],
        owner=row[17],
    )


def context_totals(
    records: Sequence[Record], usage: Usage | None, last_response_id: str | None
) -> tuple[str, list[Any]]:
    """What storing ``records`` changes in their context's row: the live records' tokens,
    the usage, the last response id (as ``SET`` clauses and their arguments)."""
    sets: list[str] = []
    args: list[Any] = []
    live = sum(r.est_tokens for r in records if r.live)
    if live:
        sets.append("live_tokens = live_tokens + ?")
        args.append(live)
    if usage is not None:
        # Held at TOTAL_MAX: SQLite would make an overflowing sum a float.
        sets += [f"{f} = MIN({f} + ?, {TOTAL_MAX})" for f in USAGE_FIELDS]
        args += usage_counts(usage, USAGE_FIELDS)
    if last_response_id is not None:
        sets.append("last_response_id = ?")
        args.append(last_response_id)
    return ", ".join(sets), args
