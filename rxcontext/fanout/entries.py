"""What a reply's live log holds: plain values, and their compact JSON form for Redis.

A reply's log is per *epoch* (the claim count of its row: 1 for a fresh reply, one more
per resume or takeover). Each epoch's log starts with a :class:`Begin` (the text and
thinking the epoch starts from: empty for a fresh reply, the checkpoint's for a resume),
then holds the delivered chunks numbered ``1, 2, …`` (``seq``), then at most one
:class:`End`. A :class:`Snapshot` stands for a Begin plus every chunk up to its ``seq``
(written after live data was lost, so the log is whole again). Positions are
``(epoch, seq)`` pairs, compared as tuples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..chunks import Chunk, ChunkKind, Usage

__all__ = [
    "Begin",
    "Chunks",
    "End",
    "Entry",
    "Snapshot",
    "decode_chunk",
    "encode_chunk",
]


@dataclass(frozen=True, slots=True)
class Begin:
    """An epoch starts: its text and thinking so far (a resume's checkpoint)."""

    epoch: int
    text: str = ""
    thinking: str = ""


@dataclass(frozen=True, slots=True)
class Chunks:
    """Delivered chunks ``first``, ``first + 1``, … of an epoch, in order."""

    epoch: int
    first: int
    chunks: Sequence[Chunk]

    @property
    def last(self) -> int:
        return self.first + len(self.chunks) - 1


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A Begin and every chunk up to ``seq`` (``chunks`` are ``(seq, chunk)`` pairs)."""

    epoch: int
    seq: int
    text: str
    thinking: str
    chunks: Sequence[tuple[int, Chunk]]


@dataclass(frozen=True, slots=True)
class End:
    """The epoch's reply ended: ``completed`` (its records are stored) or ``interrupted``."""

    epoch: int
    seq: int
    state: Literal["completed", "interrupted"]


Entry = Begin | Chunks | Snapshot | End


def encode_chunk(chunk: Chunk) -> list[Any]:
    """A chunk as a short JSON-ready list (trailing defaults left out)."""
    if (  # the usual text or thinking delta: its kind and text
        chunk.index == 0
        and chunk.id is None
        and chunk.name is None
        and chunk.usage is None
        and chunk.finish_reason is None
        and chunk.response_id is None
        and not chunk.metadata
    ):
        return [chunk.kind.value, chunk.text]
    out: list[Any] = [
        chunk.kind.value,
        chunk.text,
        chunk.index,
        chunk.id,
        chunk.name,
        chunk.usage.to_dict() if chunk.usage is not None else None,
        chunk.finish_reason,
        chunk.response_id,
        dict(chunk.metadata) if chunk.metadata else None,
    ]
    while len(out) > 2 and out[-1] is None:
        out.pop()
    if len(out) == 3 and out[2] == 0:
        out.pop()
    return out


_KINDS = {kind.value: kind for kind in ChunkKind}


def _kind(value: Any) -> ChunkKind:
    """``ChunkKind(value)`` by a dict look-up first (the enum's call is ~0.5 µs)."""
    kind = _KINDS.get(value) if type(value) is str else None
    return kind if kind is not None else ChunkKind(value)  # ValueError if unknown


def decode_chunk(data: Sequence[Any]) -> Chunk:
    """Inverse of :func:`encode_chunk` (an unknown kind raises ``ValueError``)."""
    n = len(data)
    if n == 2:  # the usual text or thinking delta: kind and text
        return Chunk(_kind(data[0]), data[1] or "")
    kind, text, index, id_, name, usage, finish, response, meta = list(data) + [None] * (9 - n)
    return Chunk(
        _kind(kind),
        text or "",
        int(index or 0),
        id_,
        name,
        Usage.from_dict(usage) if usage is not None else None,
        finish,
        response,
        meta,
    )


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=repr)
_ascii = json.JSONEncoder(separators=(",", ":"), default=repr)


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 (what to put in a stream entry); unserialisable values as
    ``repr``.

    A value holding a lone surrogate (a provider may cut an escaped emoji between two
    deltas, "\\ud83d" then "\\ude00") is no text UTF-8 can hold: that entry is written with
    ``\\uXXXX`` escapes instead, which ``json.loads`` reads back as the very same halves,
    so a watcher joins them as the owner's subscriber did. Encoded here, not by the Redis
    client when the writer's pipeline is sent: there the error failed every reply's writes.

    One encoder made once: ``json.dumps`` with options makes a new one per call, which was
    a third of what encoding a batch of chunks cost the fan-out's writer."""
    text = _encoder.encode(value)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _ascii.encode(value).encode()
