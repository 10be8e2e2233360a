"""Storage behind a small interface: :class:`Store`, with SQLite as the embedded default."""

from __future__ import annotations

from .base import CheckpointDraft, RecordDraft, ReplyEnd, ReplyTicket, Store
from .sqlite import SQLiteStore, open_store

__all__ = [
    "CheckpointDraft",
    "RecordDraft",
    "ReplyEnd",
    "ReplyTicket",
    "SQLiteStore",
    "Store",
    "open_store",
]
