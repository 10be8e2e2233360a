"""The owner's side helpers: where a resumed epoch starts from."""

from __future__ import annotations

from ..records import Checkpoint, RecordType
from ..store.base import Store

__all__ = ["resumed_base"]


def resumed_base(store: Store, checkpoint: Checkpoint) -> tuple[str, str]:
    """The text and thinking a resumed reply starts from, as watchers count them: those of
    the rounds it stored before it was cut, then its checkpoint's."""
    records = [
        r for r in store.reply_records(checkpoint.reply_id) if r.type is RecordType.MODEL_RESP
    ]
    text = "".join(r.content for r in records)
    thinking = "".join(t for r in records if isinstance(t := r.metadata.get("thinking"), str))
    return text + checkpoint.text, thinking + checkpoint.thinking
