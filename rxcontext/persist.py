"""The terminal persister: folds a reply as it streams and stores it when the stream ends.

One :class:`ReplyPersister` lives per subscription (per ``stream()`` run). The stream driver
feeds it every chunk *before* handing that chunk downstream, so at any moment its text is
exactly what subscribers have received. It then either

* commits the completed reply (one durable transaction: the MODEL_RESP record, the reply's
  TOOL_CALL records, the usage, and removal of the running checkpoint), or
* saves a checkpoint (on error, on cancel, and every ``checkpoint_every`` seconds while the
  stream runs, updated in place), so an interrupted reply can be resumed.

Periodic checkpoints cost one clock read per chunk and one small write per interval: there is
no write per chunk on the hot path.

With a model that resumes natively (OpenAI Responses background mode), the run's
:class:`~rxcontext.providers.base.ResumeCursor` is asked at checkpoint time only where the
stream stood after the last delivered chunk; that point goes into the checkpoint's metadata
(``NATIVE_RESUME_KEY``) and its stream id into ``response_id``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from .chunks import Chunk, ChunkKind, Reply, ReplyBuilder, Usage
from .errors import StreamInterrupted
from .providers.base import NATIVE_RESUME_KEY, ResumeCursor
from .records import Checkpoint, Record, RecordType
from .store.base import CheckpointDraft, RecordDraft, Store

__all__ = ["ReplyPersister", "describe_error", "reply_drafts"]

Clock = Callable[[], float]


def describe_error(error: BaseException | None) -> str:
    """A one-line description of why a stream stopped, for the checkpoint row."""
    if error is None:
        return "cancelled"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def reply_drafts(reply: Reply, *, streamed: bool, text: str | None = None) -> list[RecordDraft]:
    """The records a completed reply is stored as: MODEL_RESP, then one TOOL_CALL per call.

    The MODEL_RESP is kept when it has text, thinking blocks or metadata a provider needs
    back, or when there are no tool calls (an empty reply is still a reply).
    """
    body = reply.text if text is None else text
    drafts: list[RecordDraft] = []
    metadata: dict[str, Any] = dict(reply.metadata)
    if reply.thinking and "thinking" not in metadata:
        metadata["thinking"] = reply.thinking
    if body or metadata or not reply.tool_calls:
        drafts.append(
            RecordDraft(
                RecordType.MODEL_RESP,
                body,
                response_id=reply.response_id,
                streamed=streamed,
                metadata=metadata,
            )
        )
    for call in reply.tool_calls:
        drafts.append(
            RecordDraft(
                RecordType.TOOL_CALL,
                call.raw,
                response_id=reply.response_id,
                streamed=streamed,
                tool_call_id=call.id,
                tool_name=call.name,
                metadata=dict(call.metadata),
            )
        )
    return drafts


class ReplyPersister:
    """Per-run state between the stream driver and the store (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        context_id: str,
        *,
        checkpoint_every: float | None = 1.0,
        clock: Clock = time.monotonic,
        resume: Checkpoint | None = None,
        streamed: bool = True,
        cursor: ResumeCursor | None = None,
    ) -> None:
        self.store = store
        self.context_id = context_id
        self.builder = ReplyBuilder()
        self._every = checkpoint_every if checkpoint_every and checkpoint_every > 0 else None
        self._clock = clock
        self._due = clock() + self._every if self._every else float("inf")
        self._resume = resume
        self._checkpoint_id: int | None = resume.id if resume is not None else None
        self._prefix = resume.text if resume is not None else ""
        self._prefix_thinking = resume.thinking if resume is not None else ""
        self._streamed = streamed
        self._usage_total: Usage | None = None
        self._cursor = cursor
        self._seeded = 0  # chunks folded in from the checkpoint, not delivered by this stream
        self.final: Reply | None = None
        """The last committed reply of this run (the answer after any tool rounds)."""
        self.records: list[Record] = []
        """Every record this run stored, in order."""

    # -- the hot path ---------------------------------------------------------------------

    def add(self, chunk: Chunk) -> None:
        """Fold in a chunk that is about to be delivered downstream."""
        self.builder.add(chunk)
        if self._clock() >= self._due:
            self.flush()

    # -- checkpoints ----------------------------------------------------------------------

    def _draft(self, error: str | None) -> CheckpointDraft:
        reply = self.builder.build()
        delivered = self.builder.chunks - self._seeded
        metadata = dict(reply.metadata)
        response_id = reply.response_id
        point = self._cursor.point(delivered) if self._cursor is not None else None
        if point is not None:
            metadata[NATIVE_RESUME_KEY] = point
            response_id = response_id or point["stream_id"]
        return CheckpointDraft(
            text=self._prefix + reply.text,
            thinking=self._prefix_thinking + reply.thinking,
            tool_calls=self.builder.tool_fragments(),
            usage=reply.usage,
            error=error,
            chunks=delivered,
            response_id=response_id,
            metadata=metadata,
        )

    def flush(self) -> Checkpoint:
        """Save the running checkpoint now (updated in place) and schedule the next one."""
        checkpoint = self.store.save_checkpoint(
            self.context_id, self._draft("in progress"), self._checkpoint_id
        )
        self._checkpoint_id = checkpoint.id
        if self._every:
            self._due = self._clock() + self._every
        return checkpoint

    def interrupt(self, error: BaseException | None) -> Checkpoint:
        """Save what was delivered as the run's checkpoint, with why it stopped."""
        checkpoint = self.store.save_checkpoint(
            self.context_id, self._draft(describe_error(error)), self._checkpoint_id
        )
        self._checkpoint_id = checkpoint.id
        if self._resume is not None:
            self.store.release_checkpoint(checkpoint.id)
        return checkpoint

    def interrupted(self, error: BaseException) -> StreamInterrupted:
        """:meth:`interrupt` and return the :class:`StreamInterrupted` to raise ``from error``."""
        return StreamInterrupted(self.interrupt(error))

    @property
    def resuming(self) -> Checkpoint | None:
        """The checkpoint this round continues (None when not resuming, or after round one)."""
        return self._resume

    def continue_natively(self) -> None:
        """This round continues the checkpoint's own stream (native resume), not a new reply.

        The checkpoint's tool-call fragments are folded in first, so a call cut mid-arguments
        is completed by the rest of its stream; the text and thinking are kept as prefixes,
        as for a continuation. Idempotent (a retry of the round calls it again).
        """
        if self._resume is None or self._seeded or self.builder.chunks:
            return
        for fragment in self._resume.tool_calls:
            self.builder.add(
                Chunk(
                    ChunkKind.TOOL_CALL,
                    str(fragment.get("arguments") or ""),
                    int(fragment.get("index") or 0),
                    fragment.get("id"),
                    fragment.get("name"),
                    metadata=dict(fragment.get("metadata") or {}),
                )
            )
        self._seeded = self.builder.chunks

    def continue_with_prompt(self) -> None:
        """Native resume failed before any chunk: this round is a continuation after all."""
        if self._seeded:
            self.builder = ReplyBuilder()
            self._seeded = 0

    # -- completion -----------------------------------------------------------------------

    def complete(self) -> Reply:
        """Commit the finished round durably and start a fresh one; return its reply."""
        reply = self.builder.build()
        if self._prefix or self._prefix_thinking:
            # A resumed round: the reply is the checkpoint's part plus this round's.
            reply = replace(
                reply,
                text=self._prefix + reply.text,
                thinking=self._prefix_thinking + reply.thinking,
            )
        resumed = self._resume is not None and self._checkpoint_id == self._resume.id
        records = self.store.commit_reply(
            self.context_id,
            reply_drafts(reply, streamed=self._streamed),
            usage=reply.usage,
            last_response_id=reply.response_id,
            drop_checkpoint=None if resumed else self._checkpoint_id,
            resolve_checkpoint=self._checkpoint_id if resumed else None,
        )
        self.records.extend(records)
        if reply.usage is not None:
            self._usage_total = (
                reply.usage if self._usage_total is None else self._usage_total + reply.usage
            )
        self.final = reply
        self._start_round()
        return reply

    def store_tool_outputs(self, drafts: Sequence[RecordDraft]) -> list[Record]:
        """Store the tool outputs of a round (one transaction)."""
        records = self.store.commit_reply(self.context_id, drafts)
        self.records.extend(records)
        return records

    def _start_round(self) -> None:
        self.builder = ReplyBuilder()
        self._seeded = 0
        if self._cursor is not None:
            self._cursor.begin()  # the next round's stream has not started yet
        self._checkpoint_id = None
        self._prefix = ""
        self._prefix_thinking = ""
        self._resume = None
        if self._every:
            self._due = self._clock() + self._every

    @property
    def usage_total(self) -> Usage | None:
        """Provider usage summed over every committed round of this run."""
        return self._usage_total
