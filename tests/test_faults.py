"""Faults: transport cuts at every event, malformed wire, HTTP errors, raising hooks,
concurrency, and bad input at the API.

Provider traffic runs through the real ``openai`` SDK on the replay transport
(``tests/replay.py``) with recorded streams from ../shared/fixtures/real; time-dependent
behaviour (retry waits) runs on a virtual clock. Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from faultmodels import Clock
from matrix import spread
from replay import NO_SSL, Replay, pieces, real_fixture, sse
from replay import Reply as Served
from stores import open_store

import rxcontext
from rxcontext import (
    CheckpointNotFound,
    CheckpointResolved,
    Chunk,
    ChunkKind,
    ContextWindow,
    NotADatabaseError,
    ProviderError,
    RecordType,
    RetryPolicy,
    StoreClosedError,
    StoreError,
    StreamInterrupted,
)
from rxcontext import operators as rxops
from rxcontext.providers import OpenAIModel, ScriptedModel
from rxcontext.window import CONTINUE_PROMPT

pytestmark = pytest.mark.fixtures

KEY = "sk-test-RXCONTEXT0123456789secret"
RECORDED = "openai_chat/azure_prompt_filter_results.sse"
STEADY = RetryPolicy(max_attempts=3, initial_delay=1.0, multiplier=2.0, jitter=0.0)


def recorded() -> bytes:
    return real_fixture(RECORDED).read_bytes()


def text_of_events(events: list[bytes]) -> str:
    """The text a Chat Completions stream's events carry: an oracle independent of the SDK."""
    out = []
    for event in events:
        for line in event.decode().splitlines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            payload = json.loads(line[5:])
            for choice in payload.get("choices") or ():
                if choice.get("index", 0) == 0:
                    out.append((choice.get("delta") or {}).get("content") or "")
    return "".join(out)


def continuation(text: str = " [more]") -> bytes:
    chunk = {
        "id": "chatcmpl-cont",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}],
    }
    return sse(chunk) + b"data: [DONE]\n\n"


def openai_window(
    replay: Replay,
    wire: str = "sdk",
    *,
    store: rxcontext.SQLiteStore | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock | None = None,
) -> ContextWindow:
    model = OpenAIModel(
        "gpt-4o-mini",
        client=openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
        wire=wire,  # type: ignore[arg-type]
    )
    cw = ContextWindow(store or open_store(), model, "faults", retry=retry, scheduler=clock)
    cw.add_prompt("tell me a joke")
    return cw


def replies(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP]


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if c.kind is ChunkKind.TEXT)


def stream_sync(cw: ContextWindow, checkpoint_id: int | None = None) -> tuple[list[Chunk], Any]:
    got: list[Chunk] = []
    errors: list[Exception] = []
    obs = cw.stream() if checkpoint_id is None else cw.resume(checkpoint_id)
    obs.subscribe(got.append, errors.append)
    if isinstance(cw.scheduler, Clock):  # the window's virtual clock runs the subscription
        cw.scheduler.start()
    return got, (errors[0] if errors else None)


async def stream_async(
    cw: ContextWindow, checkpoint_id: int | None = None
) -> tuple[list[Chunk], Any]:
    got: list[Chunk] = []
    chunks = cw.astream() if checkpoint_id is None else cw.aresume(checkpoint_id)
    try:
        async for chunk in chunks:
            got.append(chunk)
    except StreamInterrupted as e:
        return got, e
    return got, None


def run_mode(mode: str, cw: ContextWindow, checkpoint_id: int | None = None):
    if mode == "sync":
        return stream_sync(cw, checkpoint_id)
    return asyncio.run(stream_async(cw, checkpoint_id))


# -- a transport cut after every event -----------------------------------------------------

CUT_EVENTS = 28  # events in RECORDED (asserted below)
PATHS = [("sync", "sdk"), ("sync", "fast"), ("async", "sdk"), ("async", "fast")]


def test_the_recorded_stream_has_the_expected_events():
    assert len(pieces(recorded())) == CUT_EVENTS


@pytest.mark.parametrize("mode,wire", PATHS, ids=["-".join(p) for p in PATHS])
@pytest.mark.parametrize("k", spread(range(CUT_EVENTS)))
def test_cut_after_event_k_checkpoints_what_was_delivered_and_resumes(k, mode, wire):
    body = recorded()
    replay = Replay(Served(body, cut_after=k), continuation())
    cw = openai_window(replay, wire)

    got, error = run_mode(mode, cw)

    assert isinstance(error, StreamInterrupted)
    cause = error.__cause__
    assert isinstance(cause, ProviderError) and cause.error_type == "connection_error"
    delivered = text(got)
    assert delivered == text_of_events(pieces(body)[:k])  # exactly the events before the cut
    cp = error.checkpoint
    assert cp.text == delivered
    assert cw.checkpoints() == [cp]
    assert replies(cw) == []  # nothing stored as a reply
    assert replay.closed == 1  # the cut stream was closed

    more, error = run_mode(mode, cw, cp.id)

    assert error is None and text(more) == " [more]"
    assert replies(cw) == [delivered + " [more]"]  # one MODEL_RESP: partial + continuation
    assert cw.checkpoints() == []
    settled = cw.store.get_checkpoint(cp.id)
    assert settled.resolved and settled.text == delivered  # for audit: what was cut
    messages = replay.bodies[1]["messages"]
    if delivered:
        assert messages[-2:] == [
            {"role": "assistant", "content": delivered},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]
    else:  # nothing was delivered: the original request is sent again
        assert messages == replay.bodies[0]["messages"]


RESPONSES = "openai_responses/function_call_roundtrip_gpt55.2.sse"
RESPONSES_EVENTS = 22
RESPONSES_PATHS = [("sync", "sdk"), ("async", "fast")]


def responses_text(events: list[bytes]) -> str:
    out = []
    for event in events:
        for line in event.decode().splitlines():
            if line.startswith("data:"):
                payload = json.loads(line[5:])
                if payload.get("type") == "response.output_text.delta":
                    out.append(payload["delta"])
    return "".join(out)


def test_the_recorded_responses_stream_has_the_expected_events():
    assert len(pieces(real_fixture(RESPONSES).read_bytes())) == RESPONSES_EVENTS


@pytest.mark.parametrize("mode,wire", RESPONSES_PATHS, ids=["-".join(p) for p in RESPONSES_PATHS])
@pytest.mark.parametrize("k", spread(range(RESPONSES_EVENTS)))
def test_responses_cut_after_event_k_checkpoints_and_resumes(k, mode, wire):
    from rxcontext.providers import OpenAIResponsesModel

    body = real_fixture(RESPONSES).read_bytes()
    more = real_fixture("openai_responses/text_basic_gpt55.sse").read_bytes()
    replay = Replay(Served(body, cut_after=k), more)
    model = OpenAIResponsesModel(
        "gpt-5.5",
        client=openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
        wire=wire,  # type: ignore[arg-type]
    )
    cw = ContextWindow(open_store(), model, "responses", retry=None)
    cw.add_prompt("what is 1231 * 2331?")

    got, error = run_mode(mode, cw)

    assert isinstance(error, StreamInterrupted)
    delivered = text(got)
    assert delivered == responses_text(pieces(body)[:k])
    assert error.checkpoint.text == delivered
    assert replies(cw) == [] and replay.closed == 1

    rest, error2 = run_mode(mode, cw, error.checkpoint.id)

    assert error2 is None
    assert replies(cw) == [delivered + text(rest)] == [delivered + "pong"]
    assert cw.checkpoints() == []
    assert cw.store.get_checkpoint(error.checkpoint.id).text == delivered


def test_a_cut_before_anything_was_delivered_is_retried_on_the_clock():
    body = recorded()
    clock = Clock()
    replay = Replay(Served(body, cut_after=1), body)  # the first event carries no text
    cw = openai_window(replay, retry=STEADY, clock=clock)
    reply = cw.call()
    assert reply.text == text_of_events(pieces(body))
    assert len(replay.requests) == 2 and clock.clock == 1.0
    assert replies(cw) == [reply.text] and cw.checkpoints() == []


# -- malformed wire -----------------------------------------------------------------------


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_invalid_json_mid_stream_checkpoints_what_was_delivered(wire):
    events = pieces(recorded())
    body = b"".join(events[:8]) + b'data: {"choices": [oops\n\n' + b"".join(events[8:])
    replay = Replay(body)
    cw = openai_window(replay, wire, retry=STEADY, clock=Clock())
    got, error = stream_sync(cw)
    assert isinstance(error, StreamInterrupted)
    assert isinstance(error.__cause__, ProviderError)
    assert error.__cause__.error_type == "invalid_json" and not error.__cause__.retryable
    assert error.checkpoint.text == text(got) == text_of_events(events[:8]) != ""
    assert len(replay.requests) == 1 and replay.closed == 1


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_invalid_json_before_any_text_is_not_retried(wire):
    replay = Replay(b"data: not json at all\n\n", recorded())
    cw = openai_window(replay, wire, retry=STEADY, clock=Clock())
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    assert info.value.__cause__.error_type == "invalid_json"
    assert len(replay.requests) == 1


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_unknown_events_comments_and_fields_are_ignored(wire):
    events = pieces(recorded())
    odd = [
        b": keepalive\n\n",
        b'event: mystery\ndata: {"type": "mystery", "x": 1}\n\n',
        b'data: {"id": "z", "object": "chat.completion.chunk", "created": 1, "model": "m",'
        b' "choices": [], "brand_new_field": {"a": 1}}\n\n',
    ]
    mixed = b"".join(e + odd[i % len(odd)] for i, e in enumerate(events[:-1])) + events[-1]
    plain = openai_window(Replay(recorded()), wire).call()
    cw = openai_window(Replay(mixed), wire)
    assert cw.call() == plain
    assert replies(cw) == [plain.text]


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_a_truncated_frame_is_an_interruption_not_a_reply(wire):
    # A Chat stream that ends with no finish_reason and no [DONE] did not finish: it must
    # not be stored as a complete reply.
    events = pieces(recorded())
    body = b"".join(events[:10]) + events[10][:40]  # the connection ends inside a frame
    cw = openai_window(Replay(body), wire)
    got, error = stream_sync(cw)
    assert replies(cw) == []
    assert isinstance(error, StreamInterrupted)
    assert error.checkpoint.text == text(got) == text_of_events(events[:10])
    assert isinstance(error.__cause__, ProviderError) and error.__cause__.retryable


def json_error(status: int, message: str, type_: str, **headers: str) -> Served:
    body = json.dumps({"error": {"message": message, "type": type_, "code": None}}).encode()
    return Served(body, status=status, headers={"content-type": "application/json", **headers})


def test_http_500_is_retried_with_backoff():
    clock = Clock()
    replay = Replay(json_error(500, "server fell over", "server_error"), recorded())
    cw = openai_window(replay, retry=STEADY, clock=clock)
    assert cw.call().text == text_of_events(pieces(recorded()))
    assert len(replay.requests) == 2 and clock.clock == 1.0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_http_429_is_retried_after_retry_after_on_the_virtual_clock(mode):
    clock = Clock()
    replay = Replay(
        json_error(429, "slow down", "rate_limit_exceeded", **{"retry-after": "7"}),
        json_error(429, "still too fast", "rate_limit_exceeded", **{"retry-after-ms": "2500"}),
        recorded(),
    )
    cw = openai_window(replay, retry=STEADY, clock=clock)
    if mode == "sync":
        reply = cw.call()
        assert clock.clock == 9.5  # 7 s, then 2.5 s
    else:

        async def go() -> rxcontext.Reply:
            task = asyncio.create_task(cw.acall())
            await clock.armed(1)
            assert clock.timers[-1] == (0.0, 7.0)
            clock.advance_by(7.0)
            await clock.armed(2)
            assert clock.timers[-1] == (7.0, 9.5)
            clock.advance_by(2.5)
            return await task

        reply = asyncio.run(go())
    assert reply.text == text_of_events(pieces(recorded()))
    assert len(replay.requests) == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_http_401_is_not_retried_and_never_shows_the_key(mode):
    replay = Replay(
        json_error(401, f"Incorrect API key provided: {KEY}.", "invalid_request_error"),
        recorded(),
    )
    cw = openai_window(replay, retry=STEADY, clock=Clock())
    _got, error = run_mode(mode, cw)
    assert isinstance(error, StreamInterrupted)
    cause = error.__cause__
    assert isinstance(cause, ProviderError)
    assert cause.status_code == 401 and not cause.retryable
    assert len(replay.requests) == 1
    texts = [str(error), str(cause), repr(cause), str(cause.__cause__), error.checkpoint.error]
    for t in texts:
        assert KEY not in t and "RXCONTEXT0123456789" not in t
    assert "401" in str(cause)
    stored = cw.store.get_checkpoint(error.checkpoint.id).error or ""
    assert KEY not in stored


# -- hooks ----------------------------------------------------------------------------------


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


DONE = Chunk(ChunkKind.DONE, finish_reason="stop")


async def test_a_raising_hook_interrupts_astream_with_a_checkpoint_chained_to_it():
    hook_error = ValueError("hook failed")

    def on_chunk(chunk: Chunk) -> None:
        if chunk.text == "c":
            raise hook_error

    model = ScriptedModel([[T("a"), T("b"), T("c"), T("d"), DONE]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "h")
    cw.add_prompt("go")
    got: list[str] = []
    with pytest.raises(StreamInterrupted) as info:
        async for chunk in cw.astream(rxops.middleware(on_chunk=on_chunk)):
            got.append(chunk.text)
    assert info.value.__cause__ is hook_error
    assert info.value.checkpoint.text == "ab" == "".join(got)
    assert model.closed == 1
    assert replies(cw) == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_raising_start_hook_interrupts_too(mode):
    boom = RuntimeError("on_start")

    def raise_it() -> None:
        raise boom

    model = ScriptedModel([[T("a"), DONE]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "h")
    cw.add_prompt("go")
    hooks = rxops.middleware(on_start=raise_it)
    with pytest.raises(StreamInterrupted) as info:
        cw.call(hooks) if mode == "sync" else asyncio.run(cw.acall(hooks))
    assert info.value.__cause__ is boom
    assert [cp.text for cp in cw.checkpoints()] == [""]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_complete_hook_that_raises_after_the_reply_was_stored_gets_its_own_error(mode):
    # The reply is stored before on_complete hooks run; a hook that raises then cannot
    # interrupt it: its exception reaches the subscriber as it is, and no (empty) checkpoint
    # is left beside the stored reply.
    boom = RuntimeError("on_complete")

    def raise_it() -> None:
        raise boom

    model = ScriptedModel([[T("a"), DONE]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "h")
    cw.add_prompt("go")
    hooks = rxops.middleware(on_complete=raise_it)
    with pytest.raises(RuntimeError) as info:
        cw.call(hooks) if mode == "sync" else asyncio.run(cw.acall(hooks))
    assert info.value is boom
    assert replies(cw) == ["a"]
    assert cw.checkpoints() == [] == cw.active_replies()
    assert cw.store.checkpoints(cw.context_id, include_resolved=True) == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_raising_on_error_hook_still_checkpoints_and_chains_both(mode):
    cut = ConnectionError("cut")
    hook_error = KeyError("logger broke")

    def on_error(_: BaseException) -> None:
        raise hook_error

    model = ScriptedModel([[T("a"), cut]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "h", retry=None)
    cw.add_prompt("go")
    hooks = rxops.middleware(on_error=on_error)
    with pytest.raises(StreamInterrupted) as info:
        cw.call(hooks) if mode == "sync" else asyncio.run(cw.acall(hooks))
    assert info.value.__cause__ is hook_error
    assert info.value.__cause__.__context__ is cut
    assert info.value.checkpoint.text == "a"


# -- concurrency ------------------------------------------------------------------------------


def parts(tag: str, n: int = 30) -> list[str]:
    return [f"<{tag}:{j}>" for j in range(n)]


def check_context(cw: ContextWindow, expected_by_writer: dict[str, list[str]]) -> None:
    """Every reply stored whole, none lost, each writer's replies in the order it sent them."""
    stored = replies(cw)
    everything = sorted(r for rs in expected_by_writer.values() for r in rs)
    assert sorted(stored) == everything
    for writer, expected in expected_by_writer.items():
        mine = [r for r in stored if r.startswith(f"<{writer}.")]
        assert mine == expected
    # Every prompt and every reply took one place, allocated in the write's transaction:
    # the places are contiguous (none lost or given twice), and each reply's records sit
    # together at the place it reserved when its request was sent.
    records = cw.records()
    places = sorted({r.pos for r in records})
    assert places == list(range(len(places)))
    assert len(places) == len(records)  # one record per place (no tool rounds here)
    assert cw.checkpoints() == [] == cw.active_replies()


def scripted_replies(writer: str, count: int) -> tuple[list[list[Chunk]], list[str]]:
    scripts, texts = [], []
    for r in range(count):
        ps = parts(f"{writer}.{r}")
        scripts.append([*(T(p) for p in ps), DONE])
        texts.append("".join(ps))
    return scripts, texts


@pytest.mark.parametrize("shared_store", [True, False], ids=["one-store", "store-per-thread"])
def test_many_threads_into_many_contexts_and_several_into_one(tmp_path, shared_store):
    path = tmp_path / "threads.db"
    store = rxcontext.open(path)
    n_threads, n_replies = 12, 4
    # Threads 0-3 share context "shared"; the others each have their own.
    context_of = {i: ("shared" if i < 4 else f"own{i}") for i in range(n_threads)}
    expected: dict[str, dict[str, list[str]]] = {}
    plans = {}
    for i in range(n_threads):
        scripts, texts = scripted_replies(f"w{i}", n_replies)
        plans[i] = scripts
        expected.setdefault(context_of[i], {})[f"w{i}"] = texts
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        own = store if shared_store else rxcontext.open(path)
        try:
            cw = ContextWindow(own, ScriptedModel(plans[i]), context_of[i], checkpoint_every=0.001)
            barrier.wait(10)
            for r in range(n_replies):
                cw.add_prompt(f"go w{i}")
                got: list[str] = []
                cw.stream().pipe(rxops.text()).subscribe(got.append)
                assert "".join(got) == expected[context_of[i]][f"w{i}"][r]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            if not shared_store:
                own.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for name, by_writer in expected.items():
        check_context(ContextWindow(store, None, name), by_writer)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_many_asyncio_tasks_into_many_contexts_and_several_into_one(tmp_path):
    store = rxcontext.open(tmp_path / "tasks.db")
    n_tasks, n_replies = 40, 3
    context_of = {i: ("shared" if i % 4 == 0 else f"own{i}") for i in range(n_tasks)}
    expected: dict[str, dict[str, list[str]]] = {}
    windows = {}
    for i in range(n_tasks):
        scripts, texts = scripted_replies(f"t{i}", n_replies)
        windows[i] = ContextWindow(
            store, ScriptedModel(scripts), context_of[i], checkpoint_every=0.001
        )
        expected.setdefault(context_of[i], {})[f"t{i}"] = texts

    async def task(i: int) -> None:
        cw = windows[i]
        for _ in range(n_replies):
            cw.add_prompt(f"go t{i}")
            if i % 2:
                await cw.acall()
            else:
                async for _chunk in cw.astream():
                    pass

    await asyncio.gather(*(task(i) for i in range(n_tasks)))
    for name, by_writer in expected.items():
        check_context(ContextWindow(store, None, name), by_writer)


async def test_async_cancellations_mid_stream_leave_one_checkpoint_each(tmp_path):
    store = rxcontext.open(tmp_path / "cancel.db")
    n = 20
    windows = []
    for i in range(n):
        scripts, _ = scripted_replies(f"c{i}", 1)
        cw = ContextWindow(store, ScriptedModel(scripts), "shared" if i % 2 else f"own{i}")
        windows.append(cw)
    delivered: dict[int, list[str]] = {i: [] for i in range(n)}

    async def consume(i: int) -> None:
        windows[i].add_prompt("go")
        async with contextlib.aclosing(windows[i].astream()) as chunks:
            async for chunk in chunks:
                delivered[i].append(chunk.text)
                if len(delivered[i]) == 5 + i:
                    break

    await asyncio.gather(*(consume(i) for i in range(n)))
    # Windows on "shared" see each other's checkpoints: collect them by id.
    by_id = {cp.id: cp.text for cw in windows for cp in cw.checkpoints()}
    assert sorted(by_id.values()) == sorted("".join(d) for d in delivered.values())
    assert all(replies(cw) == [] for cw in windows)


# -- bad input at the API ---------------------------------------------------------------------


def scripted_window(*scripts: list, store: Any = None, name: str = "b") -> ContextWindow:
    cw = ContextWindow(store or open_store(), ScriptedModel(list(scripts)), name, retry=None)
    cw.add_prompt("go")
    return cw


def interrupted(cw: ContextWindow) -> int:
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    return info.value.checkpoint.id


@pytest.mark.parametrize("bad", [999, -1, 0])
async def test_unknown_checkpoint_ids_are_clear_errors_everywhere(bad):
    cw = scripted_window([T("a"), DONE])
    with pytest.raises(CheckpointNotFound, match=str(bad)):
        cw.resume(bad)
    with pytest.raises(CheckpointNotFound):
        cw.resume_call(bad)
    with pytest.raises(CheckpointNotFound):
        cw.aresume(bad)
    with pytest.raises(CheckpointNotFound):
        cw.store.get_checkpoint(bad)


async def test_resolved_checkpoints_cannot_be_resumed_again():
    cw = scripted_window([T("a"), RuntimeError("cut")], [T("b"), DONE])
    cp_id = interrupted(cw)
    cw.resume_call(cp_id)
    for attempt in (cw.resume, cw.resume_call, cw.aresume):
        with pytest.raises(CheckpointResolved, match="already"):
            attempt(cp_id)


@pytest.mark.parametrize("op", ["call", "stream", "acall", "resume", "add_prompt", "checkpoints"])
async def test_a_closed_store_is_a_clear_error(op):
    cw = scripted_window([T("a"), RuntimeError("cut")], [T("b"), DONE])
    cp_id = interrupted(cw)
    cw.store.close()
    with pytest.raises(StoreClosedError, match="closed; open it again"):
        if op == "call":
            cw.call()
        elif op == "stream":
            cw.stream().run()
        elif op == "acall":
            await cw.acall()
        elif op == "resume":
            cw.resume_call(cp_id)
        elif op == "add_prompt":
            cw.add_prompt("x")
        else:
            cw.checkpoints()


def test_a_store_closed_mid_stream_reports_the_store_error():
    holder: list[ContextWindow] = []

    def close_store(chunk: Chunk) -> None:
        if chunk.text == "b":
            holder[0].store.close()

    cw = scripted_window([T("a"), T("b"), T("c"), DONE])
    holder.append(cw)
    errors: list[Exception] = []
    cw.stream(rxops.middleware(on_chunk=close_store)).subscribe(on_error=errors.append)
    # The checkpoint cannot be written: the subscriber learns why instead of a silent loss.
    assert len(errors) == 1 and isinstance(errors[0], StoreClosedError)


def test_concurrent_resume_of_one_checkpoint_from_two_threads_one_wins(tmp_path):
    store = rxcontext.open(tmp_path / "race.db")
    gate = threading.Event()
    entered = threading.Event()

    def hold(chunk: Chunk) -> None:
        entered.set()
        gate.wait(10)  # keep the winner mid-stream while the other tries

    model = ScriptedModel([[T("a"), RuntimeError("cut")], [T("b"), DONE], [T("x"), DONE]])
    cw = ContextWindow(store, model, "race", retry=None)
    cw.add_prompt("go")
    cp_id = interrupted(cw)
    results: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def resumer(name: str) -> None:
        other = ContextWindow(store, model, "race", retry=None)
        barrier.wait(10)
        try:
            results[name] = other.resume_call(cp_id, rxops.middleware(on_chunk=hold)).text
        except CheckpointResolved as e:
            results[name] = e
            gate.set()

    threads = [threading.Thread(target=resumer, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert entered.is_set()
    outcomes = sorted(results.values(), key=lambda v: isinstance(v, str))
    assert isinstance(outcomes[0], CheckpointResolved) and outcomes[1] == "ab"
    assert replies(cw) == ["ab"]
    assert store.get_checkpoint(cp_id).resolved


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 10
    path.write_bytes(content)
    with pytest.raises(NotADatabaseError, match="not an SQLite database"):
        rxcontext.open(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]  # no -wal, no -shm


def test_a_truncated_sqlite_file_is_refused(tmp_path):
    good = tmp_path / "good.db"
    store = rxcontext.open(good)
    ContextWindow(store, None, "x").add_prompt("hello")
    store.close()
    bad = tmp_path / "bad.db"
    bad.write_bytes(good.read_bytes()[:200])  # the header survives, the pages do not
    with pytest.raises(StoreError):
        rxcontext.open(bad)


READ_ONLY_CHILD = """
import os, sys
import rxcontext  # everything is imported first: the interpreter may live where nobody reads
from rxcontext import ContextWindow, StoreError
os.setgid(65534); os.setuid(65534)
try:
    store = rxcontext.open(sys.argv[1])
    ContextWindow(store, None, "x").add_prompt("write me")
except StoreError as e:
    print("StoreError:", e)
    sys.exit(0)
print("wrote to a read-only database")
sys.exit(1)
"""


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="needs POSIX users")
def test_a_read_only_database_is_a_clear_error():
    # Root ignores file modes, so the open runs in a child that drops to user "nobody".
    if os.geteuid() != 0:
        pytest.skip("run as root here; as a normal user chmod 0o444 would be the test")
    root = Path(tempfile.mkdtemp(prefix="rxcontext-ro-"))
    try:
        os.chmod(root, 0o755)
        path = root / "ro.db"
        store = rxcontext.open(path)
        ContextWindow(store, None, "x").add_prompt("hello")
        store.close()
        os.chmod(path, 0o444)
        before = path.read_bytes()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", READ_ONLY_CHILD, str(path)],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=root,
            )
        except PermissionError:  # pragma: no cover - the venv is not readable by nobody
            pytest.skip("the interpreter is not usable by user nobody")
        if "ModuleNotFoundError" in proc.stderr or "Permission denied" in proc.stderr:
            pytest.skip(f"the child could not import rxcontext as nobody: {proc.stderr[-200:]}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "read-only" in proc.stdout or "cannot open" in proc.stdout, proc.stdout
        assert path.read_bytes() == before
    finally:
        for p in root.iterdir():
            p.unlink()
        root.rmdir()


def test_a_database_locked_by_another_writer_times_out_clearly(tmp_path):
    path = tmp_path / "locked.db"
    store = rxcontext.SQLiteStore(path, busy_timeout=0.05)
    cw = ContextWindow(store, ScriptedModel([[T("a"), DONE]]), "l", retry=None)
    cw.add_prompt("go")
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked"):
            cw.call()
    finally:
        locker.execute("ROLLBACK")
        locker.close()


def test_transport_errors_are_classified_retryable():
    replay = Replay(Served(recorded(), cut_after=0, error=httpx2.ConnectError("refused")))
    cw = openai_window(replay)
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    assert info.value.__cause__.retryable


# -- other providers' retryable errors, end to end ---------------------------------------------


def _anthropic_window(replay: Replay, clock: Any) -> ContextWindow:
    """A window on the real anthropic SDK over ``replay``, retries on ``clock``."""
    import anthropic

    from rxcontext.providers import AnthropicModel

    key = "sk-ant-test-0123456789abcdef"
    model = AnthropicModel(
        "claude-test",
        client=anthropic.Anthropic(api_key=key, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=key, max_retries=0, http_client=replay.async_client()
        ),
    )
    cw = ContextWindow(rxcontext.open(":memory:"), model, "a", retry=STEADY, scheduler=clock)
    cw.add_prompt("hi")
    return cw


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("after_start", [False, True], ids=["first", "after-message_start"])
def test_anthropic_in_stream_overloaded_error_is_retried(mode, after_start):
    """Anthropic's stream opens with message_start (a USAGE chunk): an overloaded error
    after it, where real streams send one, is retried as one before it is, since no text
    was shown."""

    overloaded = (
        b"event: error\ndata: "
        b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    )
    recording = real_fixture("anthropic/text_basic_sonnet45.sse")
    if after_start:
        first_event = recording.read_bytes().split(b"\n\n")[0] + b"\n\n"
        assert b"message_start" in first_event
        overloaded = first_event + overloaded
    replay = Replay(overloaded, recording)
    clock = Clock()
    cw = _anthropic_window(replay, clock)
    if mode == "sync":
        reply = cw.call()
    else:

        async def go() -> rxcontext.Reply:
            task = asyncio.create_task(cw.acall())
            await clock.armed(1)
            clock.advance_by(1.0)
            return await task

        reply = asyncio.run(go())
    assert reply.text and len(replay.requests) == 2 and clock.clock == 1.0
    assert replies(cw) == [reply.text]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("then", ["completes", "is-cut"])
def test_a_retried_attempt_cut_after_message_start_is_counted(mode, then):
    """Anthropic bills a request from message_start (its input's usage): an attempt cut
    after it by the connection and sent again was billed, so the reply's usage, its stored
    record and the context's totals count both attempts, as a cut attempt settled by
    discard or resume is counted; if the retry is cut in turn, its checkpoint carries the
    first attempt's usage."""

    recording = real_fixture("anthropic/text_basic_sonnet45.sse").read_bytes()
    assert recording.count(b'"input_tokens":17') == 2  # message_start and message_delta
    first = recording.replace(b'"input_tokens":17', b'"input_tokens":100000')
    assert b"message_start" in pieces(first)[0] and b"text_delta" not in b"".join(pieces(first)[:2])
    cut = httpx2.ReadError("connection reset")
    second = Served(recording) if then == "completes" else Served(recording, cut_after=4, error=cut)
    replay = Replay(Served(first, cut_after=2, error=cut), second)
    clock = Clock()
    cw = _anthropic_window(replay, clock)

    async def go() -> rxcontext.Reply:
        task = asyncio.create_task(cw.acall())
        await clock.armed(1)
        clock.advance_by(1.0)
        return await task

    if then == "completes":
        reply = cw.call() if mode == "sync" else asyncio.run(go())
        assert len(replay.requests) == 2 and reply.text == "- Captain\n- Scoop"
        # The first attempt's input and output so far, then the second's whole usage.
        assert reply.usage is not None
        assert (reply.usage.input_tokens, reply.usage.output_tokens) == (100017, 11)
        (stored,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
        assert stored.metadata["usage"] == reply.usage.to_dict()
        assert cw.stats().usage == reply.usage
        return
    with pytest.raises(StreamInterrupted) as info:
        cw.call() if mode == "sync" else asyncio.run(go())
    assert len(replay.requests) == 2
    cp = info.value.checkpoint
    assert cp.text == "-" and cp.usage is not None
    assert (cp.usage.input_tokens, cp.usage.output_tokens) == (100017, 2)
    assert cw.stats().usage.total_tokens == 0  # nothing settled yet
    cw.discard(cp.id)
    assert cw.stats().usage == cp.usage


def test_gemini_503_is_retried():
    from google import genai
    from google.genai import types

    from rxcontext.providers import GeminiModel

    body = json.dumps({"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}})
    replay = Replay(
        Served(body.encode(), status=503, headers={"content-type": "application/json"}),
        real_fixture("gemini/text_basic_gemini20.sse"),
    )
    client = genai.Client(
        api_key="AIzaTEST0123456789abcdefghijkl",
        http_options=types.HttpOptions(
            httpx_client=replay.client(), async_client_args={"ssl": NO_SSL}
        ),
    )
    clock = Clock()
    cw = ContextWindow(
        rxcontext.open(":memory:"),
        GeminiModel("gemini-test", client=client),
        "g",
        retry=STEADY,
        scheduler=clock,
    )
    cw.add_prompt("hi")
    reply = cw.call()
    assert reply.text and len(replay.requests) == 2 and clock.clock == 1.0


# -- idle timeout through the real SDK (sync path, virtual time) --------------------------------


class SlowNetwork:
    """A replay gate: the read before event ``at`` takes ``seconds`` of virtual time."""

    def __init__(self, clock: Clock, at: int, seconds: float) -> None:
        self.clock, self.at, self.seconds, self.reads = clock, at, seconds, 0

    def wait(self, timeout: float | None = None) -> bool:
        self.reads += 1
        if self.reads == self.at:
            self.clock.sleep(self.seconds)
        return True


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_idle_timeout_through_the_sdk_closes_the_response_and_checkpoints(wire):
    body = recorded()
    clock = Clock()
    stall_at = 12
    replay = Replay(Served(body, gate=SlowNetwork(clock, stall_at, 30.0)))  # type: ignore[arg-type]
    cw = openai_window(replay, wire, retry=STEADY, clock=clock)
    cw.timeouts = rxcontext.Timeouts(idle=10.0)
    got, error = stream_sync(cw)
    assert isinstance(error, StreamInterrupted)
    assert isinstance(error.__cause__, rxcontext.IdleTimeout)
    # Events 0..stall_at-1 arrived in time (the gate runs before every event but the first).
    assert error.checkpoint.text == text(got) == text_of_events(pieces(body)[:stall_at])
    assert replay.closed == 1 and len(replay.requests) == 1
    assert replies(cw) == []


# -- the same faults on PostgreSQL (a representative slice) -----------------------------------

on_postgres = pytest.mark.usefixtures("on_postgres")


@on_postgres
@pytest.mark.parametrize(
    "k,mode,wire",
    [(0, "sync", "sdk"), (5, "async", "fast"), (14, "sync", "fast"), (27, "async", "sdk")],
)
def test_cut_after_event_k_on_postgres(k, mode, wire):
    test_cut_after_event_k_checkpoints_what_was_delivered_and_resumes(k, mode, wire)


@on_postgres
@pytest.mark.parametrize("k,mode,wire", [(4, "sync", "sdk"), (15, "async", "fast")])
def test_responses_cut_and_native_resume_on_postgres(k, mode, wire):
    test_responses_cut_after_event_k_checkpoints_and_resumes(k, mode, wire)


@on_postgres
def test_retry_on_the_clock_on_postgres():
    test_a_cut_before_anything_was_delivered_is_retried_on_the_clock()


@on_postgres
def test_invalid_json_mid_stream_on_postgres():
    test_invalid_json_mid_stream_checkpoints_what_was_delivered("fast")


@on_postgres
async def test_a_raising_hook_in_astream_on_postgres():
    await test_a_raising_hook_interrupts_astream_with_a_checkpoint_chained_to_it()


@on_postgres
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_raising_complete_and_error_hooks_on_postgres(mode):
    test_a_complete_hook_that_raises_after_the_reply_was_stored_gets_its_own_error(mode)
    test_a_raising_on_error_hook_still_checkpoints_and_chains_both(mode)


@on_postgres
async def test_settled_and_closed_stores_on_postgres():
    await test_resolved_checkpoints_cannot_be_resumed_again()
    for op in ("call", "resume"):
        await test_a_closed_store_is_a_clear_error(op)
    test_a_store_closed_mid_stream_reports_the_store_error()
