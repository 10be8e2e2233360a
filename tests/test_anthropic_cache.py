"""Anthropic prompt caching: breakpoints in the requests the real SDK sends, cache usage apart.

Requests go through the real ``anthropic`` SDK to a replaying httpx2 transport; the bodies
asserted are the bytes it sent (parsed). No recorded fixture has cache counts, so the
usage streams are crafted in the API's shape. That the spliced history with its mark is
byte for byte what the SDK sends for the marked dicts is checked over generated histories
by tests/test_request_bodies.py (the models there cache by default).
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest
from replay import Replay, record
from stores import open_store
from test_provider_anthropic import (
    KEY,
    MESSAGE_STOP,
    anthropic_sse,
    block_start,
    block_stop,
    message_delta,
    message_start,
    text,
    text_stream,
)

import rxcontext
from rxcontext import ContextWindow, InvalidExport, Tool
from rxcontext.chunks import Usage
from rxcontext.providers import AnthropicModel
from rxcontext.providers.base import Request, reply_from_chunks
from rxcontext.records import RecordType

WIRES = ("fast", "sdk")
EPHEMERAL = {"type": "ephemeral"}
WEATHER = Tool("weather", "Current weather").string("city", "City name")


def model(replay: Replay, wire: str = "fast", **params: Any) -> AnthropicModel:
    return AnthropicModel(
        "claude-sonnet-4-5",
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
        wire=wire,  # type: ignore[arg-type]
        **params,
    )


def marks(value: Any) -> list[str]:
    """Where ``cache_control`` marks are in a body, as paths."""
    found: list[str] = []

    def walk(v: Any, path: str) -> None:
        if isinstance(v, dict):
            if "cache_control" in v:
                assert v["cache_control"] == EPHEMERAL
                found.append(path)
            for k, x in v.items():
                walk(x, f"{path}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")

    walk(value, "")
    return found


def window(replay: Replay, wire: str, system: bool = True, **params: Any) -> ContextWindow:
    cw = ContextWindow(rxcontext.open(":memory:"), model(replay, wire, **params), context="c")
    if system:
        cw.set_system_prompt("You are terse.")
    cw.add_tool(WEATHER, lambda args: "sunny")
    return cw


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("wire", WIRES)
def test_breakpoints_on_tools_system_and_the_end_of_the_history(wire: str, mode: str) -> None:
    replay = Replay(text_stream("Paris."), text_stream("Lyon."))
    cw = window(replay, wire)
    for prompt in ("Capital of France?", "And its second city?"):
        cw.add_prompt(prompt)
        if mode == "sync":
            cw.call()
        else:
            asyncio.run(cw.acall())
    first, second = replay.bodies
    assert first["system"] == [
        {"type": "text", "text": "You are terse.", "cache_control": EPHEMERAL}
    ]
    assert first["tools"][-1]["cache_control"] == EPHEMERAL
    assert sorted(marks(first)) == [".messages[0].content[0]", ".system[0]", ".tools[0]"]
    # The next request moves the history's mark to its new end; the first prompt, now in
    # the cached prefix, is sent unmarked (the kept per-record JSON was not changed).
    assert sorted(marks(second)) == [".messages[2].content[0]", ".system[0]", ".tools[0]"]
    assert second["messages"][0] == {
        "role": "user",
        "content": [{"type": "text", "text": "Capital of France?"}],
    }
    assert second["messages"][2]["content"][-1] == {
        "type": "text",
        "text": "And its second city?",
        "cache_control": EPHEMERAL,
    }


@pytest.mark.parametrize("wire", WIRES)
def test_cache_false_sends_no_breakpoint(wire: str) -> None:
    replay = Replay(text_stream("Paris."))
    cw = window(replay, wire, cache=False)
    cw.add_prompt("Capital of France?")
    cw.call()
    (body,) = replay.bodies
    assert marks(body) == []
    assert body["system"] == "You are terse."


def test_breakpoints_the_caller_set_count_toward_the_four_allowed() -> None:
    server_tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
    system = [
        {"type": "text", "text": "a", "cache_control": EPHEMERAL},
        {"type": "text", "text": "b", "cache_control": EPHEMERAL},
        {"type": "text", "text": "c", "cache_control": EPHEMERAL},
    ]
    replay = Replay(text_stream("x"), text_stream("y"))
    cw = ContextWindow(
        rxcontext.open(":memory:"), model(replay, tools=[server_tool], system=system), context="c"
    )
    cw.add_tool(WEATHER, lambda args: "sunny")
    cw.add_prompt("Go.")
    cw.call()
    body = replay.bodies[0]
    # Three of the caller's, so one left: the tools (first in the cached prefix) get it.
    assert len(marks(body)) == 4
    assert ".tools[1]" in marks(body) and body["tools"][0] == server_tool
    assert "cache_control" not in body["messages"][-1]["content"][-1]
    # The caller's values are not changed in place.
    assert "cache_control" not in server_tool


def test_a_thinking_block_at_the_end_is_not_marked() -> None:
    # A resumed reply's partial thinking ends the history: the API refuses a mark there.
    replay = Replay(text_stream("x"))
    m = model(replay)
    records = [
        record(RecordType.PROMPT, "Think."),
        record(
            RecordType.MODEL_RESP,
            "",
            metadata={
                "thinking_blocks": [{"type": "thinking", "thinking": "hm", "signature": "S"}]
            },
        ),
    ]
    reply_from_chunks(m.iter_chunks(Request(records)))
    assert marks(replay.bodies[0]) == []


@pytest.mark.parametrize("wire", WIRES)
def test_cache_reads_and_writes_are_kept_apart_in_the_stored_usage(wire: str) -> None:
    stream = anthropic_sse(
        message_start(input_tokens=12, cache_creation_input_tokens=1500, cache_read_input_tokens=0),
        block_start(0, {"type": "text", "text": ""}),
        text(0, "Paris."),
        block_stop(0),
        message_delta(output_tokens=3),
        MESSAGE_STOP,
    )
    second = anthropic_sse(
        message_start(input_tokens=9, cache_creation_input_tokens=0, cache_read_input_tokens=1500),
        block_start(0, {"type": "text", "text": ""}),
        text(0, "Lyon."),
        block_stop(0),
        message_delta(output_tokens=3),
        MESSAGE_STOP,
    )
    replay = Replay(stream, second)
    cw = window(replay, wire)
    cw.add_prompt("Capital of France?")
    first = cw.call()
    cw.add_prompt("Second city?")
    then = cw.call()
    assert first.usage == Usage(1512, 3, 1515, cached_tokens=0, cache_write_tokens=1500)
    assert then.usage == Usage(1509, 3, 1512, cached_tokens=1500, cache_write_tokens=0)
    replies = [r for r in cw.live_records() if r.type is RecordType.MODEL_RESP]
    assert [r.metadata["usage"]["cache_write_tokens"] for r in replies] == [1500, 0]
    assert [r.metadata["usage"]["cached_tokens"] for r in replies] == [0, 1500]


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("wire", WIRES)
def test_cache_writes_and_web_searches_count_in_the_context_totals_and_survive_export(
    wire: str,
) -> None:
    """The context's usage totals (stats, export, a reimport) hold every field a reply's
    usage does: cache writes, priced apart, and web searches, billed per search, were left
    out, so an export imported elsewhere lost them."""
    searched = {"web_search_requests": 2, "web_fetch_requests": 0}
    first = anthropic_sse(
        message_start(input_tokens=12, cache_creation_input_tokens=1800, cache_read_input_tokens=0),
        block_start(0, {"type": "text", "text": ""}),
        text(0, "Paris."),
        block_stop(0),
        message_delta(output_tokens=3, server_tool_use=searched),
        MESSAGE_STOP,
    )
    second = anthropic_sse(
        message_start(input_tokens=9, cache_creation_input_tokens=40, cache_read_input_tokens=1800),
        block_start(0, {"type": "text", "text": ""}),
        text(0, "Lyon."),
        block_stop(0),
        message_delta(output_tokens=2),
        MESSAGE_STOP,
    )
    cw = ContextWindow(open_store(), model(Replay(first, second), wire), context="c")
    cw.add_prompt("Capital of France?")
    one = cw.call().usage
    cw.add_prompt("Second city?")
    two = cw.call().usage
    assert one == Usage(1812, 3, 1815, cache_write_tokens=1800, web_search_requests=2)
    assert two == Usage(1849, 2, 1851, cached_tokens=1800, cache_write_tokens=40)
    spent = Usage(3661, 5, 3666, cached_tokens=1800, cache_write_tokens=1840, web_search_requests=2)
    assert cw.stats().usage == spent
    exported = cw.export()
    assert exported["context"]["usage"] == spent.to_dict()
    copy = cw.import_context(exported, name="copy")
    assert cw.store.context_stats(copy.id).usage == spent
    assert cw.store.export_context(copy.id)["context"]["usage"] == spent.to_dict()
    for bad in ({"cache_write_tokens": -1}, {"web_search_requests": "2"}):
        broken = {**exported, "context": {**exported["context"], "usage": bad}}
        with pytest.raises(InvalidExport, match=f"usage.{next(iter(bad))} must be a count"):
            cw.import_context(broken, name="broken")
