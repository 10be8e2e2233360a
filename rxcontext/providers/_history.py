"""Long histories: each record's part of a request is encoded once, then spliced into the body.

Every request sends the whole live history. Building it from scratch cost, per record, our
conversion to the provider's message dicts and then the SDK's own walk of every message
(OpenAI's typed-dict transform, about 185 µs a message; Anthropic's copy of the body;
Gemini's pydantic models and converters) and its JSON encoding: seconds at 10,000 records.

Records are immutable values, so a record's part of the request (a message, a block, a
part) is encoded to JSON once and kept in a :class:`HistoryCache`; a request joins the kept
fragments. The SDK still builds everything else with its own code: its ``create`` runs with
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
    "compact_json",
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
    encoder's item separator); None if ``token`` is not there
    exactly once (a parameter such as ``extra_body`` replaced the history): the caller then
    lets the SDK encode the body itself.

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
    )


class HistoryCache(Generic[E]):
    """Each record's encoded form (``encode(record)``), kept per context between requests.

    :meth:`entries` returns one entry per record, reusing the entry kept for a record with the
    same id whose content (and everything else the conversion reads) is unchanged, else
    encoding it again. Only the records of a context's latest request are kept (the rest are
    dropped then), for the ``max_records`` most recently used records over all contexts;
    records that were never stored (id < 0) are never kept. Entries must not be changed by
    callers, except through memo fields that depend on the entry alone. Thread-safe.
    """

    __slots__ = ("_contexts", "_encode", "_kept", "_lock", "max_records")

    def __init__(self, encode: Callable[[Record], E], max_records: int = 200_000) -> None:
        self._encode = encode
        self._contexts: OrderedDict[str, dict[int, tuple[Record, E]]] = OrderedDict()
        self._kept = 0
        self._lock = threading.Lock()
        self.max_records = max_records

    def entries(self, records: Sequence[Record]) -> list[E]:
        """The entry of each record of ``records`` (oldest first), encoding only new ones."""
        if not records:
            return []
        context = records[0].context_id
        with self._lock:
            old = self._contexts.get(context) or {}
        encode = self._encode
        kept: dict[int, tuple[Record, E]] = {}
        out: list[E] = []
        append = out.append
        for record in records:
            rid = record.id
            hit = old.get(rid)
            if hit is not None and (hit[0] is record or _same(hit[0], record)):
                kept[rid] = hit
                append(hit[1])
                continue
            entry = encode(record)
            if rid >= 0:
                kept[rid] = (record, entry)
            append(entry)
        self._keep(context, kept)
        return out

    def _keep(self, context: str, kept: dict[int, tuple[Record, E]]) -> None:
        with self._lock:
            previous = self._contexts.pop(context, None)
            if previous is not None:
                self._kept -= len(previous)
            self._contexts[context] = kept
            self._kept += len(kept)
            while self._kept > self.max_records and len(self._contexts) > 1:
                _, dropped = self._contexts.popitem(last=False)
                self._kept -= len(dropped)

    def clear(self) -> None:
        """Forget every kept entry."""
        with self._lock:
            self._contexts.clear()
            self._kept = 0

    def __len__(self) -> int:
        """How many records' entries are kept."""
        return self._kept
