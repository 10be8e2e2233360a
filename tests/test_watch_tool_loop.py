"""A tool loop watched: whenever a watcher joins (before the reply, during its second
round, after it ended) and whatever serves it (the live log, the store, the store and then
the live log), ``reduce_reply()`` over what it shows is the stored reply: each round's call
a call of its own, and the usage every round's summed, as the store counts it.

The loop is recorded traffic through the real SDKs (the recorded round 1 twice, then round
2, as in tests/test_tool_loop_providers.py), on SQLite and PostgreSQL, with the memory and
the Redis fan-outs and none."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redistest
from provider_rules import model_for
from replay import Replay, real_fixture
from watching import WAIT, AsyncWatcher, Watcher, published, text_of

from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, Tool, Usage
from rxcontext import operators as rxops
from rxcontext.chunks import ReplyBuilder
from rxcontext.fanout import MemoryFanout, fanout_for
from rxcontext.fanout.watcher import watch_chunks
from rxcontext.store.base import CheckpointDraft, RecordDraft, ReplyTicket

LOOPS = {
    "chat": ("openai_chat/tool_call_roundtrip_gpt4o_mini", Tool("multiply", "").number("a")),
    "anthropic": ("anthropic/thinking_tool_use_roundtrip_haiku45", Tool("fixed_version", "")),
}


@pytest.fixture(params=["memory", "memory-expired", "redis", "none"])
def fanout_spec(request: pytest.FixtureRequest) -> Iterator[Any]:
    """What to pass as ``fanout=``: memory (an ended reply's log kept, or gone at once, so a
    late watcher reads the store), Redis under this test's own prefix, or none."""
    kind = str(request.param)
    if kind == "memory":
        yield "memory"
    elif kind == "memory-expired":
        yield MemoryFanout(keep_ended=0.0)
    elif kind == "none":
        yield None
    else:
        from rxcontext.fanout.redis import RedisFanout

        for url, prefix in redistest.shared_prefix():
            fanout = RedisFanout(url, prefix=prefix)
            yield fanout
            fanout.close()


def loop_window(make_store: Callable[..., Any], fanout: Any, kind: str) -> ContextWindow:
    """A window whose next reply calls the tool in two rounds, then answers."""
    name, tool = LOOPS[kind]
    first = real_fixture(f"{name}.1.sse")
    replay = Replay(first, first, real_fixture(f"{name}.2.sse"))
    store = make_store(fanout=fanout)
    cw = ContextWindow(store, model_for(kind, replay), "loop", retry=None, checkpoint_every=0.01)
    cw.add_tool(tool, lambda args: "42")
    cw.add_prompt("Use the tool twice.")
    return cw


def reduced(chunks: list[Chunk]) -> Any:
    builder = ReplyBuilder()
    for chunk in chunks:
        builder.add(chunk)
    return builder.build()


def assert_is_the_stored_reply(cw: ContextWindow, reply_id: str, reply: Any) -> None:
    records = cw.store.reply_records(reply_id)
    stored_calls = [
        (r.tool_call_id, r.tool_name, json.loads(r.content or "{}"))
        for r in records
        if r.type is RecordType.TOOL_CALL
    ]
    assert len(stored_calls) == 2
    assert [c.error for c in reply.tool_calls] == [None, None]
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == stored_calls
    assert len({c.index for c in reply.tool_calls}) == 2
    assert reply.text == "".join(r.content for r in records if r.type is RecordType.MODEL_RESP)
    rounds = [Usage.from_dict(r.metadata["usage"]) for r in records if "usage" in r.metadata]
    assert len(rounds) == 3
    assert reply.usage == rounds[0] + rounds[1] + rounds[2]
    assert reply.finish_reason == records[-1].metadata["finish_reason"]


@pytest.mark.parametrize("kind", list(LOOPS))
def test_a_tool_loop_watched_after_it_ended_is_the_stored_reply(
    make_store: Callable[..., Any], fanout_spec: Any, kind: str
) -> None:
    cw = loop_window(make_store, fanout_spec, kind)
    live = cw.stream(reply_id="r").pipe(rxops.reduce_reply()).run()
    assert_is_the_stored_reply(cw, "r", live)
    watched = cw.watch("r").pipe(rxops.reduce_reply()).run()
    assert_is_the_stored_reply(cw, "r", watched)
    assert watched.usage == live.usage

    async def awatched() -> list[Chunk]:
        return [c async for c in cw.awatch("r")]

    assert_is_the_stored_reply(cw, "r", reduced(asyncio.run(awatched())))


class HeldInRoundTwo:
    """The owner on a thread, held at the first chunk after the first tool result (round 1
    is stored, round 2 has not begun), until :meth:`release`."""

    def __init__(self, cw: ContextWindow, reply_id: str) -> None:
        self.held, self.go, self.done = threading.Event(), threading.Event(), threading.Event()
        self.delivered: list[Chunk] = []
        self.errors: list[Exception] = []
        self._results = 0
        self._waited = False

        def on_chunk(chunk: Chunk) -> None:
            if self._results and not self._waited:
                self._waited = True
                self.held.set()
                assert self.go.wait(WAIT)
            if chunk.kind is ChunkKind.TOOL_RESULT:
                self._results += 1

        def run() -> None:
            hook = rxops.middleware(on_chunk=on_chunk)
            try:
                cw.stream(hook, reply_id=reply_id).subscribe(
                    self.delivered.append, self.errors.append
                )
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()
        assert self.held.wait(WAIT)

    def release(self) -> None:
        self.go.set()
        assert self.done.wait(WAIT)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["watch", "awatch"])
@pytest.mark.parametrize("kind", list(LOOPS))
def test_a_tool_loop_watched_from_its_second_round_is_the_stored_reply(
    make_store: Callable[..., Any], fanout_spec: Any, kind: str, asynchronous: bool
) -> None:
    """Joined after round 1 was stored: from the live log, or from the store (no fan-out,
    or a Redis log evicted meanwhile: its next entries are no whole log), until it ends."""
    cw = loop_window(make_store, fanout_spec, kind)
    owner = HeldInRoundTwo(cw, "r")
    fanout = fanout_for(cw.store)
    if fanout is not None and hasattr(fanout, "_reader"):
        assert published(fanout, "r", len(owner.delivered))
        fanout._reader.delete(fanout.key("r"))  # evicted: the watcher reads the store
    watcher = (AsyncWatcher if asynchronous else Watcher)(cw, "r", poll=0.02)
    first = threading.Event()
    watcher.on_chunk = lambda _: first.set()
    watcher.start()
    assert first.wait(WAIT)  # it showed what round 1 stored, with round 2 still held
    owner.release()
    watcher.join()
    assert owner.errors == [] and watcher.error is None and watcher.completed
    assert_is_the_stored_reply(cw, "r", reduced(watcher.chunks))
    assert_is_the_stored_reply(cw, "r", reduced(owner.delivered))


def test_a_watcher_caught_up_mid_loop_keeps_the_next_rounds_calls_apart(
    make_store: Callable[..., Any],
) -> None:
    """A watcher that read round 1 from the store, then the live log from its start: the
    log's round-1 DONE is what the store showed (not shown twice, not lost), and round 2's
    call, numbered 0 again by the provider, stays a call of its own."""
    store = make_store()
    ctx = store.get_or_create_context("mid-loop").id
    store.add_record(ctx, RecordDraft(RecordType.PROMPT, "Go."))
    row = store.begin_reply(ctx, "r", owner="worker-a")
    ticket = ReplyTicket(row.id, row.epoch)
    u1, u2, u3 = Usage.of(10, 1), Usage.of(20, 2), Usage.of(30, 3)

    def about(usage: Usage, finish: str) -> dict[str, Any]:
        return {"usage": usage.to_dict(), "finish_reason": finish}

    call = lambda rid, usage: RecordDraft(  # noqa: E731
        RecordType.TOOL_CALL,
        '{"a": 1}',
        response_id=rid,
        tool_call_id="call_0",
        tool_name="f",
        metadata=about(usage, "tool_calls"),
    )
    output = RecordDraft(RecordType.TOOL_OUTPUT, "42", tool_call_id="call_0", tool_name="f")
    store.commit_reply(ctx, [call("resp-1", u1)], reply=ticket, end="round")
    store.commit_reply(ctx, [output], reply=ticket)
    store.save_checkpoint(ticket, CheckpointDraft(append_text="Hel", chunks=1))

    fanout = MemoryFanout()  # no log for this reply yet: the watcher reads the store
    watch = watch_chunks(store, fanout, "r", threading.Event(), poll=0.01, wait=0.05)
    shown = [next(watch) for _ in range(4)]
    assert [c.kind for c in shown] == [
        ChunkKind.TEXT,
        ChunkKind.TOOL_CALL,
        ChunkKind.DONE,
        ChunkKind.TOOL_RESULT,
    ]
    assert shown[2].usage == u1

    channel = fanout.open_channel("r", row.epoch)  # the live log appears, from its start
    delivered = [
        Chunk(ChunkKind.TOOL_CALL, '{"a": 1}', 0, None, "f"),
        Chunk(ChunkKind.DONE, usage=u1, finish_reason="tool_calls", response_id="resp-1"),
        Chunk(ChunkKind.TOOL_RESULT, "42", id="call_0", name="f"),
        Chunk(ChunkKind.TEXT, "Hel"),
        Chunk(ChunkKind.TOOL_CALL, '{"a": 2}', 0, None, "f"),
        Chunk(ChunkKind.DONE, usage=u2, finish_reason="tool_calls", response_id="resp-2"),
        Chunk(ChunkKind.TOOL_RESULT, "42", id="call_0", name="f"),
        Chunk(ChunkKind.TEXT, "lo"),
        Chunk(ChunkKind.DONE, usage=u3, finish_reason="stop", response_id="resp-3"),
    ]
    for chunk in delivered:
        channel.chunk(chunk)
    text = RecordDraft(
        RecordType.MODEL_RESP, "Hel", response_id="resp-2", metadata=about(u2, "tool_calls")
    )
    second = RecordDraft(
        RecordType.TOOL_CALL, '{"a": 2}', response_id="resp-2", tool_call_id="call_0", tool_name="f"
    )
    store.commit_reply(ctx, [text, second], reply=ticket, end="round")
    store.commit_reply(ctx, [output], reply=ticket)
    answer = RecordDraft(
        RecordType.MODEL_RESP, "lo", response_id="resp-3", metadata=about(u3, "stop")
    )
    store.commit_reply(ctx, [answer], reply=ticket, end="reply")
    channel.end("completed")
    seen = shown + list(watch)
    reply = reduced(seen)
    assert text_of(seen) == "Hello"
    assert [(c.id, c.arguments) for c in reply.tool_calls] == [
        ("call_0", {"a": 1}),
        ("call_0", {"a": 2}),
    ]
    assert reply.usage == u1 + u2 + u3
    assert reply.finish_reason == "stop" and reply.response_id == "resp-3"
