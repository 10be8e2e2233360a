"""``cw.watch`` / ``cw.awatch``: a reply watched from its start, joined midway, joined
late, after its live data expired, without fan-out; interrupted; unknown; in asyncio.

Every test ends with the watcher's text equal to the stored record. With a live fan-out
(memory, Redis) a watcher that joins while the reply streams gets exactly the chunks the
owner's subscriber got, in order, none missing, none twice, wherever it joined.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redistest
from watching import WAIT, Owner, Watcher, published, stored_text, text_of, until

import rxcontext
from rxcontext import (
    Chunk,
    ChunkKind,
    ContextWindow,
    RecordType,
    ReplyNotFound,
    ReplyState,
    StreamInterrupted,
    Usage,
)
from rxcontext import operators as rxops
from rxcontext.chunks import ReplyBuilder
from rxcontext.fanout import MemoryFanout, fanout_for
from rxcontext.providers import ScriptedModel

T = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731


def script(n: int, *, tail: bool = True) -> list[Any]:
    out: list[Any] = [T(f"w{i} ") for i in range(n)]
    if tail:
        out.append(Chunk(ChunkKind.USAGE, usage=Usage.of(3, n)))
        out.append(Chunk(ChunkKind.DONE, finish_reason="stop", response_id="resp-1"))
    return out


@pytest.fixture(params=["memory", "redis", "none"])
def fanout_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fanout_spec(fanout_kind: str) -> Iterator[Any]:
    """What to pass as ``fanout=``: a memory fan-out, a Redis one under this test's own
    key prefix on the shared server, or none."""
    if fanout_kind == "memory":
        yield "memory"
    elif fanout_kind == "none":
        yield None
    else:
        from rxcontext.fanout.redis import RedisFanout

        for url, prefix in redistest.shared_prefix():
            fanout = RedisFanout(url, prefix=prefix)
            yield fanout
            fanout.close()


def window(make_store: Callable[..., Any], fanout: Any, scripts: list[list[Any]]) -> ContextWindow:
    store = make_store(fanout=fanout)
    # Frequent checkpoints: watchers without live data move at checkpoint granularity.
    cw = ContextWindow(
        store, ScriptedModel(scripts), context="watched", retry=None, checkpoint_every=0.05
    )
    cw.add_prompt("Say some words.")
    return cw


@pytest.mark.parametrize("join_at", [0, 1, 7, 40])
def test_a_watcher_joining_anywhere_gets_exactly_what_the_owner_delivered(
    make_store: Callable[..., Any], fanout_spec: Any, fanout_kind: str, join_at: int
) -> None:
    cw = window(make_store, fanout_spec, [script(40)])
    owner = Owner(cw, "r-join", hold=join_at).start()
    # What the owner delivered is in the live log (a Redis writer sends every 20 ms; a
    # watcher that came sooner begins from the store's checkpoint, at its granularity).
    assert published(fanout_for(cw.store), "r-join", join_at)
    first = threading.Event()
    watcher = Watcher(cw, "r-join", poll=0.02)
    watcher.on_chunk = lambda _: first.set()
    watcher.start()
    if join_at:
        assert first.wait(30)  # it has joined while the reply streams (held at join_at)
    owner.join()
    watcher.join()
    assert owner.error is None and watcher.error is None and watcher.completed
    stored = stored_text(cw, "r-join")
    assert stored == "".join(f"w{i} " for i in range(40))
    assert watcher.text == stored
    if fanout_kind != "none" and join_at:
        assert watcher.chunks == owner.delivered  # no gap, no repeat, same order
    else:
        assert watcher.chunks[-1].kind is ChunkKind.DONE
        assert watcher.chunks[-1].finish_reason == "stop"


def test_a_late_watcher_gets_the_whole_stored_reply(
    make_store: Callable[..., Any], fanout_spec: Any
) -> None:
    cw = window(make_store, fanout_spec, [script(12)])
    owner = Owner(cw, "r-late").start()
    owner.join()
    watcher = Watcher(cw, "r-late").start().join()
    assert watcher.completed and watcher.text == stored_text(cw, "r-late")
    done = watcher.chunks[-1]
    assert done.kind is ChunkKind.DONE and done.response_id == "resp-1"


def test_expired_live_data_is_served_from_the_store(make_store: Callable[..., Any]) -> None:
    fanout = MemoryFanout(keep_ended=0.0)  # an ended reply's live log is gone at once
    cw = window(make_store, fanout, [script(9)])
    Owner(cw, "r-exp").start().join()
    watcher = Watcher(cw, "r-exp").start().join()
    assert watcher.completed and watcher.text == stored_text(cw, "r-exp") != ""
    assert watcher.kinds() == [ChunkKind.TEXT, ChunkKind.DONE]  # one piece, from the store


def test_a_watcher_served_from_the_store_gets_the_stored_thinking_too(
    make_store: Callable[..., Any], fanout_spec: Any
) -> None:
    # A watcher that finds no live log (none attached, expired, or not yet written by the
    # Redis writer when the reply had already committed) rebuilds the reply from the
    # store: its thinking as well as its text, or what it shows last is not the record.
    steps = [Chunk(ChunkKind.THINKING, "Think "), Chunk(ChunkKind.THINKING, "twice."), *script(3)]
    fanout = MemoryFanout(keep_ended=0.0) if fanout_spec == "memory" else fanout_spec
    cw = window(make_store, fanout, [steps])
    Owner(cw, "r-think").start().join()
    if fanout_spec is not None and fanout_spec != "memory":
        import redis

        client = redis.Redis.from_url(redistest.SHARED)
        assert fanout_spec.drain(5.0)  # its writer has sent the log: delete all of it
        client.delete(fanout_spec.key("r-think"))  # as an eviction would: only the store
        client.close()
    watcher = Watcher(cw, "r-think").start().join()
    builder = ReplyBuilder()
    for chunk in watcher.chunks:
        builder.add(chunk)
    assert watcher.completed and builder.build().text == stored_text(cw, "r-think")
    assert builder.build().thinking == "Think twice."


def test_an_interrupted_reply_ends_its_watchers_with_the_checkpoint(
    make_store: Callable[..., Any], fanout_spec: Any
) -> None:
    cut = [*script(6, tail=False), ConnectionError("the provider hung up")]
    cw = window(make_store, fanout_spec, [cut])
    owner = Owner(cw, "r-cut", hold=3).start()
    watcher = Watcher(cw, "r-cut", poll=0.02).start()
    owner.join()
    watcher.join()
    assert isinstance(owner.error, StreamInterrupted)
    assert isinstance(watcher.error, StreamInterrupted)
    checkpoint = watcher.error.checkpoint
    assert checkpoint.reply_id == "r-cut" and checkpoint.state is ReplyState.INTERRUPTED
    assert watcher.text == checkpoint.text == "w0 w1 w2 w3 w4 w5 "
    # and a watcher that comes later hears the same
    late = Watcher(cw, "r-cut").start().join()
    assert isinstance(late.error, StreamInterrupted) and late.text == checkpoint.text


def test_an_unknown_reply_is_a_clear_error(make_store: Callable[..., Any]) -> None:
    cw = window(make_store, "memory", [])
    watcher = Watcher(cw, "never-begun").start().join()
    assert isinstance(watcher.error, ReplyNotFound)
    assert "never-begun" in str(watcher.error)
    with pytest.raises(TypeError):
        cw.watch(42)  # type: ignore[arg-type]


def test_a_tool_loop_is_watched_whole(make_store: Callable[..., Any], fanout_spec: Any) -> None:
    call = [
        T("Let me look. "),
        Chunk(ChunkKind.TOOL_CALL, "", 0, "call-1", "weather"),
        Chunk(ChunkKind.TOOL_CALL, '{"city": "Oslo"}', 0),
        Chunk(ChunkKind.DONE, finish_reason="tool_calls"),
    ]
    answer = [T("Sunny "), T("in Oslo."), Chunk(ChunkKind.DONE, finish_reason="stop")]
    cw = window(make_store, fanout_spec, [call, answer])
    cw.add_tool(rxcontext.Tool("weather", "Weather").string("city", "City"), lambda a: "sunny")
    owner = Owner(cw, "r-tools", hold=2).start()
    watcher = Watcher(cw, "r-tools", poll=0.02).start()
    owner.join()
    watcher.join()
    assert owner.error is None and watcher.completed
    assert watcher.text == stored_text(cw, "r-tools") == "Let me look. Sunny in Oslo."
    results = [c for c in watcher.chunks if c.kind is ChunkKind.TOOL_RESULT]
    assert [(c.id, c.text) for c in results] == [("call-1", "sunny")]


def test_a_late_watcher_sees_a_failed_tools_result_flagged_as_a_live_one_does(
    make_store: Callable[..., Any], fanout_spec: Any
) -> None:
    """A tool that raised: its TOOL_RESULT chunk says so (``metadata["error"]``) live, and
    its stored output is marked so; a watcher that reads the round from the store (the
    reply over before it came) got the chunk without the flag."""
    call = [
        Chunk(ChunkKind.TOOL_CALL, "", 0, "call-1", "weather"),
        Chunk(ChunkKind.TOOL_CALL, '{"city": "Oslo"}', 0),
        Chunk(ChunkKind.DONE, finish_reason="tool_calls"),
    ]
    answer = [T("No weather today."), Chunk(ChunkKind.DONE, finish_reason="stop")]
    cw = window(make_store, fanout_spec, [call, answer])

    def down(_: dict[str, Any]) -> str:
        raise RuntimeError("the service is down")

    cw.add_tool(rxcontext.Tool("weather", "Weather").string("city", "City"), down)
    chunks: list[Chunk] = []
    cw.stream(reply_id="r-failed").subscribe(chunks.append)
    live = [c for c in chunks if c.kind is ChunkKind.TOOL_RESULT]
    late = Watcher(cw, "r-failed", poll=0.02).start()
    late.join()
    assert late.completed
    (result,) = [c for c in late.chunks if c.kind is ChunkKind.TOOL_RESULT]
    assert [c.metadata.get("error") for c in live] == [True]
    assert result.metadata.get("error") is True


def test_disposing_a_watcher_stops_it_and_leaves_the_reply_alone(
    make_store: Callable[..., Any],
) -> None:
    cw = window(make_store, "memory", [script(5)])
    owner = Owner(cw, "r-dispose", hold=2).start()
    got = threading.Event()
    seen: list[Chunk] = []

    def on_next(chunk: Chunk) -> None:
        seen.append(chunk)
        got.set()

    from reactivex.scheduler import NewThreadScheduler

    sub = cw.watch("r-dispose").subscribe(on_next, scheduler=NewThreadScheduler())
    assert got.wait(30)
    sub.dispose()
    owner.join()
    assert owner.error is None and stored_text(cw, "r-dispose") == "w0 w1 w2 w3 w4 "
    assert text_of(seen) in ("w0 ", "w0 w1 ")


def test_disposing_a_watcher_under_subscribe_on_stops_it_while_the_reply_goes_on(
    make_store: Callable[..., Any], fanout_spec: Any
) -> None:
    # subscribe_on hands the watcher's own disposable over only once its loop returns, on
    # the worker the loop holds: the loop watches the observers after it, as a stream does.
    from reactivex import operators as ops
    from reactivex.scheduler import ThreadPoolScheduler

    cw = window(make_store, fanout_spec, [script(5)])
    owner = Owner(cw, "r-on", hold=2).start()  # held after two chunks until joined
    pool = ThreadPoolScheduler(1)
    seen: list[Chunk] = []
    both = threading.Event()

    def on_next(chunk: Chunk) -> None:
        seen.append(chunk)
        if text_of(seen) == "w0 w1 ":
            both.set()

    sub = cw.watch("r-on", poll=0.02).pipe(ops.subscribe_on(pool)).subscribe(on_next)
    assert both.wait(WAIT)
    sub.dispose()
    free = threading.Event()
    pool.schedule(lambda *_: free.set())  # runs once the watcher let go of the only worker
    assert free.wait(WAIT / 3), "the disposed watcher still holds its worker"
    assert not owner.done.is_set()  # it stopped on its own, not with the reply
    owner.join()
    assert owner.error is None and stored_text(cw, "r-on") == "w0 w1 w2 w3 w4 "
    assert text_of(seen) == "w0 w1 "


def test_awatch_is_the_asyncio_twin(make_store: Callable[..., Any], fanout_spec: Any) -> None:
    cw = window(make_store, fanout_spec, [script(20)])
    owner = Owner(cw, "r-async", hold=5).start()

    async def watch() -> list[Chunk]:
        out: list[Chunk] = []
        async for chunk in cw.awatch("r-async", poll=0.02):
            out.append(chunk)
            if len(out) == 1:
                owner.release()
        return out

    chunks = asyncio.run(watch())
    owner.join()
    assert text_of(chunks) == stored_text(cw, "r-async")

    async def unknown() -> None:
        async for _ in cw.awatch("nope"):
            pass

    with pytest.raises(ReplyNotFound):
        asyncio.run(unknown())


def test_many_replies_watched_by_many_joiners(make_store: Callable[..., Any]) -> None:
    """Replies of random lengths, watchers joining at random moments (no holds): every
    watcher's chunks are the owner's, every text the stored one."""
    rng = random.Random(13)
    store = make_store(fanout="memory")
    n = 12
    lengths = [rng.randint(0, 60) for _ in range(n)]
    windows = []
    for i, length in enumerate(lengths):
        cw = ContextWindow(store, ScriptedModel([script(length)]), context=f"c{i}", retry=None)
        cw.add_prompt("go")
        windows.append(cw)
    owners = [Owner(cw, f"many-{i}", hold=0).start() for i, cw in enumerate(windows)]
    watchers: list[tuple[int, Watcher]] = []
    for i, owner in enumerate(owners):
        watchers.append((i, Watcher(windows[i], f"many-{i}").start()))
        owner.release()
        watchers.append((i, Watcher(windows[i], f"many-{i}").start()))
    for owner in owners:
        owner.join()
    for i, watcher in watchers:
        watcher.join()
        assert watcher.completed, watcher.error
        assert watcher.chunks == owners[i].delivered
        assert watcher.text == stored_text(windows[i], f"many-{i}")
    assert fanout_for(store) is not None


def test_a_bad_fanout_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="fanout must be") as caught:
        rxcontext.open(":memory:", fanout="kafka://app:hunter2@somewhere")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("bad", [5, b"memory", object()])
def test_a_fanout_of_the_wrong_type_is_a_clear_error(bad: object) -> None:
    # It was taken as a ready fan-out and failed later inside attach (AttributeError).
    with pytest.raises(TypeError, match="fanout must be"):
        rxcontext.open(":memory:", fanout=bad)  # type: ignore[arg-type]


def test_the_redis_fanout_without_redis_py_names_its_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "rxcontext.fanout.redis", raising=False)
    with pytest.raises(rxcontext.MissingDependency) as caught:
        rxcontext.open(":memory:", fanout="redis://127.0.0.1:6379/0")
    assert caught.value.hint == "pip install 'rxcontext[redis]'"


def test_without_fanout_nothing_is_published(make_store: Callable[..., Any]) -> None:
    cw = window(make_store, None, [script(3)])
    assert fanout_for(cw.store) is None
    Owner(cw, "r-plain").start().join()
    assert stored_text(cw, "r-plain") == "w0 w1 w2 "


def test_an_asyncio_owner_publishes_what_it_delivers(make_store: Callable[..., Any]) -> None:
    cw = window(make_store, "memory", [script(15)])
    delivered: list[Chunk] = []

    async def own() -> None:
        async for chunk in cw.astream(reply_id="r-aown"):
            delivered.append(chunk)

    asyncio.run(own())
    watcher = Watcher(cw, "r-aown").start().join()  # the log of an ended reply is kept
    assert watcher.completed and watcher.chunks == delivered
    assert watcher.text == stored_text(cw, "r-aown")


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("wait", 0, ValueError),
        ("wait", -1.0, ValueError),
        ("wait", float("nan"), ValueError),
        ("wait", float("inf"), ValueError),
        ("wait", "1", TypeError),
        ("wait", True, TypeError),
        ("poll", 0, ValueError),
        ("poll", float("nan"), ValueError),
        ("poll", float("inf"), ValueError),
        ("poll", 1e10, ValueError),  # past what a thread can wait for (threading.TIMEOUT_MAX)
        ("wait", 1e10, ValueError),
        ("poll", "1", TypeError),
    ],
)
@pytest.mark.parametrize("side", ["watch", "awatch"])
def test_a_watch_with_a_wait_or_poll_that_is_not_a_positive_number_is_refused(
    side: str, option: str, value: Any, error: type[Exception]
) -> None:
    """A read that waits 0 s (or NaN) returns at once, and a watch made of such reads spins
    on the fan-out; an infinite one never lets a disposal through. Refused when the watch
    is asked for, before anything is read."""
    store = rxcontext.open(":memory:", fanout="memory")
    try:
        cw = ContextWindow(store, ScriptedModel([]), context="c")
        with pytest.raises(error, match=option):
            getattr(cw, side)("r", **{option: value})
    finally:
        store.close()


def test_a_watch_of_a_resumed_reply_counts_the_thinking_of_its_earlier_rounds() -> None:
    """A reply with reasoning in a tool round, cut in its second round and resumed: a watch
    that joins the resumed epoch shows the first round's reasoning too (the stored reply's),
    with no REWIND taking it back and giving it again at the end."""
    th = lambda text: Chunk(ChunkKind.THINKING, text)  # noqa: E731
    tx = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731
    call = [
        th("T1. "),
        tx("Let me look. "),
        Chunk(ChunkKind.TOOL_CALL, '{"city": "Oslo"}', 0, "call-1", "weather"),
        Chunk(ChunkKind.DONE, finish_reason="tool_calls"),
    ]
    cut = [th("T2a. "), tx("Sunny "), ConnectionError("cut")]
    more = [th("T2b. "), tx("in "), tx("Oslo."), Chunk(ChunkKind.DONE, finish_reason="stop")]
    store = rxcontext.open(":memory:", fanout="memory")
    try:
        cw = ContextWindow(
            store, ScriptedModel([call, cut, more]), context="c", retry=None,
            checkpoint_every=None,
        )  # fmt: skip
        cw.add_prompt("Weather?")
        cw.add_tool(rxcontext.Tool("weather", "Weather").string("city", "City"), lambda a: "sunny")
        errors: list[Exception] = []
        cw.stream(reply_id="r").subscribe(on_error=errors.append)
        (interrupted,) = errors
        assert isinstance(interrupted, rxcontext.StreamInterrupted)
        held, go, resumed = threading.Event(), threading.Event(), threading.Event()
        seen = [0]

        def hold_the_second(_: Chunk) -> None:  # the resumed epoch's first chunk, then held
            if seen[0] == 1:
                held.set()
                assert go.wait(WAIT)
            seen[0] += 1

        def resume() -> None:
            hook = rxops.middleware(on_chunk=hold_the_second)
            cw.resume(interrupted.checkpoint.id, hook).subscribe(lambda _: None)
            resumed.set()

        threading.Thread(target=resume, daemon=True).start()
        assert held.wait(WAIT)
        watcher = Watcher(cw, "r").start()
        assert until(lambda: len(watcher.chunks) >= 2)  # what the reply holds so far
        go.set()
        assert resumed.wait(WAIT)
        watcher.join()
        assert watcher.completed and watcher.error is None
        assert [c for c in watcher.chunks if c.kind is ChunkKind.REWIND] == []
        built = ReplyBuilder()
        for chunk in watcher.chunks:
            built.add(chunk)
        stored = "".join(
            r.metadata.get("thinking", "")
            for r in store.reply_records("r")
            if r.type is RecordType.MODEL_RESP
        )
        assert built.thinking == stored == "T1. T2a. T2b. "
    finally:
        store.close()


@pytest.mark.parametrize(
    "scripts",
    [
        pytest.param(
            [
                [
                    Chunk(ChunkKind.TOOL_CALL, '{"x": 1}', 0, "c1", "echo"),
                    Chunk(ChunkKind.TOOL_CALL, '{"x": 2}', 1, "c1", "echo"),
                    Chunk(ChunkKind.DONE, finish_reason="tool_calls"),
                ],
                [T("ok"), Chunk(ChunkKind.DONE, finish_reason="stop")],
            ],
            id="one-id-twice-in-a-round",
        ),
        pytest.param(
            [
                [
                    Chunk(ChunkKind.TOOL_CALL, '{"x": 1}', 0, None, "echo"),
                    Chunk(ChunkKind.DONE, finish_reason="tool_calls"),
                ],
                [
                    Chunk(ChunkKind.TOOL_CALL, '{"x": 2}', 0, None, "echo"),
                    Chunk(ChunkKind.DONE, finish_reason="tool_calls"),
                ],
                [T("ok"), Chunk(ChunkKind.DONE, finish_reason="stop")],
            ],
            id="no-ids-two-rounds",
        ),
    ],
)
def test_a_watch_shows_every_tool_call_and_result_when_call_ids_repeat(
    scripts: list[list[Chunk]],
) -> None:
    """Call ids may repeat (a model sending one id twice; a model sending none, whose calls
    are stored as ``call_<index>`` every round): a watch shows each call and each result
    once, as the owner got them, neither dropping a result nor repeating a call."""
    store = rxcontext.open(":memory:", fanout="memory")
    try:
        cw = ContextWindow(store, ScriptedModel(scripts), context="c", retry=None)
        cw.add_prompt("hi")
        tool = rxcontext.Tool("echo", "e").number("x", "x")
        cw.add_tool(tool, lambda args: f"out{args['x']}")
        owner: list[Chunk] = []
        cw.stream(reply_id="r").subscribe(owner.append)
        watched: list[Chunk] = []
        cw.watch("r").subscribe(watched.append)

        async def awatched() -> list[Chunk]:
            return [c async for c in cw.awatch("r")]

        tools = (ChunkKind.TOOL_CALL, ChunkKind.TOOL_RESULT)
        shown = [(c.kind, c.text) for c in owner if c.kind in tools]
        assert [(c.kind, c.text) for c in watched if c.kind in tools] == shown
        assert [(c.kind, c.text) for c in asyncio.run(awatched()) if c.kind in tools] == shown
    finally:
        store.close()


def test_a_watch_of_a_resumed_reply_shows_the_usage_it_was_stored_with() -> None:
    """A continuation carries what its cut attempt was billed (its stored usage is both
    attempts'): a watch through the fan-out must show that usage, as a watch that reads
    the store does, not only the new attempt's."""
    u = lambda i, o: Chunk(ChunkKind.USAGE, usage=Usage.of(i, o))  # noqa: E731
    cut = [u(100, 0), Chunk(ChunkKind.TEXT, "Hello "), ConnectionError("cut")]
    more = [
        u(120, 0),
        Chunk(ChunkKind.TEXT, "world"),
        Chunk(ChunkKind.DONE, finish_reason="stop", usage=Usage.of(120, 5)),
    ]
    store = rxcontext.open(":memory:", fanout="memory")
    try:
        cw = ContextWindow(store, ScriptedModel([cut, more]), context="c", retry=None)
        cw.add_prompt("x")
        with pytest.raises(rxcontext.StreamInterrupted) as info:
            cw.call(reply_id="r")
        reply = cw.resume_call(info.value.checkpoint.id)
        assert reply.usage is not None and reply.usage.total_tokens == 225
        watched = _watched_reply(cw, "r")
        assert watched.text == "Hello world" and watched.usage == reply.usage
    finally:
        store.close()


def _watched_reply(cw: ContextWindow, reply_id: str) -> Any:
    """What a watcher of a stored reply saw, reduced as a subscriber would."""
    watcher = Watcher(cw, reply_id).start()
    watcher.join()
    assert watcher.completed and watcher.error is None
    built = ReplyBuilder()
    for chunk in watcher.chunks:
        built.add(chunk)
    return built.build()


def test_a_watch_of_a_reply_sent_again_shows_the_usage_it_was_stored_with() -> None:
    """An attempt that reported its usage and failed before any text is sent again: it was
    billed, so the stored usage is both attempts', and so is the usage a watch through the
    fan-out shows."""
    u = lambda i, o: Chunk(ChunkKind.USAGE, usage=Usage.of(i, o))  # noqa: E731
    overloaded = rxcontext.ProviderError("overloaded", provider="scripted", retryable=True)
    again = [
        u(120, 0),
        Chunk(ChunkKind.TEXT, "Hello"),
        Chunk(ChunkKind.DONE, finish_reason="stop", usage=Usage.of(120, 5)),
    ]
    store = rxcontext.open(":memory:", fanout="memory")
    try:
        retry = rxcontext.RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=0.0)
        model = ScriptedModel([[u(100, 0), overloaded], again])
        cw = ContextWindow(store, model, context="c", retry=retry)
        cw.add_prompt("x")
        reply = cw.call(reply_id="r")
        assert reply.usage is not None and reply.usage.total_tokens == 225
        watched = _watched_reply(cw, "r")
        assert watched.text == "Hello" and watched.usage == reply.usage
    finally:
        store.close()
