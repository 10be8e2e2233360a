"""The tool loop through each real SDK on recorded two-round streams.

Round 1 (recorded) asks for a tool; the window runs our runner, stores the call and its
output, and sends round 2, whose body — what the SDK actually put on the wire — must carry
the call and output with their ids, arguments and order, as the recorded round-2 request did.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from provider_rules import model_for
from replay import Replay, real_fixture, sse
from stores import open_store

from rxcontext import ChunkKind, ContextWindow, RecordType, Tool, Usage
from rxcontext import operators as rxops

KEY = "sk-test-toolloop-0123456789"

pytestmark = pytest.mark.usefixtures("both_stores")


def rounds(folder: str, name: str) -> tuple[Replay, dict[str, Any]]:
    replay = Replay(
        real_fixture(f"{folder}/{name}.1.sse"),
        real_fixture(f"{folder}/{name}.2.sse"),
    )
    recorded = json.loads(real_fixture(f"{folder}/{name}.2.request.json").read_text())
    return replay, recorded


async def run_loop(
    kind: str, replay: Replay, tool: Tool, output: str, prompt: str, mode: str, wire: str
) -> ContextWindow:
    cw = ContextWindow(open_store(), model_for(kind, replay, wire), "loop")
    calls: list[dict[str, Any]] = []

    def runner(args: dict[str, Any]) -> str:
        calls.append(args)
        return output

    cw.add_tool(tool, runner)
    cw.add_prompt(prompt)
    if mode == "sync":
        chunks = []
        cw.stream().subscribe(chunks.append)
    else:
        chunks = [c async for c in cw.astream()]
    assert len(replay.requests) == 2
    assert len(calls) == 1
    results = [c for c in chunks if c.kind is ChunkKind.TOOL_RESULT]
    assert [r.text for r in results] == [output]
    types_ = [r.type for r in cw.live_records()]
    assert types_[-1] is RecordType.MODEL_RESP and cw.live_records()[-1].content
    assert RecordType.TOOL_CALL in types_ and RecordType.TOOL_OUTPUT in types_
    return cw


MODES = [("sync", "sdk"), ("async", "sdk"), ("sync", "fast"), ("async", "fast")]


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_openai_chat_tool_loop(mode, wire):
    replay, recorded = rounds("openai_chat", "tool_call_roundtrip_gpt4o_mini")
    tool = Tool("multiply", "Multiply two numbers.").number("a").number("b")
    await run_loop("chat", replay, tool, "2869461", "What is 1231 * 2331?", mode, wire)
    sent = replay.bodies[1]["messages"]
    want = recorded["messages"]
    assert sent[0] == want[0]
    (call,) = next(m for m in sent if m.get("tool_calls"))["tool_calls"]
    (want_call,) = want[2]["tool_calls"]
    assert call["id"] == want_call["id"]
    assert call["function"]["name"] == "multiply"
    assert json.loads(call["function"]["arguments"]) == json.loads(
        want_call["function"]["arguments"]
    )
    assert sent[-1] == want[-1]  # role tool, same tool_call_id, same output
    assert replay.bodies[1]["stream_options"] == {"include_usage": True}


def deepseek_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "ds-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "deepseek-reasoner",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_openai_chat_tool_loop_sends_deepseek_reasoning_content_back(mode, wire):
    """DeepSeek in thinking mode refuses a tool loop's next request without the reasoning
    of the assistant message that made the call (api-docs.deepseek.com/guides/thinking_mode
    #tool-calls): it goes back from the stored record, in this loop and in later requests."""
    call = {"id": "call_0", "type": "function"}
    call["function"] = {"name": "weather", "arguments": '{"city": "Paris"}'}
    replay = Replay(
        sse(
            deepseek_chunk({"role": "assistant", "content": None, "reasoning_content": "Look."}),
            deepseek_chunk({"tool_calls": [{"index": 0, **call}]}),
            deepseek_chunk({}, "tool_calls"),
            "[DONE]",
        ),
        sse(
            deepseek_chunk({"reasoning_content": "Sunny it is."}),
            deepseek_chunk({"content": "Sunny."}),
            deepseek_chunk({}, "stop"),
            "[DONE]",
        ),
        sse(deepseek_chunk({"content": "Bye."}), deepseek_chunk({}, "stop"), "[DONE]"),
    )
    tool = Tool("weather", "Current weather").string("city")
    cw = await run_loop("chat", replay, tool, "sunny", "Weather in Paris?", mode, wire)
    made_call = {"role": "assistant", "content": None, "reasoning_content": "Look."}
    made_call["tool_calls"] = [call]
    assert replay.bodies[1]["messages"][1] == made_call
    # The next turn's request, from the records as the store reads them back.
    cw.add_prompt("Thanks.")
    if mode == "sync":
        cw.call()
    else:
        await cw.acall()
    assert replay.bodies[2]["messages"][1:] == [
        made_call,
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "reasoning_content": "Sunny it is."},
        {"role": "user", "content": "Thanks."},
    ]


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_openai_responses_tool_loop(mode, wire):
    replay, recorded = rounds("openai_responses", "function_call_roundtrip_gpt55")
    tool = Tool("multiply", "Multiply two numbers.").number("a").number("b")
    prompt = "What is 1231 * 2331? Use the multiply tool."
    await run_loop("responses", replay, tool, "2869461", prompt, mode, wire)
    sent = [
        i
        for i in replay.bodies[1]["input"]
        if i.get("type") in ("function_call", "function_call_output")
    ]
    want = recorded["input"][1:]
    assert [(i["type"], i["call_id"]) for i in sent] == [(i["type"], i["call_id"]) for i in want]
    assert json.loads(sent[0]["arguments"]) == json.loads(want[0]["arguments"])
    assert sent[1]["output"] == want[1]["output"]


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_anthropic_tool_loop_sends_thinking_back_with_its_signature(mode, wire):
    replay, recorded = rounds("anthropic", "thinking_tool_use_roundtrip_haiku45")
    tool = Tool("fixed_version", "Return a fixed test version string")
    prompt = recorded["messages"][0]["content"][0]["text"]
    await run_loop("anthropic", replay, tool, "0.32a0", prompt, mode, wire)
    sent = replay.bodies[1]["messages"]
    # The history's prompt-cache breakpoint (the recording's client set none) ends it.
    assert sent[-1]["content"][-1].pop("cache_control") == {"type": "ephemeral"}
    assert sent[1:] == recorded["messages"][1:]  # thinking+signature, tool_use, tool_result


def opus46_tool_round() -> tuple[bytes, dict[str, Any]]:
    """The recorded claude-opus-4-6 adaptive-thinking stream (a text block of only "\\n\\n",
    then a signed thinking block) with its answer block replaced by a tool_use block; and
    that thinking block as it must go back."""
    events = real_fixture("anthropic/text_before_thinking_opus46.sse").read_text().split("\n\n")
    end = next(i for i, e in enumerate(events) if '"content_block_stop","index":1' in e)
    data = [json.loads(e.partition("data: ")[2]) for e in events[: end + 1] if "data: " in e]
    deltas = [d["delta"] for d in data if d.get("index") == 1 and "delta" in d]
    thinking = {
        "type": "thinking",
        "thinking": "".join(d.get("thinking", "") for d in deltas),
        "signature": "".join(d.get("signature", "") for d in deltas),
    }
    tool_use = {"type": "tool_use", "id": "toolu_01A", "name": "t", "input": {}}
    tail = [
        {"type": "content_block_start", "index": 2, "content_block": tool_use},
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"i": 1}'},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 40},
        },
        {"type": "message_stop"},
    ]
    framed = [f"event: {e['type']}\ndata: {json.dumps(e)}" for e in tail]
    return ("\n\n".join([*events[: end + 1], *framed]) + "\n\n").encode(), thinking


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_anthropic_tool_loop_leaves_out_a_whitespace_text_block(mode, wire):
    """Anthropic refuses a whitespace-only text block; the round-2 assistant turn is the
    thinking block and the tool_use, as in the recorded haiku round-2 request."""
    round1, thinking = opus46_tool_round()
    replay = Replay(round1, real_fixture("anthropic/text_basic_sonnet45.sse"))
    tool = Tool("t", "a tool").number("i", "n")
    await run_loop("anthropic", replay, tool, "42", "Use the tool.", mode, wire)
    assert thinking["thinking"] and thinking["signature"]
    assert replay.bodies[1]["messages"][1] == {
        "role": "assistant",
        "content": [
            thinking,
            {"type": "tool_use", "id": "toolu_01A", "name": "t", "input": {"i": 1}},
        ],
    }


@pytest.mark.parametrize(("mode", "wire"), MODES)
async def test_gemini_tool_loop_sends_the_thought_signature_back(mode, wire):
    replay, recorded = rounds("gemini", "function_call_thought_signature_roundtrip_gemini3pro")
    tool = Tool("get_country", "")
    prompt = recorded["contents"][0]["parts"][0]["text"]
    await run_loop("gemini", replay, tool, "Mexico", prompt, mode, wire)
    sent = replay.bodies[1]["contents"]
    want = recorded["contents"]
    call = sent[1]["parts"][0]
    assert sent[1]["role"] == "model"
    assert call["thoughtSignature"] == want[1]["parts"][0]["thoughtSignature"]
    assert call["functionCall"]["name"] == "get_country"
    response = sent[2]["parts"][0]["functionResponse"]
    assert response["name"] == "get_country"
    # Gemini gave the call no id; ours is generated, and the response must carry the same one.
    assert response.get("id") == call["functionCall"].get("id")
    assert "Mexico" in json.dumps(response["response"])


LOOPS = {
    "chat": ("openai_chat/tool_call_roundtrip_gpt4o_mini", Tool("multiply", "").number("a")),
    "responses": (
        "openai_responses/function_call_roundtrip_gpt55",
        Tool("multiply", "").number("a"),
    ),
    "anthropic": (
        "anthropic/thinking_tool_use_roundtrip_haiku45",
        Tool("fixed_version", ""),
    ),
    "gemini": (
        "gemini/function_call_thought_signature_roundtrip_gemini3pro",
        Tool("get_country", ""),
    ),
}


def two_tool_rounds(kind: str, wire: str) -> ContextWindow:
    """A window whose next reply calls the tool in two rounds (the recorded round 1 twice:
    the provider numbers each round's calls from 0), then answers (the recorded round 2)."""
    name, tool = LOOPS[kind]
    first = real_fixture(f"{name}.1.sse")
    replay = Replay(first, first, real_fixture(f"{name}.2.sse"))
    cw = ContextWindow(open_store(), model_for(kind, replay, wire), "loop")
    cw.add_tool(tool, lambda args: "42")
    cw.add_prompt("Use the tool twice.")
    return cw


def assert_is_the_stored_reply(cw: ContextWindow, reply: Any) -> None:
    records = cw.live_records()
    stored_calls = [
        (r.tool_call_id, r.tool_name, json.loads(r.content or "{}"))
        for r in records
        if r.type is RecordType.TOOL_CALL
    ]
    assert len(stored_calls) == 2
    calls = [(c.id, c.name, c.arguments) for c in reply.tool_calls]
    assert [c.error for c in reply.tool_calls] == [None, None]
    assert calls == stored_calls
    assert len({c.index for c in reply.tool_calls}) == 2
    text = "".join(r.content for r in records if r.type is RecordType.MODEL_RESP)
    assert reply.text == text
    # The usage the store counted for the reply: every round's (each on its record), summed.
    rounds = [Usage.from_dict(r.metadata["usage"]) for r in records if "usage" in r.metadata]
    assert len(rounds) == 3
    assert reply.usage == rounds[0] + rounds[1] + rounds[2] == cw.stats().usage
    # Each round's thinking block with its own signature (Anthropic's), none joined.
    blocks = [b for r in records for b in r.metadata.get("thinking_blocks", ())]
    assert list(reply.metadata.get("thinking_blocks", ())) == blocks
    assert reply.finish_reason == records[-1].metadata["finish_reason"]


@pytest.mark.parametrize("wire", ["sdk", "fast"])
@pytest.mark.parametrize("kind", list(LOOPS))
def test_reduce_reply_over_a_tool_loop_keeps_each_rounds_call(kind, wire):
    """Each round numbers its tool calls from 0 again: the second round's call is a call of
    its own (not its arguments appended to the first's), and the usage is every round's."""
    cw = two_tool_rounds(kind, wire)
    reply = cw.stream().pipe(rxops.reduce_reply()).run()
    assert_is_the_stored_reply(cw, reply)


@pytest.mark.parametrize("wire", ["sdk", "fast"])
@pytest.mark.parametrize("kind", list(LOOPS))
def test_accumulate_over_a_tool_loop_ends_on_the_stored_reply(kind, wire):
    cw = two_tool_rounds(kind, wire)
    snapshots: list[Any] = []
    cw.stream().pipe(rxops.accumulate()).subscribe(snapshots.append)
    assert_is_the_stored_reply(cw, snapshots[-1])
