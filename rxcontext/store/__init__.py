"""Storage behind a small interface: :class:`Store`, with SQLite as the first implementation."""

from __future__ import annotations

from .base import CheckpointDraft, RecordDraft, Store
from .sqlite import SQLiteStore, open_store

__all__ = ["CheckpointDraft", "RecordDraft", "SQLiteStore", "Store", "open_store"]
