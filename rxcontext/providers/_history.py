"""Long histories: each record's part of a request is encoded once, then spliced into the body.

Every request sends the whole live history. Building it from scratch cost, per record, our
conversion to the provider's message dicts and then the SDK's own walk of every message
(OpenAI's typed-dict transform, about 185 µs a message; Anthropic's copy of the body;
Gemini's pydantic models and converters) and its JSON encoding: seconds at 10,000 records.

Records are immutable values, so a record's part of the request (a message, a block, a
part) is encoded to JSON once and kept in a :class:`HistoryCache`; a request joins the kept
fragments, and resumes where the previous request of the conversation left off. The SDK
still builds everything else with its own code: its ``create`` runs with
:data:`MARKER` in place of the history, its own encoder encodes the small body that results,
and :func:`splice` puts the joined fragments where the marker's list is. The bytes sent are
the bytes the SDK sends for the same messages (tests/test_request_bodies.py checks this over
many generated histories), and the SDK still authenticates, sends, and raises its own errors.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from ..records import Record

__all__ = [
    "MARKER",
    "HistoryCache",
    "Lookup",
    "compact_json",
    "json_array",
    "spaced_json",
    "splice",
]

E = TypeVar("E")

MARKER = f"rxcontext-history-{uuid.uuid4().hex}"
"""Stands for the history in the body the SDK builds; a list holding it is replaced by
:func:`splice`. Random per process, so no user value can contain it by chance."""

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_spaced = json.JSONEncoder().encode


def compact_json(value: Any) -> bytes:
    """``value`` as the OpenAI and Anthropic SDKs encode a body: compact, UTF-8, no NaN."""
    return _compact(value).encode()


def spaced_json(value: Any) -> bytes:
    """``value`` as google-genai encodes a body: ``json.dumps`` defaults (ASCII, ``", "``)."""
    return _spaced(value).encode()


def splice(body: bytes, items: list[bytes], token: bytes, sep: bytes = b",") -> bytes | None:
    """``body`` with the one occurrence of ``token`` (the encoded ``[MARKER]``) replaced by
    the JSON array of ``items`` (each an encoded JSON value, joined by ``sep``, the
    encoder's item separator); None if ``token`` is not there exactly once (a parameter
    such as ``extra_body`` replaced the history): the caller then lets the SDK encode the
    body itself.

    The result is built with one copy of the items: at 10,000 records each copy of a body of
    a few MB costs about a millisecond (mostly page faults).
    """
    head, found, tail = body.partition(token)
    if not found or token in tail:
        return None
    if not items:
        return b"".join((head, b"[]", tail))
    pieces = items.copy()
    pieces[0] = b"".join((head, b"[", pieces[0]))
    pieces[-1] = b"".join((pieces[-1], b"]", tail))
    return sep.join(pieces)


def json_array(items: list[bytes], sep: bytes = b",") -> bytes:
    """The JSON array of ``items`` (each an encoded JSON value, joined by ``sep``)."""
    return b"".join((b"[", sep.join(items), b"]"))


def _same(kept: Record, record: Record) -> bool:
    # Every field a provider's conversion reads; the others (live, est_tokens, timestamps)
    # do not change what is sent.
    return (
        kept.content == record.content
        and kept.type is record.type
        and kept.tool_call_id == record.tool_call_id
        and kept.tool_name == record.tool_name
        and kept.metadata == record.metadata
        and kept.attachments == record.attachments
    )


class Lookup(Generic[E]):
    """One request's entries (from :meth:`HistoryCache.lookup`), with what the context's
    previous request left: :attr:`same` leading records are that request's, unchanged, and
    :attr:`resume` is what its caller kept (see :meth:`HistoryCache.keep`)."""

    __slots__ = ("_by_id", "_probe", "_records", "context", "entries", "resume", "same")

    def __init__(
        self,
        context: str,
        records: list[Record],
        entries: list[E],
        same: int,
        resume: Any,
        by_id: dict[int, int],
        probe: Record | None,
    ) -> None:
        self.context = context
        self.entries = entries
        self.same = same
        self.resume = resume
        self._records = records
        self._by_id = by_id
        self._probe = probe


class _Kept(Generic[E]):
    """A context's latest request: its records (for the next request to compare with), their
    entries, each stored record's position by id, and its caller's ``resume``."""

    __slots__ = ("by_id", "entries", "probe", "records", "resume")

    def __init__(self, lookup: Lookup[E], resume: Any) -> None:
        self.records = lookup._records
        self.entries = lookup.entries
        self.by_id = lookup._by_id
        self.probe = lookup._probe
        self.resume = resume


class HistoryCache(Generic[E]):
    """Each record's encoded form (``encode(record)``), kept per context between requests.

    :meth:`lookup` gives one entry per record: the previous request's entries for the
    leading records that are unchanged (the same objects, or equal in everything a
    conversion reads), the entry kept for a record with the same id and the same content
    elsewhere, else a new encoding. A conversation grows at its end, so a request usually
    repeats the previous one and adds a few records: its caller may then resume assembling
    the body where the previous request's assembly can be continued (``Lookup.resume``,
    whatever it passed to :meth:`keep`) instead of from the first record.

    Which record objects are kept to compare with: a store that reads new objects for every
    request (as SQLite does today) would have the previous request's copies freed inside
    the next request (about 5 ms at 10,000 records) if the newest were kept, so the first
    ones seen are kept, and compared by content. Once a store hands out the same objects
    again (its first record is the object the previous request had), the newest are kept,
    and later requests compare by identity alone.

    Only a context's latest request is kept, for the ``max_records`` most recently used
    records over all contexts; records never stored (id < 0) are kept by position only.
    Entries must not be changed by callers, except memo fields that depend on the entry
    alone. Thread-safe: concurrent requests of one context each build their own result,
    and the last one kept is kept.
    """

    __slots__ = ("_contexts", "_encode", "_kept", "_lock", "max_records")

    def __init__(self, encode: Callable[[Record], E], max_records: int = 200_000) -> None:
        self._encode = encode
        self._contexts: OrderedDict[str, _Kept[E]] = OrderedDict()
        self._kept = 0
        self._lock = threading.Lock()
        self.max_records = max_records

    def lookup(self, records: Sequence[Record]) -> Lookup[E]:
        """The entries of ``records`` (oldest first), encoding only records not seen before."""
        context = records[0].context_id if records else ""
        with self._lock:
            kept = self._contexts.get(context)
        same = 0
        entries: list[E]
        if kept is None:
            entries, resume, known, old_records, old_entries = [], None, {}, [], []
            adopt = True
        else:
            for record, previous in zip(records, kept.records, strict=False):
                # _same, inlined: this loop runs for every record of every request.
                if record is not previous and not (
                    previous.content == record.content
                    and previous.type is record.type
                    and previous.tool_call_id == record.tool_call_id
                    and previous.tool_name == record.tool_name
                    and previous.metadata == record.metadata
                    and previous.attachments == record.attachments
                ):
                    break
                same += 1
            old_records, old_entries = kept.records, kept.entries
            entries, resume, known = old_entries[:same], kept.resume, kept.by_id
            adopt = bool(records) and records[0] is kept.probe
        # A copy of the caller's list (which the caller may change), or the kept objects.
        kept_records = list(records) if adopt else old_records[:same]
        moved: list[tuple[int, int]] = []
        encode, append = self._encode, entries.append
        for position in range(same, len(records)):
            record = records[position]
            rid = record.id
            at = known.get(rid)
            if at is not None and at < len(old_records):
                previous = old_records[at]
                if previous is record or _same(previous, record):
                    append(old_entries[at])
                    if not adopt:
                        kept_records.append(previous)
                    moved.append((rid, position))
                    continue
            append(encode(record))
            if not adopt:
                kept_records.append(record)
            if rid >= 0:
                moved.append((rid, position))
        if kept is not None and same == len(old_records):
            by_id = known  # a request that only adds records: the positions before stay
            by_id.update(moved)
        else:
            by_id = {r.id: i for i, r in enumerate(kept_records) if r.id >= 0}
        probe = records[0] if records else None
        return Lookup(context, kept_records, entries, same, resume, by_id, probe)

    def keep(self, lookup: Lookup[E], resume: Any) -> None:
        """Keep ``lookup``'s records and entries for the context's next request, with
        ``resume``: where the caller's assembly of this request can be continued."""
        kept = _Kept(lookup, resume)
        with self._lock:
            previous = self._contexts.pop(lookup.context, None)
            if previous is not None:
                self._kept -= len(previous.records)
            self._contexts[lookup.context] = kept
            self._kept += len(kept.records)
            while self._kept > self.max_records and len(self._contexts) > 1:
                _, dropped = self._contexts.popitem(last=False)
                self._kept -= len(dropped.records)

    def entries(self, records: Sequence[Record]) -> list[E]:
        """The entries of ``records``, kept for the next request (no assembly to resume)."""
        lookup = self.lookup(records)
        self.keep(lookup, None)
        return lookup.entries

    def clear(self) -> None:
        """Forget every kept entry."""
        with self._lock:
            self._contexts.clear()
            self._kept = 0

    def __len__(self) -> int:
        """How many records are kept (over all contexts)."""
        return self._kept
