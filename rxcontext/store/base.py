"""The storage interface the window and the persister use.

Small on purpose: SQLite (:mod:`.sqlite`) is the embedded default; other stores implement
the same protocol and pass the same conformance tests. Implementations must be safe to call
from several threads.

Replies have a lifecycle row (a :class:`~rxcontext.records.Checkpoint`) from the moment
their request is sent: :meth:`Store.begin_reply` creates it ``STREAMING`` at the reply's
reserved position; checkpoint writes append what was delivered since the last one;
:meth:`Store.commit_reply` stores the records at the reply's position and settles the row
(deleted if the reply was never interrupted; else kept, holding what it had delivered when it
was last cut, as a kept or discarded reply's row does).
Every write to a reply names the ``epoch`` its writer holds (a :class:`ReplyTicket`): once
another worker has claimed the reply, the old writer's writes change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from ..attachments import Attachment
from ..chunks import Usage
from ..errors import CheckpointResolved, ReplyBusy
from ..records import (
    FRESH,
    Checkpoint,
    Context,
    ContextStats,
    Record,
    RecordType,
    ReplyState,
    slot_setters,
)
from ..usage_by_model import USAGE_BY_MODEL

__all__ = [
    "IN_PROGRESS",
    "NAME_LIMIT",
    "ORPHANED",
    "TOTAL_MAX",
    "CheckpointDraft",
    "RecordDraft",
    "ReplyEnd",
    "ReplyTicket",
    "Spending",
    "Store",
    "check_name",
    "check_text",
    "checkpoint_key",
    "discarded_draft",
    "kept_metadata",
    "settle_refusal",
    "usage_counts",
]

IN_PROGRESS = "in progress"
"""The ``error`` of a checkpoint written while its reply was still streaming."""
ORPHANED = "its process stopped before the reply ended"
"""The ``error`` a reader sees on a reply whose owner died while it streamed."""


TOTAL_MAX = 2**63 - 1
"""The largest count a context's usage totals hold (a 64-bit database integer: SQLite's
INTEGER, PostgreSQL's bigint). A total that would pass it stays at it, on every store: no
provider bills that much, so only a bogus usage gets there, and a reply is never refused
(its text never lost) because a running total would overflow."""


def usage_counts(usage: Usage, fields: Sequence[str]) -> list[int]:
    """The counts of ``usage`` named by ``fields`` (in order) as they are added to a
    context's totals: each held to ``0..TOTAL_MAX`` (a negative count, which no provider
    really sends, adds nothing). The reply's own usage (its checkpoint's, its record's
    metadata) is kept as it came."""
    return [min(max(getattr(usage, f), 0), TOTAL_MAX) for f in fields]


NAME_LIMIT = 1024
"""The most bytes of UTF-8 a context name, a reply id or a tool name may take, on every store.

PostgreSQL keeps each in a unique index, whose entries hold about 2.7 KB at most; 1,024
bytes always fit, NULs included (:mod:`.pg_codec` escapes each in 4 bytes, which the index
compresses). SQLite refuses a longer one too, so a database's names fit either store; a
longer one an existing database holds is still read."""


def check_text(value: str, what: str) -> None:
    """A ``ValueError`` if ``value`` (a ``what``) is no UTF-8 text: it holds a lone surrogate
    (from bytes decoded with ``surrogateescape``, say), which neither store can hold, and
    which would otherwise fail deep inside the database driver with the codec's error."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"the {what} is not UTF-8 text (a lone surrogate {value[exc.start]!r} at index "
            f"{exc.start}); give one made of characters"
        ) from None


def check_name(value: object, what: str) -> None:
    """A ``ValueError`` if ``value`` (a ``what``: "context name", "reply id", "tool name")
    is longer than :data:`NAME_LIMIT` bytes of UTF-8, or is no UTF-8 text at all (a lone
    surrogate, which no database holds); raised before anything is written."""
    if not isinstance(value, str):
        return
    check_text(value, what)
    if len(value) <= NAME_LIMIT // 4:  # 4 bytes a character at most
        return
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > NAME_LIMIT:
        raise ValueError(
            f"the {what} is {size:,} bytes of UTF-8, over the limit of {NAME_LIMIT:,} bytes"
            " for context names, reply ids and tool names; give a shorter one"
        )


def checkpoint_key(checkpoint_id: object) -> int | None:
    """The row id ``checkpoint_id`` names, or None: it names none, on every store.

    A checkpoint id is an int of 64 bits. ``True`` is not checkpoint 1 (SQLite would read it
    as 1), nor are ``"1"`` or ``1.0`` (both databases would convert them), and an int past
    64 bits fits no column: looked up as None, they find nothing (``CheckpointNotFound``).
    """
    if isinstance(checkpoint_id, bool) or not isinstance(checkpoint_id, int):
        return None
    return int(checkpoint_id) if -(2**63) <= checkpoint_id < 2**63 else None


_DONE = {"keep": "kept", "discard": "discarded", "resume": "resumed"}


def settle_refusal(checkpoint: Checkpoint, verb: str) -> CheckpointResolved | None:
    """Why ``checkpoint`` cannot be resumed, kept or discarded now (``verb``), or None.

    A reply whose owner died reads as interrupted, so it can be settled.
    """
    state = checkpoint.state
    if state.final:
        return CheckpointResolved(
            f"checkpoint {checkpoint.id} was already {state.value}; nothing to {verb}"
        )
    if state.live:
        doing = "is still streaming" if state is ReplyState.STREAMING else "is being resumed"
        return ReplyBusy(
            f"reply {checkpoint.reply_id!r} (checkpoint {checkpoint.id}) {doing} by "
            f"{checkpoint.owner}; it can be {_DONE.get(verb, verb + 'd')} once it stops "
            "(stop it, or let it end)",
            state=state.value,
        )
    return None


@dataclass(frozen=True, slots=True)
class RecordDraft:
    """A record not stored yet (the store assigns id, position, timestamp and token estimate)."""

    type: RecordType
    content: str
    live: bool = True
    response_id: str | None = None
    streamed: bool = False
    tool_call_id: str | None = None
    tool_name: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None
    """When the record was made, for records brought in from elsewhere (an import); None:
    now. A naive time is taken as UTC (as an import takes it), on every store. Display
    only: order is positions."""
    attachments: Sequence[Attachment] = ()
    """Images and files sent with the record (a prompt's), in order; stored once per content."""
    inherited: bool = False
    """Copied from another context (a fork's, or an import of a clone's): what its reply
    was billed is that context's spend (see :attr:`.records.Record.inherited`)."""

    def __post_init__(self) -> None:
        ts = self.timestamp
        if ts is not None and ts.tzinfo is None:
            object.__setattr__(self, "timestamp", ts.replace(tzinfo=UTC))


@dataclass(frozen=True, slots=True)
class CheckpointDraft:
    """What to write into a reply's checkpoint.

    ``append_text`` / ``append_thinking`` are *added* to what the checkpoint holds (so a
    periodic write costs the new text only); the other fields replace the stored ones.
    """

    append_text: str = ""
    append_thinking: str = ""
    tool_calls: Sequence[Mapping[str, Any]] = ()
    usage: Usage | None = None
    error: str | None = None
    chunks: int = 0
    response_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    # Every periodic tick makes one per streaming reply (thousands a tick at many streams):
    # written through the slots' descriptors, as Record's, rather than the generated
    # constructor's object.__setattr__ per field. Same signature, same values.
    def __init__(
        self,
        append_text: str = "",
        append_thinking: str = "",
        tool_calls: Sequence[Mapping[str, Any]] = (),
        usage: Usage | None = None,
        error: str | None = None,
        chunks: int = 0,
        response_id: str | None = None,
        metadata: Mapping[str, Any] = FRESH,
    ) -> None:
        _d_append_text(self, append_text)
        _d_append_thinking(self, append_thinking)
        _d_tool_calls(self, tool_calls)
        _d_usage(self, usage)
        _d_error(self, error)
        _d_chunks(self, chunks)
        _d_response_id(self, response_id)
        _d_metadata(self, {} if metadata is FRESH else metadata)


(
    _d_append_text,
    _d_append_thinking,
    _d_tool_calls,
    _d_usage,
    _d_error,
    _d_chunks,
    _d_response_id,
    _d_metadata,
) = slot_setters(CheckpointDraft)


class _DraftSlots:
    """A shell of :class:`CheckpointDraft`'s layout (as ``chunks._ChunkSlots`` is of a
    Chunk's): filled with the interpreter's own slot stores, then made a CheckpointDraft
    (CPython lets ``__class__`` change between classes of the same slots and base)."""

    __slots__ = CheckpointDraft.__slots__
    append_text: str
    append_thinking: str
    tool_calls: Sequence[Mapping[str, Any]]
    usage: Usage | None
    error: str | None
    chunks: int
    response_id: str | None
    metadata: Mapping[str, Any]


def new_draft(
    append_text: str,
    append_thinking: str,
    tool_calls: Sequence[Mapping[str, Any]],
    usage: Usage | None,
    error: str | None,
    chunks: int,
    response_id: str | None,
    metadata: Mapping[str, Any],
) -> CheckpointDraft:
    """``CheckpointDraft(...)`` of all eight fields (the same value), a third of its cost:
    every periodic tick makes one for each streaming reply."""
    d = _DraftSlots()
    d.append_text = append_text
    d.append_thinking = append_thinking
    d.tool_calls = tool_calls
    d.usage = usage
    d.error = error
    d.chunks = chunks
    d.response_id = response_id
    d.metadata = metadata
    d.__class__ = CheckpointDraft  # type: ignore[assignment]
    return d  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Spending:
    """What a budget check reads of a context, all of it as of one moment (a store's
    ``budget_spent``): its :class:`~rxcontext.ContextStats` (settled totals and name), its
    records if asked (what its settled replies cost), and what its unsettled replies
    (interrupted, or under way) were billed as their rows say, ``(usage, metadata)`` each:
    a reply claimed for a resume, or settled, meanwhile is counted once, never dropped."""

    stats: ContextStats
    records: Sequence[Record]
    unsettled: Sequence[tuple[Usage, Mapping[str, Any]]]


UNSETTLED_USAGE = (
    "SELECT reply_id, usage, metadata FROM checkpoints WHERE context_id = {param}"
    " AND state IN ('interrupted', 'streaming', 'resuming') AND usage IS NOT NULL"
    " ORDER BY pos, id"
)
"""A context's unsettled replies' billing (:attr:`Spending.unsettled`), never their text;
``{param}``: the driver's placeholder."""


def unsettled_spending(
    found: Iterable[tuple[Any, Any, Any]],
    own: str | None,
    unjson: Callable[[Any, Any], Any],
    reply_id: Callable[[Any], str] = str,
) -> list[tuple[Usage, Mapping[str, Any]]]:
    """:attr:`Spending.unsettled` from the rows of :data:`UNSETTLED_USAGE` (decoded by the
    store's ``unjson`` and ``reply_id``): those with usage, reply ``own``'s left out."""
    spent = []
    for rid, usage, metadata in found:
        counts = unjson(usage, None)
        if counts and (own is None or reply_id(rid) != own):
            spent.append((Usage.from_dict(counts), unjson(metadata, {})))
    return spent


@dataclass(frozen=True, slots=True)
class ReplyTicket:
    """The right to write into one reply: its checkpoint row and the epoch its writer holds.

    ``owner``: the worker id that began or claimed the row (``Checkpoint.owner``), when
    known. A row keeps its owner for as long as its epoch is live (a new owner is a new
    epoch), so a store may look rows up by it: PostgreSQL finds one worker's live rows by
    its index, where the tickets alone would read every worker's."""

    checkpoint_id: int
    epoch: int
    owner: str | None = None


ReplyEnd = Literal["reply", "round"]
"""How a commit settles its reply: ``"reply"`` completes it; ``"round"`` stores one tool
round and keeps the reply streaming (its checkpoint starts over for the next round)."""


class Store(Protocol):
    """What rxcontext needs from a database."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        ...

    lease_ttl: float
    """Seconds a reply's lease lasts without renewal before other hosts may take it over."""

    def close(self) -> None:
        """Release the connection; later calls raise :class:`~rxcontext.StoreClosedError`."""
        ...

    # contexts
    def get_or_create_context(self, name: str) -> Context: ...
    def create_context(self, name: str) -> Context: ...
    def list_contexts(self) -> list[Context]: ...
    def get_context(self, context_id: str) -> Context: ...
    def get_context_by_name(self, name: str) -> Context: ...
    def delete_context(self, context_id: str) -> None: ...
    def clone_context(self, context_id: str, dest_name: str) -> Context: ...
    def export_context(self, context_id: str) -> dict[str, Any]: ...
    def context_stats(self, context_id: str) -> ContextStats: ...
    def set_threading(self, context_id: str, enabled: bool) -> None: ...
    def set_last_response_id(self, context_id: str, response_id: str | None) -> None: ...
    def import_context(
        self,
        name: str,
        drafts: Sequence[RecordDraft],
        *,
        tools: Sequence[tuple[str, Mapping[str, Any]]] = (),
        usage: Usage | None = None,
        server_side_threading: bool = False,
        last_response_id: str | None = None,
    ) -> Context:
        """Create the context ``name`` whole, in one durable transaction: ``drafts`` in
        order, each at a position of its own (their timestamps kept), its ``tools`` (name and
        definition), ``usage`` as its totals, its threading flag and last response id.

        The store's half of :func:`rxcontext.interop.import_context` (and of a fork): no
        other reader or writer ever sees part of it, and a failure or a killed process
        leaves nothing, so there is nothing to clean up. Raises ``ValueError``, writing
        nothing, if a context of that name exists (checked and created at once)."""
        ...

    # records
    def add_record(self, context_id: str, draft: RecordDraft) -> Record: ...
    def records(
        self, context_id: str, *, live_only: bool = False, upto: int | None = None
    ) -> list[Record]: ...
    def history(self, context_id: str, *, since: int | None = None) -> tuple[int, list[Record]]:
        """The context's version (it moves on with every write to the context) and its
        records (live and dead) written or changed since version ``since`` — all of them when
        None — in conversation order. A reader that keeps the records it was given and asks
        again with the version it got stays up to date, other processes' writes included."""
        ...

    def live_tokens(self, context_id: str) -> int:
        """Estimated tokens of the context's live records, kept up to date on every write."""
        ...

    def import_records(
        self, context_id: str, drafts: Sequence[RecordDraft], *, usage: Usage | None = None
    ) -> list[Record]:
        """Append ``drafts`` in order, each at a position of its own, in one transaction
        (their timestamps kept), and add ``usage`` to the context's totals: an import."""
        ...

    def set_live_range(
        self, context_id: str, start: int, end: int, live: bool, *, live_only: bool = False
    ) -> int:
        """Set ``live`` on the records at indexes ``start``..``end`` (inclusive) of the
        context's records in order — of its live records only, if ``live_only``."""
        ...

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
        reply: ReplyTicket | None = None,
        end: ReplyEnd | None = None,
        at: int | None = None,
        commit_id: str | None = None,
        thread_version: int | None = None,
    ) -> list[Record]:
        """Store ``drafts`` durably in one transaction, at the reply's position.

        With ``reply`` the records go to that reply's position (and name it), the write is
        refused with :class:`~rxcontext.OwnershipLost` unless the ticket's epoch still owns
        a live reply, and ``end`` settles it. Without, they go at position ``at`` (or the
        next one). ``usage`` is added to the context's totals (each held at
        :data:`TOTAL_MAX`: see :func:`usage_counts`).

        ``commit_id`` is an idempotency key for stores where a commit's outcome can be
        unknown (PostgreSQL: the connection lost during COMMIT): there a second commit with
        the same key stores nothing and returns the first one's records. SQLite, whose
        local transactions either commit or raise, accepts and ignores it.

        ``thread_version``: the context's version when the reply's request read its history.
        A record placed before the reply that changed since (killed, brought back, replaced
        by a summary) is in the response's server-side thread as it was: then the context's
        last response id is cleared instead of set to ``last_response_id``.
        """
        ...

    # tools
    def set_context_tool(
        self, context_id: str, name: str, definition: Mapping[str, Any]
    ) -> None: ...
    def context_tools(self, context_id: str) -> list[dict[str, Any]]: ...
    def remove_context_tool(self, context_id: str, name: str) -> bool: ...

    # replies
    def begin_reply(self, context_id: str, reply_id: str, *, owner: str) -> Checkpoint:
        """Reserve the next position for a reply and create its ``STREAMING`` row (epoch 1).

        Raises :class:`~rxcontext.ReplyExists` if ``reply_id`` was used before.
        """
        ...

    def save_checkpoint(
        self,
        ticket: ReplyTicket,
        draft: CheckpointDraft,
        *,
        state: ReplyState | None = None,
        wait: bool = True,
    ) -> bool:
        """Write ``draft`` into a live reply's checkpoint (moving it to ``state`` if given:
        ``INTERRUPTED`` releases it). False, writing nothing, if the ticket lost the reply.

        ``wait=False``: one attempt that waits for no lock (nor retries), as the background
        writes make: ``StoreBusy`` if the database could not be written at once (the
        heartbeat's try of a kept final checkpoint, which must never hold up renewals)."""
        ...

    def save_checkpoints(
        self, writes: Sequence[tuple[ReplyTicket, CheckpointDraft]]
    ) -> list[bool] | None:
        """Periodic writes of many replies in one transaction, off the foreground path.

        None (nothing written; try again later) when the database is busy. A checkpointer
        thread's ``writes`` pause briefly (50 µs a millisecond of work, never at the first
        pair) while they are first iterated, to let an event loop have the GIL: a store
        makes its rows from them before it opens its transaction, as this package's do.
        """
        ...

    def renew_leases(self, owner: str) -> None:
        """Extend the leases of every live reply ``owner`` holds (its heartbeat)."""
        ...

    def renew_replies(self, tickets: Sequence[ReplyTicket]) -> list[bool] | None:
        """Extend the lease of each reply whose ticket still owns it (same epoch, live), by
        ``lease_ttl`` from now: per ticket, False if it lost the reply. None, renewing
        nothing, when the database cannot be written without waiting (try again soon)."""
        ...

    def hold_reply(self, ticket: ReplyTicket) -> Callable[[], None]:
        """Keep the reply its owner's, for every reader and claim, whatever its lease, until
        the returned call (idempotent): from before its final write (commit or checkpoint)
        until that write is done, or given up — also while a busy database keeps it
        pending. Its owner may not be able to renew the lease meanwhile (SQLite: another
        process holds the write lock), and only it has what it delivered."""
        ...

    def request_stop(self, reply_id: str) -> bool:
        """Ask whoever generates reply ``reply_id`` to stop it (durably, for the run of the
        current epoch only). False, changing nothing, if the reply is not running (stored,
        interrupted, settled, or its owner is gone); :class:`~rxcontext.ReplyNotFound` if
        no reply of that id was ever begun here."""
        ...

    def stop_requests(self, tickets: Sequence[ReplyTicket]) -> list[int]:
        """The checkpoint ids of the ``tickets`` whose run was asked to stop."""
        ...

    def on_close(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` once when :meth:`close` is called, before the connections go."""
        ...

    def get_checkpoint(self, checkpoint_id: int) -> Checkpoint: ...
    def find_reply(self, reply_id: str) -> Checkpoint | None:
        """The reply's row if it still has one (a reply completed without interruption has
        none: its records name it); replies whose owner died read as ``INTERRUPTED``."""
        ...

    def reply_records(self, reply_id: str) -> list[Record]:
        """The records reply ``reply_id`` stored, in order (empty if none yet)."""
        ...

    def checkpoints(self, context_id: str, *, include_resolved: bool = False) -> list[Checkpoint]:
        """Interrupted replies of a context, oldest first (settled ones too if asked).

        A settled row holds the text and thinking its reply had delivered when it was last
        interrupted, however it was settled (kept, discarded, or resumed to completion)."""
        ...

    def active_replies(self, context_id: str) -> list[Checkpoint]:
        """Replies being generated now (``STREAMING`` or ``RESUMING``) in a context. A store
        may also offer ``busy_reply_ids(context_id)``, their ids alone without reading their
        text (both stores do; every request asks for them)."""
        ...

    def claim_checkpoint(self, checkpoint_id: int, *, owner: str) -> Checkpoint:
        """Take an interrupted reply for a resume (``RESUMING``, next epoch); exactly one of
        several racing callers wins, the others get :class:`~rxcontext.ReplyBusy`. The text
        and thinking it holds are what its row holds again once the resume completes."""
        ...

    def discard_checkpoint(self, checkpoint_id: int) -> Checkpoint:
        """Settle an interrupted reply as ``DISCARDED`` (the row stays, for audit); what
        its attempts were billed is spent: its usage joins the context's totals and, if
        the provider answered at all, :func:`discarded_draft` is stored, at a new position,
        in the same transaction."""
        ...

    def keep_checkpoint(self, checkpoint_id: int) -> list[Record]:
        """Store an interrupted reply's partial text as its reply (metadata ``partial``)."""
        ...


def kept_metadata(cp: Checkpoint) -> dict[str, Any]:
    """The metadata of the record a kept checkpoint becomes: marked partial, with the usage
    its attempts were billed and the model that billed them, as its checkpoint names them
    (cost prices it from those; without them it counts as unpriced, never as free), and
    its thinking (``thinking``), kept as a completed reply's is."""
    meta = _billed_metadata(cp)
    if cp.thinking:
        meta["thinking"] = cp.thinking
    return meta


def _billed_metadata(cp: Checkpoint) -> dict[str, Any]:
    """What prices a checkpoint's attempts: ``partial``, its usage, model and provider."""
    meta: dict[str, Any] = {"partial": True}
    if cp.usage is not None:
        meta["usage"] = cp.usage.to_dict()
    for key in ("model", "provider"):  # the checkpoint names the model that priced it
        value = cp.metadata.get(key)
        if isinstance(value, str) and value:
            meta[key] = value
    split = cp.metadata.get(USAGE_BY_MODEL)
    if split is not None:  # a resume on another model, cut again: each model's part
        meta[USAGE_BY_MODEL] = split
    return meta


def discarded_draft(cp: Checkpoint) -> RecordDraft | None:
    """The record a discarded checkpoint leaves for its cost: a dead MODEL_RESP of the text
    it holds, marked ``partial`` and ``discarded``, with the usage its attempts were billed.

    A context's cost is read from its records (:mod:`rxcontext.cost`), and a discarded
    reply was paid for as far as it got: it is priced from the usage and the model its
    checkpoint names (unpriced, never free, where they are missing). Dead and named by no reply
    (``reply_id`` None, its own position), it is never sent and no reader of the reply
    sees it; it is stamped with the attempt's last write, so it is priced as of when it
    was billed. None when the provider never answered (no usage, nothing delivered: an HTTP
    error, a refused connection): nothing says anything was billed.
    """
    if cp.usage is None and not (cp.chunks or cp.text or cp.thinking or cp.tool_calls):
        return None
    return RecordDraft(
        RecordType.MODEL_RESP,
        cp.text,
        live=False,
        streamed=True,
        metadata={**_billed_metadata(cp), "discarded": True},
        timestamp=cp.updated_at or cp.created_at,
    )
