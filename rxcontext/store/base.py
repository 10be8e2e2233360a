"""The storage interface the window and the persister use.

Small on purpose: one SQLite implementation now (:mod:`.sqlite`), a shared PostgreSQL one
later. Implementations must be safe to call from several threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..chunks import Usage
from ..records import Checkpoint, Context, ContextStats, Record, RecordType

__all__ = ["CheckpointDraft", "RecordDraft", "Store"]


@dataclass(frozen=True, slots=True)
class RecordDraft:
    """A record not stored yet (the store assigns id, timestamp and token estimate)."""

    type: RecordType
    content: str
    live: bool = True
    response_id: str | None = None
    streamed: bool = False
    tool_call_id: str | None = None
    tool_name: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckpointDraft:
    """The state of an unfinished reply, to insert or update as a checkpoint."""

    text: str
    thinking: str = ""
    tool_calls: Sequence[Mapping[str, Any]] = ()
    usage: Usage | None = None
    error: str | None = None
    chunks: int = 0
    response_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


class Store(Protocol):
    """What rxcontext needs from a database."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        ...

    def close(self) -> None:
        """Release the connection; later calls raise :class:`~rxcontext.StoreClosedError`."""
        ...

    # contexts
    def get_or_create_context(self, name: str) -> Context: ...
    def list_contexts(self) -> list[Context]: ...
    def get_context(self, context_id: str) -> Context: ...
    def get_context_by_name(self, name: str) -> Context: ...
    def delete_context(self, context_id: str) -> None: ...
    def clone_context(self, context_id: str, dest_name: str) -> Context: ...
    def export_context(self, context_id: str) -> dict[str, Any]: ...
    def context_stats(self, context_id: str) -> ContextStats: ...
    def set_threading(self, context_id: str, enabled: bool) -> None: ...
    def set_last_response_id(self, context_id: str, response_id: str | None) -> None: ...

    # records
    def add_record(self, context_id: str, draft: RecordDraft) -> Record: ...
    def records(self, context_id: str, *, live_only: bool = False) -> list[Record]: ...
    def set_live_range(self, context_id: str, start: int, end: int, live: bool) -> int: ...
    def replace_system_prompt(self, context_id: str, content: str) -> Record: ...
    def replace_records(
        self, context_id: str, dead_ids: Sequence[int], draft: RecordDraft
    ) -> Record: ...
    def commit_reply(
        self,
        context_id: str,
        drafts: Sequence[RecordDraft],
        *,
        usage: Usage | None = None,
        last_response_id: str | None = None,
        drop_checkpoint: int | None = None,
        resolve_checkpoint: int | None = None,
    ) -> list[Record]: ...

    # tools
    def set_context_tool(
        self, context_id: str, name: str, definition: Mapping[str, Any]
    ) -> None: ...
    def context_tools(self, context_id: str) -> list[dict[str, Any]]: ...
    def remove_context_tool(self, context_id: str, name: str) -> bool: ...

    # checkpoints
    def save_checkpoint(
        self, context_id: str, draft: CheckpointDraft, checkpoint_id: int | None = None
    ) -> Checkpoint: ...
    def get_checkpoint(self, checkpoint_id: int) -> Checkpoint: ...
    def checkpoints(
        self, context_id: str, *, include_resolved: bool = False
    ) -> list[Checkpoint]: ...
    def claim_checkpoint(self, checkpoint_id: int, *, stale_after: float = 300.0) -> bool: ...
    def release_checkpoint(self, checkpoint_id: int) -> None: ...
