"""Stored values: records of a conversation, contexts, checkpoints and token accounting.

Plain frozen values; the SQL that reads and writes them lives in :mod:`rxcontext.store`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from .chunks import Usage

__all__ = [
    "Checkpoint",
    "Context",
    "ContextStats",
    "Record",
    "RecordType",
    "TokenUsage",
]


class RecordType(IntEnum):
    """What a record is; stored values are contextwindow's."""

    PROMPT = 0
    MODEL_RESP = 1
    TOOL_CALL = 2
    TOOL_OUTPUT = 3
    SYSTEM_PROMPT = 4


@dataclass(frozen=True, slots=True)
class Record:
    """One entry of a context's history.

    For ``TOOL_CALL`` records ``content`` is the raw JSON arguments and ``tool_call_id`` /
    ``tool_name`` identify the call; a ``TOOL_OUTPUT`` carries the same id and name so the
    next request can send both back exactly. ``metadata`` keeps provider extras that must
    round-trip (thinking blocks with signatures, Gemini thought signatures).
    """

    id: int
    context_id: str
    type: RecordType
    content: str
    live: bool
    est_tokens: int
    timestamp: datetime
    response_id: str | None = None
    streamed: bool = False
    tool_call_id: str | None = None
    tool_name: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def unsaved(cls, context_id: str, type: RecordType, content: str) -> Record:
        """A record sent to a model but never stored (id -1): a continuation prompt, say."""
        return cls(-1, context_id, type, content, True, 0, datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Context:
    """A named conversation."""

    id: str
    name: str
    created_at: datetime
    use_server_side_threading: bool = False
    last_response_id: str | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A partial reply saved when a stream failed, was cancelled, or was still running.

    ``text`` is exactly the text that subscribers had received. ``tool_calls`` holds the
    tool-call fragments so far (dicts with index, id, name, arguments).
    """

    id: int
    context_id: str
    text: str
    thinking: str
    tool_calls: tuple[Mapping[str, Any], ...]
    usage: Usage | None
    error: str | None
    created_at: datetime
    resolved_at: datetime | None = None
    updated_at: datetime | None = None
    chunks: int = 0
    response_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolved(self) -> bool:
        """Whether a resume (or a later completion) has settled this checkpoint."""
        return self.resolved_at is not None


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Estimated live tokens of a context against the model's window."""

    live_tokens: int
    max_tokens: int
    percent: float


@dataclass(frozen=True, slots=True)
class ContextStats:
    """Per-context aggregate numbers (one query)."""

    context_id: str
    name: str
    records: int
    live_records: int
    live_tokens: int
    total_tokens: int
    prompts: int
    replies: int
    tool_calls: int
    tool_outputs: int
    open_checkpoints: int
    usage: Usage
    last_activity: datetime | None
