"""The watcher core: one reply's chunks for ``cw.watch`` / ``cw.awatch``, blocking.

Where the chunks come from:

* **live** — the fan-out log, read by position ``(epoch, seq)``: a watcher that joins
  reads the epoch's log from its Begin (or Snapshot) and then tails it with the same read,
  so replay and live are one sequence with no gap and no repeat;
* **store** — when there is no fan-out, no live log for the reply (expired, evicted, a
  fresh Redis) or the fan-out is unreachable: the reply's committed records and its
  checkpoint, polled every ``poll`` seconds (checkpoint granularity) until the reply ends,
  waiting on the live channel between two polls (a log that appears wakes the watch).

Switching from the store back to a live log is a *catch-up by offsets*: the watcher knows
the text (and thinking) it has shown, and skips that much of the log's text. Text is shown,
counted and compared as the store holds it (:func:`_mend`): the log has an emoji cut between
its surrogate halves as delivered, the store joined. Whatever the path, the watcher ends
with a reconciliation against the store, so the text it shows last equals the stored record
(``REWIND`` where it must go back: a takeover's new epoch starts from its checkpoint, which
may be behind what the old owner delivered).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ..chunks import Chunk, ChunkKind, Usage
from ..errors import ReplyNotFound, StreamInterrupted
from ..records import Checkpoint, Record, RecordType, ReplyState
from ..store._sqlite_rows import storable
from .base import Fanout, Position
from .entries import Begin, Chunks, End, Entry, Snapshot

_ROUND_KEY = "finish_reason"
"""A record holding this metadata key begins a stored round (its MODEL_RESP, or its first
TOOL_CALL when it was calls alone: ``reply_metadata``), and says how it ended."""

__all__ = [
    "LOOK",
    "Look",
    "Pause",
    "Read",
    "ReplyReader",
    "Step",
    "read_store",
    "watch_chunks",
    "watch_core",
]


class ReplyReader(Protocol):
    """What the watcher reads from a store (both stores have it). A store may also offer
    ``reply_state(reply_id)``, both answers at once (PostgreSQL: one pool checkout)."""

    def find_reply(self, reply_id: str) -> Checkpoint | None: ...
    def reply_records(self, reply_id: str) -> list[Record]: ...


def _common(a: str, b: str) -> int:
    """The length of the longest common prefix of ``a`` and ``b``: slices compared in C
    (a binary search when they differ), not a character at a time in Python, which cost a
    watch of a long reply seconds at its end."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1  # a[:lo] == b[:lo]; a[:hi + 1] != b[:hi + 1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _mend(held: str, piece: str) -> tuple[str, str]:
    """A live delta as the store holds it, and the high half it ends with, held back.

    A provider may cut an escaped emoji between its surrogate halves ("\\ud83d", then
    "\\ude00": the OpenAI SDK delivers each alone); the log keeps them as delivered, the
    store joins the pair (one character) and never stores a high half alone. Shown and
    counted as delivered, the log's text ran one character ahead of the store's per emoji:
    a watcher caught up from a checkpoint showed a character twice, and a live one ended
    going back to before the emoji. ``held``: the half the previous delta ended with."""
    text = held + piece
    held = ""
    if text and "\ud800" <= text[-1] <= "\udbff":
        text, held = text[:-1], text[-1]
    return storable(text), held


class _Shown:
    """What a watch has shown of the text (or thinking), in pieces: a chunk is appended at
    the cost of the chunk (``str +=`` on an attribute copies the whole text every time, so
    a long reply's watch was quadratic), joined only where the whole is compared."""

    __slots__ = ("_parts", "size")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.size = 0

    def add(self, piece: str) -> None:
        self._parts.append(piece)
        self.size += len(piece)

    def value(self) -> str:
        parts = self._parts
        if len(parts) > 1:
            parts[:] = ["".join(parts)]
        return parts[0] if parts else ""

    def set(self, text: str) -> None:
        self._parts = [text] if text else []
        self.size = len(text)


@dataclass(frozen=True, slots=True)
class Read:
    """A step of the core: read the live log after ``after`` (None: from its head, at least
    epoch ``epoch``), waiting up to ``wait`` seconds; answered with ``Fanout.read``'s
    answer. Never asked when the watch has no fan-out."""

    after: Position | None
    epoch: int
    wait: float


@dataclass(frozen=True, slots=True)
class Look:
    """A step of the core: answered with the reply's row and records (:func:`read_store`)."""


@dataclass(frozen=True, slots=True)
class Pause:
    """A step of the core: wait ``seconds`` (the store's poll); answered with True when the
    watch was cancelled meanwhile."""

    seconds: float


Step = Chunk | Read | Look | Pause
LOOK = Look()


def read_store(store: ReplyReader, reply_id: str) -> tuple[Checkpoint | None, list[Record]]:
    """The reply's row and records, consistent with each other (no commit between)."""
    together = getattr(store, "reply_state", None)
    if together is not None:  # PostgreSQL: one pool checkout
        state: tuple[Checkpoint | None, list[Record]] = together(reply_id)
        return state
    while True:
        before = store.reply_records(reply_id)
        row = store.find_reply(reply_id)
        after = store.reply_records(reply_id)
        if [r.id for r in before] == [r.id for r in after]:
            return row, after


class _Watch:
    """The watcher's logic, with no I/O of its own: :meth:`run` yields the chunks to show
    and the :data:`Step` s whose answers it needs (``send`` them back); the sync and the
    asyncio drivers do the I/O, so both paths show the very same chunks."""

    def __init__(self, reply_id: str, live: bool, poll: float, wait: float) -> None:
        self.live_log = live
        self.reply_id = reply_id
        self.poll = poll
        self.wait = wait
        self._text = _Shown()  # what was shown
        self._thinking = _Shown()
        self.epoch = 0  # the epoch what was shown belongs to
        # Tool calls and results shown, counted per call id (an id may repeat: a model
        # sending one twice, or none, stored as ``call_<index>`` every round), and those
        # the live log had, to tell the n-th live one from the n-th shown from the store.
        self.calls: Counter[str] = Counter()
        self.results: Counter[str] = Counter()
        self.live_calls: Counter[str] = Counter()
        self.live_results: Counter[str] = Counter()
        self.done_shown = False
        # Round-end DONEs shown, and this epoch's log had, per response id (None when the
        # provider gives none), as for the calls: each round's usage is shown once, and
        # the rounds a watcher read from the store end for its ReplyBuilder as live ones do.
        self.dones: Counter[str | None] = Counter()
        self.live_dones: Counter[str | None] = Counter()
        self.rounds = False  # a round's DONE was shown, with that round's usage
        # Offsets into the live log being read (equal to what was shown once caught up).
        self.log_text = 0
        self.log_thinking = 0
        # A high half that ended the log's last delta, waiting for its low half (_mend).
        self.held_text = ""
        self.held_thinking = ""
        self.call_ids: dict[int, str] = {}  # this round's live calls: index -> call id
        self.skipping: set[int] = set()  # this round's live calls the store showed already
        self.next_index = -1  # above every tool-call index shown so far

    @property
    def text(self) -> str:
        """The text shown so far."""
        return self._text.value()

    @text.setter
    def text(self, value: str) -> None:
        self._text.set(value)

    @property
    def thinking(self) -> str:
        """The thinking shown so far."""
        return self._thinking.value()

    @thinking.setter
    def thinking(self, value: str) -> None:
        self._thinking.set(value)

    # -- the store --------------------------------------------------------------------

    def sync(
        self, records: Sequence[Record], row: Checkpoint | None, *, final: bool
    ) -> Iterator[Chunk]:
        """Bring what was shown up to the store: committed records in order, then the
        checkpoint of the round in progress, or of the round that was cut (an interrupted
        or discarded reply ends on what its owner delivered, as the StreamInterrupted it
        raises says). Within one epoch the store may be behind what was shown live
        (checkpoints lag): then nothing goes back, unless ``final``: then the thinking too
        is made the store's, none included."""
        target: list[str] = []
        thoughts: list[str] = []
        extra: list[Chunk] = []
        ending: Chunk | None = None  # the DONE of the stored round whose records these are
        for record in records:
            if ending is not None and (
                record.type is not RecordType.TOOL_CALL or _ROUND_KEY in record.metadata
            ):
                extra.append(ending)  # after the round's calls, as it was delivered
                ending = None
            if _ROUND_KEY in record.metadata:
                ending = _done_of([record])
            if record.type is RecordType.MODEL_RESP:
                target.append(record.content)
                stored = record.metadata.get("thinking")
                if isinstance(stored, str):
                    thoughts.append(stored)
            elif record.type is RecordType.TOOL_CALL and record.tool_call_id:
                extra.append(
                    Chunk(
                        ChunkKind.TOOL_CALL,
                        record.content,
                        id=record.tool_call_id,
                        name=record.tool_name,
                        metadata=dict(record.metadata),
                    )
                )
            elif record.type is RecordType.TOOL_OUTPUT and record.tool_call_id:
                extra.append(
                    Chunk(
                        ChunkKind.TOOL_RESULT,
                        record.content,
                        id=record.tool_call_id,
                        name=record.tool_name,
                        metadata=dict(record.metadata),  # a failed tool's "error" flag
                    )
                )
        if ending is not None:
            extra.append(ending)
        if row is not None and row.state is not ReplyState.COMPLETED:
            target.append(row.text)
            thoughts.append(row.thinking)
        text = "".join(target)
        thinking = "".join(thoughts)  # a committed reply's thinking too, not only a checkpoint's
        epoch = row.epoch if row is not None else self.epoch
        new_epoch = epoch > self.epoch
        compared = thinking if thinking or final else None
        yield from self.rebase(text, compared, force=final or new_epoch)
        self.epoch = max(self.epoch, epoch)
        calls: Counter[str] = Counter()
        results: Counter[str] = Counter()
        dones: Counter[str | None] = Counter()
        for chunk in extra:  # the n-th of an id is shown unless n of that id were
            if chunk.kind is ChunkKind.DONE:
                key = chunk.response_id
                dones[key] += 1
                if dones[key] > self.dones[key]:
                    yield from self.round_done(chunk)
                continue
            assert chunk.id is not None
            if chunk.kind is ChunkKind.TOOL_CALL:
                calls[chunk.id] += 1
                if calls[chunk.id] > self.calls[chunk.id]:
                    self.calls[chunk.id] += 1
                    # A whole call in one chunk, at an index no other call of this watch
                    # has (the provider's index is not stored).
                    self.next_index += 1
                    yield replace(chunk, index=self.next_index)
            else:
                results[chunk.id] += 1
                if results[chunk.id] > self.results[chunk.id]:
                    self.results[chunk.id] += 1
                    yield chunk

    def rebase(self, text: str, thinking: str | None, *, force: bool) -> Iterator[Chunk]:
        """Make the shown text ``text`` (and thinking ``thinking``): append what is
        missing; go back (``REWIND``) only when they diverge or ``force``."""
        keep = _common(self.text, text)
        keep_thinking = len(self.thinking)
        if thinking is not None:
            keep_thinking = _common(self.thinking, thinking)
        behind = keep == len(text) and (thinking is None or keep_thinking == len(thinking))
        cut_text = keep < len(self.text) and (force or keep < len(text))
        cut_thinking = (
            thinking is not None
            and keep_thinking < len(self.thinking)
            and (force or keep_thinking < len(thinking))
        )
        if behind and not force:
            return
        if cut_text or cut_thinking:
            meta = {"thinking": keep_thinking} if cut_thinking else {}
            if not cut_text:
                keep = len(self.text)
            yield Chunk(ChunkKind.REWIND, index=keep, metadata=meta)
            self.text = self.text[:keep]
            if cut_thinking:
                self.thinking = self.thinking[:keep_thinking]
        if thinking is not None and len(thinking) > len(self.thinking):
            piece = thinking[len(self.thinking) :]
            self.thinking = thinking
            yield Chunk(ChunkKind.THINKING, piece)
        if len(text) > len(self.text):
            piece = text[len(self.text) :]
            self.text = text
            self.done_shown = False
            yield Chunk(ChunkKind.TEXT, piece)

    # -- the live log -----------------------------------------------------------------

    def begin(self, entry: Begin | Snapshot) -> Iterator[Chunk]:
        """A log read from its head: rebase on its start, then catch up by offsets."""
        if entry.epoch > self.epoch:
            yield from self.rebase(entry.text, entry.thinking, force=True)
            self.epoch = entry.epoch
        else:
            yield from self.rebase(entry.text, entry.thinking, force=False)
        self.log_text = len(entry.text)
        self.log_thinking = len(entry.thinking)
        self.held_text = self.held_thinking = ""
        self.call_ids = {}
        self.skipping = set()
        self.live_dones = Counter()

    def round_done(self, chunk: Chunk) -> Iterator[Chunk]:
        """Show a round's DONE: the next round's calls are numbered from 0 again."""
        self.dones[chunk.response_id] += 1
        self.rounds = True
        self.call_ids = {}
        self.skipping = set()
        self.next_index = -1
        self.done_shown = True
        yield chunk

    def live(self, chunk: Chunk) -> Iterator[Chunk]:
        """One chunk of the log: shown unless what was shown already has it."""
        kind = chunk.kind
        if kind in (ChunkKind.TEXT, ChunkKind.THINKING) and chunk.text:
            if kind is ChunkKind.TEXT:
                text, self.held_text = _mend(self.held_text, chunk.text)
            else:
                text, self.held_thinking = _mend(self.held_thinking, chunk.text)
            if not text:  # a high half alone: shown with its low half
                return
            if text is not chunk.text:
                chunk = replace(chunk, text=text)
        if kind is ChunkKind.TEXT:
            start = self.log_text
            self.log_text += len(chunk.text)
            shown = self._text.size
            if chunk.text and self.log_text <= shown:
                return
            if start < shown:
                chunk = replace(chunk, text=chunk.text[shown - start :])
            self._text.add(chunk.text)
            if chunk.text:
                self.done_shown = False
            yield chunk
            return
        if kind is ChunkKind.THINKING:
            start = self.log_thinking
            self.log_thinking += len(chunk.text)
            shown = self._thinking.size
            if chunk.text and self.log_thinking <= shown:
                return
            if not chunk.text and self.catching():
                return
            if start < shown:
                chunk = replace(chunk, text=chunk.text[shown - start :])
            self._thinking.add(chunk.text)
            yield chunk
            return
        if kind is ChunkKind.TOOL_CALL:
            index = chunk.index
            if index >= self.next_index:
                self.next_index = index + 1
            if index not in self.call_ids:  # a call's first fragment: its id as stored
                call = self.call_ids[index] = chunk.id or f"call_{index}"
                self.live_calls[call] += 1
                if self.live_calls[call] <= self.calls[call]:
                    self.skipping.add(index)  # the store showed it
                else:
                    self.calls[call] += 1
            if index in self.skipping:
                return
            yield chunk
            return
        if kind is ChunkKind.TOOL_RESULT:
            if chunk.id:
                self.live_results[chunk.id] += 1
                if self.live_results[chunk.id] <= self.results[chunk.id]:
                    return  # the store showed it
                self.results[chunk.id] += 1
            yield chunk
            return
        if kind is ChunkKind.DONE:
            self.call_ids = {}
            self.skipping = set()
            key = chunk.response_id
            self.live_dones[key] += 1
            if self.live_dones[key] <= self.dones[key]:
                return  # the store showed this round's end
            yield from self.round_done(chunk)
            return
        if kind is ChunkKind.REWIND:  # never published, but harmless
            return
        if not self.catching():
            yield chunk

    def catching(self) -> bool:
        return self.log_text < self._text.size or self.log_thinking < self._thinking.size

    # -- the loop ---------------------------------------------------------------------

    def finish(self, records: list[Record], row: Checkpoint | None) -> Iterator[Chunk]:
        """The reply ended: reconcile with the store, then complete or raise."""
        yield from self.sync(records, row, final=True)
        if row is not None and row.state in (ReplyState.INTERRUPTED, ReplyState.DISCARDED):
            raise StreamInterrupted(
                row,
                f"reply {self.reply_id!r} was {row.state.value}; what it delivered is saved as"
                f" checkpoint {row.id}",
            )
        if not self.done_shown:
            done = _done_of(records)
            # Each round's usage was shown with its round's DONE: this one ends the text.
            yield replace(done, usage=None) if self.rounds else done

    def ended(self, row: Checkpoint | None, records: list[Record]) -> bool:
        if row is None:
            if not records:
                raise ReplyNotFound(
                    f"no reply {self.reply_id!r} in this store: it was never begun here, or "
                    "its context was deleted"
                )
            return True
        return not row.state.live

    def run(self) -> Generator[Step, Any, None]:
        head = yield from self.live_head()
        if head is not None:
            # The live log is whole from its start: begin from it; the store is read when
            # the log ends or stalls (a look fewer per watch: many watchers share a pool).
            yield from self.follow(head[0].epoch, head)
            return
        row, records = yield LOOK
        want = row.epoch if row is not None else 1
        if self.ended(row, records):
            # Ended already: its live log, while kept, gives the very chunks delivered.
            if self.live_log:
                entries = yield Read(None, want, 0.0)
                if entries and isinstance(entries[0], Begin | Snapshot):
                    yield from self.apply(entries)
            yield from self.finish(records, row)
            return
        yield from self.follow(want, None, looked=(row, records))

    def live_head(self) -> Generator[Step, Any, list[Entry] | None]:
        """The newest epoch's live log from its Begin (or Snapshot), or None."""
        if not self.live_log:
            return None
        entries: list[Entry] | None = yield Read(None, 1, 0.0)
        if not entries:
            return None
        newest = max(entry.epoch for entry in entries)
        for i, entry in enumerate(entries):
            if entry.epoch == newest:
                return entries[i:] if isinstance(entry, Begin | Snapshot) else None
        return None  # pragma: no cover (newest is some entry's epoch)

    def follow(
        self,
        want: int,
        head: list[Entry] | None,
        *,
        looked: tuple[Checkpoint | None, list[Record]] | None = None,
    ) -> Generator[Step, Any, None]:
        """Live (or from the store) until the reply ends; ``head``: the log from its start,
        read already; ``looked``: the store, read already after the log was found missing
        (its first pass then neither reads the log's head nor the store again: it shows
        what is stored and waits on the channel)."""
        self.at = None
        checked = time.monotonic()
        while True:
            entries, head = head, None
            if looked is None and entries is None and self.live_log:
                entries = yield Read(self.at, want, self.wait)
            if entries and self.at is None and not isinstance(entries[0], Begin | Snapshot):
                entries = None  # the log's head is gone: not whole
            if entries is None:
                self.at = None
                if looked is not None:
                    (row, records), looked = looked, None
                else:
                    row, records = yield LOOK
                if self.ended(row, records):
                    yield from self.finish(records, row)
                    return
                yield from self.sync(records, row, final=False)
                assert row is not None
                want = max(want, row.epoch)
                due = time.monotonic() + self.poll  # the next look at the store
                head = yield from self.await_log(want, due)
                if head is None:  # what is left until then: a pause
                    left = due - time.monotonic()
                    if left > 0 and (yield Pause(left)):
                        return
                checked = time.monotonic()
                continue
            if not entries:
                if time.monotonic() - checked >= self.poll:
                    # Idle: the owner may have died, or the end's entry been lost.
                    checked = time.monotonic()
                    row, records = yield LOOK
                    if self.ended(row, records):
                        yield from self.finish(records, row)
                        return
                    assert row is not None
                    if self.at is not None and row.epoch > self.at[0]:
                        want, self.at = row.epoch, None
                    else:
                        # The log stalled but the store may have gone on (the owner cut off
                        # from the fan-out): show what is stored; the log, once it moves
                        # again, is caught up by offsets.
                        yield from self.sync(records, row, final=False)
                continue
            yield from self.apply(entries)
            if self.ending is not None:
                row, records = yield LOOK
                if self.ended(row, records):
                    yield from self.finish(records, row)
                    return
                self.ending = None  # interrupted, and already resumed: its next epoch follows
            if self.at is not None:
                want = max(want, self.at[0])
            checked = time.monotonic()

    def await_log(self, epoch: int, due: float) -> Generator[Step, Any, list[Entry] | None]:
        """Until ``due`` (the next look at the store): wait on the live channel for epoch
        ``epoch``'s log, whole from its start; None when it did not come (or there is no
        fan-out, or it cannot serve).

        Between a reply's begin and its owner's first send (its writer sends every
        ``flush_every``) its log does not exist yet; a watch that came then (a browser
        reconnecting as a reply begins) paused for ``poll`` seconds before looking again.
        Waiting on the channel instead wakes it with the log's first entries, and waits no
        longer than that pause would have. A log that is there but not whole from its start
        (trimmed) is no answer: the store serves, at ``poll``. Each read waits at most
        ``wait`` (a disposed watch stops within it); one that gives up sooner than that
        (the fan-out is unreachable) leaves the rest of the poll to a pause."""
        if not self.live_log:
            return None
        while True:
            asked = time.monotonic()
            wait = min(self.wait, due - asked)
            if wait <= 0:
                return None
            entries: list[Entry] | None = yield Read(_before(epoch), epoch, wait)
            if entries:
                return entries if isinstance(entries[0], Begin | Snapshot) else None
            if entries is None and time.monotonic() - asked < wait / 2:
                return None  # it did not wait: the fan-out cannot serve now

    at: Position | None = None
    ending: End | None = None

    def apply(self, entries: Sequence[Begin | Chunks | Snapshot | End]) -> Iterator[Chunk]:
        """Show what ``entries`` add; sets ``at`` (None after a gap) and ``ending``."""
        at = self.at
        for entry in entries:
            if isinstance(entry, Begin | Snapshot):
                if at is not None and entry.epoch == at[0] and isinstance(entry, Snapshot):
                    done_upto = at[1]  # live data was lost and made whole again
                else:
                    yield from self.begin(entry)
                    done_upto = 0
                if isinstance(entry, Snapshot):
                    for seq, chunk in entry.chunks:
                        if seq > done_upto:
                            yield from self.live(chunk)
                    at = (entry.epoch, entry.seq)
                else:
                    at = (entry.epoch, 0)
            elif isinstance(entry, Chunks):
                if at is None or entry.epoch != at[0] or entry.first > at[1] + 1:
                    at = None  # a gap: live data was lost; the store fills it
                    break
                for i, chunk in enumerate(entry.chunks):
                    if entry.first + i > at[1]:
                        yield from self.live(chunk)
                at = (entry.epoch, max(at[1], entry.last))
            elif at is not None and entry.epoch == at[0]:
                self.ending = entry
                at = (entry.epoch, entry.seq)
                break
        self.at = at


def _before(epoch: int) -> Position:
    """The position just before epoch ``epoch``'s Begin (``epoch-0``): a read after it starts
    with that Begin. Entry ids are ``<epoch>-<seq>``, a seq at most 2**64 - 1."""
    return (epoch - 1, 2**64 - 1)


def _done_of(records: Sequence[Record]) -> Chunk:
    """The DONE chunk of a stored reply: that of its last round (the last record that
    begins one), or, for records that do not say, from its last MODEL_RESP's metadata."""
    last: Record | None = None
    for record in reversed(records):
        if _ROUND_KEY in record.metadata:
            last = record
            break
        if last is None and record.type is RecordType.MODEL_RESP:
            last = record
    if last is None:
        return Chunk(ChunkKind.DONE)
    meta = last.metadata
    usage = meta.get("usage")
    return Chunk(
        ChunkKind.DONE,
        usage=Usage.from_dict(usage) if isinstance(usage, dict) else None,
        finish_reason=meta.get("finish_reason"),
        response_id=last.response_id,
    )


def watch_chunks(
    store: ReplyReader,
    fanout: Fanout | None,
    reply_id: str,
    cancelled: threading.Event,
    *,
    poll: float = 1.0,
    wait: float = 1.0,
) -> Generator[Chunk, None, None]:
    """Reply ``reply_id``'s chunks until it is stored (then the iterator ends) or
    interrupted (:class:`~rxcontext.StreamInterrupted`); stops quietly once ``cancelled``
    is set. Raises :class:`~rxcontext.ReplyNotFound` for an unknown id. Blocking: the
    core's steps are done on the calling thread."""
    core = watch_core(reply_id, fanout is not None, poll=poll, wait=wait)
    answer: Any = None
    while True:
        try:
            step = core.send(answer)
        except StopIteration:
            return
        answer = None
        if isinstance(step, Chunk):
            yield step
        elif isinstance(step, Look):
            answer = read_store(store, reply_id)
        elif isinstance(step, Read):
            if cancelled.is_set():
                return
            assert fanout is not None
            answer = fanout.read(
                reply_id, step.after, epoch=step.epoch, wait=step.wait, cancelled=cancelled
            )
        elif cancelled.wait(step.seconds):
            return
        if cancelled.is_set():
            return


def watch_core(
    reply_id: str, live: bool, *, poll: float, wait: float
) -> Generator[Step, Any, None]:
    """The watcher's logic as a generator of :data:`Step` s (see :class:`_Watch`);
    ``live``: whether there is a fan-out to read."""
    return _Watch(reply_id, live, poll, wait).run()
