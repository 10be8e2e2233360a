"""A failed tool call goes back to the model marked as a failure, where the provider has a way.

Anthropic documents ``is_error: true`` on a ``tool_result`` block for a tool that failed, and
Gemini an ``"error"`` key (in place of ``"output"``) in a ``functionResponse``'s response;
without them the model reads the error text as the tool's successful result. The window
marks the outputs of tools that raised (and the placeholder it stores for an interrupted
call) when it stores them, so the mark goes back in this loop's next round and in every
later request built from the stored records. Outputs stored without the mark (by
``add_tool_output``, or by an older rxcontext) are sent as before. OpenAI has no such field:
its requests carry the text only.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from provider_rules import model_for
from replay import Replay, real_fixture
from stores import open_store

from rxcontext import ChunkKind, ContextWindow, RecordType, Tool
from rxcontext.history import INTERRUPTED_TOOL_OUTPUT

pytestmark = pytest.mark.usefixtures("both_stores")

MODES = [("sync", "sdk"), ("async", "sdk"), ("sync", "fast"), ("async", "fast")]

ANTHROPIC = "anthropic/thinking_tool_use_roundtrip_haiku45"
GEMINI = "gemini/function_call_thought_signature_roundtrip_gemini3pro"
ENDINGS = {
    "anthropic": "anthropic/text_basic_sonnet45.sse",
    "gemini": "gemini/text_basic_gemini20.sse",
}


async def ask(cw: ContextWindow, mode: str) -> list[Any]:
    if mode == "sync":
        chunks: list[Any] = []
        cw.stream().subscribe(chunks.append)
        return chunks
    return [c async for c in cw.astream()]


async def failing_loop(kind: str, folder: str, tool: Tool, mode: str, wire: str) -> Replay:
    """Round 1 asks for ``tool``, whose runner raises; round 2 answers; then a next turn,
    whose request is built from the records as the store reads them back."""
    rounds = [real_fixture(f"{folder}.1.sse"), real_fixture(f"{folder}.2.sse")]
    replay = Replay(*rounds, real_fixture(ENDINGS[kind]))
    cw = ContextWindow(open_store(), model_for(kind, replay, wire), "failing")

    def runner(args: dict[str, Any]) -> str:
        raise RuntimeError("the service is down")

    cw.add_tool(tool, runner)
    recorded = json.loads(real_fixture(f"{folder}.2.request.json").read_text())
    cw.add_prompt(prompt_of(kind, recorded))
    chunks = await ask(cw, mode)
    (result,) = [c for c in chunks if c.kind is ChunkKind.TOOL_RESULT]
    assert result.text == "error: the service is down"
    assert result.metadata.get("error") is True
    cw.add_prompt("Thanks.")
    await ask(cw, mode)
    assert len(replay.requests) == 3
    return replay


def prompt_of(kind: str, recorded: dict[str, Any]) -> str:
    if kind == "anthropic":
        return str(recorded["messages"][0]["content"][0]["text"])
    return str(recorded["contents"][0]["parts"][0]["text"])


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        block
        for message in body["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]


def function_responses(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        part["functionResponse"]
        for content in body["contents"]
        for part in content["parts"]
        if "functionResponse" in part
    ]


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_anthropic_sends_a_raising_tool_s_output_with_is_error(mode, wire):
    tool = Tool("fixed_version", "Return a fixed test version string")
    replay = await failing_loop("anthropic", ANTHROPIC, tool, mode, wire)
    recorded = json.loads(real_fixture(f"{ANTHROPIC}.2.request.json").read_text())
    (want,) = tool_results(recorded)
    for body in replay.bodies[1:]:
        (sent,) = tool_results(body)
        sent.pop("cache_control", None)
        assert sent == {
            "type": "tool_result",
            "tool_use_id": want["tool_use_id"],
            "content": "error: the service is down",
            "is_error": True,
        }


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_gemini_sends_a_raising_tool_s_output_under_error(mode, wire):
    replay = await failing_loop("gemini", GEMINI, Tool("get_country", ""), mode, wire)
    for body in replay.bodies[1:]:
        (sent,) = function_responses(body)
        assert sent["name"] == "get_country"
        assert sent["response"] == {"error": "error: the service is down"}


def interrupted_then_asked(kind: str, replay: Replay, wire: str) -> ContextWindow:
    cw = ContextWindow(open_store(), model_for(kind, replay, wire), "interrupted")
    cw.add_prompt("Weather in Paris?")
    cw.add_tool_call("weather", {"city": "Paris"}, id="call_1")
    cw.add_prompt("Never mind; hello.")
    return cw


async def call(cw: ContextWindow, mode: str) -> None:
    if mode == "sync":
        cw.call()
    else:
        await cw.acall()


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_anthropic_sends_an_interrupted_call_s_placeholder_with_is_error(mode, wire):
    replay = Replay(real_fixture(ENDINGS["anthropic"]))
    await call(interrupted_then_asked("anthropic", replay, wire), mode)
    (sent,) = tool_results(replay.bodies[0])
    assert sent == {
        "type": "tool_result",
        "tool_use_id": "call_1",
        "content": INTERRUPTED_TOOL_OUTPUT,
        "is_error": True,
    }


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_gemini_sends_an_interrupted_call_s_placeholder_under_error(mode, wire):
    replay = Replay(real_fixture(ENDINGS["gemini"]))
    await call(interrupted_then_asked("gemini", replay, wire), mode)
    (sent,) = function_responses(replay.bodies[0])
    assert sent["response"] == {"error": INTERRUPTED_TOOL_OUTPUT}


def answered_by_hand(kind: str, replay: Replay, wire: str) -> ContextWindow:
    """An output stored without the mark (as ``add_tool_output`` and older versions do),
    even one whose text reads as an error, goes back as a result, as it always did."""
    cw = ContextWindow(open_store(), model_for(kind, replay, wire), "by-hand")
    cw.add_prompt("Weather in Paris?")
    cw.add_tool_call("weather", {"city": "Paris"}, id="call_1")
    cw.add_tool_output("error: it rains", id="call_1")
    (output,) = [r for r in cw.live_records() if r.type is RecordType.TOOL_OUTPUT]
    assert not output.metadata
    return cw


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_anthropic_sends_an_unmarked_output_as_before(mode, wire):
    replay = Replay(real_fixture(ENDINGS["anthropic"]))
    await call(answered_by_hand("anthropic", replay, wire), mode)
    (sent,) = tool_results(replay.bodies[0])
    sent.pop("cache_control", None)
    assert sent == {"type": "tool_result", "tool_use_id": "call_1", "content": "error: it rains"}


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_gemini_sends_an_unmarked_output_as_before(mode, wire):
    replay = Replay(real_fixture(ENDINGS["gemini"]))
    await call(answered_by_hand("gemini", replay, wire), mode)
    (sent,) = function_responses(replay.bodies[0])
    assert sent["response"] == {"output": "error: it rains"}
