"""The history a reply's request carries: the live records before its place in the conversation.

A reply's place is fixed when its request is sent, so its history is the live records up
to its position (with its own earlier tool rounds, which share that position): a resume
after the conversation moved on continues the reply where it was asked, and a later tool
round never sees a prompt added meanwhile. Records of other replies still being generated
are left out (their half-finished tool rounds are not history yet).

A tool call with no output (its process was killed between storing the calls and their
outputs, or a tool raised ``BaseException``) would make every later request invalid for
OpenAI, Anthropic and Gemini. The first request that meets one stores an output saying the
call was interrupted, at the call's place, so the history stays honest and valid. A call
whose output is stored but dead (hidden by its live flag) is left out with it, as an output
whose call is dead is: nothing is written over the user's choice. Outputs answer calls one
each, in order (ids repeat across rounds for providers that send none); an output that
answers no call (a second one, when two windows answered a call at once) is left out. A
request carries each output right after its round's calls, wherever it is stored (an
interrupted output stored after the reply's later text at the same place).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Sequence

from .records import Checkpoint, Record, RecordType
from .store.base import RecordDraft, Store

__all__ = [
    "INTERRUPTED_TOOL_OUTPUT",
    "HistoryCache",
    "answered_again",
    "busy_replies",
    "request_history",
    "unanswered_calls",
]

INTERRUPTED_TOOL_OUTPUT = (
    "Error: this tool call was interrupted before it returned; it has no output. "
    "Call the tool again if its result is still needed."
)


_TOOL_RECORDS = (RecordType.TOOL_CALL, RecordType.TOOL_OUTPUT)


def _pairs(records: Sequence[Record]) -> tuple[dict[int, Record], list[Record], set[int]]:
    """Which output answers each call: the output of each answered TOOL_CALL (by the call's
    record id), the TOOL_CALL records no output answers, and the ids of the TOOL_OUTPUT
    records that answer no call (a second output for one call, or an output whose call is
    gone).

    An output answers the earliest call of its id not answered yet (providers that send no
    call id get ``call_<index>`` every round, so ids repeat); one without an id answers the
    earliest unanswered call of the same name before it.
    """
    waiting: list[Record] = []
    answers: dict[int, Record] = {}
    by_id: defaultdict[str, list[Record]] = defaultdict(list)
    by_name: defaultdict[str | None, list[Record]] = defaultdict(list)
    extra: set[int] = set()
    for r in records:
        if r.type is RecordType.TOOL_CALL:
            waiting.append(r)
            if r.tool_call_id is not None:
                by_id[r.tool_call_id].append(r)
            else:
                by_name[r.tool_name].append(r)
        elif r.type is RecordType.TOOL_OUTPUT:
            calls = (
                by_name.get(r.tool_name) if r.tool_call_id is None else by_id.get(r.tool_call_id)
            )
            if calls:
                call = calls.pop(0)
                waiting.remove(call)
                answers[call.id] = r
            else:
                extra.add(r.id)
    return answers, waiting, extra


def unanswered_calls(records: Sequence[Record]) -> list[Record]:
    """The TOOL_CALL records in ``records`` that no TOOL_OUTPUT answers.

    Outputs answer calls by id, one call each (the earliest of its id not answered yet); an
    output without an id answers the earliest unanswered call of the same name before it.
    """
    return _pairs(records)[1]


class HistoryCache:
    """A context's live records, kept in memory and brought up to date from the store's
    version on each read: a request re-reads only the records written or changed since the
    last one (another process's writes included; a stale list is never served)."""

    def __init__(self, store: Store, context_id: str) -> None:
        self.store = store
        self.context_id = context_id
        self._version: int | None = None
        self.replies = False
        """Whether a read has met a record of a reply (its history may hold one still
        being generated: :func:`request_history` then asks which replies are busy first)."""
        self._live: list[Record] = []
        self._keys: list[tuple[int, int]] = []  # (pos, id) of _live, for bisect
        self._lock = threading.RLock()  # (an RLock: a Ctrl-C's cleanup asks if it is ours)
        # The version each thread's last read served: the first thread to read keeps its
        # own here, any other in a thread-local made when one reads. One thread (nearly
        # always: a window's replies on one loop) thus makes no ``threading.local``: five
        # objects (its dict, two weak references, a callback) the cyclic collector tracks
        # for the window's life, thousands at once when thousands of windows stream. The
        # thread object is held, not its id, which a later thread may reuse; but a thread
        # ``threading`` did not start (a C extension's) gets a placeholder object that a
        # later such thread with the same id gets too, and with it this version. Harmless
        # for the one caller (``_requests``), which reads ``version`` right after its own
        # read on the same thread.
        self._first: threading.Thread | None = None
        self._first_version: int | None = None
        self._others: threading.local | None = None

    def _forked(self) -> None:
        """In a forked child (:meth:`ContextWindow._forked`): a lock a parent's thread may
        have held, made anew, and what the cache held (perhaps half taken in) dropped."""
        self._lock = threading.RLock()
        self._first, self._first_version, self._others = None, None, None
        self._version, self.replies, self._live, self._keys = None, False, [], []

    @property
    def version(self) -> int | None:
        """The context's version the calling thread's last read served (None before its
        first): another thread's read of this shared cache in between does not move it."""
        if self._first is threading.current_thread():
            return self._first_version
        others = self._others
        return getattr(others, "version", None) if others is not None else None

    def _served(self, version: int) -> None:
        """Note ``version`` as served to the calling thread (under the lock)."""
        thread = threading.current_thread()
        if self._first is None:
            self._first = thread
        if self._first is thread:
            self._first_version = version
            return
        if self._others is None:
            self._others = threading.local()
        self._others.version = version

    def live(self, upto: int | None = None) -> list[Record]:
        """The live records in order (those at positions up to ``upto``, if given): a copy."""
        lock = self._lock
        mine = lock._is_owned()  # type: ignore[attr-defined]
        try:
            if not lock.acquire(blocking=False):
                # Another thread's read holds the cache, and may be waiting for the store.
                # A thread that holds the store already (SQLiteStore.at_once: the event
                # loop's) must not wait for it: the store's ``not_now`` refuses, and the
                # read is made in a worker thread, which waits as any reader does.
                not_now = getattr(self.store, "not_now", None)
                if not_now is not None:
                    not_now("the history cache, held by another thread")
                lock.acquire()
        except BaseException:
            # A Ctrl-C as an acquire returned (a handler runs there, before the try below):
            # let go of what it took, or this window's next request waited for good.
            if not mine and lock._is_owned():  # type: ignore[attr-defined]
                lock.release()
            raise
        try:
            version, changed = self.store.history(self.context_id, since=self._version)
            if not self.replies and any(r.reply_id is not None for r in changed):
                self.replies = True
            if self._version is None:
                self._live = [r for r in changed if r.live]
                self._keys = [(r.pos, r.id) for r in self._live]
            else:
                for r in changed:
                    self._merge(r)
            self._version = version
            self._served(version)
            if upto is None:
                return list(self._live)
            return self._live[: bisect.bisect_right(self._keys, (upto, float("inf")))]
        finally:
            lock.release()

    def _merge(self, record: Record) -> None:
        key = (record.pos, record.id)
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            if record.live:
                self._live[i] = record
                return
            del self._live[i]
            del self._keys[i]
        elif record.live:
            self._live.insert(i, record)
            self._keys.insert(i, key)


def answered_again(store: Store, checkpoint: Checkpoint) -> Record | Checkpoint | None:
    """The reply that answered ``checkpoint``'s prompt again (a retry), if there is one: a
    reply after the checkpoint's place and before the next prompt, stored (its first
    record) or not settled yet (its row: a retry cut too, or still being generated).
    Resuming or keeping the checkpoint would then put two answers to one prompt in a row.

    Replies before its place do not count: its request carried the ones stored by then, so
    it goes on from them (it answers the app's own tool round, or the model was asked to go
    on after a kept reply). An earlier cut reply cannot be stored there later while this
    one is open (this one is its retry); in a hot context, another writer's reply still
    being generated when this one was sent can be (docs/guarantees.md, known limits).
    """
    place = checkpoint.pos
    if place is None:
        return None
    stored: Record | None = None
    limit: int | None = None  # the place of that reply, or else of the next prompt
    for r in store.records(checkpoint.context_id, live_only=True):
        if r.pos <= place:
            continue  # before its place, or its own earlier tool rounds
        if r.type in (RecordType.MODEL_RESP, RecordType.TOOL_CALL):
            stored = r
        if stored is not None or r.type is RecordType.PROMPT:
            limit = r.pos
            break
    open_rows = [
        row
        for row in (
            *store.checkpoints(checkpoint.context_id),
            *store.active_replies(checkpoint.context_id),
        )
        if row.pos is not None and place < row.pos and (limit is None or row.pos < limit)
    ]
    if open_rows:
        return min(open_rows, key=lambda row: row.pos or 0)
    return stored


def busy_replies(store: Store, context_id: str) -> set[str | None]:
    """The ids of the replies being generated in the context now: by the store's
    ``busy_reply_ids`` where it has one (both stores: no row's text is read), else from
    :meth:`~rxcontext.store.Store.active_replies`."""
    ids = getattr(store, "busy_reply_ids", None)
    if ids is not None:
        return set(ids(context_id))
    return {cp.reply_id for cp in store.active_replies(context_id)}


def request_history(
    store: Store,
    context_id: str,
    *,
    upto: int | None,
    reply_id: str | None,
    cache: HistoryCache | None = None,
) -> list[Record]:
    """The live records a reply at position ``upto`` sends (see the module docstring).

    Which replies are busy is asked at each request, never taken from an earlier read: a
    reply's busy state changes with no record written and no version moved (a cut or a
    claim writes its row alone; an owner's death or a lease running out writes nothing)."""

    def read() -> list[Record]:
        if cache is not None:
            return cache.live(upto)
        return store.records(context_id, live_only=True, upto=upto)

    # Which replies are busy is asked before the records are read: a reply that ends in
    # between is then left out whole, never carried half (a round without its answer).
    busy: set[str | None] | None = None
    if cache is not None and cache.replies:
        busy = busy_replies(store, context_id) - {reply_id}
    records = read()
    while busy:
        # Asked again after the read: a reply that ended in between was stored before it, so
        # a commit's thread check (records changed since the read) would never see that the
        # request left it out, and the response's server-side thread would lack it for good.
        # Read again with it.
        still = busy_replies(store, context_id) - {reply_id}
        if busy <= still:
            break
        busy = still
        records = read()
    if busy is None and any(r.reply_id is not None and r.reply_id != reply_id for r in records):
        while True:  # the first reply records this cache met: read them again around it
            busy = busy_replies(store, context_id) - {reply_id}
            again = read()
            if again == records:
                break
            records = again
    if busy:
        records = [r for r in records if r.reply_id not in busy]
    if not any(r.type in _TOOL_RECORDS for r in records):
        return records
    # Paired once: dropping the extras (outputs that answered nothing) leaves the pairing of
    # the rest as it was; where hidden pairs leave, _without_hidden pairs what is kept.
    answers, dangling, extra = _pairs(records)
    if extra:  # a call's second output (two requests answered it at once): providers refuse
        records = [r for r in records if r.id not in extra]
    if dangling:
        records, dangling, answers = _without_hidden(store, context_id, upto, busy, records)
    if not dangling:
        return _in_place(records, answers)
    by_pos: defaultdict[int, list[Record]] = defaultdict(list)
    for call in dangling:
        by_pos[call.pos].append(call)
    for pos, calls in by_pos.items():
        store.commit_reply(
            context_id,
            [
                RecordDraft(
                    RecordType.TOOL_OUTPUT,
                    INTERRUPTED_TOOL_OUTPUT,
                    tool_call_id=c.tool_call_id,
                    tool_name=c.tool_name,
                    metadata={"interrupted": True},
                )
                for c in calls
            ],
            at=pos,
        )
    return request_history(store, context_id, upto=upto, reply_id=reply_id, cache=cache)


def _without_hidden(
    store: Store,
    context_id: str,
    upto: int | None,
    busy: set[str | None] | None,
    records: list[Record],
) -> tuple[list[Record], list[Record], dict[int, Record]]:
    """``records`` (live, with calls some live output does not answer) less each tool call
    and output whose partner is stored but dead, the calls no output answers at all, and
    the output (of ``records``) answering each call kept (by the call's record id).

    Calls and outputs are paired among all the records, dead ones too (a live output could
    otherwise answer an earlier call of its id whose own output is hidden): a call whose
    output the user killed leaves the request with it, as an output whose call is dead does.
    The pairs kept are those whose call and output are both sent; what leaves is whole
    pairs and calls or outputs paired with nothing, so the kept records pair the same way on
    their own (the live pairing of ``records`` may differ: a live output can take an earlier
    call of its id whose own output is hidden).
    """
    everything = store.records(context_id, upto=upto)
    if busy:
        everything = [r for r in everything if r.reply_id not in busy]
    answers, waiting, _ = _pairs(everything)
    partner = {call: output.id for call, output in answers.items()}
    partner.update({output.id: call for call, output in answers.items()})
    sent = {r.id: r for r in records}
    missing = [r for r in waiting if r.id in sent]
    gone = {r.id for r in missing}
    kept = [
        r
        for r in records
        if r.type not in _TOOL_RECORDS or partner.get(r.id) in sent or r.id in gone
    ]
    kept_answers = {
        call: sent[output.id]
        for call, output in answers.items()
        if call in sent and output.id in sent
    }
    return kept, missing, kept_answers


def _in_place(records: list[Record], answers: dict[int, Record]) -> list[Record]:
    """``records`` (every call answered, every output answering one, as ``answers`` pairs
    them: by the call's record id) with each output right after its round's calls: an
    output stored later (an interrupted one stored after the reply's text at the round's
    place) moves up to them; the others keep their order."""
    if not answers:
        return records
    index = {r.id: i for i, r in enumerate(records)}
    out: list[Record] = []
    placed: set[int] = set()
    pending: list[Record] = []  # the outputs of the last run of calls not yet placed

    def flush() -> None:
        for r in sorted(pending, key=lambda r: index[r.id]):
            if r.id not in placed:
                out.append(r)
                placed.add(r.id)
        pending.clear()

    for r in records:
        if r.type is RecordType.TOOL_OUTPUT:
            if r.id not in placed:
                out.append(r)
                placed.add(r.id)
            continue
        if r.type is not RecordType.TOOL_CALL or (out and out[-1].type is not RecordType.TOOL_CALL):
            flush()  # the run of calls ends
        out.append(r)
        answer = answers.get(r.id)
        if answer is not None:
            pending.append(answer)
    flush()
    return out
