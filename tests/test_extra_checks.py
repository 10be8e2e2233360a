"""``extra=`` (per call) and a model's constructor settings are checked when the call is made
or the model is built, through the real SDKs on the replay transport: a key rxcontext sets
itself, or a Gemini config field the SDK refuses, fails with ``UnsupportedOption`` before any
request is sent and before any checkpoint or record is stored."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import Replay

import rxcontext
from rxcontext import ContextWindow, Tool, UnsupportedOption
from rxcontext.providers import AnthropicModel, GeminiModel, OpenAIModel, OpenAIResponsesModel

WEATHER = Tool("weather", "Current weather for a city").string("city", "City name")
SECRET = "sk-not-a-real-key-0123456789abcdef"


def window(kind: str, replay: Replay, *, tools: bool = True) -> ContextWindow:
    cw = ContextWindow(rxcontext.open(":memory:"), model_for(kind, replay), "extra", retry=None)
    if tools:
        cw.add_tool(WEATHER, lambda args: "sunny")
    cw.add_prompt("Weather in Paris?")
    return cw


# (provider, extra, the key the refusal names)
REFUSED = [
    ("gemini", {"temperature": "hot"}, "temperature"),
    ("gemini", {"top_k_typo": 3}, "top_k_typo"),
    ("gemini", {"temperature": SECRET}, "temperature"),
    ("gemini", {"system_instruction": "be terse"}, "system_instruction"),
    ("gemini", {"tools": [{"google_search": {}}]}, "tools"),
    ("anthropic", {"stream": False}, "stream"),
    ("anthropic", {"model": "claude-other"}, "model"),
    ("anthropic", {"messages": [{"role": "user", "content": "x"}]}, "messages"),
    ("anthropic", {"system": "be terse"}, "system"),
    ("anthropic", {"tools": []}, "tools"),
    ("chat", {"messages": [{"role": "user", "content": "x"}]}, "messages"),
    ("chat", {"model": "gpt-other"}, "model"),
    ("chat", {"stream": False}, "stream"),
    ("chat", {"tools": []}, "tools"),
    ("chat", {"extra_body": {"messages": []}}, "messages"),
    ("responses", {"input": "x"}, "input"),
    ("responses", {"stream": False}, "stream"),
    ("responses", {"instructions": "be terse"}, "instructions"),
    ("responses", {"previous_response_id": "resp_1"}, "previous_response_id"),
]


@pytest.mark.parametrize(("kind", "extra", "key"), REFUSED)
def test_a_bad_extra_is_refused_before_anything_is_sent_or_stored(
    kind: str, extra: dict[str, Any], key: str
) -> None:
    replay = Replay()  # nothing to answer with: a request sent would fail differently
    cw = window(kind, replay)
    before = cw.records()
    refusals: list[UnsupportedOption] = []
    for call in (cw.call, cw.stream, cw.astream, cw.acall):
        with pytest.raises(UnsupportedOption) as info:
            result = call(extra=extra)
            if asyncio.iscoroutine(result):
                asyncio.run(result)
        refusals.append(info.value)
    for refused in refusals:
        assert refused.option == "extra" and refused.model == cw.model.name  # type: ignore[union-attr]
        assert repr(key) in str(refused)
        assert SECRET not in str(refused) and refused.__cause__ is None
    assert replay.requests == []
    assert cw.checkpoints() == [] and cw.active_replies() == [] and cw.records() == before


def test_tools_in_extra_are_sent_when_the_window_offers_none() -> None:
    replay = Replay(text_body("anthropic", ["ok"]))
    cw = window("anthropic", replay, tools=False)
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
    assert cw.call(extra={"tools": [search], "top_k": 4}).text == "ok"
    (sent,) = replay.bodies[0]["tools"]  # (marked for prompt caching)
    assert sent["name"] == "web_search" and sent["max_uses"] == 1
    assert replay.bodies[0]["top_k"] == 4


def test_a_valid_gemini_extra_still_reaches_the_config() -> None:
    replay = Replay(text_body("gemini", ["ok"]))
    cw = window("gemini", replay)
    assert cw.call(extra={"top_k": 3, "temperature": 0.5}).text == "ok"
    config = replay.bodies[0]["generationConfig"]
    assert config["topK"] == 3 and config["temperature"] == 0.5


def _clients(kind: str) -> dict[str, Any]:
    model = model_for(kind, Replay())
    if kind == "gemini":
        return {"client": model._client.get()}
    return {"client": model._client.get(), "async_client": model._async_client.get()}


@pytest.mark.parametrize(
    ("cls", "kind", "settings", "key"),
    [
        (GeminiModel, "gemini", {"temprature": 0.2}, "temprature"),
        (GeminiModel, "gemini", {"temperature": "hot"}, "temperature"),
        (OpenAIModel, "chat", {"model": "gpt-other"}, "model"),
        (OpenAIModel, "chat", {"messages": []}, "messages"),
        (OpenAIResponsesModel, "responses", {"stream": True}, "stream"),
        (OpenAIResponsesModel, "responses", {"input": "x"}, "input"),
        (AnthropicModel, "anthropic", {"stream": True}, "stream"),
        (AnthropicModel, "anthropic", {"extra_body": {"messages": []}}, "messages"),
    ],
)
def test_a_bad_constructor_setting_is_refused_when_the_model_is_built(
    cls: Any, kind: str, settings: dict[str, Any], key: str
) -> None:
    with pytest.raises(UnsupportedOption) as info:
        cls("m", **_clients(kind), **settings)
    assert info.value.option == key and repr(key) in str(info.value)


def test_good_constructor_settings_are_kept() -> None:
    model = GeminiModel("m", **_clients("gemini"), temperature=0.2, max_tokens=9)
    assert model.params == {"temperature": 0.2, "max_tokens": 9}
    system = AnthropicModel("m", **_clients("anthropic"), system="be terse", top_k=3)
    assert system.params == {"system": "be terse", "top_k": 3}
