"""The terminal persister: folds a reply as it is delivered and stores it as it ends.

One :class:`ReplyPersister` lives per subscription (per reply). It opens the reply's
lifecycle row before the request is sent (:meth:`ReplyPersister.begin`), folds every chunk
*after* it reached the subscriber (so its state is exactly what was delivered), and then
either commits the completed reply (one durable transaction: the MODEL_RESP record, the
reply's TOOL_CALL records, the usage; the row goes away) or writes its checkpoint and marks
it ``INTERRUPTED`` (on error, cancel, dispose), so it can be resumed, kept or discarded.

While the reply streams, a timer (:mod:`rxcontext.checkpointer`) writes the text delivered
since its last write every ``checkpoint_every`` seconds, whether or not chunks arrive;
the stream never waits for it. Three parties can touch the state — the driver delivering
chunks, the timer taking a snapshot, and a dispose from another thread writing the final
checkpoint — and they agree through two flags (``busy``, set by the driver while it
delivers and folds a chunk; ``_claimed``, set by a reader while it copies the state) and
two locks, so the hot path takes no lock at all:

* the driver sets ``busy``, then looks at ``_claimed`` (and waits in the rare case it is
  set); a reader sets ``_claimed``, then looks at ``busy`` and backs off if it is set. One
  of them always sees the other, so a snapshot never sees half a chunk;
* the final write (commit or interrupt) happens once and sets ``finished`` (under
  ``_claim``); a later writer finds it set and does nothing. If the database is locked
  by another process then, or its pool busy (``StoreBusy``), the final checkpoint is kept
  (``pending``) and the heartbeat writes it once the database is free
  (:meth:`ReplyPersister.write_pending`),
  so it still holds exactly what was delivered. Periodic writes hold
  ``_write``, and so do the interrupt and a tool round's commit, which must come after
  them; the last round's commit does not wait for one in flight (see :meth:`complete`).

With a model that resumes natively (OpenAI Responses background mode), the run's
:class:`~rxcontext.providers.base.ResumeCursor` is asked at checkpoint time only where the
stream stood after the last delivered chunk; that point goes into the checkpoint's metadata
(``NATIVE_RESUME_KEY``, with the usage billed before that stream began: ``BILLED_BEFORE``)
and its stream id into ``response_id``. A surrogate pair's high half that ends what was
delivered (an emoji cut between two deltas) is never stored alone: the checkpoint's text
ends before it and the half is kept beside it (``HELD_KEY``), where a native resume, whose
stream goes on with the low half, takes it back.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import logging
import re
import sys
import threading
import time
import weakref
from asyncio import CancelledError
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from os import urandom
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._loopterm import Terminated as LoopTerminated
from ._memory import let_go
from ._signals import Terminated, deferred
from .chunks import Chunk, ChunkKind, Reply, ReplyBuilder, Usage
from .errors import (
    ModelRefused,
    OwnershipLost,
    RewindRefused,
    RxContextError,
    SchemaValidationError,
    StoreBusy,
    StoreClosedError,
    StoreError,
    StreamInterrupted,
)
from .fanout.base import Channel, Fanout
from .providers.base import NATIVE_RESUME_KEY, ResumeCursor
from .records import Checkpoint, Record, RecordType, ReplyState
from .schema import OutputSchema, SchemaFailure
from .store._sqlite_rows import storable
from .store.base import IN_PROGRESS, CheckpointDraft, RecordDraft, ReplyTicket, Store, new_draft
from .store.owner import worker_id
from .usage_by_model import USAGE_BY_MODEL, Part, by_model, natively, parse, parts_of

if TYPE_CHECKING:
    from .tracing import ReplyTrace

__all__ = [
    "BILLED_BEFORE",
    "HELD_KEY",
    "REPLY_KEYS",
    "SCHEMA_KEYS",
    "ReplyPersister",
    "describe_error",
    "model_keys",
    "reply_drafts",
    "reply_metadata",
]

_log = logging.getLogger("rxcontext.persist")

_J = TypeVar("_J")

_STOPPING = (KeyboardInterrupt, SystemExit, Terminated, CancelledError)
"""What stops a reply from outside it (Ctrl-C, SIGTERM's exit or, at its default, the sync
driver's :class:`~rxcontext._signals.Terminated`, a task's cancel): the user's, raised to
them unchanged whatever the store says (:meth:`ReplyPersister._interrupt`)."""


def describe_error(error: BaseException | None) -> str:
    """A one-line description of why a stream stopped, for the checkpoint row."""
    if error is None:
        return "cancelled"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


_LENGTH_STOPS = frozenset(
    {"length", "max_tokens", "max_output_tokens", "MAX_TOKENS", "model_length"}
)
"""Finish reasons (of any provider) that mean the reply was cut at its token limit."""

REFUSED = "refusal"
"""The finish reason of a reply the model refused (Anthropic's ``stop_reason``, and OpenAI's
refusals as the providers read them)."""

REPLY_KEYS = (
    "model",
    "provider",
    "usage",
    "finish_reason",
    "truncated",
    "first_chunk_ms",
    "duration_ms",
    "partial",
)
"""The keys rxcontext writes into a MODEL_RESP's metadata (beside the provider's own)."""

SCHEMA_KEYS = ("schema", "parsed", "parse_error")
"""Further keys of a structured-output reply's MODEL_RESP (``cw.call(schema=...)``):
``schema`` (``name``, ``json_schema``), then ``parsed`` (the validated object as JSON) or
``parse_error`` (why the text did not validate)."""


BILLED_BEFORE = "billed_before"
"""Key of a checkpoint's native resume point (``NATIVE_RESUME_KEY``): the usage billed
before the point's stream began (earlier attempts, cut, whose usage a continuation carried
on, or sent again by the retry policy). The stream reports only its own response's usage; a
native resume adds this to it."""

HELD_KEY = "held_half"
"""Checkpoint metadata key: the high half of a surrogate pair that ended what was delivered
(a provider may cut an escaped emoji between two deltas), kept beside the checkpoint's
text, which ends before it: ``{"text": code point}`` (or ``"thinking"``). UTF-8 cannot
store the half alone; a native resume's stream begins with the other half, and the two
make the character again."""


def model_keys(model_name: str | None) -> dict[str, str | None]:
    """``model`` and ``provider`` from a model's name (``"openai:gpt-4o-mini"``): what a
    stored reply, and the checkpoint of one, say priced it (:mod:`rxcontext.cost`)."""
    provider, _, model = (model_name or "").partition(":")
    return {"model": model or provider or None, "provider": provider or None}


class _SharedKeys(dict[str, Any]):
    """A draft's metadata handed to many writes (of one reply, or every reply of a model):
    read-only, so a store that changes ``CheckpointDraft.metadata`` (a Mapping) in place
    fails instead of changing the other writes'. A dict still (``json.dumps``, the C
    encoder, ``dict()`` take it as one); a copy is a plain dict."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a checkpoint draft's metadata is shared with other writes: copy it")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def copy(self) -> dict[str, Any]:
        return dict(self)

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))


@functools.lru_cache(maxsize=64)
def _keys_of(model_name: str | None) -> dict[str, Any]:
    """A checkpoint's metadata holding only ``model_name``'s keys (:func:`model_keys`): one
    read-only dict for the writes of every reply of that model, so a tick's batch encodes
    it once (SQLite's ``_bulk_payloads`` knows it by identity)."""
    return _SharedKeys(_json_safe(model_keys(model_name)) if model_name is not None else {})


def reply_metadata(
    reply: Reply,
    *,
    model_name: str | None,
    first_chunk_ms: float | None = None,
    duration_ms: float | None = None,
    resumed: bool = False,
) -> dict[str, Any]:
    """What a stored MODEL_RESP says about the reply itself (``REPLY_KEYS``).

    ``model`` and ``provider`` come from the model's name (``"openai:gpt-4o-mini"``),
    ``usage`` is this reply's (one round's) usage, ``truncated`` says the reply was cut at
    its token limit (each provider names that stop differently), times are milliseconds
    from sending the request.
    """
    meta: dict[str, Any] = {
        **model_keys(model_name),
        "usage": reply.usage.to_dict() if reply.usage is not None else None,
        "finish_reason": reply.finish_reason,
        "truncated": reply.finish_reason in _LENGTH_STOPS,
        "first_chunk_ms": round(first_chunk_ms, 3) if first_chunk_ms is not None else None,
        "duration_ms": round(duration_ms, 3) if duration_ms is not None else None,
        "partial": False,
    }
    if resumed:
        meta["resumed"] = True
    return meta


def reply_drafts(
    reply: Reply,
    *,
    streamed: bool,
    text: str | None = None,
    about: Mapping[str, Any] | None = None,
    spoke: bool = False,
) -> list[RecordDraft]:
    """The records a completed reply is stored as: MODEL_RESP, then one TOOL_CALL per call.

    The MODEL_RESP is kept when it has text, thinking blocks or metadata a provider needs
    back, or when there are no tool calls (an empty reply is still a reply). ``about``
    (see :func:`reply_metadata`) is added to the MODEL_RESP's metadata, or, in a round of
    tool calls alone, to the first TOOL_CALL's. ``spoke``: the reply has text even if
    ``text`` is empty (a long reply whose text its checkpoint holds: ``text`` is the rest).
    """
    body = reply.text if text is None else text
    drafts: list[RecordDraft] = []
    metadata: dict[str, Any] = dict(reply.metadata)
    if reply.thinking and "thinking" not in metadata:
        metadata["thinking"] = reply.thinking
    provider_metadata = bool(metadata)
    if about:
        metadata.update(about)
    if body or spoke or provider_metadata or not reply.tool_calls:
        drafts.append(
            RecordDraft(
                RecordType.MODEL_RESP,
                body,
                response_id=reply.response_id,
                streamed=streamed,
                metadata=metadata,
            )
        )
    # A round of tool calls alone has no MODEL_RESP: its first TOOL_CALL says what the
    # round was (model, usage...), so every round's usage and cost stay in the records.
    carry = dict(about) if about and not drafts else None
    for call in reply.tool_calls:
        drafts.append(
            RecordDraft(
                RecordType.TOOL_CALL,
                call.raw,
                response_id=reply.response_id,
                streamed=streamed,
                tool_call_id=call.id,
                tool_name=call.name,
                metadata={**carry, **call.metadata} if carry else dict(call.metadata),
            )
        )
        carry = None
    return drafts


def _json_safe(value: _J) -> _J:
    """``value`` itself when JSON can hold it, else a copy with what it cannot as ``repr``:
    a checkpoint is the last resort for what was delivered and must always be writable."""
    if not value:
        return value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return cast(_J, json.loads(json.dumps(value, default=repr)))
    return value


def new_reply_id() -> str:
    """A random reply id: the text of a version-4 UUID, as ``str(uuid.uuid4())`` writes it.

    Made here, not by :mod:`uuid`: on every reply's way to its first chunk, its ``UUID``
    object (its checks, its int, its ``__str__``) took ~150 bytecodes for a string."""
    raw = bytearray(urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _no_publish(_: Chunk) -> None:
    pass


class _Alarm:
    """A builder's alarm (:meth:`ReplyPersister._new_builder`): the persister's
    ``_part_grown``, through a weak reference. The persister holds its builder, and a
    bound method back would make a cycle only the cyclic collector frees
    (tests/test_reply_cycles.py); a closure over the reference would be four objects it
    tracks for as long as the reply streams (its function, cell tuple, cell and the
    reference), this is two."""

    __slots__ = ("persister",)

    def __init__(self, persister: ReplyPersister) -> None:
        self.persister = weakref.ref(persister)

    def __call__(self) -> None:
        alive = self.persister()
        if alive is not None:
            alive._part_grown()


class ReplyPersister:
    """Per-reply state between the stream driver and the store (see the module docstring)."""

    # Defaults read from the class until a reply sets its own (every one is immutable):
    # a persister is built on every request's way to its first chunk (issue 14), where
    # ~45 constant assignments in __init__ cost more than the rest of it.
    channel: Channel | None = None
    _sent_at: float | None = None
    _first_at: float | None = None
    _resume: Checkpoint | None = None
    _prefix = ""
    _prefix_thinking = ""
    _native = False  # this round continues the checkpoint's own stream
    _billed_before: Usage | None = None  # a native round's carried usage
    _made_by: dict[str, str | None] | None = None  # the model of a native round's stream
    _set_aside: Usage | None = None  # this round's attempts sent again (billed)
    thread_version: int | None = None
    """The context's version when the last request read its history (its commit keeps
    the response as the thread to continue only if nothing before it changed since)."""
    _seeded = 0  # chunks folded in from the checkpoint, not delivered by this stream
    _usage_total: Usage | None = None
    _commits = 0  # commits this run made (their idempotency keys count them)
    ticket: ReplyTicket | None = None
    pos: int | None = None
    # How much of the builder's text and thinking the checkpoint holds (characters): a
    # write appends what came after (taken from the builder, never kept twice).
    _text_mark = 0
    _thinking_mark = 0
    # The marks once the write being made lands. Plain ints, not a pair: a tick makes these
    # for every streaming reply, and a new tuple each is one more tracked object a reply
    # toward the tick's collector passes (docs/benchmarks.md, "a tick's objects").
    _inflight_text = 0
    _inflight_thinking = 0
    # The builder let go of the text (thinking) before the text (thinking) mark (a long
    # reply on a store that commits it from the checkpoint's parts: _let_go_landed); the
    # commit does so.
    _from_parts = False
    _thinking_from_parts = False
    # A long backlog is written a bounded part at a time (not joined whole beside the
    # builder's blocks): the checkpointer writes again while the text mark is behind
    # where the text stood at its tick's first write (_catch_text, _catch_thinking).
    _behind = False
    _catch_text = 0
    _catch_thinking = 0
    _let_go_due = False  # a landed write's text to let go of, at attend()
    _flush_due = False  # the timer found the driver busy: it writes, at attend()
    _grown = False  # a long reply grew by a part since: it writes, at attend()
    _written = 0  # builder.chunks at the last checkpoint write (-1: write again)
    _keys_cache: tuple[tuple[str | None, Any], dict[str, Any]] | None = None
    _store_long: int | None = None  # the store's long_text (_new_builder)
    # The exactness protocol (module docstring).
    busy = False
    _claimed = False
    finished = False
    _final: tuple[CheckpointDraft, BaseException | None] | None = None
    """The final checkpoint to write and why the reply ended (kept while the database
    is busy: :attr:`pending`)."""
    _held: Callable[[], None] | None = None
    """Lets go of the reply's hold (:meth:`_hold`), while a final write is under way."""
    _refused: StoreBusy | None = None
    """The reply's commit a lock refused, after its wait (a Ctrl-C held through it, or a
    cancel that came while it waited, ends the reply next): the final checkpoint is kept at
    once, not tried again (:meth:`commit_whole`, :meth:`interrupt`)."""
    _landing: list[tuple[Callable[[], None], bool]] | None = None
    """Who is told when the final write under way ends (:meth:`when_final_written`), from
    :meth:`_finish` until then, and whether through a failed commit's failure path (else
    told at that failure too). Under ``_claim``."""
    attention = False
    """Set by the timer when the driver must act at its next chunk (flush, or stop)."""
    lost: RxContextError | None = None
    """Why this reply can no longer be written (taken over, or its context deleted)."""
    fence: Callable[[], None] | None = None
    """Called before each commit; raises if this process may have lost the reply (the
    heartbeat's self-fencing, :mod:`rxcontext.heartbeat`)."""
    stop: RxContextError | None = None
    """Set when the reply was asked to stop (``cw.stop``); its driver ends it."""
    stopped: Checkpoint | None = None
    """The checkpoint a stop stored (written by whoever ended the reply first)."""
    final: Reply | None = None
    """The last committed reply of this run (the answer after any tool rounds)."""
    output_schema: OutputSchema | None = None
    """The structured-output schema the last round's text is validated against."""
    optional_nulls = False
    """The model was sent :attr:`output_schema` with its optional properties required but
    nullable (see :meth:`OutputSchema.validate`)."""
    trace: ReplyTrace | None = None
    """The reply's tracing span (:mod:`rxcontext.tracing`), told of its begin and end."""
    # Empty tuples until a reply has some (as the defaults above): three lists made for
    # every reply and nearly always left empty until its end were three more objects the
    # cyclic collector tracks while it streams (docs/benchmarks.md, many streams).
    # Where the thinking the checkpoint holds had a surrogate pair split between two
    # deltas (the high half's position in the builder's thinking): stored, each pair
    # is one character, which moves the stored position of what follows (_stored_at).
    _pairs: Sequence[int] = ()
    _inflight_pairs: Sequence[int] = ()
    records: Sequence[Record] = ()
    """Every record this run stored, in order."""

    def __init__(
        self,
        store: Store,
        context_id: str,
        *,
        reply_id: str | None = None,
        checkpoint_every: float | None = 1.0,
        claim: Callable[[], Checkpoint] | None = None,
        streamed: bool = True,
        cursor: ResumeCursor | None = None,
        model_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        fanout: Fanout | None = None,
    ) -> None:
        self.store = store
        self._fanout = fanout
        self._publish: Callable[[Chunk], None] = _no_publish
        """Where delivered chunks are published for watchers (``cw.watch``), if anywhere."""
        self.model_name = model_name
        self._clock = clock
        self.context_id = context_id
        self.reply_id = reply_id
        self.every = checkpoint_every if checkpoint_every and checkpoint_every > 0 else None
        self.builder = self._new_builder()
        self._claim_resume = claim
        self._streamed = streamed
        self._cursor = cursor
        self._claim = threading.Lock()
        self._write = threading.Lock()
        # The sync driver reads these per chunk: read from the class (its default), each
        # read misses the instance's dict and then looks in the class (~310 instructions,
        # unspecialised in CPython 3.11); on the instance, ~80. Set here, before any other
        # thread can see the persister (later, a write could undo a reader's).
        self.busy = self._claimed = self.attention = False

    # -- opening --------------------------------------------------------------------------

    @property
    def resumes(self) -> bool:
        """Whether this run continues an interrupted reply (``claim`` was given)."""
        return self._claim_resume is not None

    def begin(self) -> None:
        """Open the reply's row (``STREAMING``, its position reserved), or claim the
        interrupted reply this run resumes (``RESUMING``: its ticket carries the claim's
        epoch). Whole or not at all under Ctrl-C, and inside the driver, whose failure
        path releases what it took."""
        if self.ticket is not None:
            return
        if self._claim_resume is not None:
            with deferred():
                checkpoint = self._claim_resume()
                self._resume = checkpoint
                self.reply_id = checkpoint.reply_id
                self.pos = checkpoint.pos
                self._prefix = checkpoint.text
                self._prefix_thinking = checkpoint.thinking
                self.ticket = ReplyTicket(checkpoint.id, checkpoint.epoch, checkpoint.owner)
            self._open_channel(checkpoint)
            if self.trace is not None:
                self.trace.begin(self.reply_id)
            return
        reply_id = self.reply_id or new_reply_id()
        me = worker_id()
        # The SQLite store's ticket-only begin: the same row, without the Checkpoint
        # begin_reply builds from it (only its id and position are used here).
        # (Only where begin_reply is the store's own: a subclass's, a wrapper's or one set
        # on the instance does more than the row, and is called.)
        ticket_only = getattr(self.store, "begin_reply_ticket", None)
        if ticket_only is not None and (
            getattr(self.store.begin_reply, "__func__", None)
            is not getattr(ticket_only, "plain", ticket_only)
        ):
            ticket_only = None
        with deferred():
            if ticket_only is not None:
                checkpoint_id, pos = ticket_only(self.context_id, reply_id, me)
                ticket = ReplyTicket(checkpoint_id, 1, me)  # (a begun row's epoch)
            else:
                checkpoint = self.store.begin_reply(self.context_id, reply_id, owner=me)
                pos = checkpoint.pos
                ticket = ReplyTicket(checkpoint.id, checkpoint.epoch, checkpoint.owner)
            self.reply_id = reply_id
            self.pos = pos
            self.ticket = ticket
        self._open_channel(None)
        if self.trace is not None:
            self.trace.begin(self.reply_id)

    def _open_channel(self, resumed: Checkpoint | None) -> None:
        """Start publishing this epoch of the reply; a resume starts from what its
        earlier rounds stored plus its checkpoint (what watchers rewind to)."""
        if self._fanout is None or self.ticket is None or self.reply_id is None:
            return
        text = thinking = ""
        if resumed is not None:
            from .fanout.publish import resumed_base

            text, thinking = resumed_base(self.store, resumed)
        self.channel = self._fanout.open_channel(self.reply_id, self.ticket.epoch, text, thinking)
        self._publish = self.channel.chunk
        self.add = self._add_and_publish  # type: ignore[method-assign]
        self.folds_plainly = False

    # -- the hot path ---------------------------------------------------------------------

    def sent(self) -> None:
        """A round's request is being sent now (its times count from here)."""
        self._sent_at = self._clock()
        self._first_at = None

    def may_send_again(self) -> bool:
        """Whether the round's request may be sent again after a failure: nothing but usage
        was delivered (Anthropic's stream opens with one, an overloaded error can follow),
        so a retry repeats no text."""
        return not self.builder.shows_anything()

    def sending_again(self) -> None:
        """The round's request is sent again (:meth:`may_send_again`): the usage its failed
        attempt reported was billed, so it is set aside and added to the round's (its
        reply, the records it is committed as, any checkpoint written later), since the
        next attempt reports its own and its USAGE chunks would replace it. A native round
        asks the same response's stream again, whose usage is the same: nothing is set aside.
        Under ``_claim`` (and whole under Ctrl-C), not once the reply ended: a snapshot or a
        final write sees the usage before the move or after it, never half of it."""
        with deferred(), self._claim:
            if self.finished or self._native:
                return
            self._set_aside = _plus(self._set_aside, self.builder.take_usage())

    folds_plainly = True
    """Whether :meth:`add` does nothing but ``builder.add`` once a round's first chunk is
    in (no fan-out to publish to): the sync driver then calls ``builder.add`` itself past
    that chunk (one Python call less a chunk)."""

    def add(self, chunk: Chunk) -> None:
        """Fold in a chunk that was just delivered downstream."""
        if self._first_at is None:
            self._first_at = self._clock()
        self.builder.add(chunk)

    def _add_and_publish(self, chunk: Chunk) -> None:
        """:meth:`add` with a fan-out: fold, then publish (it replaces ``add`` on the
        instance, so a reply without a fan-out pays nothing on the hot path)."""
        ReplyPersister.add(self, chunk)
        if chunk.usage is not None and (self._resume is not None or self._set_aside is not None):
            chunk = self.shown(chunk)  # watchers see the usage the reply is stored with
        self._publish(chunk)

    def carries(self) -> bool:
        """Whether this round's usage chunks are shown with more than they say
        (:meth:`shown`): it resumes a checkpoint, or was sent again. Steady over an attempt,
        so a driver asks once per attempt, not per chunk."""
        return self._resume is not None or self._set_aside is not None

    def shown(self, chunk: Chunk) -> Chunk:
        """``chunk`` as subscribers and watchers get it: a USAGE chunk's usage (the
        attempt's own so far, which the builder folds) plus what the round was billed
        before (:meth:`_billed`: its checkpoint's carried usage, its failed attempts'),
        so a fold of what they got counts the usage the reply is stored with, once."""
        if chunk.usage is None:
            return chunk
        carried = self._billed()
        return chunk if carried is None else replace(chunk, usage=carried + chunk.usage)

    def admit_rewind(self, chunk: Chunk) -> None:
        """A ``REWIND`` chunk (a model that replays what a watcher got), before it is
        delivered, the driver busy (no checkpoint write begins until it is folded): raise
        :class:`~rxcontext.RewindRefused` where it goes back to before text (thinking) the
        checkpoint holds, or the write under way will: that is written by appending, and
        the builder may have let go of it, so the reply could not go back there and stay
        exact. Its checkpoint then holds what was delivered before it. A rewind to no
        earlier is folded as any chunk (the builder cuts what it holds past that point)."""
        keep = max(0, chunk.index)
        # What the last write drafted counts, landed or not, whatever the lock says: the
        # timer's write may land (marks := in-flight, lock released) between any two reads
        # here, and asking the lock after reading the marks missed it. The in-flight marks
        # cannot move meanwhile (a draft is made only while the driver is not busy, or by
        # the driver); they are never below the marks (the marks only ever become them),
        # and above them only after a write that failed, which then refuses a little more.
        text_at = max(self._text_mark, self._inflight_text)
        thinking_at = max(self._thinking_mark, self._inflight_thinking)
        thinking = chunk.metadata.get("thinking")
        if keep < text_at or (isinstance(thinking, int) and max(0, thinking) < thinking_at):
            raise RewindRefused(
                f"reply {self.reply_id!r}: a REWIND to text {chunk.index}"
                + (f", thinking {thinking}" if isinstance(thinking, int) else "")
                + f" goes back before what its checkpoint holds (text {text_at},"
                f" thinking {thinking_at} characters), which cannot be taken back; the reply"
                " ends with its checkpoint of what was delivered before it"
            )

    def admits_rewind(self, chunk: Chunk) -> bool:
        """Whether :meth:`admit_rewind` admits ``chunk`` (for a driver ending on a signal
        in a hook that had it: the signal goes on, a refused rewind is just not folded)."""
        try:
            self.admit_rewind(chunk)
        except RewindRefused:
            return False
        return True

    def passed(self, chunk: Chunk) -> None:
        """A chunk was delivered that is not part of the reply's fold (a tool's result):
        watchers get it too."""
        channel = self.channel
        if channel is not None:
            channel.chunk(chunk)

    def wait_claim(self) -> None:
        """The driver's rare wait: a reader is copying the state right now."""
        with self._claim:
            pass

    # -- snapshots ------------------------------------------------------------------------

    def _draft(self, error: str | None, catch: bool = False) -> CheckpointDraft:
        """What the checkpoint does not hold yet: the text and thinking delivered past the
        marks (O(that text)); the marks move when the write lands (:meth:`_landed`).

        A periodic write of a reply that can be committed from its checkpoint
        (:meth:`_long_at`, and no native resume point to keep in step) takes at most that
        many characters of text: a long backlog is written in bounded parts
        (:meth:`behind`), the builder letting go of each as it lands. ``catch``: the
        tick's first write, which sets how far the tick catches up (the whole text now)."""
        b = self.builder
        self._behind = False
        cap = self._cap() if error == IN_PROGRESS else None
        # One read of each (the builder's lengths come with it): a tick makes this for
        # every streaming reply.
        mark = self._text_mark
        text, text_length = b.text_from(mark, cap)
        text_end = mark + len(text)
        mark = self._thinking_mark
        thinking, thinking_length = b.thinking_from(mark, cap)
        thinking_end = mark + len(thinking)
        if catch:
            self._catch_text, self._catch_thinking = text_length, thinking_length
        if text_end < text_length:  # cut at the cap: the rest is still to write
            self._behind = text_end < self._catch_text
            self._written = -1
        if thinking_end < thinking_length:
            self._behind = self._behind or thinking_end < self._catch_thinking
            self._written = -1
        # A pair's high half waits for its low half (a provider may cut an emoji between two
        # deltas): stored alone, it could only be replaced and the character lost. A
        # periodic write stores it with its low half, at the next write; until then, and
        # in a final write, it is kept beside the text (HELD_KEY), where the point of a
        # native resume, just after it, expects it.
        # (The checks below that nearly always fail are made here, not by a call: a tick
        # makes this for every streaming reply.)
        held: dict[str, int] | None = None
        if text and "\ud800" <= text[-1] <= "\udbff":
            held = {"text": ord(text[-1])}
            text, text_end = text[:-1], text_end - 1
        if thinking:
            if "\ud800" <= thinking[-1] <= "\udbff":
                held = held or {}
                held["thinking"] = ord(thinking[-1])
                thinking, thinking_end = thinking[:-1], thinking_end - 1
            self._inflight_pairs = _pairs_in(thinking, self._thinking_mark)
        else:
            self._inflight_pairs = ()
        self._inflight_text, self._inflight_thinking = text_end, thinking_end
        delivered = b.chunks - self._seeded
        split = self._usage_by_model() if self._resume is not None else None
        response_id = b.response_id
        point = self._cursor.point(delivered) if self._cursor is not None else None
        metadata: dict[str, Any]
        if held or split is not None or point is not None or b.has_metadata:
            metadata = b.metadata  # a copy
            if held:
                metadata[HELD_KEY] = held
            if self.model_name is not None:  # what prices the attempt once kept or discarded
                metadata.update(self._model_keys())
            if split is not None:  # it names this model; earlier attempts were another's
                metadata[USAGE_BY_MODEL] = split
            if point is not None:
                before = self._billed()
                if before is not None:  # billed before this stream: its own usage will not say
                    point[BILLED_BEFORE] = before.to_dict()
                metadata[NATIVE_RESUME_KEY] = point
                response_id = response_id or point["stream_id"]
            metadata = _json_safe(metadata)
        else:
            metadata = self._keys_metadata()
        calls = b.tool_fragments()
        usage = b.usage
        if self._resume is not None or self._set_aside is not None:
            usage = _plus(self._billed(), usage)
        return new_draft(
            text,
            thinking,
            _json_safe(calls) if calls else (),
            usage,
            error,
            delivered,
            response_id,
            metadata,
        )

    def _keys_metadata(self) -> dict[str, Any]:
        """A checkpoint's metadata when it holds only the model's keys (nearly every
        periodic write): built and checked once, then the same dict every tick (drafts are
        read, never changed), so thousands of replies' ticks make one object a write, not
        three, for the collector to count. The same dict for every reply of a model
        (:func:`_keys_of`), but for a native round's (its checkpoint's model)."""
        if not self._native or self._made_by is None:
            return _keys_of(self.model_name)
        source = (self.model_name, self._made_by if self._native else None)
        cached = self._keys_cache
        if cached is None or cached[0] != source:
            keys = self._model_keys() if self.model_name is not None else {}
            cached = self._keys_cache = (source, _SharedKeys(_json_safe(dict(keys))))
        return cached[1]

    def _landed(self) -> None:
        """The write :meth:`_draft` made is stored: the checkpoint holds its text now."""
        self._text_mark, self._thinking_mark = self._inflight_text, self._inflight_thinking
        if self._inflight_pairs:
            self._pairs = [*self._pairs, *self._inflight_pairs]
            self._inflight_pairs = ()

    def _nothing_inflight(self) -> bool:
        """The write :meth:`_draft` made moves no mark (only a pair's high half was left)."""
        return (
            self._inflight_text == self._text_mark
            and self._inflight_thinking == self._thinking_mark
        )

    def _cap(self) -> int | None:
        """The most characters of text, and of thinking, a periodic write takes (see
        :meth:`_draft`)."""
        return self._long_at() if self._cursor is None else None

    def behind(self) -> bool:
        """For the timer: the last periodic write took a bounded part of a long backlog and
        landed; the rest of what was there at the tick's first write is to write now."""
        return self._behind and not self.finished and self.lost is None

    def _catch_up(self) -> None:
        """Write the text past the mark in bounded parts before a long reply's commit from
        its checkpoint (the commit then takes it all from the checkpoint). The caller holds
        ``_write`` and the round ended (no chunk is being folded). A write that does not
        land stops it: the commit takes the rest from the builder."""
        assert self.ticket is not None
        self._let_go_landed(start=False)  # a write may have landed while a chunk was folded
        self._catch_text = self.builder.text_length()
        self._catch_thinking = self.builder.thinking_length()
        to = (self._catch_text, self._catch_thinking)
        cap = self._cap()
        while cap is not None and (self._text_mark, self._thinking_mark) < to:
            draft = self._draft(IN_PROGRESS)
            if self._nothing_inflight():
                return  # only a pair's high half is left: the commit takes it
            written = self.store.save_checkpoints([(self.ticket, draft)])
            if not (written and written[0]):
                return
            self._landed()
            self._let_go_landed(start=False)

    def _long_at(self) -> int | None:
        """The text or thinking mark from which the builder lets go of what the checkpoint
        holds, or None when this reply keeps its whole text and thinking: no periodic
        checkpoints, a store that cannot commit a reply from its checkpoint
        (``commit_reply_from_parts``: SQLite's incremental I/O, not PostgreSQL), a resumed
        reply (its text starts with the claimed checkpoint's), or a structured-output reply
        (validated whole)."""
        if self.every is None or self._claim_resume is not None or self.output_schema is not None:
            return None
        return self._store_long

    def _long_enough(self) -> bool:
        """Whether the checkpoint holds enough text or thinking for the builder to let go."""
        at = self._long_at()
        return at is not None and (self._text_mark >= at or self._thinking_mark >= at)

    def _new_builder(self) -> ReplyBuilder:
        """A round's builder; on a store that commits a long reply from its checkpoint, it
        says when the reply grew by another such part (:meth:`_part_grown`)."""
        builder = ReplyBuilder()
        # Read here once (a store's property): every periodic write asks (_long_at).
        at = self._store_long = cast("int | None", getattr(self.store, "long_text", None))
        if at is not None and self.every is not None:
            builder.set_alarm(_Alarm(self), at)
        return builder

    def _part_grown(self) -> None:
        """The reply grew by a long part since the last one (the builder's alarm, on the
        driver's thread while it folds a chunk): the driver writes it at its next step,
        and lets go of it once it landed, whether or not the timer ticked meanwhile. A
        reply streaming faster than ``checkpoint_every`` would otherwise be held whole
        until its commit (a 10 MB reply took under a second on a quiet machine)."""
        if self._cap() is not None:
            self._grown = True
            self.attention = True

    def _let_go_landed(self, *, start: bool = True) -> None:
        """The builder lets go of the text and the thinking the checkpoint holds, once that
        is long (the store's long-value threshold: below it the store binds it whole
        anyway); ``start=False``: only of what it let go of before (the commit's catch-up:
        the reply it commits holds the rest whole). Only while no chunk is being folded
        (the caller holds the claim with ``busy`` clear, or is the driver); the commit then
        writes the record from the checkpoint."""
        b = self.builder
        mark = self._text_mark
        if mark > b.text_gone and (self._from_parts or (start and self._long(mark))):
            self._from_parts = True
            b.let_go_text(mark)
        mark = self._thinking_mark
        if mark > b.thinking_gone and (self._thinking_from_parts or (start and self._long(mark))):
            self._thinking_from_parts = True
            b.let_go_thinking(mark)

    def _long(self, mark: int) -> bool:
        at = self._long_at()
        return at is not None and mark >= at

    def _give_back(self) -> None:
        """A periodic write failed: its text is still past the marks; write again."""
        self._written = -1

    def _dirty(self) -> bool:
        return self.builder.chunks != self._written

    def snapshot(self) -> CheckpointDraft | None:
        """For the timer: the new part of the checkpoint, or None (nothing new, finished, or
        the driver is mid-chunk — it was asked to flush itself at its next step).

        The caller holds ``_write`` (see :meth:`periodic_lock`)."""
        with self._claim:
            if self.finished or self.ticket is None:
                return None
            self._claimed = True
            try:
                if self.busy:
                    self._flush_due = True
                    self.attention = True
                    return None
                if not self._dirty():
                    return None
                self._written = self.builder.chunks
                # Not behind: the tick's first write (it sets how far the tick catches up).
                return self._draft(IN_PROGRESS, catch=not self._behind)
            finally:
                self._claimed = False

    def periodic_lock(self) -> bool:
        """For the timer: try to become this reply's writer for a moment (never blocks)."""
        return self._write.acquire(False)  # (positional: no keyword parsing, every tick)

    def periodic_done(self, draft: CheckpointDraft | None, written: bool | None) -> None:
        """For the timer: its write ended (``written``: True, False if fenced, None if the
        database was busy); releases the writer lock."""
        try:
            if draft is None:
                return
            if written:
                self._landed()
                if self._from_parts or self._thinking_from_parts or self._long_enough():
                    # The driver lets go of it between two chunks (attend): never on this
                    # thread, which may run while the driver builds the reply.
                    self._let_go_due = True
                    self.attention = True
            else:
                self._behind = False
            if written is None:
                with self._claim:
                    self._give_back()
            elif not written and not self.finished:
                self.lost = self.lost or OwnershipLost(
                    f"reply {self.reply_id!r} was taken over by another worker while this one "
                    "was streaming it; nothing more was stored from here"
                )
                self.attention = True
        finally:
            self._write.release()

    def attend(self) -> None:
        """The driver, between chunks, does what the timer asked: let the builder go of the
        text a landed write holds (a long reply), write the checkpoint itself."""
        self.attention = False
        if self.lost is not None:
            raise self.lost
        if self.stop is not None and not self.finished:
            raise self.stop
        # A Ctrl-C held during the write is let go only once its marks have moved (raised
        # in between, the final write would append the same text again), and never between
        # taking the write lock and the try that gives it back (the final write would wait
        # for it forever).
        with deferred():
            if not self._write.acquire(blocking=False):
                return  # the timer (or a final write) is writing: it will be asked again
            try:
                # Asked only to let go (a landed write), it writes nothing itself.
                flush = self._flush_due or self._grown or not self._let_go_due
                grown, self._flush_due, self._grown = self._grown, False, False
                if self._let_go_due and not self.finished:
                    # Here alone the builder lets go (the driver folds nothing now, and a
                    # final write from another thread, which reads it, waits for _write).
                    self._let_go_due = False
                    self._let_go_landed()
                if self.finished or self.ticket is None or not flush or not self._dirty():
                    self._write.release()
                    return
                if grown:
                    draft, landed = self._write_grown()
                    if landed and landed[0]:  # [False]: fenced, for periodic_done
                        self._write.release()
                        return
                else:
                    self._written = self.builder.chunks
                    draft = self._draft(IN_PROGRESS)
                    landed = self.store.save_checkpoints([(self.ticket, draft)])
            except BaseException:
                self._write.release()
                raise
            self.periodic_done(draft, landed[0] if landed else None)

    def _write_grown(self) -> tuple[CheckpointDraft, list[bool] | None]:
        """Write everything past the marks in bounded parts, letting go of each as it lands
        (a long reply grew by a part: :meth:`_part_grown`); the driver between two chunks,
        holding ``_write``. The last write and its result: all True when every part landed
        (the lock is still held), else for :meth:`periodic_done`."""
        assert self.ticket is not None
        b = self.builder
        to = (b.text_length(), b.thinking_length())
        while True:
            self._written = b.chunks
            draft = self._draft(IN_PROGRESS)
            if self._nothing_inflight():
                return draft, [True]  # only a pair's high half: it waits for the other
            written = self.store.save_checkpoints([(self.ticket, draft)])
            if not (written and written[0]):
                return draft, written
            self._landed()
            self._let_go_landed()
            if (self._text_mark, self._thinking_mark) >= to or self._written == b.chunks:
                return draft, [True]

    # -- endings --------------------------------------------------------------------------

    def _finish(self) -> bool:
        """Become the one final writer; False if somebody already was. Holds ``_write``.
        (Through :meth:`_final_write`, which tells who waits once that write ended.)"""
        with self._claim:
            if self.finished:
                return False
            self.finished = True
            if self._landing is None:  # (else a failed commit's, handed on: see below)
                self._landing = []
            return True

    @contextlib.contextmanager
    def _final_write(self, claim: bool = True) -> Iterator[bool]:
        """For the block: whether it is the final write (:meth:`_finish`, if ``claim``).
        Once a final write ends (stored, or kept pending), who waits for it is told
        (:meth:`when_final_written`). A commit that failed (``finished`` is then False
        again) is not the reply's end: who waits is handed on to the failure path's final
        write, its checkpoint, and told once that one ends. Told at the failed commit,
        SIGTERM under asyncio found the checkpoint's claim (``finished`` again) and killed
        the process while that checkpoint waited for a lock (the same worker thread writes
        it, in :meth:`commit_whole`)."""
        claimed = claim and self._finish()
        try:
            yield claimed
        finally:
            if claimed:
                with self._claim:
                    waiting: list[tuple[Callable[[], None], bool]] = []
                    if self.finished:
                        waiting, self._landing = self._landing or [], None
                    elif self._landing:  # handed on: who does not wait for that is told now
                        waiting = [w for w in self._landing if not w[1]]
                        self._landing = [w for w in self._landing if w[1]]
                for told, _ in waiting:
                    told()

    def when_final_written(self, told: Callable[[], None], *, handed_on: bool = True) -> bool:
        """Call ``told`` (in the writing thread) once the final write under way ends;
        False, calling nothing, when none is (not begun, or over). ``finished`` is set
        as that write begins: SIGTERM under asyncio, finding the reply finished, waits
        for the write to end before the process dies (:mod:`rxcontext._loopterm`). After
        a commit that failed, until its failure path's checkpoint is written, one is
        under way too (``finished`` False meanwhile).

        ``handed_on=False``: told at a commit that failed too, and no write is under way
        between that failure and its failure path's checkpoint (which the driver's thread
        writes after the on_error hooks: a closing store must not wait for it, see
        :meth:`keep_refused`)."""
        with self._claim:
            if self._landing is None or not (handed_on or self.finished):
                return False
            self._landing.append((told, handed_on))
            return True

    @property
    def final_under_way(self) -> bool:
        """Whether a final write is under way (or a failed commit's failure path is to
        write the checkpoint): see :meth:`when_final_written`."""
        return self._landing is not None

    def keep_refused(self) -> bool:
        """The store closes: a last commit a busy database refused, whose failure path has
        not begun, keeps its checkpoint (what was delivered, interrupted) now, as
        :attr:`pending`, for ``close()`` to write. That path runs on the driver's thread
        after the on_error hooks: the thread closing the store (a hook), or one it blocks
        (the event loop of an asyncio reply): waited for, it never came, and the text its
        user was shown was lost. The failure path then finds the reply ended and raises
        the refusal, with a note. True if kept."""
        with self._claim:
            refused = self._refused  # set with ``finished`` (_complete)
            if refused is None or self.finished or self._landing is None:
                return False
        try:
            self._interrupt(describe_error(refused), refused, refused=refused)
        except StoreBusy:
            refused.add_note(
                "rxcontext: the store closed meanwhile: what was delivered was kept and "
                "written as the reply's checkpoint (interrupted) by store.close(), if the "
                "database could be written by then"
            )
            return self.pending
        return False

    def interrupt(self, error: BaseException | None) -> Checkpoint | None:
        """Write what was delivered as the reply's checkpoint, mark it ``INTERRUPTED``.

        Returns the stored checkpoint; None when the reply had already ended (completed,
        interrupted by a dispose from another thread, or taken over by another worker).
        A Ctrl-C (SIGTERM's ``SystemExit`` or ``Terminated``, a task's cancel) that came while
        the reply's commit waited for a lock that refused it is not followed by a second wait:
        the checkpoint is kept (:attr:`pending`), the refusal its cause (see :meth:`_interrupt`).
        Nor is SIGTERM at its default under asyncio, which the reply's :attr:`stop` says
        (:mod:`rxcontext._loopterm`: the process dies once the reply's final write ends;
        the checkpoint here is the failure path's, ``error`` the refusal).
        """
        stopping = isinstance(error, _STOPPING) or isinstance(self.stop, LoopTerminated)
        refused = self._refused if stopping else None
        return self._interrupt(describe_error(error), error, refused=refused)

    def _interrupt(
        self,
        why: str,
        error: BaseException | None = None,
        *,
        held: BaseException | None = None,
        refused: StoreBusy | None = None,
    ) -> Checkpoint | None:
        """Write the final checkpoint (``why``); ``held``: the exception being handled when
        ``error`` is not passed (a Ctrl-C in the subscriber's code). ``refused``: the commit
        this checkpoint replaces was just refused by a lock, after its wait: it is kept at
        once, not tried again (one wait for the lock, not two).

        A refusal is raised, but never in place of what is stopping the reply: a Ctrl-C
        (SIGTERM's ``SystemExit`` or ``Terminated``) is raised with it as its cause; a task's
        ``CancelledError`` gets it as its cause and is left to the asyncio driver that
        caught it to raise (None is returned), so the task ends cancelled (an
        ``asyncio.timeout`` says ``TimeoutError``) as it would without the lock."""
        with deferred(), self._write, self._final_write() as claimed:  # a Ctrl-C waits too
            if not claimed or self.ticket is None:
                return None
            self._hold()  # until written or given up (:meth:`_write_final`)
            self._final = (self._draft(why), error)
            try:
                if refused is not None:
                    raise refused
                saved = self._write_final()
            except StoreClosedError as closed:
                # The store was closed under the live reply (the app's shutdown path, a
                # hook): its error stays the store's, but says which reply lost what.
                lost = (
                    f"reply {self.reply_id!r} was not stored: the store was closed while it "
                    "streamed, and what it delivered is lost"
                )
                closed.add_note(f"rxcontext: {lost}")
                _log.warning("%s", lost)
                raise
            except StoreBusy as busy:
                # Kept (:attr:`pending`), and the reply held: the heartbeat writes it once
                # the database is free.
                refused = type(busy)(  # PoolBusy stays PoolBusy (its own remedy)
                    f"{busy}; what was delivered is kept and written as the reply's checkpoint "
                    "(interrupted) as soon as the database can be written, while this process "
                    "runs or as the store closes"
                )
                refused.__cause__ = busy.__cause__
                # A Ctrl-C (SIGTERM's SystemExit or Terminated, a cancel) that ended the reply
                # is the user's: they get it, the refusal as its cause, as without the lock.
                stopping = held or error
                if isinstance(stopping, CancelledError):
                    stopping.__cause__ = refused
                    return None
                if isinstance(stopping, _STOPPING):
                    raise stopping from refused
                raise refused from busy.__cause__
        return self._interrupted(saved, error)

    def _hold(self) -> None:
        """Keep the reply this process's for every reader, whatever its lease, from before
        a final write until :meth:`release_hold` (see :meth:`Store.hold_reply`)."""
        if self._held is None and self.ticket is not None:
            # A closed store: the write that follows says so, as it did.
            with contextlib.suppress(StoreError):
                self._held = self.store.hold_reply(self.ticket)

    def release_hold(self) -> None:
        """The final write is done or given up: the reply's row is judged by its lease
        again (idempotent)."""
        release, self._held = self._held, None
        if release is not None:
            release()

    @property
    def pending(self) -> bool:
        """Whether the reply's final checkpoint is still to be written: the database was
        busy when the reply ended (:meth:`write_pending`)."""
        return self._final is not None

    def write_pending(self, *, wait: bool = True) -> bool | None:
        """Write the final checkpoint a busy database refused (see :attr:`pending`): True
        once stored, False if there was none (or the reply was taken over meanwhile),
        None while the database is still busy (try again later).

        ``wait=False`` (the heartbeat, whose renewals of every other reply must never wait
        for this one): None at once if another writer holds ``_write`` (the driver still
        trying its final write), and one attempt that waits for no lock."""
        with deferred():
            if not self._write.acquire(blocking=wait):
                return None
            try:
                if self._final is None:
                    return False
                error = self._final[1]
                try:
                    saved = self._write_final(wait=wait)
                except StoreBusy:
                    return None
            finally:
                self._write.release()
        if saved and self.trace is not None:
            self._interrupted(saved, error)
        return saved

    def _write_final(self, *, wait: bool = True) -> bool:
        """Store the final checkpoint (``_final``), ``INTERRUPTED``; False if taken over.
        StoreBusy leaves it pending. The caller holds ``_write``. ``wait=False``: one
        attempt that waits for no lock (see :meth:`write_pending`)."""
        assert self.ticket is not None and self._final is not None
        draft, error = self._final
        try:
            if wait:
                saved = self.store.save_checkpoint(self.ticket, draft, state=ReplyState.INTERRUPTED)
            else:
                saved = self.store.save_checkpoint(
                    self.ticket, draft, state=ReplyState.INTERRUPTED, wait=False
                )
        except StoreBusy:
            raise  # kept: a busy database takes it later
        except BaseException as failed:
            self._final = None  # not a wait: nothing later would do better
            self.release_hold()
            if self.trace is not None:
                # Nothing stored (the store failed or closed): the span ends all the same.
                self.trace.interrupted(None, failed)
            raise
        self._final = None
        self.release_hold()  # written (or fenced): the row says so now
        if self.channel is not None:
            # Taken over or not, this epoch is over (a fenced end changes nothing).
            self.channel.end("interrupted")
        if not saved and self.trace is not None:
            # Taken over: nothing of ours to store, but our span ends.
            self.trace.interrupted(None, error or self.lost)
        return saved

    def _interrupted(self, saved: bool, error: BaseException | None) -> Checkpoint | None:
        """The checkpoint the final write stored (None if it was taken over); the span ends."""
        if not saved:
            return None
        assert self.ticket is not None
        checkpoint = self.store.get_checkpoint(self.ticket.checkpoint_id)
        if self.trace is not None:
            self.trace.interrupted(checkpoint, error)
        return checkpoint

    def whole(self, answers_calls: bool) -> bool:
        """Whether what was delivered ends the reply: the last chunk folded is a round's
        ``DONE`` with no tool call left to run (``answers_calls``: the window runs the
        reply's calls itself, so a round with calls is followed by another), and no stop was
        asked. A subscriber that lets go then has the whole reply: it is committed, not
        interrupted (the driver does it)."""
        builder = self.builder
        return (
            self.stop is None
            and builder.ends_at_done()
            and not (answers_calls and builder.has_calls())
        )

    def cancel_from_elsewhere(self, answers_calls: bool = False) -> None:
        """A dispose from another thread: write the checkpoint now unless the driver is
        delivering a chunk (then it does, right after that chunk) or the subscriber had the
        whole reply (:meth:`whole`: then the driver commits it)."""
        with self._claim:
            if self.finished or self.ticket is None:
                return
            self._claimed = True
            busy = self.busy
            keep = not busy and self.whole(answers_calls)
            self._claimed = False
        if not busy and not keep:
            self.interrupt(None)

    def commit_whole(self, held: BaseException | None = None) -> None:
        """The subscriber let go holding the reply's final ``DONE`` (:meth:`whole`): commit
        the reply as its end does. Nothing is raised for a subscriber that is gone: a reply
        stored but not valid for its schema stays stored; one that could not be stored is
        interrupted instead (its checkpoint holds every chunk delivered). A commit a lock
        refused is not followed by a second wait: its checkpoint is kept (:attr:`pending`)
        and the refusal raised (``held``, a Ctrl-C that let go, with it as its cause; a
        task's ``CancelledError``, see :meth:`_interrupt`). Nor is a commit tried again
        once a lock refused it (``held`` came while it waited: a Ctrl-C the write held, a
        cancel of the task awaiting it)."""
        refused = self._refused
        if refused is None:
            try:
                self.complete(self.reply(), last=True)
                return
            except StoreBusy as busy:
                refused = busy
            except Exception as error:
                if not self.finished:
                    self.interrupt(error)
                return
        if not self.finished:
            self._interrupt(describe_error(refused), refused, held=held, refused=refused)

    def let_go(self, answers_calls: bool) -> Checkpoint | None:
        """The subscriber let go while the driver was idle (its asyncio task ended holding a
        chunk): commit the reply if it had it whole (:meth:`whole`), else interrupt it.
        Returns the checkpoint an interrupt stored."""
        if self.whole(answers_calls):
            self.commit_whole()
            return None
        return self.interrupt(None)

    def stopped_by_user_code(self, answers_calls: bool) -> None:
        """The subscriber's own code raised: keep what it received, but not its error
        (a Ctrl-C landing there is still let go, see :meth:`_interrupt`). Raised on the
        reply's final ``DONE`` (:meth:`whole`), it had every chunk: the reply is committed,
        as an asyncio consumer's raising there has it.

        The user's exception is theirs, whatever the store does: a final write that fails
        (a lock refused it: it is kept, :attr:`pending`) is told in a note on it, not raised
        in its place; a Ctrl-C gets it as its cause (:meth:`_interrupt`)."""
        held = sys.exc_info()[1]
        try:
            if self.whole(answers_calls):
                self.commit_whole(held)
            else:
                self._interrupt("cancelled: the subscriber's code raised", held=held)
        except Exception as failed:
            if not isinstance(held, Exception):
                raise
            held.add_note(f"rxcontext: the reply's final write failed: {failed}")

    def interrupted(self, error: BaseException) -> BaseException:
        """:meth:`interrupt`, then what the subscriber should get: a
        :class:`StreamInterrupted` carrying the checkpoint, or ``error`` itself when there
        was nothing left to interrupt (the reply had been stored, or taken over)."""
        checkpoint = self.interrupt(error)
        if checkpoint is None:
            if error is self.stop and self.stop is not None and self.lost is None:
                stopped = self.stopped or self._stored()
                if stopped is not None:
                    return StreamInterrupted(stopped)
            return self.lost if self.lost is not None else error
        if error is self.stop:
            self.stopped = checkpoint
        return StreamInterrupted(checkpoint)

    def stop_now(self, error: RxContextError) -> Checkpoint | None:
        """Stored as stopped now, from another thread (the driver delivers nothing more):
        the checkpoint, or None if the reply had ended already."""
        checkpoint = self.interrupt(error)
        if checkpoint is not None:
            self.stopped = checkpoint
        return checkpoint

    def _stored(self) -> Checkpoint | None:
        """The reply's row as stored (a stop written by another thread a moment ago)."""
        if self.ticket is None:
            return None
        try:
            checkpoint = self.store.get_checkpoint(self.ticket.checkpoint_id)
        except RxContextError:
            return None
        return checkpoint if checkpoint.state is ReplyState.INTERRUPTED else None

    @property
    def resuming(self) -> Checkpoint | None:
        """The checkpoint this round continues (None when not resuming, or after round one)."""
        return self._resume

    def continue_natively(self) -> None:
        """This round continues the checkpoint's own stream (native resume), not a new reply.

        The checkpoint's tool-call fragments are folded in first, so a call cut mid-arguments
        is completed by the rest of its stream, and so is a surrogate pair's high half kept
        beside its text (``HELD_KEY``), which the stream's low half completes; the text and
        thinking are kept as prefixes, as for a continuation. Idempotent (a retry of the
        round calls it again).
        """
        if self._resume is None or self._seeded or self.builder.chunks:
            return
        self._native = True
        # The stream is the checkpoint's own response: the model it names made it and bills
        # it, whatever model the window uses now.
        named, provider = self._resume.metadata.get("model"), self._resume.metadata.get("provider")
        self._made_by = (
            {"model": named, "provider": provider if isinstance(provider, str) else None}
            if isinstance(named, str) and named
            else None
        )
        point = self._resume.metadata.get(NATIVE_RESUME_KEY)
        before = point.get(BILLED_BEFORE) if isinstance(point, Mapping) else None
        self._billed_before = (
            Usage.from_dict(before) if before and Usage.problem(before) is None else None
        )
        # The high half the checkpoint kept beside its text: the stream goes on with the
        # other half, and they are one character again.
        held = self._resume.metadata.get(HELD_KEY)
        if isinstance(held, Mapping):
            for kind, key in ((ChunkKind.TEXT, "text"), (ChunkKind.THINKING, "thinking")):
                half = held.get(key)
                if isinstance(half, int) and 0xD800 <= half <= 0xDBFF:
                    self.builder.add(Chunk(kind, chr(half)))
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
        self._seeded = self._written = self.builder.chunks

    def continue_with_prompt(self) -> None:
        """Native resume failed before any chunk: this round is a continuation after all."""
        self._native = False
        if self._seeded:
            self._fresh_builder()

    def _fresh_builder(self) -> None:
        """A new builder, and the marks of what was written from the last one reset (a
        round that starts again from nothing)."""
        self.builder = self._new_builder()
        self._text_mark = self._thinking_mark = 0
        self._inflight_text = self._inflight_thinking = 0  # (admit_rewind reads them)
        self._pairs = ()
        self._seeded = self._written = 0

    # -- completion -----------------------------------------------------------------------

    def reply(self) -> Reply:
        """The round's reply so far (a resumed round includes the checkpoint's text and the
        usage its cut attempts were billed; a round sent again, its failed attempts').

        A long reply whose builder let go of what its checkpoint holds has no text here (its
        rest is not joined either): :meth:`complete` commits it whole from the checkpoint
        and :attr:`final` holds it whole."""
        reply = self.builder.build(
            text=not self._from_parts, thinking=not self._thinking_from_parts
        )
        carried = self._billed()
        if self._prefix or self._prefix_thinking or carried is not None:
            reply = replace(
                reply,
                text=self._prefix + reply.text,
                thinking=self._prefix_thinking + reply.thinking,
                usage=_plus(carried, reply.usage),
            )
        return reply

    def _carried_usage(self) -> Usage | None:
        """What the checkpoint this round continues was billed for (its cut attempts): a
        continuation carries it on; a native resume's stream reports its response's whole
        usage itself, so it carries only what was billed before that response (an earlier
        attempt's, kept beside the point: ``BILLED_BEFORE``)."""
        resumed = self._resume
        if resumed is None:
            return None
        return self._billed_before if self._native else resumed.usage

    def _model_keys(self) -> dict[str, str | None]:
        """``model`` and ``provider`` of the model that made this round's stream, which its
        record and checkpoint name: the window's, or for a native round the model its
        checkpoint names (it made the response the round continues)."""
        if self._native and self._made_by is not None:
            return self._made_by
        return model_keys(self.model_name)

    def _usage_by_model(self) -> list[dict[str, Any]] | None:
        """The round's usage by the model that billed each part (``USAGE_BY_MODEL``) when
        the checkpoint it resumes was billed by another model than the one that made the
        round's stream (:meth:`_model_keys`; a window may resume on another); None when
        that model billed it all, or the checkpoint names no model (then, as ever, it is
        priced as this one). A native round's stream is its checkpoint's model's, which
        reports the response's whole usage (:func:`~rxcontext.usage_by_model.natively`)."""
        resumed = self._resume
        if resumed is None or resumed.usage is None:
            return None
        keys = self._model_keys()
        if self._native:
            return natively(
                resumed.metadata,
                self._billed_before,
                keys["provider"],
                keys["model"],
                self.builder.usage,
            )
        carried = parts_of(resumed.metadata, resumed.usage)
        if carried is None:
            return None
        own = _plus(self._set_aside, self.builder.usage)
        return by_model(carried, keys["provider"], keys["model"], own)

    def billed(self) -> Usage | None:
        """What this reply has been billed that its stored records do not count: its
        current round's attempts (those sent again included) and what it carries from the
        checkpoint it resumes. For the budget's check before a retry, on the driver's
        thread (or off the loop while the asyncio driver waits for it)."""
        return _plus(self._billed(), self.builder.usage)

    def billed_by_model(self) -> list[Part] | None:
        """:meth:`billed` by the model that billed each part, as the stored reply will be
        priced (:meth:`_usage_by_model`, else all by :meth:`_model_keys`' model): a resumed
        round's carried usage by the model its checkpoint names, a native round's stream by
        the model that made it, whatever model the window uses now."""
        billed = self.billed()
        if billed is None:
            return None
        split = parse(self._usage_by_model())
        if split is not None:
            return split
        keys = self._model_keys()
        return [(keys["provider"], keys["model"], billed)]

    def _billed(self) -> Usage | None:
        """What this round was billed before its current attempt's stream: the usage it
        carries from its checkpoint and that of its attempts sent again."""
        return _plus(self._carried_usage(), self._set_aside)

    def complete(self, reply: Reply, *, last: bool) -> bool:
        """Commit the finished round durably; ``last``: the reply ends with it.

        False (nothing stored) if the reply had already ended — disposed from another
        thread while the round finished; raises :class:`OwnershipLost` if another worker
        took it over.
        """
        # Held from before the fence: the commit may wait for another process's lock longer
        # than the lease has left, and no reader may take the reply for dead meanwhile.
        self._hold()
        try:
            done = self._complete(reply, last=last)
        except StoreBusy:
            raise  # still held: the failure path's final checkpoint follows (and lets go)
        except BaseException:
            if self._refused is None:  # else a Ctrl-C the refused write held: as above
                self.release_hold()
            raise
        self.release_hold()
        return done

    def _complete(self, reply: Reply, *, last: bool) -> bool:
        assert self.ticket is not None
        if self.fence is not None:
            self.fence()
        # A long reply the builder let go of is committed from its checkpoint's parts: no
        # periodic write may land meanwhile (the text past the mark is the rest), so even
        # the last round's commit waits for one in flight here.
        from_parts = self._from_parts or self._thinking_from_parts
        # The builder's blocks were freed by the join (:meth:`reply`), or as checkpoints
        # landed: give their memory back before SQLite allocates its copies of a long reply
        # (rxcontext/_memory.py). Here, not in reply(): the async driver runs this off its
        # event loop.
        b = self.builder
        let_go(len(reply.text) + len(reply.thinking) + b.text_gone + b.thinking_gone)
        failure: str | None = None
        # The last round's commit does not wait for a periodic write of this reply that is
        # in flight (the checkpointer's batch of every reply, which may wait for a lock, a
        # connection or the server for tens of milliseconds): the commit stores records,
        # not the checkpoint's text, and once it lands the store fences that write (the
        # reply's row is no longer streaming). A tool round's commit still waits: the next
        # round's checkpoint starts from it.
        with (
            deferred(),
            self._write if not last or from_parts else contextlib.nullcontext(),
            self._final_write(last) as claimed,
        ):
            if last and not claimed:
                return False
            if not last and self.finished:
                return False
            about = self._about(reply)
            schema = self.output_schema
            if last and schema is not None:
                about["schema"] = schema.to_dict()
                if reply.finish_reason == REFUSED:
                    # Whatever its text, a refusal is no answer to validate.
                    failure = about["parse_error"] = "the model refused to answer"
                else:
                    try:
                        parsed = schema.validate(reply.text, optional_nulls=self.optional_nulls)
                    except SchemaFailure as exc:
                        failure = str(exc)
                        about["parse_error"] = failure
                    else:
                        about["parsed"] = _json_safe(schema.dump(parsed))
                        reply = replace(reply, parsed=parsed)
            try:
                parts: dict[str, bool] = {}
                commit: Callable[..., list[Record]]
                if from_parts:
                    reply, drafts, parts = self._drafts_from_parts(reply, about)
                    commit = functools.partial(
                        self.store.commit_reply_from_parts,  # type: ignore[attr-defined]
                        **parts,
                    )
                else:
                    drafts = reply_drafts(reply, streamed=self._streamed, about=about)
                    commit = self.store.commit_reply
                records: list[Record] = commit(
                    self.context_id,
                    drafts,
                    usage=reply.usage,
                    last_response_id=reply.response_id,
                    reply=self.ticket,
                    end="reply" if last else "round",
                    commit_id=self._commit_id(),
                    thread_version=self.thread_version,
                )
                # What the checkpoint held, read back from the row: the record's and ours.
                if parts.get("text"):
                    reply = replace(reply, text=records[0].content)
                if parts.get("thinking"):
                    reply = _with_stored_thinking(reply, records[0])
            except BaseException as failed:
                # Nothing was stored: the reply is not over, so the failure path's final
                # write (its checkpoint, every chunk delivered) must still happen.
                with self._claim:
                    self.finished = False
                    if isinstance(failed, StoreBusy):
                        # After its wait: that write does not wait again, whatever ends the
                        # reply (a Ctrl-C this block holds is raised in this one's place).
                        # Set with ``finished`` (one lock): a store.close() between the two
                        # saw neither a refusal to keep nor a write under way (keep_refused).
                        self._refused = failed
                raise
            self.records = [*self.records, *records]
            # The store's copies of a long reply are freed: hand them back (rxcontext/_memory.py).
            let_go(len(reply.text) + len(reply.thinking))
            if reply.usage is not None:
                self._usage_total = (
                    reply.usage if self._usage_total is None else self._usage_total + reply.usage
                )
            self.final = reply
            self._next_round()
            if last and self.channel is not None:
                self.channel.end("completed")  # after the commit: watchers can read it
        if self.trace is not None:
            self.trace.round(reply)
            if last:
                self.trace.completed()
        if failure is not None:
            assert schema is not None
            if reply.finish_reason == REFUSED:
                raise ModelRefused(
                    f"the model refused to answer for the schema {schema.name!r} (the refusal "
                    f"is stored as the reply; its text is on this error's .text): {reply.text}",
                    text=reply.text,
                    reply=reply,
                    errors=failure,
                )
            raise SchemaValidationError(
                f"the reply is not valid for the schema {schema.name!r} (it is stored as it "
                f"came; its text is on this error's .text): {failure}",
                text=reply.text,
                reply=reply,
                errors=failure,
            )
        return True

    def _drafts_from_parts(
        self, reply: Reply, about: dict[str, Any]
    ) -> tuple[Reply, list[RecordDraft], dict[str, bool]]:
        """The records of a reply whose text (thinking) its checkpoint holds up to the text
        (thinking) mark, for ``commit_reply_from_parts``, and which of the two it takes from
        the checkpoint (its keywords); and the reply (with its reasoning where it was read
        back whole, below). The rest is written into the checkpoint first
        (:meth:`_catch_up`), then the MODEL_RESP holds whatever rest no write took (the
        caller holds ``_write``): its content, and its metadata's ``thinking`` (with the
        thinking blocks as the store keeps them, spans of it); the store writes the
        checkpoint's text before it a slice at a time. A failure leaves the marks where the
        checkpoint stands: the failure path's final write appends what it does not hold.

        Where the store's packing of the thinking blocks could differ from the spans the
        builder knows (:meth:`ReplyBuilder.spanned_blocks`), or a provider keeps its own
        ``thinking`` in the metadata, the reasoning is read back from the checkpoint whole
        and stored as a whole reply's is (rare: blocks arrive one after the other)."""
        self._catch_up()
        b = self.builder
        texts = self._from_parts
        if texts:
            rest, _ = b.text_from(self._text_mark)
            reply = replace(reply, text=rest)
        if not self._thinking_from_parts:
            drafts = reply_drafts(reply, streamed=self._streamed, about=about, spoke=texts)
            return reply, drafts, {"text": texts}
        rest, _ = b.thinking_from(self._thinking_mark)
        pairs = [*self._pairs, *_pairs_in(rest, self._thinking_mark)]

        def at(p: int) -> int:  # the builder's position p in the stored reasoning
            return p - bisect.bisect_left(pairs, p - 1)

        blocks = b.spanned_blocks(at)
        if blocks is None or "thinking" in reply.metadata:
            assert self.ticket is not None
            held = self.store.get_checkpoint(self.ticket.checkpoint_id).thinking
            thinking = held + storable(rest)
            metadata = dict(reply.metadata)
            found = b.blocks_of(thinking, at)
            if found:
                metadata["thinking_blocks"] = found
            reply = replace(reply, thinking=thinking, metadata=metadata)
            drafts = reply_drafts(reply, streamed=self._streamed, about=about, spoke=texts)
            return reply, drafts, {"text": texts}
        metadata = dict(reply.metadata)
        if blocks:
            metadata["thinking_blocks"] = blocks
        metadata["thinking"] = rest
        drafts = reply_drafts(
            replace(reply, thinking="", metadata=metadata),
            streamed=self._streamed,
            about=about,
            spoke=texts,
        )
        return reply, drafts, {"text": texts, "thinking": True}

    def _about(self, reply: Reply) -> dict[str, Any]:
        sent, first = self._sent_at, self._first_at
        now = self._clock()
        waited = (first - sent) * 1000 if sent is not None and first is not None else None
        about = reply_metadata(
            reply,
            model_name=self.model_name,
            first_chunk_ms=waited,
            duration_ms=(now - sent) * 1000 if sent is not None else None,
            resumed=self._resume is not None,
        )
        about.update(self._model_keys())  # a native round's: the model that made its stream
        split = self._usage_by_model()
        if split is not None:  # its cut attempts were billed by another model
            about[USAGE_BY_MODEL] = split
        return about

    def store_tool_outputs(self, drafts: Sequence[RecordDraft]) -> list[Record]:
        """Store the tool outputs of a round (one transaction) at the reply's position;
        none once the reply ended meanwhile (disposed while its tools ran: the next request
        answers its calls, as on the asyncio path, whose cancelled tools return nothing)."""
        assert self.ticket is not None
        with deferred(), self._write:  # a Ctrl-C waits too
            if self.finished:
                return []
            records = self.store.commit_reply(
                self.context_id, drafts, reply=self.ticket, commit_id=self._commit_id()
            )
            self.records = [*self.records, *records]
        return records

    def _commit_id(self) -> str:
        """The idempotency key of this run's next commit: reply, epoch, commit number."""
        assert self.ticket is not None
        self._commits += 1
        return f"{self.reply_id}:{self.ticket.epoch}:{self._commits}"

    def _next_round(self) -> None:
        with self._claim:
            self._fresh_builder()
            self._set_aside = None
            self._from_parts = self._thinking_from_parts = False
        if self._cursor is not None:
            self._cursor.begin()  # the next round's stream has not started yet
        self._prefix = ""
        self._prefix_thinking = ""
        self._native = False
        self._resume = None

    @property
    def usage_total(self) -> Usage | None:
        """Provider usage summed over every committed round of this run."""
        return self._usage_total


_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _pairs_in(thinking: str, start: int) -> tuple[int, ...]:
    """Where ``thinking`` (from position ``start`` of the reasoning) has a surrogate pair
    (a provider cut an emoji between two deltas): positions of the high halves. A tuple,
    the empty one nearly always: every periodic write keeps it until the next, and a new
    list a reply a tick would be promoted to the collector's oldest generation each time."""
    if thinking.isascii():
        return ()
    return tuple(start + m.start() for m in _PAIR.finditer(thinking))


def _with_stored_thinking(reply: Reply, record: Record) -> Reply:
    """``reply`` with the reasoning its record holds (read back from the row once) and the
    thinking blocks with their text, as a whole reply has them."""
    metadata = dict(reply.metadata)
    blocks = record.metadata.get("thinking_blocks")
    if blocks:
        metadata["thinking_blocks"] = blocks
    else:
        metadata.pop("thinking_blocks", None)
    return replace(reply, thinking=record.metadata["thinking"], metadata=metadata)


def _plus(a: Usage | None, b: Usage | None) -> Usage | None:
    """Two usages added, either of them absent."""
    if a is None:
        return b
    return a if b is None else a + b
