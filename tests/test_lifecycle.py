"""The reply lifecycle through the window: ids and states, keep / discard, resume in place,
positions instead of clocks, dangling tool calls, claims, and the user's own exceptions."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import reactivex
from reactivex import operators as ops
from stores import open_store

from rxcontext import (
    CheckpointResolved,
    Chunk,
    ChunkKind,
    ContextWindow,
    RecordType,
    ReplyBusy,
    ReplyExists,
    ReplyState,
    ReplySuperseded,
    StreamInterrupted,
    Tool,
)
from rxcontext import operators as rxops
from rxcontext.history import INTERRUPTED_TOOL_OUTPUT, HistoryCache, request_history
from rxcontext.providers import ScriptedModel
from rxcontext.store import RecordDraft, ReplyTicket
from rxcontext.store.owner import worker_id
from rxcontext.window import CONTINUE_PROMPT

pytestmark = pytest.mark.usefixtures("both_stores")  # every test on SQLite and PostgreSQL


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


DONE = Chunk(ChunkKind.DONE, finish_reason="stop")


def call(index: int, id: str, name: str, args: str) -> Chunk:
    return Chunk(ChunkKind.TOOL_CALL, args, index=index, id=id, name=name)


def window(*scripts: list[Any], **kwargs: Any) -> tuple[ContextWindow, ScriptedModel]:
    model = ScriptedModel(list(scripts))
    cw = ContextWindow(open_store(), model, "life", retry=None, **kwargs)
    return cw, model


def shape(cw: ContextWindow, *, live_only: bool = True) -> list[tuple[str, str]]:
    records = cw.live_records() if live_only else cw.records()
    return [(r.type.name, r.content) for r in records]


def cut(cw: ContextWindow, **kw: Any) -> int:
    with pytest.raises(StreamInterrupted) as info:
        cw.call(**kw)
    return info.value.checkpoint.id


# -- identity and state -------------------------------------------------------------------


def test_a_reply_has_its_id_and_a_streaming_row_from_the_moment_it_is_sent():
    cw, _ = window([T("a"), T("b"), DONE])
    cw.add_prompt("go")
    seen: list[tuple[str, ReplyState, int | None, str]] = []

    def look(_: Chunk) -> None:
        (row,) = cw.active_replies()
        seen.append((row.reply_id, row.state, row.pos, row.text))

    got = []
    cw.stream(
        rxops.middleware(on_start=lambda: look(T("")), on_chunk=look), reply_id="r-42"
    ).subscribe(got.append)
    assert {s[:3] for s in seen} == {("r-42", ReplyState.STREAMING, 1)}
    assert cw.checkpoints() == []  # streaming is not resumable
    (reply,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert (reply.reply_id, reply.pos, reply.content) == ("r-42", 1, "ab")
    assert cw.active_replies() == [] and cw.store.find_reply("r-42") is None


def test_generated_reply_ids_are_unique_and_a_reused_one_is_refused():
    cw, model = window([T("one"), DONE], [T("two"), DONE])
    cw.add_prompt("go")
    cw.call(reply_id="same")
    errors: list[Exception] = []
    cw.add_prompt("again")
    cw.stream(reply_id="same").subscribe(on_error=errors.append)
    assert isinstance(errors[0], ReplyExists) and "already used" in str(errors[0])
    assert len(model.requests) == 1  # refused before any request was sent
    first = cw.call()
    assert first.text == "two"
    ids = {r.reply_id for r in cw.records() if r.type is RecordType.MODEL_RESP}
    assert len(ids) == 2 and "same" in ids


def test_a_streaming_reply_cannot_be_resumed_kept_or_discarded_elsewhere():
    gate, inside = threading.Event(), threading.Event()

    def hold(chunk: Chunk) -> None:
        if chunk.text == "b":
            inside.set()
            assert gate.wait(10)

    cw, _ = window([T("a"), T("b"), DONE])
    cw.add_prompt("go")
    worker = threading.Thread(target=lambda: cw.call(rxops.middleware(on_chunk=hold)))
    worker.start()
    try:
        assert inside.wait(10)
        other = ContextWindow(cw.store, ScriptedModel([]), "life")
        (row,) = other.active_replies()
        assert row.state is ReplyState.STREAMING and other.checkpoints() == []
        for attempt, done in (
            (other.resume, "resumed"),
            (other.resume_call, "resumed"),
            (other.keep, "kept"),
            (other.discard, "discarded"),
        ):
            with pytest.raises(ReplyBusy, match="still streaming") as busy:
                attempt(row.id)
            assert busy.value.state == "streaming"
            assert f"it can be {done} once it stops" in str(busy.value)
    finally:
        gate.set()
        worker.join(10)
    assert shape(cw)[-1] == ("MODEL_RESP", "ab")


# -- keep and discard ---------------------------------------------------------------------


def test_discard_drops_an_interrupted_reply_for_good_but_keeps_it_for_audit():
    cw, model = window([T("par"), ConnectionError("cut")], [T("next"), DONE])
    cw.add_prompt("one")
    cp_id = cut(cw)
    dropped = cw.discard(cp_id)
    assert dropped.state is ReplyState.DISCARDED and dropped.text == "par"
    assert cw.checkpoints() == []
    assert [c.state for c in cw.store.checkpoints(cw.context_id, include_resolved=True)] == [
        ReplyState.DISCARDED
    ]
    with pytest.raises(CheckpointResolved, match="already discarded"):
        cw.resume(cp_id)
    with pytest.raises(CheckpointResolved):
        cw.keep(cp_id)
    cw.add_prompt("two")
    cw.call()
    assert [(r.type.name, r.content) for r in model.requests[1].records] == [
        ("PROMPT", "one"),
        ("PROMPT", "two"),
    ]


def test_keep_stores_the_partial_text_in_its_own_place():
    cw, _ = window([T("half an "), T("answer"), ConnectionError("cut")], [T("B!"), DONE])
    cw.add_prompt("A?")
    cp_id = cut(cw)
    cw.add_prompt("B?")
    cw.call()
    kept = cw.keep(cp_id)
    assert kept.metadata == {"partial": True, "model": "scripted", "provider": "scripted"}
    assert kept.content == "half an answer"
    assert shape(cw) == [
        ("PROMPT", "A?"),
        ("MODEL_RESP", "half an answer"),
        ("PROMPT", "B?"),
        ("MODEL_RESP", "B!"),
    ]
    assert cw.store.get_checkpoint(cp_id).state is ReplyState.COMPLETED
    assert cw.checkpoints() == []
    with pytest.raises(CheckpointResolved, match="already completed"):
        cw.keep(cp_id)


def test_keep_of_an_empty_checkpoint_says_discard_instead():
    cw, _ = window([ConnectionError("refused")])
    cw.add_prompt("A?")
    cp_id = cut(cw)
    with pytest.raises(ValueError, match="discard it instead"):
        cw.keep(cp_id)
    assert [c.id for c in cw.checkpoints()] == [cp_id]


def test_a_reply_answered_again_by_a_retry_can_only_be_discarded():
    cw, _ = window([T("first try "), ConnectionError("cut")], [T("second try"), DONE])
    cw.add_prompt("A?")
    cp_id = cut(cw)
    cw.call()  # the user asked again: a new reply answers the same prompt
    for settle, doing in (
        (cw.resume, "resuming"),
        (cw.resume_call, "resuming"),
        (cw.keep, "keeping"),
    ):
        with pytest.raises(ReplySuperseded, match=rf"answered again.*; {doing} it .*discard it"):
            settle(cp_id)
    assert cw.discard(cp_id).state is ReplyState.DISCARDED
    assert shape(cw) == [("PROMPT", "A?"), ("MODEL_RESP", "second try")]


# -- positions ----------------------------------------------------------------------------


def test_a_resume_after_the_conversation_moved_on_lands_in_place_with_history_up_to_there():
    cw, model = window(
        [T("The answer to A "), ConnectionError("cut")],
        [T("Answer B."), DONE],
        [T("is 42."), DONE],
    )
    cw.add_prompt("A?")
    cp_id = cut(cw)
    cw.add_prompt("B?")
    cw.call()
    joined = cw.resume_call(cp_id)
    assert joined.text == "The answer to A is 42."
    assert shape(cw) == [
        ("PROMPT", "A?"),
        ("MODEL_RESP", "The answer to A is 42."),
        ("PROMPT", "B?"),
        ("MODEL_RESP", "Answer B."),
    ]
    # The resume request saw A and the partial answer, never B.
    assert [(r.type.name, r.content) for r in model.requests[2].records] == [
        ("PROMPT", "A?"),
        ("MODEL_RESP", "The answer to A "),
        ("PROMPT", CONTINUE_PROMPT),
    ]


@pytest.mark.parametrize("store_kind", ["sqlite"])  # PostgreSQL's clock is the server's
def test_a_clock_stepped_back_mid_conversation_changes_no_order():
    cw, _ = window([T("one"), DONE], [T("two"), DONE], [T("three"), DONE])
    store = cw.store
    base = datetime(2030, 1, 1, tzinfo=UTC)
    steps = iter(range(1000))
    # Every write the clock jumps an hour back (NTP, a VM resumed...).
    store.clock = lambda: base - timedelta(hours=next(steps))  # type: ignore[attr-defined]
    for q in ("1?", "2?", "3?"):
        cw.add_prompt(q)
        cw.call()
    assert shape(cw) == [
        ("PROMPT", "1?"),
        ("MODEL_RESP", "one"),
        ("PROMPT", "2?"),
        ("MODEL_RESP", "two"),
        ("PROMPT", "3?"),
        ("MODEL_RESP", "three"),
    ]
    stamps = [r.timestamp for r in cw.records()]
    assert stamps == sorted(stamps, reverse=True)  # the clock did go back


def test_a_new_prompt_while_tools_run_is_not_part_of_that_reply():
    # The reply's place was fixed when it was asked: its second round's history ends there.
    cw, model = window(
        [call(0, "c1", "slow", "{}"), Chunk(ChunkKind.DONE, finish_reason="tool_calls")],
        [T("done"), DONE],
    )

    def slow(_: dict[str, Any]) -> str:
        cw.add_prompt("meanwhile")  # another part of the app writes while the tool runs
        return "ok"

    cw.add_tool(Tool("slow", "slow tool"), slow)
    cw.add_prompt("go")
    cw.call()
    assert [r.content for r in model.requests[1].records] == ["go", "{}", "ok"]
    assert shape(cw) == [
        ("PROMPT", "go"),
        ("TOOL_CALL", "{}"),
        ("TOOL_OUTPUT", "ok"),
        ("MODEL_RESP", "done"),
        ("PROMPT", "meanwhile"),
    ]


# -- dangling tool calls ------------------------------------------------------------------


def test_a_tool_raising_base_exception_leaves_calls_that_the_next_request_answers():
    cw, model = window(
        [call(0, "c1", "boom", "{}"), call(1, "c2", "boom", '{"x":1}'), DONE],
        [T("sorry"), DONE],
    )

    def boom(_: dict[str, Any]) -> str:
        raise KeyboardInterrupt

    cw.add_tool(Tool("boom", "never returns"), boom)
    cw.add_prompt("go")
    with pytest.raises(KeyboardInterrupt):
        cw.call()
    (cp,) = cw.checkpoints()
    assert [r.type.name for r in cw.records()] == ["PROMPT", "TOOL_CALL", "TOOL_CALL"]
    cw.add_prompt("and now?")
    cw.call()
    sent = [(r.type.name, r.tool_call_id, r.content) for r in model.requests[1].records]
    assert sent[:5] == [
        ("PROMPT", None, "go"),
        ("TOOL_CALL", "c1", "{}"),
        ("TOOL_CALL", "c2", '{"x":1}'),
        ("TOOL_OUTPUT", "c1", INTERRUPTED_TOOL_OUTPUT),
        ("TOOL_OUTPUT", "c2", INTERRUPTED_TOOL_OUTPUT),
    ]
    # Stored, so the history is honest and the next request does not add them again.
    outputs = [r for r in cw.records() if r.type is RecordType.TOOL_OUTPUT]
    assert [(o.tool_call_id, o.metadata) for o in outputs] == [
        ("c1", {"interrupted": True}),
        ("c2", {"interrupted": True}),
    ]
    assert cp.id in {c.id for c in cw.checkpoints()}


# -- claims -------------------------------------------------------------------------------


def test_a_failed_resume_call_releases_its_claim_at_once():
    cw, _ = window([T("a"), ConnectionError("cut")], [ConnectionError("again")], [T("b"), DONE])
    cw.add_prompt("go")
    cp_id = cut(cw)
    with pytest.raises(StreamInterrupted):
        cw.resume_call(cp_id)
    (cp,) = cw.checkpoints()
    assert (cp.id, cp.state, cp.owner) == (cp_id, ReplyState.INTERRUPTED, None)
    assert cw.resume_call(cp_id).text == "ab"


def test_an_aresume_closed_before_its_first_chunk_never_holds_the_reply():
    cw, _ = window([T("a"), ConnectionError("cut")], [T("b"), DONE])
    cw.add_prompt("go")
    cp_id = cut(cw)

    async def main() -> None:
        it = cw.aresume(cp_id)
        await it.aclose()  # type: ignore[attr-defined]
        (cp,) = cw.checkpoints()
        assert cp.state is ReplyState.INTERRUPTED
        async with contextlib.aclosing(cw.aresume(cp_id)) as chunks:  # type: ignore[type-var]
            assert [c.text async for c in chunks] == ["b", ""]

    asyncio.run(main())
    assert shape(cw)[-1] == ("MODEL_RESP", "ab")


# -- the user's own exceptions --------------------------------------------------------------


def _outcome(make: Any, case: str) -> tuple[str, list[str], list[str]]:
    """Run ``case`` against the Observable ``make()``: what was raised from subscribe, what
    reached on_error, and the values the subscriber got."""
    got: list[str] = []
    errors: list[str] = []

    def boom(value: Any) -> None:
        if getattr(value, "text", value) == "b":
            raise ValueError("user code")
        got.append(getattr(value, "text", value))

    obs = make()
    try:
        if case == "on_next":
            obs.subscribe(boom)
        elif case == "on_next+on_error":
            obs.subscribe(boom, lambda e: errors.append(repr(e)))
        elif case == "operator":
            obs.pipe(ops.map(lambda c: boom(c) or c)).subscribe(
                lambda c: None, lambda e: errors.append(repr(e))
            )
        elif case == "on_completed":
            obs.subscribe(got.append, lambda e: errors.append(repr(e)), lambda: boom("b"))
        elif case == "on_error":
            obs.pipe(
                ops.map(lambda c: c), ops.concat(reactivex.throw(KeyError("upstream")))
            ).subscribe(got.append, lambda e: boom("b"))
    except Exception as exc:
        return repr(exc), errors, got
    return "returned", errors, got


@pytest.mark.parametrize(
    "case", ["on_next", "on_next+on_error", "operator", "on_completed", "on_error"]
)
def test_user_code_exceptions_reach_the_user_as_plain_rxpy_delivers_them(case: str):
    chunks = [T("a"), T("b"), T("c"), DONE]

    def ours() -> Any:
        cw, _ = window(chunks)
        cw.add_prompt("go")
        ours.cw = cw  # type: ignore[attr-defined]
        return cw.stream()

    plain = _outcome(lambda: reactivex.from_iterable(chunks), case)
    mine = _outcome(ours, case)
    assert [str(x) for x in mine] == [str(x) for x in plain]
    cw: ContextWindow = ours.cw  # type: ignore[attr-defined]
    for cp in cw.checkpoints():
        assert "ValueError" not in (cp.error or "") and "user code" not in (cp.error or "")


# -- concurrent first open, newer schemas ----------------------------------------------------


def test_a_final_commit_that_fails_leaves_the_reply_interrupted_with_all_its_text():
    # The reply cannot be stored (here: provider metadata that is not JSON): nothing is
    # half written, and the reply is not left STREAMING — it is interrupted, with every
    # chunk delivered, so it can be kept, resumed or discarded.
    odd = Chunk(ChunkKind.DONE, finish_reason="stop", metadata={"raw": object()})
    cw, _ = window([T("all "), T("of it"), odd])
    cw.add_prompt("go")
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    assert isinstance(info.value.__cause__, TypeError)
    assert cw.active_replies() == []
    (cp,) = cw.checkpoints()
    assert cp.state is ReplyState.INTERRUPTED and cp.text == "all of it"
    assert [r.type for r in cw.records()] == [RecordType.PROMPT]


class _BatchGate:
    """Holds the store's periodic checkpoint batches (the checkpointer thread) at the door
    until released; the real write then runs."""

    def __init__(self, store: Any) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.writing = threading.Event()  # the real write has started
        self.done = threading.Event()
        self.results: list[Any] = []
        self._real = store.save_checkpoints
        store.save_checkpoints = self

    def __call__(self, writes: Any) -> Any:
        self.entered.set()
        self.release.wait(5.0)  # a commit that waits for the batch is let through late
        self.writing.set()
        try:
            out = self._real(writes)
            self.results.append(out)
            return out
        finally:
            self.done.set()


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_commit_does_not_wait_for_a_periodic_batch_in_flight(driver: str):
    # The checkpointer's batch holds a slow transaction (another worker's lock, a busy
    # pool): the reply that ends meanwhile commits at once instead of waiting for it, and
    # the batch's late write of that reply changes nothing (its row is no longer streaming).
    gate: _BatchGate

    class Paused(ScriptedModel):
        def iter_chunks(self, request: Any) -> Any:
            yield T("hello ")
            assert gate.entered.wait(30.0)  # a batch holding this reply is in flight
            yield T("world")
            yield DONE

        async def aiter_chunks(self, request: Any) -> Any:
            yield T("hello ")
            assert await asyncio.to_thread(gate.entered.wait, 30.0)
            yield T("world")
            yield DONE

    cw = ContextWindow(open_store(), Paused([[]]), "life", retry=None, checkpoint_every=0.02)
    gate = _BatchGate(cw._store)
    cw.add_prompt("go")

    async def consume() -> str:
        return "".join([c.text async for c in cw.astream() if c.kind is ChunkKind.TEXT])

    text = cw.call().text if driver == "sync" else asyncio.run(consume())
    committed_first = not gate.writing.is_set()
    gate.release.set()
    assert gate.done.wait(30.0)
    assert committed_first, "the commit waited for the periodic batch"
    assert text == "hello world"
    assert shape(cw) == [("PROMPT", "go"), ("MODEL_RESP", "hello world")]
    assert cw.active_replies() == [] and cw.checkpoints() == []
    assert gate.results and gate.results[0] == [False]  # fenced: the reply had ended


def test_commits_racing_periodic_writes_store_every_reply_once_and_leave_nothing():
    # Bounded trials with real threads: each reply's last chunk comes the moment a
    # periodic batch (the checkpointer, every 1 ms) has started, so its commit runs beside
    # that batch's write of it; on one store (one pool on PostgreSQL), every other reply
    # with a tool round first (whose commit does wait for the periodic write).
    from stores import scalar

    store = open_store()
    batches = threading.Condition()
    started = [0]
    real = store.save_checkpoints

    def counted(writes: Any) -> Any:
        with batches:
            started[0] += 1
            batches.notify_all()
        return real(writes)

    store.save_checkpoints = counted

    class RacingModel(ScriptedModel):
        def iter_chunks(self, request: Any) -> Any:
            *body, last = super().iter_chunks(request)
            yield from body
            with batches:
                seen = started[0]
                assert batches.wait_for(lambda: started[0] > seen, 30.0)
            yield last

    threads, replies = 6, 8
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        scripts: list[list[Chunk]] = []
        for r in range(replies):
            body = [T(f"w{w}r{r}c{i} ") for i in range(30)]
            if r % 2:
                tool_round = Chunk(ChunkKind.DONE, finish_reason="tool_calls")
                scripts.append([*body[:5], call(0, f"c{w}{r}", "f", "{}"), tool_round])
            scripts.append([*body, DONE])
        try:
            cw = ContextWindow(
                store, RacingModel(scripts), f"race{w}", retry=None, checkpoint_every=0.001
            )
            cw.add_tool(Tool("f", "returns ok"), lambda _: "ok")
            for r in range(replies):
                cw.add_prompt(f"go {r}")
                assert cw.call().text == "".join(f"w{w}r{r}c{i} " for i in range(30))
            assert cw.active_replies() == [] and cw.checkpoints() == []
            answers = [x.content for x in cw.records() if x.type is RecordType.MODEL_RESP]
            assert answers[-1] == "".join(f"w{w}r{replies - 1}c{i} " for i in range(30))
            assert len(answers) == replies + replies // 2  # tool rounds' own text too
        except BaseException as error:  # reported below
            errors.append(error)

    running = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join(60.0)
    assert errors == []
    assert scalar(store, "SELECT COUNT(*) FROM checkpoint_parts") == 0
    assert scalar(store, "SELECT COUNT(*) FROM checkpoints WHERE state = 'streaming'") == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_tool_output_that_comes_after_the_stream_ended_is_not_stored(mode: str) -> None:
    """The stream is disposed (its task cancelled) while a tool runs; the tool returns after
    that. The reply is interrupted by then: its call is answered once, by the next request's
    "interrupted" output, on both paths (the sync path stored the late output as well, and a
    request made while the tool still ran left two outputs for one call, which providers
    refuse)."""
    cw, model = window([call(0, "c1", "slow", "{}"), DONE], [T("next"), DONE])
    started, release, returned = threading.Event(), threading.Event(), threading.Event()

    def slow(_: dict[str, Any]) -> str:
        started.set()
        assert release.wait(30)
        returned.set()
        return "real output"

    cw.add_tool(Tool("slow", "takes its time"), slow)
    cw.add_prompt("go")
    if mode == "sync":
        driver: list[threading.Thread] = []
        hook = rxops.middleware(on_start=lambda: driver.append(threading.current_thread()))
        subscription = cw.stream(hook).subscribe(
            lambda _: None, lambda _: None, scheduler=reactivex.scheduler.NewThreadScheduler()
        )
        assert started.wait(30)
        subscription.dispose()
        release.set()
        driver[0].join(30)
        assert not driver[0].is_alive()
    else:

        async def main() -> None:
            async def consume() -> None:
                async for _ in cw.astream():
                    pass

            task = asyncio.create_task(consume())
            await asyncio.to_thread(started.wait, 30)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            release.set()
            await asyncio.to_thread(returned.wait, 30)

        asyncio.run(main())
    assert [r.content for r in cw.records() if r.type is RecordType.TOOL_OUTPUT] == []
    cw.add_prompt("again")
    cw.call()
    sent = [(r.type.name, r.tool_call_id) for r in model.requests[1].records]
    assert sent.count(("TOOL_OUTPUT", "c1")) == 1
    outputs = [r.content for r in cw.records() if r.type is RecordType.TOOL_OUTPUT]
    assert outputs == [INTERRUPTED_TOOL_OUTPUT]


def _history_of(*rounds: list[RecordDraft]) -> tuple[Any, str]:
    """A context holding a prompt, then each round's records committed in one write."""
    store = open_store()
    ctx = store.get_or_create_context("pairs").id
    store.add_record(ctx, RecordDraft(RecordType.PROMPT, "go"))
    for drafts in rounds:
        store.commit_reply(ctx, drafts)
    return store, ctx


def _call(id: str) -> RecordDraft:
    return RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id=id, tool_name="f")


def _output(id: str, text: str = "out") -> RecordDraft:
    return RecordDraft(RecordType.TOOL_OUTPUT, text, tool_call_id=id, tool_name="f")


def test_a_history_cache_tells_each_thread_the_version_its_own_read_served() -> None:
    """A request notes the version its history was read at (server-side threading's guard
    against records changed since); another request of the same window reading the shared
    cache in between, after a change, must not move that note."""
    store, ctx = _history_of([RecordDraft(RecordType.MODEL_RESP, "one")])
    cache = HistoryCache(store, ctx)
    cache.live()
    mine = cache.version
    other = threading.Thread(target=lambda: (store.set_live_range(ctx, 0, 0, False), cache.live()))
    other.start()
    other.join(30)
    assert cache.version == mine
    assert store.history(ctx)[0] != mine  # the other thread's read did see a newer one


def test_a_call_id_used_again_in_a_later_round_is_answered_once_per_call() -> None:
    """Providers that send no call id get ``call_<index>`` each round, so ids repeat: an
    output answers the earliest call of its id not answered yet, not every call of that id.
    A later round's call left without its output (a kill) is answered by the next request."""
    store, ctx = _history_of([_call("call_0"), _output("call_0", "one")], [_call("call_0")])
    sent = request_history(store, ctx, upto=None, reply_id=None)
    assert [(r.type.name, r.content) for r in sent[1:]] == [
        ("TOOL_CALL", "{}"),
        ("TOOL_OUTPUT", "one"),
        ("TOOL_CALL", "{}"),
        ("TOOL_OUTPUT", INTERRUPTED_TOOL_OUTPUT),
    ]


def test_a_second_output_for_one_call_is_left_out_of_requests() -> None:
    """Two outputs for one call (two requests that both answered a dangling call at once,
    from two windows) would make every later request one the providers refuse: a request
    carries the first output of a call only."""
    store, ctx = _history_of(
        [_call("c1")], [_output("c1", INTERRUPTED_TOOL_OUTPUT)], [_output("c1", "again")]
    )
    sent = request_history(store, ctx, upto=None, reply_id=None)
    assert [(r.type.name, r.content) for r in sent[1:]] == [
        ("TOOL_CALL", "{}"),
        ("TOOL_OUTPUT", INTERRUPTED_TOOL_OUTPUT),
    ]


@pytest.mark.parametrize("named", [True, False], ids=["with-id", "without-id"])
def test_an_output_is_left_out_when_no_live_call_is_there_for_it(named: bool) -> None:
    """An output whose call is dead (killed with its live flag) or was never there is left
    out of requests, also when the history holds no tool call at all: providers refuse a
    tool result that answers nothing."""
    orphan = RecordDraft(
        RecordType.TOOL_OUTPUT, "out", tool_call_id="c1" if named else None, tool_name="f"
    )
    store, ctx = _history_of([orphan])
    sent = request_history(store, ctx, upto=None, reply_id=None)
    assert [(r.type.name, r.content) for r in sent] == [("PROMPT", "go")]
    # Its call killed after the fact: the same.
    store, ctx = _history_of([_call("c1")], [_output("c1")])
    call = next(r for r in store.records(ctx) if r.type is RecordType.TOOL_CALL)
    store.set_live_range(ctx, call.pos, call.pos, False)
    sent = request_history(store, ctx, upto=None, reply_id=None)
    assert [(r.type.name, r.content) for r in sent] == [("PROMPT", "go")]


@pytest.mark.parametrize("warm", [False, True], ids=["first-read", "cache-warm"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_reply_that_ends_while_a_request_reads_its_history_is_carried_whole_or_not_at_all(
    when: str, warm: bool
) -> None:
    """A request reads the live records and which replies are still being generated (to
    leave theirs out). Another process's reply that commits its last round while the request
    reads was carried half (its tool round without its answer); the request must carry it
    whole, or leave it out whole: R ends just before or just after the busy replies are
    read, with the window's cache new or having read reply records before."""
    store = open_store()
    ctx = store.get_or_create_context("race").id
    store.add_record(ctx, RecordDraft(RecordType.PROMPT, "for R"))
    cache = HistoryCache(store, ctx)
    if warm:  # an earlier reply's records: the cache knows this context has replies
        store.commit_reply(ctx, [RecordDraft(RecordType.MODEL_RESP, "earlier")])
        earlier = begin_and_end(store, ctx, "E")
        request_history(store, ctx, upto=None, reply_id=None, cache=cache)
        assert earlier
    row = store.begin_reply(ctx, "R", owner=worker_id())
    ticket = ReplyTicket(row.id, row.epoch)
    store.commit_reply(ctx, [_call("r1")], reply=ticket, end="round")
    store.commit_reply(ctx, [_output("r1")], reply=ticket)
    real = store.busy_reply_ids
    finished: list[bool] = []

    def end_r() -> None:
        if not finished:
            finished.append(True)
            answer = RecordDraft(RecordType.MODEL_RESP, "R's answer")
            store.commit_reply(ctx, [answer], reply=ticket, end="reply")

    def busy_reply_ids(context_id: str) -> set[str]:
        if when == "before":
            end_r()
        found = real(context_id)
        end_r()
        return found

    store.busy_reply_ids = busy_reply_ids  # type: ignore[method-assign]
    sent = request_history(store, ctx, upto=None, reply_id=None, cache=cache)
    of_r = [r.content for r in sent if r.reply_id == "R"]
    assert of_r in ([], ["{}", "out", "R's answer"]), of_r


def begin_and_end(store: Any, ctx: str, reply_id: str) -> bool:
    """A reply begun and committed whole (its records carry its id)."""
    row = store.begin_reply(ctx, reply_id, owner=worker_id())
    answer = RecordDraft(RecordType.MODEL_RESP, f"{reply_id}'s answer")
    store.commit_reply(ctx, [answer], reply=ReplyTicket(row.id, row.epoch), end="reply")
    return True
