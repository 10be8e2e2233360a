"""ContextWindow's conversation management (contextwindow's API) and its tool loop."""

from __future__ import annotations

import asyncio
import contextvars
import json
import subprocess
import sys
import threading

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, StreamInterrupted, Tool, Usage
from rxcontext import operators as rxops
from rxcontext.errors import ToolLoopLimit
from rxcontext.providers import ScriptedModel


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


def call(index: int, id: str, name: str, *pieces: str) -> list[Chunk]:
    first = Chunk(ChunkKind.TOOL_CALL, pieces[0] if pieces else "", index=index, id=id, name=name)
    return [first, *(Chunk(ChunkKind.TOOL_CALL, p, index=index) for p in pieces[1:])]


def done(reason: str = "stop", inp: int = 0, out: int = 0) -> Chunk:
    return Chunk(ChunkKind.DONE, finish_reason=reason, usage=Usage.of(inp, out))


@pytest.fixture
def store(make_store):
    return make_store()  # each test runs on SQLite and on PostgreSQL


# -- contexts ---------------------------------------------------------------------------


def test_constructor_gets_or_creates_the_named_context(store):
    a = ContextWindow(store, context="alpha")
    b = ContextWindow(store, context="alpha")
    assert a.context_id == b.context_id
    unnamed = ContextWindow(store, context="")
    assert len(unnamed.context_name) == 32 and unnamed.context_name != ""


def test_switch_list_delete_with_fallback(store):
    cw = ContextWindow(store, context="one")
    cw.switch_context("two")
    assert cw.context_name == "two"
    assert [c.name for c in cw.list_contexts()] == ["two", "one"]
    cw.delete_context("two")
    assert cw.context_name == "one"  # fell back to the newest remaining
    cw.delete_context("one")
    assert cw.context_name == "default"
    with pytest.raises(rxcontext.ContextNotFound):
        cw.delete_context("nope")


def test_clone_export_stats(store):
    cw = ContextWindow(store, context="src")
    cw.set_system_prompt("be brief")
    cw.add_prompt("hello")
    cw.add_tool(Tool("t", "a tool"), lambda a: "x")
    clone = cw.clone("dst")
    cw.switch_context("dst")
    assert [(r.type, r.content, r.timestamp) for r in cw.records()] == [
        (r.type, r.content, r.timestamp) for r in store.records(store.get_context_by_name("src").id)
    ]
    assert cw.context_id == clone.id
    assert store.context_tools(clone.id) == [
        {
            "name": "t",
            "created_at": store.context_tools(clone.id)[0]["created_at"],
            "definition": Tool("t", "a tool").to_dict(),
        }
    ]  # tools are recorded for the context switched to, because the window offers them
    exported = json.loads(cw.export_json())
    assert exported["context"]["name"] == "dst"
    assert [r["type"] for r in exported["records"]] == ["SYSTEM_PROMPT", "PROMPT"]
    stats = cw.stats()
    assert (stats.records, stats.prompts, stats.live_records) == (2, 1, 2)


def test_records_and_live_state(store):
    cw = ContextWindow(store, context="c")
    for i in range(5):
        cw.add_prompt(f"p{i}")
    assert cw.set_record_live_state(1, 3, False) == 3
    assert [r.content for r in cw.live_records()] == ["p0", "p4"]
    with pytest.raises(IndexError):
        cw.set_record_live_state(3, 9, True, among="all")
    assert [r.content for r in cw.live_records()] == ["p0", "p4"]  # unchanged on error
    # As contextwindow: indexes count live records, so index 1 is now "p4".
    assert cw.set_record_live_state(1, 1, False) == 1
    assert [r.content for r in cw.live_records()] == ["p0"]
    with pytest.raises(IndexError):
        cw.set_record_live_state(1, 1, False)  # only one live record left
    # Dead records come back by their index among all records.
    assert cw.set_record_live_state(2, 3, True, among="all") == 2
    assert [r.content for r in cw.live_records()] == ["p0", "p2", "p3"]
    with pytest.raises(ValueError, match="among"):
        cw.set_record_live_state(0, 0, True, among="dead")


def test_system_prompt_is_replaced_in_place_and_the_old_one_kept_dead(store):
    cw = ContextWindow(store, context="c")
    cw.add_prompt("first")
    cw.set_system_prompt("v1")
    cw.set_system_prompt("v2")
    assert [(r.type, r.content, r.live) for r in cw.records()] == [
        (RecordType.SYSTEM_PROMPT, "v2", True),
        (RecordType.SYSTEM_PROMPT, "v1", False),
        (RecordType.PROMPT, "first", True),
    ]
    assert [r.content for r in cw.live_records()] == ["v2", "first"]


def test_tool_records_added_by_hand(store):
    cw = ContextWindow(store, context="c")
    call_rec = cw.add_tool_call("weather", {"city": "Oslo"}, id="call_1")
    out = cw.add_tool_output("rain", id="call_1", name="weather")
    assert (call_rec.type, call_rec.content, call_rec.tool_call_id) == (
        RecordType.TOOL_CALL,
        '{"city": "Oslo"}',
        "call_1",
    )
    assert (out.type, out.tool_name) == (RecordType.TOOL_OUTPUT, "weather")


def test_an_output_added_by_id_takes_its_calls_tool_name(store):
    """Gemini's functionResponse needs the function's name ("Name cannot be empty"): an
    output given by its call's id, with no name, takes the name of that call."""
    from rxcontext.providers._gemini_request import build_contents

    cw = ContextWindow(store, context="c")
    cw.add_prompt("weather?")
    cw.add_tool_call("weather", {"city": "Oslo"}, id="call_1")
    out = cw.add_tool_output("rain", id="call_1")
    assert (out.tool_call_id, out.tool_name) == ("call_1", "weather")
    [_, _, answers] = build_contents(cw.live_records())
    [part] = answers.parts or []
    assert part.function_response is not None
    assert (part.function_response.id, part.function_response.name) == ("call_1", "weather")
    # An id no live call has keeps what it was given (such an output is not sent).
    assert cw.add_tool_output("late", id="gone").tool_name is None


def test_tool_records_added_by_hand_without_ids_get_the_ids_requests_need(store):
    """Chat, Responses and Anthropic require a call id on every call and output: a call
    added without one gets one made up (as a stream's are), and an output without one
    answers the earliest call still waiting for an output (of its name, if given)."""
    cw = ContextWindow(store, context="c")
    cw.add_prompt("weather?")
    first = cw.add_tool_call("weather", {"city": "Oslo"})
    second = cw.add_tool_call("time", {"city": "Oslo"})
    assert first.tool_call_id and second.tool_call_id
    assert first.tool_call_id != second.tool_call_id
    by_name = cw.add_tool_output("12:00", name="time")
    assert (by_name.tool_call_id, by_name.tool_name) == (second.tool_call_id, "time")
    earliest = cw.add_tool_output("rain")
    assert (earliest.tool_call_id, earliest.tool_name) == (first.tool_call_id, "weather")
    with pytest.raises(ValueError, match="no tool call waits"):
        cw.add_tool_output("nobody asked")
    assert [r.type for r in cw.records()].count(RecordType.TOOL_OUTPUT) == 2


def test_token_estimates_and_usage(store):
    cw = ContextWindow(store, context="c", max_tokens=100)
    cw.add_prompt("x" * 40)  # 10 tokens estimated
    assert cw.live_tokens() == 10
    usage = cw.token_usage()
    assert (usage.live_tokens, usage.max_tokens, usage.percent) == (10, 100, 10.0)
    cw.max_tokens = 20
    assert cw.token_usage().percent == 50.0


def test_reader_is_usable_from_another_thread(store):
    model = ScriptedModel([[T("a"), done()]])
    cw = ContextWindow(store, model, context="c")
    cw.add_prompt("hi")
    reader = cw.reader()
    cw.call()
    cw.switch_context("other")
    seen: list[list[str]] = []
    t = threading.Thread(target=lambda: seen.append([r.content for r in reader.live_records()]))
    t.start()
    t.join()
    assert seen == [["hi", "a"]]  # still the context it was made for
    assert reader.stats().replies == 1


@pytest.mark.parametrize(
    "name", ["it's", 'x"); DROP TABLE records;--', "💬 chat ✨", "n" * 500, "a\nb\tc", "%_*"]
)
def test_hostile_context_names_round_trip(store, name):
    cw = ContextWindow(store, context=name)
    cw.add_prompt("safe")
    assert ContextWindow(store, context=name).live_records()[0].content == "safe"
    assert store.get_context_by_name(name).name == name


def test_bad_prompts_are_clear_errors_and_huge_ones_work(store):
    cw = ContextWindow(store, context="c")
    with pytest.raises(ValueError, match="empty"):
        cw.add_prompt("   ")
    with pytest.raises(TypeError):
        cw.add_prompt(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ContextWindow(store, context=None)  # type: ignore[arg-type]
    huge = "word " * 2_000_000  # 10 MB
    assert cw.add_prompt(huge).content == huge
    assert cw.live_records()[-1].content == huge


def test_a_second_process_sees_every_completed_reply(tmp_path):
    db = tmp_path / "chat.db"
    store = rxcontext.open(db)
    model = ScriptedModel([[T("first"), done()], [T("second"), done()]])
    cw = ContextWindow(store, model, context="c")
    for _ in range(2):
        cw.add_prompt("q")
        cw.call()
    code = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]);"
        "q = 'SELECT content FROM records WHERE source = 1 ORDER BY id';"
        "print([r[0] for r in db.execute(q)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(db)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['first', 'second']"


# -- the tool loop ------------------------------------------------------------------------


WEATHER = Tool("weather", "Current weather for a city").string("city", "City name")


def test_tool_loop_runs_tools_and_continues_in_the_same_stream(store):
    model = ScriptedModel(
        [
            [*call(0, "c1", "weather", '{"ci', 'ty": "Oslo"}'), done("tool_calls", 10, 5)],
            [T("It rains."), done("stop", 30, 4)],
        ]
    )
    cw = ContextWindow(store, model, context="c")
    cw.add_tool(WEATHER, lambda args: f"rain in {args['city']}")
    cw.add_prompt("Weather in Oslo?")
    tool_events: list[str] = []
    chunks: list[Chunk] = []
    cw.stream(
        rxops.middleware(
            on_tool_call=lambda c: tool_events.append(f"call {c.name}"),
            on_tool_result=lambda c: tool_events.append(f"result {c.text}"),
        )
    ).subscribe(chunks.append)
    kinds = [c.kind for c in chunks]
    assert ChunkKind.TOOL_RESULT in kinds
    result = next(c for c in chunks if c.kind is ChunkKind.TOOL_RESULT)
    assert (result.id, result.name, result.text) == ("c1", "weather", "rain in Oslo")
    assert tool_events == ["call weather", "result rain in Oslo"]
    recs = [(r.type, r.content, r.tool_call_id) for r in cw.live_records()]
    assert recs == [
        (RecordType.PROMPT, "Weather in Oslo?", None),
        (RecordType.TOOL_CALL, '{"city": "Oslo"}', "c1"),
        (RecordType.TOOL_OUTPUT, "rain in Oslo", "c1"),
        (RecordType.MODEL_RESP, "It rains.", None),
    ]
    # The second request carried the call and its output; tools were offered both times.
    second = model.requests[1]
    assert [r.type for r in second.records][-2:] == [RecordType.TOOL_CALL, RecordType.TOOL_OUTPUT]
    assert [t.name for t in second.tools] == ["weather"]
    # Usage is summed over both rounds (contextwindow kept only one round's count).
    assert cw.stats().usage == Usage.of(40, 9)


def test_parallel_calls_run_concurrently_and_errors_are_answered(store):
    barrier = threading.Barrier(2)

    def slow(args: dict) -> str:
        barrier.wait(5)  # both calls must be running at once to pass
        return f"ok {args['city']}"

    model = ScriptedModel(
        [
            [
                *call(0, "a", "weather", '{"city": "A"}'),
                *call(1, "b", "weather", '{"city": "B"}'),
                *call(2, "c", "nope", "{}"),
                *call(3, "d", "weather", "{bad json"),
                done("tool_calls"),
            ],
            [T("done"), done()],
        ]
    )
    cw = ContextWindow(store, model, context="c")
    cw.add_tool(WEATHER, slow)
    cw.add_prompt("go")
    reply = cw.call()
    assert reply.text == "done"
    outputs = {r.tool_call_id: r.content for r in cw.records() if r.type is RecordType.TOOL_OUTPUT}
    assert outputs["a"] == "ok A" and outputs["b"] == "ok B"
    assert outputs["c"].startswith("error: unknown tool 'nope'")
    assert outputs["d"].startswith("error: invalid JSON arguments")


CURRENT_USER: contextvars.ContextVar[str] = contextvars.ContextVar("current_user")


@pytest.mark.parametrize("path", ["sync", "async", "sync-in-a-loop"])
@pytest.mark.parametrize("calls", [1, 3])
def test_tools_see_the_callers_context_variables(store, path: str, calls: int):
    """A tool reads what the caller set in its context variables (a user id, a tenant, a
    trace span) on every path, one call or several in parallel, as ``asyncio.to_thread``
    and asyncio's tasks carry them."""

    def whoami(args: dict) -> str:
        return f"user={CURRENT_USER.get('nobody')}"

    async def awhoami(args: dict) -> str:
        return f"user={CURRENT_USER.get('nobody')}"

    model = ScriptedModel(
        [
            [*(x for i in range(calls) for x in call(i, f"c{i}", "who", "{}")), done()],
            [T("ok"), done()],
        ]
    )
    cw = ContextWindow(store, model, context="c")
    cw.add_tool(Tool("who"), awhoami if path == "sync-in-a-loop" else whoami)
    cw.add_prompt("go")

    async def inside() -> None:
        CURRENT_USER.set("alice")
        if path == "async":
            await cw.acall()
        else:  # a blocking call from a coroutine: the async tool runs on a helper thread
            cw.call()

    if path == "sync":
        contextvars.copy_context().run(lambda: (CURRENT_USER.set("alice"), cw.call()))
    else:
        asyncio.run(inside())
    outputs = [r.content for r in cw.records() if r.type is RecordType.TOOL_OUTPUT]
    assert outputs == ["user=alice"] * calls


def test_a_raising_runner_gives_the_model_an_error_output(store):
    def broken(args: dict) -> str:
        raise RuntimeError("service down")

    model = ScriptedModel(
        [[*call(0, "c1", "weather", '{"city":"X"}'), done()], [T("sorry"), done()]]
    )
    cw = ContextWindow(store, model, context="c")
    cw.add_tool(WEATHER, broken)
    cw.add_prompt("go")
    results: list[Chunk] = []
    cw.stream(rxops.middleware(on_tool_result=results.append)).subscribe()
    assert results[0].text == "error: service down" and results[0].metadata == {"error": True}


async def test_async_tool_loop_with_an_async_runner(store):
    async def runner(args: dict) -> str:
        return f"async {args['city']}"

    model = ScriptedModel(
        [[*call(0, "c1", "weather", '{"city":"Rome"}'), done()], [T("ok"), done()]]
    )
    cw = ContextWindow(store, model, context="c")
    cw.add_tool(WEATHER, runner)
    cw.add_prompt("go")
    reply = await cw.acall()
    assert reply.text == "ok"
    assert [r.content for r in cw.records() if r.type is RecordType.TOOL_OUTPUT] == ["async Rome"]


def test_runaway_tool_loop_ends_with_a_clear_error_and_a_checkpoint(store):
    round_ = [*call(0, "c", "weather", '{"city":"X"}'), done("tool_calls")]
    model = ScriptedModel([round_], repeat_last=True)
    cw = ContextWindow(store, model, context="c", max_tool_rounds=3)
    cw.add_tool(WEATHER, lambda a: "again")
    cw.add_prompt("go")
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    assert isinstance(info.value.__cause__, ToolLoopLimit)
    assert "max_tool_rounds=3" in str(info.value.__cause__)
    assert len(model.requests) == 4


def test_disable_tools_sends_none_and_does_not_loop(store):
    model = ScriptedModel([[*call(0, "c1", "weather", "{}"), done("tool_calls")]])
    cw = ContextWindow(store, model, context="c")
    cw.add_tool(WEATHER, lambda a: "x")
    cw.add_prompt("go")
    reply = cw.call(disable_tools=True)
    assert model.requests[0].tools == ()
    assert [c.name for c in reply.tool_calls] == ["weather"]
    assert len(model.requests) == 1


def test_tool_registry_on_the_window(store):
    cw = ContextWindow(store, context="c")
    cw.add_tool(WEATHER, lambda a: "x")
    assert cw.has_tool("weather") and cw.get_tool("weather") == WEATHER
    assert [t.name for t in cw.tools()] == ["weather"]
    assert cw.remove_tool("weather") and not cw.has_tool("weather")
    assert store.context_tools(cw.context_id) == []
