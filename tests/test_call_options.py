"""Per-call options through the real SDKs (request bodies on the replay transport), their
refusal before the request, and the overall reply deadline on a virtual clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from crafted_text import KINDS, text_body
from faultmodels import Clock, Stall, TimedModel, Wait
from provider_rules import model_for
from replay import Replay
from replay import Reply as ReplayReply

import rxcontext
from rxcontext import (
    Chunk,
    ChunkKind,
    ContextWindow,
    DeadlineExceeded,
    RecordType,
    RetryPolicy,
    StreamInterrupted,
    Timeouts,
    Tool,
    UnsupportedOption,
)
from rxcontext.providers import ScriptedModel

WEATHER = Tool("weather", "Current weather for a city").string("city", "City name")


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


DONE = Chunk(ChunkKind.DONE, finish_reason="stop")


def window(kind: str, replay: Replay, wire: str = "fast") -> ContextWindow:
    model = model_for(kind, replay, wire)
    model.params["temperature"] = 0.9  # the model's own setting: the default of every call
    cw = ContextWindow(rxcontext.open(":memory:"), model, "opts", retry=None)
    cw.add_tool(WEATHER, lambda args: "sunny")
    cw.add_prompt("Weather in Paris?")
    return cw


async def run(cw: ContextWindow, mode: str, **options: Any) -> rxcontext.Reply:
    if mode == "sync":
        return cw.call(**options)
    return await cw.acall(**options)


# What each provider's body says for: temperature 0.2, max 50 tokens, the weather tool
# forced, stop at "END" (not Responses), and one extra SDK parameter.
EXTRA = {"chat": {"seed": 7}, "responses": {"top_p": 0.5}, "anthropic": {"top_k": 5}}
EXTRA["gemini"] = {"top_k": 3}


def expect(kind: str, body: dict[str, Any]) -> None:
    # The history is intact beside the options (extra_body and the spliced history meet).
    history = {"chat": "messages", "responses": "input", "anthropic": "messages"}
    sent = body[history.get(kind, "contents")]
    assert "Weather in Paris?" in str(sent)
    if kind == "chat":
        assert body["temperature"] == 0.2 and body["max_completion_tokens"] == 50
        assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
        assert body["stop"] == ["END"] and body["seed"] == 7
    elif kind == "responses":
        assert body["temperature"] == 0.2 and body["max_output_tokens"] == 50
        assert body["tool_choice"] == {"type": "function", "name": "weather"}
        assert body["top_p"] == 0.5 and "stop" not in body
    elif kind == "anthropic":
        assert body["temperature"] == 0.2 and body["max_tokens"] == 50
        assert body["tool_choice"] == {"type": "tool", "name": "weather"}
        assert body["stop_sequences"] == ["END"] and body["top_k"] == 5
    else:
        config = body["generationConfig"]
        assert config["temperature"] == 0.2 and config["maxOutputTokens"] == 50
        assert config["stopSequences"] == ["END"] and config["topK"] == 3
        assert body["toolConfig"] == {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}
        }


def defaults(kind: str, body: dict[str, Any]) -> None:
    """A call without options: the model's own temperature, nothing else of the last call."""
    if kind == "gemini":
        assert body["generationConfig"]["temperature"] == 0.9
        assert "toolConfig" not in body and "stopSequences" not in body["generationConfig"]
        return
    assert body["temperature"] == 0.9
    assert "tool_choice" not in body and "stop" not in body and "stop_sequences" not in body


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("kind", KINDS)
async def test_options_reach_each_providers_own_parameters(kind: str, mode: str) -> None:
    replay = Replay(text_body(kind, ["It is ", "sunny."]), text_body(kind, ["Still sunny."]))
    cw = window(kind, replay)
    options: dict[str, Any] = {
        "temperature": 0.2,
        "max_output_tokens": 50,
        "tool_choice": "weather",
        "extra": EXTRA[kind],
    }
    if kind != "responses":
        options["stop"] = "END"
    reply = await run(cw, mode, **options)
    assert reply.text == "It is sunny."
    expect(kind, replay.bodies[0])
    cw.add_prompt("And now?")
    await run(cw, mode)
    defaults(kind, replay.bodies[1])


@pytest.mark.parametrize("kind", KINDS)
def test_tool_choice_words_map_per_provider(kind: str) -> None:
    replay = Replay(*(text_body(kind, ["ok"]) for _ in range(3)))
    cw = window(kind, replay)
    for choice in ("auto", "none", "required"):
        cw.call(tool_choice=choice)
    sent = [
        b["toolConfig"]["functionCallingConfig"]["mode"] if kind == "gemini" else b["tool_choice"]
        for b in replay.bodies
    ]
    assert (
        sent
        == {
            "chat": ["auto", "none", "required"],
            "responses": ["auto", "none", "required"],
            "anthropic": [{"type": "auto"}, {"type": "none"}, {"type": "any"}],
            "gemini": ["AUTO", "NONE", "ANY"],
        }[kind]
    )


def test_extra_keys_the_sdk_has_no_keyword_for_travel_in_the_body() -> None:
    replay = Replay(text_body("chat", ["ok"]))
    cw = window("chat", replay)
    cw.call(extra={"some_new_parameter": {"x": 1}, "extra_headers": {"x-test": "1"}})
    assert replay.bodies[0]["some_new_parameter"] == {"x": 1}
    assert replay.bodies[0]["messages"] == [{"role": "user", "content": "Weather in Paris?"}]
    assert replay.requests[0].headers["x-test"] == "1"


def test_an_option_the_provider_lacks_is_refused_before_anything_is_sent() -> None:
    replay = Replay()
    cw = window("responses", replay)
    before = cw.records()
    for call in (cw.call, cw.stream):
        with pytest.raises(UnsupportedOption) as info:
            call(stop=["END"])
        assert info.value.option == "stop" and "openai-responses" in str(info.value)
    with pytest.raises(UnsupportedOption):
        cw.astream(stop="x")
    assert replay.requests == [] and cw.records() == before and cw.checkpoints() == []


def test_a_model_without_option_support_refuses_them_all() -> None:
    clock = Clock()
    cw = ContextWindow(rxcontext.open(":memory:"), TimedModel([], clock), "x")
    cw.add_prompt("hi")
    with pytest.raises(UnsupportedOption, match="temperature"):
        cw.call(temperature=0.1)


def test_bad_tool_choice_and_bad_values_are_refused() -> None:
    cw = ContextWindow(rxcontext.open(":memory:"), ScriptedModel([]), "x")
    cw.add_prompt("hi")
    with pytest.raises(UnsupportedOption, match="offers none"):
        cw.call(tool_choice="required")
    cw.add_tool(WEATHER, lambda args: "sunny")
    with pytest.raises(UnsupportedOption, match="offered: weather"):
        cw.call(tool_choice="forecast")
    with pytest.raises(UnsupportedOption, match="offers none"):
        cw.call(tool_choice="weather", disable_tools=True)
    for bad in ({"temperature": -1}, {"max_output_tokens": 0}, {"stop": []}, {"deadline": 0}):
        with pytest.raises(ValueError):
            cw.call(**bad)
    with pytest.raises(TypeError):
        cw.call(temprature=0.1)  # type: ignore[call-arg]
    assert cw.checkpoints() == [] and len(cw.records()) == 1


def test_tool_choice_forces_the_first_request_only() -> None:
    call = Chunk(ChunkKind.TOOL_CALL, '{"city": "Paris"}', id="c1", name="weather")
    model = ScriptedModel([[call, DONE], [T("sunny"), DONE]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "x")
    cw.add_tool(WEATHER, lambda args: "sunny")
    cw.add_prompt("hi")
    assert cw.call(tool_choice="weather", temperature=0.3).text == "sunny"
    first, second = (r.call for r in model.requests)
    assert first.tool_choice == "weather" and second.tool_choice is None
    assert first.temperature == second.temperature == 0.3


def test_resume_takes_options_too() -> None:
    cut = ReplayReply(text_body("chat", ["par", "tial"]), cut_after=2)  # after "par"
    replay = Replay(cut, text_body("chat", ["tial"]))
    cw = window("chat", replay)
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    assert info.value.checkpoint.text == "par"
    reply = cw.resume_call(info.value.checkpoint.id, temperature=0.0, max_output_tokens=9)
    assert reply.text == "partial"
    assert replay.bodies[1]["temperature"] == 0.0
    assert replay.bodies[1]["max_completion_tokens"] == 9


# -- the overall deadline, on a virtual clock ----------------------------------------------


def timed(*scripts: list, timeouts: Timeouts | None = None, retry: RetryPolicy | None = None):
    clock = Clock()
    model = TimedModel(list(scripts), clock)
    cw = ContextWindow(
        rxcontext.open(":memory:"), model, "d", retry=retry, timeouts=timeouts, scheduler=clock
    )
    cw.add_prompt("hi")
    return cw, model, clock


def replies(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP]


def test_deadline_cuts_a_slow_stream_with_a_checkpoint_of_what_was_delivered() -> None:
    cw, model, clock = timed([T("a"), Wait(2.0), T("b"), Wait(2.0), T("c"), Wait(2.0), T("d")])
    got: list[str] = []
    errors: list[Exception] = []
    cw.stream(deadline=5.0).subscribe(lambda c: got.append(c.text), errors.append, scheduler=clock)
    clock.start()
    (error,) = errors
    assert isinstance(error, StreamInterrupted)
    cause = error.__cause__
    assert isinstance(cause, DeadlineExceeded) and cause.seconds == 5.0
    # "c" came back at 4 s, "d" at 6 s: past the deadline, so never delivered.
    assert got == ["a", "b", "c"] and error.checkpoint.text == "abc"
    assert model.closed == 1 and replies(cw) == []


def test_a_stream_within_its_deadline_completes() -> None:
    cw, _, clock = timed([T("a"), Wait(2.0), T("b"), DONE], timeouts=Timeouts(deadline=5.0))
    done: list[bool] = []
    cw.stream().subscribe(on_completed=lambda: done.append(True), scheduler=clock)
    clock.start()
    assert done == [True] and replies(cw) == ["ab"]


def test_call_uses_the_window_deadline_and_no_retry_waits_past_it() -> None:
    error = rxcontext.ProviderError("HTTP 503", provider="t", status_code=503, retryable=True)
    steady = RetryPolicy(max_attempts=5, initial_delay=4.0, multiplier=1.0, jitter=0.0)
    cw, model, _clock = timed(
        [Wait(2.0), error], [T("never")], timeouts=Timeouts(deadline=5.0), retry=steady
    )
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    assert info.value.__cause__ is error  # a retry at 2 + 4 s would begin past 5 s
    assert len(model.requests) == 1 and info.value.checkpoint.text == ""


async def test_async_deadline_cancels_a_stalled_stream() -> None:
    cw, model, clock = timed([T("a"), Wait(1.0), T("b"), Stall()])
    got: list[str] = []

    async def consume() -> None:
        async for chunk in cw.astream(deadline=5.0):
            got.append(chunk.text)

    task = asyncio.create_task(consume())
    await clock.armed(3)  # the deadline timers of the reads of "a" and "b"; the model's 1 s
    assert got == ["a"]
    clock.advance_to(1.0)
    await clock.armed(4)  # the read that stalls
    assert got == ["a", "b"]
    clock.advance_to(4.9)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance_to(5.0)
    with pytest.raises(StreamInterrupted) as info:
        await task
    assert isinstance(info.value.__cause__, DeadlineExceeded)
    assert info.value.checkpoint.text == "ab" and model.closed == 1


async def test_async_deadline_wins_over_a_longer_idle_limit() -> None:
    cw, _, clock = timed([T("a"), Stall()], timeouts=Timeouts(idle=60.0, deadline=3.0))
    task = asyncio.create_task(cw.acall())
    await clock.armed(1)
    clock.advance_to(3.0)
    with pytest.raises(StreamInterrupted) as info:
        await task
    assert isinstance(info.value.__cause__, DeadlineExceeded)
    assert info.value.checkpoint.text == "a"


@pytest.mark.parametrize("kind", KINDS)
def test_auto_or_none_without_tools_is_not_sent(kind: str) -> None:
    replay = Replay(text_body(kind, ["ok"]), text_body(kind, ["ok"]))
    cw = ContextWindow(rxcontext.open(":memory:"), model_for(kind, replay), "x")
    cw.add_prompt("hi")
    cw.call(tool_choice="none")
    cw.call(tool_choice="auto")
    for body in replay.bodies:
        assert "tool_choice" not in body and "toolConfig" not in body
