"""What each provider accepts as a conversation: checks on the request bodies the SDKs send.

These are the rules behind the 400s a broken history gets (a tool call with no output, an
output with no call, an empty assistant turn, roles out of order), written down from the
providers' documented errors so a test can say "every provider would accept this request"
about a body captured on the replay transport. Each check raises AssertionError naming the
rule and the message index.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
from google import genai
from google.genai import types
from replay import NO_SSL, Replay

from rxcontext.providers import AnthropicModel, GeminiModel, OpenAIModel, OpenAIResponsesModel

KEY = "sk-test-rules-0123456789"
KINDS = ("chat", "responses", "anthropic", "gemini")


def model_for(kind: str, replay: Replay, wire: str = "fast") -> Any:
    """A model of ``kind`` whose real SDK client talks to ``replay``."""
    if kind in ("chat", "responses"):
        client = openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client())
        aclient = openai.AsyncOpenAI(api_key=KEY, max_retries=0, http_client=replay.async_client())
        cls = OpenAIModel if kind == "chat" else OpenAIResponsesModel
        return cls("gpt-test", client=client, async_client=aclient, wire=wire)
    if kind == "anthropic":
        client = anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client())
        aclient = anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        )
        return AnthropicModel("claude-test", client=client, async_client=aclient, wire=wire)
    options = types.HttpOptions(
        httpx_client=replay.client(),
        httpx_async_client=replay.async_client(),
        async_client_args={"ssl": NO_SSL},
    )
    client = genai.Client(api_key=KEY, http_options=options)
    return GeminiModel("gemini-test", client=client, wire=wire)


def check(kind: str, body: dict[str, Any]) -> None:
    """Raise AssertionError if ``body`` breaks a rule of provider ``kind``."""
    {
        "chat": check_openai_chat,
        "responses": check_openai_responses,
        "anthropic": check_anthropic,
        "gemini": check_gemini,
    }[kind](body)


def _json_object(arguments: str, i: int) -> None:
    """A history's call arguments: OpenAI-compatible servers that parse them (vLLM, SGLang)
    refuse a request whose arguments are not a JSON object."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        parsed = None
    assert isinstance(parsed, dict), f"[{i}] tool call arguments not a JSON object: {arguments!r}"


def check_openai_chat(body: dict[str, Any]) -> None:
    messages = body["messages"]
    assert messages, "messages must not be empty"
    waiting: list[str] = []  # tool_call ids of the last assistant turn not yet answered
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "tool":
            assert m["tool_call_id"] in waiting, (
                f"[{i}] tool message {m['tool_call_id']!r} answers no pending tool call"
            )
            waiting.remove(m["tool_call_id"])
            continue
        assert not waiting, (
            f"[{i}] an assistant message with tool_calls must be followed by tool messages "
            f"responding to each tool_call_id; unanswered: {waiting}"
        )
        if role == "assistant":
            calls = m.get("tool_calls") or []
            assert m.get("content") or calls, f"[{i}] assistant message with no content"
            waiting = [c["id"] for c in calls]
            for c in calls:
                _json_object(c["function"]["arguments"], i)
        else:
            assert role in ("system", "developer", "user"), f"[{i}] unknown role {role!r}"
    assert not waiting, f"tool calls without tool messages at the end: {waiting}"


def check_openai_responses(body: dict[str, Any]) -> None:
    items = body["input"]
    if isinstance(items, str):
        return
    calls: set[str] = set()
    answered: set[str] = set()
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "function_call":
            calls.add(item["call_id"])
            _json_object(item["arguments"], i)
        elif kind == "function_call_output":
            assert item["call_id"] in calls, (
                f"[{i}] no tool call found for function call output {item['call_id']!r}"
            )
            answered.add(item["call_id"])
        elif kind == "message":
            content = item.get("content")
            assert content, f"[{i}] empty message"
    missing = calls - answered
    assert not missing, f"no tool output found for function call(s) {sorted(missing)}"


def check_anthropic(body: dict[str, Any]) -> None:
    messages = body["messages"]
    # The first message may be the assistant's: the API has accepted it since late 2024, and
    # its reference (the SDK's ``messages`` docs) no longer says "The first message must
    # always use the user role" (Bedrock still refused it then: anthropic-sdk-typescript#622).
    assert messages, "messages: at least one message is required"
    pending: set[str] = set()
    for i, m in enumerate(messages):
        role = m["role"]
        assert role in ("user", "assistant"), f"[{i}] unknown role {role!r}"
        if i:
            assert role != messages[i - 1]["role"], f"[{i}] two {role} turns in a row"
        blocks = m["content"]
        if isinstance(blocks, str):
            assert blocks, f"[{i}] empty content"
            blocks = [{"type": "text", "text": blocks}]
        assert blocks, f"[{i}] a message needs at least one content block"
        results = {b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"}
        assert results <= pending, (
            f"[{i}] tool_result blocks {sorted(results - pending)} have no tool_use in the "
            "previous message"
        )
        assert pending <= results, (
            f"[{i}] tool_use ids {sorted(pending - results)} were found without tool_result "
            "blocks immediately after"
        )
        for b in blocks:
            if b.get("type") == "text":
                assert b["text"], f"[{i}] text content blocks must be non-empty"
                assert not b["text"].isspace(), (
                    f"[{i}] text content blocks must contain non-whitespace text"
                )
        pending = {b["id"] for b in blocks if b.get("type") == "tool_use"}
        assert role == "assistant" or not pending, f"[{i}] tool_use in a user message"
    assert not pending, f"tool_use ids {sorted(pending)} at the end have no tool_result"
    _check_anthropic_tools(body)


def _check_anthropic_tools(body: dict[str, Any]) -> None:
    """The request's ``tools`` and ``tool_choice`` against its history and thinking."""
    tool_blocks = any(
        b.get("type") in ("tool_use", "tool_result")
        for m in body["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
    )
    tools = body.get("tools") or []
    # anthropic-sdk-python#494: a history with tool blocks needs tools, even when none is
    # to be called.
    assert tools or not tool_blocks, (
        "Requests which include tool_use or tool_result blocks must define tools."
    )
    names = [t["name"] for t in tools]
    assert len(set(names)) == len(names), f"tools: Tool names must be unique: {names}"
    choice = body.get("tool_choice")
    assert tools or not choice, f"tool_choice {choice} sent without tools"
    # Extended thinking takes tool_choice auto or none only (the API's message below).
    forced = isinstance(choice, dict) and choice.get("type") in ("any", "tool")
    thinking = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
    assert not (forced and thinking), (
        "Thinking may not be enabled when tool_choice forces tool use."
    )


def check_gemini(body: dict[str, Any]) -> None:
    contents = body["contents"]
    assert contents and contents[0]["role"] == "user", "the first content must be the user's"
    calls: list[str] = []
    for i, c in enumerate(contents):
        role = c["role"]
        assert role in ("user", "model"), f"[{i}] unknown role {role!r}"
        if i:
            assert role != contents[i - 1]["role"], (
                f"[{i}] please ensure that multiturn requests alternate between user and model"
            )
        parts = c.get("parts") or []
        assert parts, f"[{i}] a content needs at least one part"
        responses = [p["functionResponse"]["name"] for p in parts if "functionResponse" in p]
        if calls:
            assert role == "user" and sorted(responses) == sorted(calls), (
                f"[{i}] the function response turn must come right after the function call "
                f"turn and answer each call: calls {calls}, responses {responses}"
            )
        else:
            assert not responses, f"[{i}] function responses with no function call before"
        calls = [p["functionCall"]["name"] for p in parts if "functionCall" in p]
    assert not calls, f"function calls at the end have no response: {calls}"
