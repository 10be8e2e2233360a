"""Stored values: records of a conversation, contexts, checkpoints and token accounting.

Plain frozen values; the SQL that reads and writes them lives in :mod:`rxcontext.store`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from .attachments import Attachment
from .chunks import Usage

__all__ = [
    "TOOL_ERROR",
    "Checkpoint",
    "Context",
    "ContextStats",
    "Record",
    "RecordType",
    "ReplyState",
    "TokenUsage",
    "tool_failed",
]


class RecordType(IntEnum):
    """What a record is; stored values are contextwindow's."""

    PROMPT = 0
    MODEL_RESP = 1
    TOOL_CALL = 2
    TOOL_OUTPUT = 3
    SYSTEM_PROMPT = 4


class ReplyState(StrEnum):
    """Where a reply stands (its checkpoint's ``state``).

    ``STREAMING`` → ``COMPLETED`` (its records are stored), or ``STREAMING`` → ``INTERRUPTED``
    (cut, cancelled, or its process died) → ``RESUMING`` → ``COMPLETED``; an interrupted reply
    can also be kept (``COMPLETED``, its partial text stored) or ``DISCARDED``.
    """

    STREAMING = "streaming"
    INTERRUPTED = "interrupted"
    RESUMING = "resuming"
    COMPLETED = "completed"
    DISCARDED = "discarded"

    @property
    def live(self) -> bool:
        """Whether a process is generating this reply now (it cannot be resumed meanwhile)."""
        return self in (ReplyState.STREAMING, ReplyState.RESUMING)

    @property
    def final(self) -> bool:
        """Whether the reply is settled (completed, kept or discarded)."""
        return self in (ReplyState.COMPLETED, ReplyState.DISCARDED)


class _Fresh:
    """The default of a mapping field whose constructor is written by hand: a new empty
    dict each time, shown ``<factory>`` in the signature as dataclass shows its own (an
    explicit None stays None, as with the generated constructor)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<factory>"


FRESH: Any = _Fresh()


def slot_setters(cls: type) -> tuple[Any, ...]:
    """The ``__set__`` of each field's slot of the slotted dataclass ``cls``, in field
    order: what a hand-written constructor of a frozen one writes its fields with."""
    return tuple(cls.__dict__[f.name].__set__ for f in fields(cls))


@dataclass(frozen=True, slots=True)
class Record:
    """One entry of a context's history.

    Records are ordered by ``pos``, a per-context position the store allocates in the same
    transaction as the write (then by ``id``: the records of one reply share its position);
    ``timestamp`` is for display only. ``reply_id`` names the reply that stored the record.

    For ``TOOL_CALL`` records ``content`` is the raw JSON arguments and ``tool_call_id`` /
    ``tool_name`` identify the call; a ``TOOL_OUTPUT`` carries the same id and name so the
    next request can send both back exactly. ``metadata`` keeps provider extras that must
    round-trip (thinking blocks with signatures, Gemini thought signatures).
    ``attachments`` are the images and files sent with a prompt, in order.
    ``inherited``: copied from another context by a clone or fork; the reply it belongs to
    was billed to that context, so this one's cost leaves it out (as its token totals do).
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
    pos: int = 0
    reply_id: str | None = None
    attachments: tuple[Attachment, ...] = ()
    inherited: bool = False

    # Every request's history read makes one per record it reads (a new window's first
    # request, every record): the constructor dataclass generates for a frozen class calls
    # object.__setattr__ per field; writing the slots through their descriptors (as
    # Chunk's) takes less than half the time. Same signature, same values.
    def __init__(
        self,
        id: int,
        context_id: str,
        type: RecordType,
        content: str,
        live: bool,
        est_tokens: int,
        timestamp: datetime,
        response_id: str | None = None,
        streamed: bool = False,
        tool_call_id: str | None = None,
        tool_name: str | None = None,
        metadata: Mapping[str, Any] = FRESH,
        pos: int = 0,
        reply_id: str | None = None,
        attachments: tuple[Attachment, ...] = (),
        inherited: bool = False,
    ) -> None:
        _r_id(self, id)
        _r_context_id(self, context_id)
        _r_type(self, type)
        _r_content(self, content)
        _r_live(self, live)
        _r_est_tokens(self, est_tokens)
        _r_timestamp(self, timestamp)
        _r_response_id(self, response_id)
        _r_streamed(self, streamed)
        _r_tool_call_id(self, tool_call_id)
        _r_tool_name(self, tool_name)
        _r_metadata(self, {} if metadata is FRESH else metadata)
        _r_pos(self, pos)
        _r_reply_id(self, reply_id)
        _r_attachments(self, attachments)
        _r_inherited(self, inherited)

    @classmethod
    def unsaved(cls, context_id: str, type: RecordType, content: str) -> Record:
        """A record sent to a model but never stored (id -1): a continuation prompt, say."""
        return cls(-1, context_id, type, content, True, 0, datetime.now(UTC))


(
    _r_id,
    _r_context_id,
    _r_type,
    _r_content,
    _r_live,
    _r_est_tokens,
    _r_timestamp,
    _r_response_id,
    _r_streamed,
    _r_tool_call_id,
    _r_tool_name,
    _r_metadata,
    _r_pos,
    _r_reply_id,
    _r_attachments,
    _r_inherited,
) = slot_setters(Record)

TOOL_ERROR = "error"
"""``TOOL_OUTPUT`` metadata key: True when the output reports that the call failed (its
tool raised, is unknown, could not parse its arguments, or was refused)."""


def tool_failed(record: Record) -> bool:
    """Whether ``record``, a ``TOOL_OUTPUT``, reports a failed call: marked
    :data:`TOOL_ERROR`, or the placeholder stored for an interrupted call (marked
    ``interrupted``, see :mod:`rxcontext.history`). Outputs stored without either mark (by
    ``add_tool_output``, or before rxcontext marked failures) are results, as they were."""
    return bool(record.metadata.get(TOOL_ERROR) or record.metadata.get("interrupted"))


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
    """A reply's lifecycle row: what it delivered so far, and where it stands.

    Every reply has one from the moment its request is sent (``state`` ``STREAMING``), named
    by ``reply_id``. ``text`` is exactly the text that subscribers had received when it was
    written (on error and cancel: everything they received). ``tool_calls`` holds the
    tool-call fragments so far (dicts with index, id, name, arguments). ``pos`` is the
    reply's place in the conversation, fixed when its request was sent; ``epoch`` counts the
    claims on it (a writer holding an older epoch can no longer write).

    A settled row (:attr:`resolved`) stays for audit and holds the ``text`` and ``thinking``
    the reply had delivered when it was last interrupted, whether it was kept, discarded or
    resumed (the resumed reply's whole text is in its records). A reply that completed
    without an interruption has no row: its records name it.
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
    reply_id: str = ""
    state: ReplyState = ReplyState.INTERRUPTED
    pos: int | None = None
    epoch: int = 0
    owner: str | None = None

    @property
    def resolved(self) -> bool:
        """Whether the reply is settled: completed (resumed or kept) or discarded."""
        return self.state.final


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Estimated live tokens of a context against the model's window.

    As contextwindow's ``TokenUsage``: ``live_tokens`` (Live) against ``max_tokens`` (Max),
    ``percent`` used (0–100), and ``total_tokens`` (Total): the provider-reported tokens
    of every call made in the context so far.
    """

    live_tokens: int
    max_tokens: int
    percent: float
    total_tokens: int = 0


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
