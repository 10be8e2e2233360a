"""Tool schemas as each provider receives them, through the real SDKs (both wires).

A tool's parameters are a JSON schema; what the user gave is what every provider gets,
``$defs`` and the other top-level keywords included (a pydantic model with a nested model
refers to ``#/$defs/...``), and what the store keeps loads back as the same tool.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import types
from pydantic import BaseModel, ConfigDict
from replay import NO_SSL

from rxcontext import ContextWindow, Tool
from rxcontext.providers import AnthropicModel, GeminiModel, OpenAIModel, OpenAIResponsesModel

PROVIDERS = ("openai_chat", "openai_responses", "anthropic", "gemini")
WIRES = ("fast", "sdk")


class Recorder:
    """Records each request body; answers HTTP 400, so one call sends exactly one request."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.transport = httpx2.MockTransport(self._handle)

    def _handle(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(json.loads(request.read()))
        error = {"type": "invalid_request_error", "message": "refused by the test", "code": 400}
        return httpx2.Response(
            400, json={"type": "error", "error": error, "status": "INVALID_ARGUMENT"}
        )


def make_model(provider: str, wire: str, recorder: Recorder) -> Any:
    http = httpx2.Client(transport=recorder.transport, verify=NO_SSL)
    ahttp = httpx2.AsyncClient(transport=recorder.transport, verify=NO_SSL)
    if provider.startswith("openai"):
        common: dict[str, Any] = {
            "api_key": "sk-test-tools-0123456789",
            "max_retries": 0,
            "base_url": "http://x.invalid/v1",
        }
        cls = OpenAIModel if provider == "openai_chat" else OpenAIResponsesModel
        return cls(
            "gpt-test",
            client=openai.OpenAI(http_client=http, **common),
            async_client=openai.AsyncOpenAI(http_client=ahttp, **common),
            wire=wire,  # type: ignore[arg-type]
        )
    if provider == "anthropic":
        common = {"api_key": "sk-ant-test-tools-0123456789", "max_retries": 0}
        return AnthropicModel(
            "claude-test",
            client=anthropic.Anthropic(http_client=http, **common),
            async_client=anthropic.AsyncAnthropic(http_client=ahttp, **common),
            wire=wire,  # type: ignore[arg-type]
        )
    options = types.HttpOptions(
        httpx_client=http,
        httpx_async_client=ahttp,
        async_client_args={"ssl": NO_SSL},
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    client = genai.Client(api_key="AIzaTESTtools-0123456789abcdef", http_options=options)
    return GeminiModel("gemini-test", client=client, wire=wire)  # type: ignore[arg-type]


def sent_tools(
    provider: str, wire: str, make_store: Callable[..., Any], *tools: Tool
) -> list[dict[str, Any]]:
    """The tools entries of the request a window with ``tools`` sends, as (name, schema)."""
    recorder = Recorder()
    cw = ContextWindow(make_store(), make_model(provider, wire, recorder), "tools", retry=None)
    for tool in tools:
        cw.add_tool(tool, lambda args: "ok")
    cw.add_prompt("go")
    with pytest.raises(Exception):  # noqa: B017 - the 400 the recorder answers
        cw.call()
    (body,) = recorder.bodies
    if provider == "openai_chat":
        functions = [t["function"] for t in body["tools"]]
        return [{"name": f["name"], **f["parameters"]} for f in functions]
    if provider == "openai_responses":
        return [{"name": t["name"], **t["parameters"]} for t in body["tools"]]
    if provider == "anthropic":
        return [{"name": t["name"], **t["input_schema"]} for t in body["tools"]]
    declarations = body["tools"][0]["functionDeclarations"]
    return [{"name": d["name"], **d["parameters_json_schema"]} for d in declarations]


# -- $defs and the other top-level keywords ------------------------------------------------


class Address(BaseModel):
    street: str
    city: str


class Route(BaseModel):
    """A trip through some stops."""

    model_config = ConfigDict(extra="forbid")

    home: Address
    stops: list[Address]


ROUTE = Route.model_json_schema()


def test_the_pydantic_schema_is_what_the_tests_think() -> None:
    assert ROUTE["properties"]["home"] == {"$ref": "#/$defs/Address"}
    assert set(ROUTE) == {
        "$defs",
        "additionalProperties",
        "description",
        "properties",
        "required",
        "title",
        "type",
    }


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_provider_gets_the_schemas_defs(
    provider: str, wire: str, make_store: Callable[..., Any]
) -> None:
    tool = Tool.from_json_schema("route", "Plan a route", ROUTE)
    (sent,) = sent_tools(provider, wire, make_store, tool)
    assert sent == {"name": "route", **ROUTE}
    assert sent["$defs"]["Address"]["properties"]["city"] == {"title": "City", "type": "string"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_schema_dialect_marker_is_not_sent(
    provider: str, make_store: Callable[..., Any]
) -> None:
    # "$schema" names the JSON-schema draft and constrains nothing; Gemini's parser refuses it
    # as an unknown field, so no provider is sent it (the tool keeps it).
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **ROUTE}
    tool = Tool.from_json_schema("route", "Plan a route", schema)
    (sent,) = sent_tools(provider, "fast", make_store, tool)
    assert sent == {"name": "route", **ROUTE}
    assert tool.parameters() == schema


def test_builder_methods_keep_the_keywords() -> None:
    tool = Tool.from_json_schema("route", "Plan a route", ROUTE).boolean("fast", required=False)
    assert tool.parameters() == {
        **ROUTE,
        "properties": {**ROUTE["properties"], "fast": {"type": "boolean"}},
    }


def test_the_tool_is_a_copy_of_the_schema() -> None:
    source = json.loads(json.dumps(ROUTE))
    tool = Tool.from_json_schema("route", "", source)
    source["$defs"]["Address"]["properties"]["city"]["type"] = "number"
    sent = tool.parameters()
    assert sent["$defs"] == ROUTE["$defs"]
    sent["$defs"].clear()
    assert tool.parameters()["$defs"] == ROUTE["$defs"]


def test_a_stored_tool_loads_as_the_same_tool(make_store: Callable[..., Any]) -> None:
    store = make_store()
    tool = Tool.from_json_schema("route", "Plan a route", ROUTE)
    cw = ContextWindow(store, make_model("anthropic", "fast", Recorder()), "stored")
    cw.add_tool(tool, lambda args: "ok")
    (row,) = store.context_tools(cw.context_id)
    loaded = Tool.from_dict(row["definition"])
    assert loaded == tool
    assert loaded.parameters() == ROUTE
    assert loaded.to_dict() == row["definition"]


def test_a_tool_stored_before_keywords_were_kept_loads_as_before() -> None:
    # What rxcontext 0.1.0 stored (tests/data/rxcontext-0.1.0.db).
    stored = {
        "name": "weather",
        "description": "Weather",
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City"}},
        "required": ["city"],
    }
    tool = Tool.from_dict(stored)
    assert tool == Tool("weather", "Weather").string("city", "City")
    assert tool.to_dict() == stored


# -- tool and parameter names ----------------------------------------------------------------

# Each provider's rule: OpenAI and Anthropic take tool names of 1-64 of [A-Za-z0-9_-], Gemini's
# must start with a letter or '_'; Anthropic takes parameter names of 1-64 of [A-Za-z0-9_.-],
# Gemini's must start with a letter or '_' and hold letters, digits and '_' only.


@pytest.mark.parametrize(
    ("build", "name", "refused_by"),
    [
        (lambda: Tool("2fa_check"), "2fa_check", "Gemini"),
        (lambda: Tool("book_trip").string("ville de départ"), "ville de départ", "Anthropic"),
        (lambda: Tool("search").string("filter[name]", "Name filter"), "filter[name]", "Gemini"),
        (lambda: Tool("t").number("first-name"), "first-name", "Gemini"),
        (lambda: Tool("t").boolean("user.id", required=False), "user.id", "Gemini"),
        (lambda: Tool("t").string("2nd"), "2nd", "Gemini"),
        (lambda: Tool("t").string(""), "", "Anthropic"),
        (lambda: Tool("t").string("x" * 65), "x" * 65, "Anthropic"),
        (lambda: Tool("t", "", {"a b": {"type": "string"}}), "a b", "Anthropic"),
        (
            lambda: Tool.from_json_schema("t", "", {"properties": {"q[]": {"type": "string"}}}),
            "q[]",
            "Anthropic",
        ),
    ],
)
def test_a_name_a_provider_refuses_is_refused_when_the_tool_is_built(
    build: Callable[[], Tool], name: str, refused_by: str
) -> None:
    with pytest.raises(ValueError) as caught:
        build()
    message = str(caught.value)
    assert repr(name) in message and refused_by in message


def test_names_every_provider_takes_are_sent_as_they_are_built() -> None:
    tool = Tool("_get_weather-v2").string("city_name").number("_days", required=False)
    assert tool.name == "_get_weather-v2" and list(tool.properties) == ["city_name", "_days"]


# A tool stored by an earlier version, with names that only some providers take.
STORED = {
    "2fa_check": ({"code": {"type": "string"}}, {"gemini"}),
    "book_trip": ({"ville de départ": {"type": "string"}}, {"anthropic", "gemini"}),
    "lookup": ({"first-name": {"type": "string"}}, {"gemini"}),
}


def stored(name: str) -> dict[str, Any]:
    properties, _ = STORED[name]
    return {
        "name": name,
        "description": "stored earlier",
        "type": "object",
        "properties": properties,
        "required": list(properties),
    }


@pytest.mark.parametrize("name", sorted(STORED))
def test_a_stored_tool_with_such_names_still_loads(name: str) -> None:
    tool = Tool.from_dict(stored(name))
    assert tool.name == name and tool.to_dict() == stored(name)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", sorted(STORED))
def test_a_loaded_tool_is_refused_by_add_tool_where_its_provider_refuses_it(
    name: str, provider: str, wire: str, make_store: Callable[..., Any]
) -> None:
    tool = Tool.from_dict(stored(name))
    if provider.split("_")[0] not in STORED[name][1]:
        (sent,) = sent_tools(provider, wire, make_store, tool)
        assert sent["name"] == name and list(sent["properties"]) == list(STORED[name][0])
        return
    store = make_store()
    recorder = Recorder()
    cw = ContextWindow(store, make_model(provider, wire, recorder), "refused", retry=None)
    with pytest.raises(ValueError) as caught:
        cw.add_tool(tool, lambda args: "ok")
    assert repr(name) in str(caught.value) or any(
        repr(p) in str(caught.value) for p in STORED[name][0]
    )
    assert {"anthropic": "Anthropic", "gemini": "Gemini"}[provider] in str(caught.value)
    assert not cw.has_tool(name) and store.context_tools(cw.context_id) == []
    cw.add_prompt("go")
    with pytest.raises(Exception):  # noqa: B017 - the 400 the recorder answers
        cw.call()
    assert "tools" not in recorder.bodies[0]
