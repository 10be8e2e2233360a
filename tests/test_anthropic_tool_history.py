"""Anthropic: a request offering no tools over a history with tool rounds.

Anthropic refuses a body whose messages hold ``tool_use`` / ``tool_result`` blocks and
that defines no tools (400 "Requests which include tool_use or tool_result blocks must
define tools", anthropic-sdk-python#494): a call with ``disable_tools=True``, after the
tool was removed, or from another window continuing the context with no tools registered.
Such a request declares the tools the history names, and ``tool_choice`` none so the model
calls none of them. Bodies are what the real SDK sent on the replay transport, both wires.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from provider_rules import KEY, check
from replay import Replay, real_fixture
from stores import open_store

from rxcontext import ContextWindow, Tool
from rxcontext.providers import AnthropicModel

pytestmark = pytest.mark.usefixtures("both_stores")

WIRES = ("fast", "sdk")
PARALLEL = "anthropic/parallel_tool_use_no_args_roundtrip_haiku45"
THINKING = "anthropic/thinking_tool_use_roundtrip_haiku45"
TEXT = "anthropic/text_basic_sonnet45.sse"
NONE = {"type": "none"}


def model(replay: Replay, wire: str, **params: Any) -> AnthropicModel:
    return AnthropicModel(
        "claude-haiku-4-5",
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
        wire=wire,  # type: ignore[arg-type]
        **params,
    )


def tool_round(
    fixture: str, tool: Tool, wire: str, texts: int, **params: Any
) -> tuple[ContextWindow, Replay]:
    """A window that ran one recorded tool round; ``texts`` text replies to come."""
    replay = Replay(
        real_fixture(f"{fixture}.1.sse"),
        real_fixture(f"{fixture}.2.sse"),
        *(real_fixture(TEXT) for _ in range(texts)),
    )
    cw = ContextWindow(open_store(), model(replay, wire, **params), "c", retry=None)
    cw.add_tool(tool, lambda args: "ok")
    cw.add_prompt("Go.")
    cw.call()
    assert len(replay.requests) == 2
    return cw, replay


def declared(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``body``'s tools without their prompt-cache breakpoint."""
    return [{k: v for k, v in t.items() if k != "cache_control"} for t in body["tools"]]


def stub(name: str) -> dict[str, Any]:
    return {"name": name, "input_schema": {"type": "object", "properties": {}}}


@pytest.mark.parametrize("wire", WIRES)
def test_no_tools_offered_declares_the_historys_tools_with_tool_choice_none(wire):
    pelican = Tool("pelican_name_generator", "")
    cw, replay = tool_round(PARALLEL, pelican, wire, texts=2)
    offered = replay.bodies[1]  # the tool round's own request: as before
    assert "tool_choice" not in offered
    assert declared(offered) == [pelican.to_anthropic()]

    cw.add_prompt("thanks, one more question")
    cw.call(disable_tools=True)
    cw.add_prompt("and another")
    cw.remove_tool("pelican_name_generator")
    cw.call()
    for body in replay.bodies[2:]:
        check("anthropic", body)  # two tool_use blocks of one tool: declared once
        assert declared(body) == [stub("pelican_name_generator")]
        assert body["tool_choice"] == NONE


@pytest.mark.parametrize("wire", WIRES)
async def test_another_window_without_tools_continues_the_context(wire):
    cw, _ = tool_round(PARALLEL, Tool("pelican_name_generator", ""), wire, texts=0)
    replay = Replay(real_fixture(TEXT), real_fixture(TEXT))
    other = ContextWindow(cw.store, model(replay, wire), "c", retry=None)
    other.add_prompt("thanks")
    other.call()
    other.add_prompt("and asynchronously?")
    await other.acall()
    for body in replay.bodies:
        check("anthropic", body)
        assert declared(body) == [stub("pelican_name_generator")]
        assert body["tool_choice"] == NONE


@pytest.mark.parametrize("wire", WIRES)
def test_with_thinking_the_tool_choice_is_none_which_thinking_allows(wire):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    tool = Tool("fixed_version", "Return a fixed test version string")
    cw, replay = tool_round(THINKING, tool, wire, texts=1, thinking=thinking, max_tokens=4096)
    cw.add_prompt("thanks")
    cw.call(disable_tools=True)
    body = replay.bodies[2]
    check("anthropic", body)
    assert body["thinking"] == thinking
    assert declared(body) == [stub("fixed_version")]
    assert body["tool_choice"] == NONE


@pytest.mark.parametrize("wire", WIRES)
def test_a_history_without_tool_blocks_declares_no_tools(wire):
    replay = Replay(real_fixture(TEXT), real_fixture(TEXT))
    cw = ContextWindow(open_store(), model(replay, wire), "c", retry=None)
    cw.add_prompt("hi")
    cw.call()
    cw.add_prompt("again")
    cw.call(disable_tools=True)
    for body in replay.bodies:
        assert "tools" not in body
        assert "tool_choice" not in body
