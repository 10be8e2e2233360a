"""Tools: the builder, JSON-schema import, provider conversions and the registry's runs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from typing import Any

import pytest

from rxcontext import Tool
from rxcontext.tools import ToolRegistry, ToolResult

WEATHER = (
    Tool("weather", "Current weather for a city")
    .string("city", "City name")
    .number("days", "Forecast days", required=False)
    .boolean("metric")
    .array("fields", "string", "Which values to return", required=False)
    .object("near", {"lat": {"type": "number"}, "lon": {"type": "number"}}, "A position")
)

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "days": {"type": "number", "description": "Forecast days"},
        "metric": {"type": "boolean"},
        "fields": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Which values to return",
        },
        "near": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "description": "A position",
        },
    },
    "required": ["city", "metric", "near"],
}


# -- Builder -------------------------------------------------------------------------------


def test_builder_produces_the_json_schema():
    assert WEATHER.parameters() == WEATHER_PARAMETERS
    assert list(WEATHER.properties) == ["city", "days", "metric", "fields", "near"]
    json.dumps(WEATHER.parameters())


def test_a_tool_without_parameters():
    tool = Tool("now")
    assert tool.description == ""
    assert tool.parameters() == {"type": "object", "properties": {}, "required": []}


def test_builder_methods_return_new_tools():
    base = Tool("t", "d")
    more = base.string("a")
    assert base.properties == {} and base.required == ()
    assert more.properties == {"a": {"type": "string"}} and more.required == ("a",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        more.name = "other"  # type: ignore[misc]


def test_redefining_a_parameter_updates_its_required_flag():
    tool = Tool("t").string("a").string("b")
    assert tool.required == ("a", "b")
    optional = tool.number("a", required=False)
    assert optional.required == ("b",)
    assert optional.properties["a"] == {"type": "number"}
    assert optional.string("a").required == ("b", "a")


def test_parameters_are_copies():
    props = {"x": {"type": "string"}}
    tool = Tool("t").object("o", props)
    props["x"]["type"] = "number"
    schema = tool.parameters()
    schema["properties"]["o"]["properties"]["x"]["type"] = "boolean"
    assert tool.parameters()["properties"]["o"]["properties"]["x"] == {"type": "string"}


@pytest.mark.parametrize("name", ["weather", "get_weather-v2", "A" * 64, "_", "_0"])
def test_valid_names(name: str):
    assert Tool(name).name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "has space",
        "dotted.name",
        "A" * 65,
        "weather\n",
        "\nweather",
        "wéather",
        "a/b",
        "🦀",
        "0",  # Gemini: a function name starts with a letter or '_'
        "-x",
    ],
)
def test_invalid_names_raise_value_error(name: str):
    with pytest.raises(ValueError, match="must be a letter or '_', then up to 63 letters"):
        Tool(name)


def test_a_non_string_name_raises_value_error():
    with pytest.raises(ValueError):
        Tool(None)  # type: ignore[arg-type]


# -- JSON schema import and dict round trip -----------------------------------------------


def test_from_json_schema():
    tool = Tool.from_json_schema("weather", "Current weather for a city", WEATHER_PARAMETERS)
    assert tool.parameters() == WEATHER_PARAMETERS
    assert tool.description == "Current weather for a city"
    # Changing the source afterwards does not change the tool.
    source = json.loads(json.dumps(WEATHER_PARAMETERS))
    copy = Tool.from_json_schema("w", "", source)
    source["properties"]["city"]["type"] = "number"
    assert copy.properties["city"]["type"] == "string"


def test_from_json_schema_defaults():
    tool = Tool.from_json_schema("t", "d", {})
    assert tool.parameters() == {"type": "object", "properties": {}, "required": []}


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "string"}, "must be of type 'object'"),
        ({"type": "object", "properties": ["a"]}, "'properties' must be an object"),
        ({"type": "object", "required": "city"}, "'required' must be a list"),
        ({"type": "object", "required": [1]}, "'required' must be a list"),
    ],
)
def test_from_json_schema_refuses_bad_schemas(schema: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        Tool.from_json_schema("t", "", schema)


def test_from_json_schema_checks_the_name():
    with pytest.raises(ValueError, match="tool name"):
        Tool.from_json_schema("bad name", "", {})


def test_dict_round_trip():
    data = WEATHER.to_dict()
    assert data["name"] == "weather" and data["description"] == "Current weather for a city"
    assert Tool.from_dict(json.loads(json.dumps(data))) == WEATHER


# -- Provider conversions ------------------------------------------------------------------


def test_openai_chat_conversion():
    assert WEATHER.to_openai_chat() == {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Current weather for a city",
            "parameters": WEATHER_PARAMETERS,
        },
    }


def test_openai_responses_conversion():
    assert WEATHER.to_openai_responses() == {
        "type": "function",
        "name": "weather",
        "description": "Current weather for a city",
        "parameters": WEATHER_PARAMETERS,
    }


def test_anthropic_conversion_keeps_descriptions():
    assert WEATHER.to_anthropic() == {
        "name": "weather",
        "description": "Current weather for a city",
        "input_schema": WEATHER_PARAMETERS,
    }


def test_gemini_conversion():
    assert WEATHER.to_gemini() == {
        "name": "weather",
        "description": "Current weather for a city",
        "parameters_json_schema": WEATHER_PARAMETERS,
    }


@pytest.mark.parametrize(
    "convert", ["to_openai_chat", "to_openai_responses", "to_anthropic", "to_gemini"]
)
def test_every_conversion_keeps_parameter_descriptions_and_is_json(convert: str):
    out = getattr(WEATHER, convert)()
    text = json.dumps(out)
    for description in ["Current weather for a city", "City name", "Forecast days", "A position"]:
        assert json.dumps(description) in text
    # Conversions are copies: editing one does not touch the tool.
    out.clear()
    assert getattr(WEATHER, convert)() == json.loads(text)


# -- Registry ------------------------------------------------------------------------------


@pytest.fixture
def registry() -> ToolRegistry:
    return ToolRegistry()


def test_registry_add_get_list_remove(registry: ToolRegistry):
    assert not registry and registry.list() == []
    registry.add(WEATHER, lambda args: "x")
    registry.add(Tool("clock"), lambda args: "noon")
    assert registry and registry.has("weather") and registry.get("weather") == WEATHER
    assert [t.name for t in registry.list()] == ["weather", "clock"]
    replacement = Tool("weather", "v2")
    registry.add(replacement, lambda args: "y")
    assert registry.get("weather") == replacement
    assert [t.name for t in registry.list()] == ["weather", "clock"]
    assert registry.remove("weather") is True
    assert registry.remove("weather") is False
    assert registry.get("weather") is None and not registry.has("weather")


def test_registry_refuses_non_tools_and_non_callables(registry: ToolRegistry):
    with pytest.raises(TypeError, match=r"expected a rxcontext\.Tool"):
        registry.add({"name": "weather"}, lambda args: "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be callable"):
        registry.add(WEATHER, "not callable")  # type: ignore[arg-type]
    assert not registry


def test_run_sync_runner_gets_a_copy_of_the_arguments(registry: ToolRegistry):
    seen: list[dict[str, Any]] = []

    def runner(args: dict[str, Any]) -> str:
        seen.append(args)
        args["mutated"] = True
        return f"sunny in {args['city']}"

    registry.add(WEATHER, runner)
    arguments = {"city": "Oslo"}
    result = registry.run("call_1", "weather", arguments)
    assert result == ToolResult("call_1", "weather", "sunny in Oslo", False)
    assert arguments == {"city": "Oslo"}
    assert seen == [{"city": "Oslo", "mutated": True}]


def test_run_async_runner(registry: ToolRegistry):
    async def runner(args: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return f"async {args['city']}"

    registry.add(WEATHER, runner)
    assert registry.run("c", "weather", {"city": "Rome"}) == ToolResult(
        "c", "weather", "async Rome"
    )


@pytest.mark.parametrize(
    ("output", "text"),
    [({"temp": 21, "unit": "°C"}, '{"temp": 21, "unit": "°C"}'), (42, "42"), ({1, 2}, "{1, 2}")],
)
def test_non_text_outputs_become_text(registry: ToolRegistry, output: Any, text: str):
    registry.add(WEATHER, lambda args: output)
    assert registry.run("c", "weather", {}).output == text


def test_run_a_raising_runner_answers_with_an_error(registry: ToolRegistry):
    def runner(args: dict[str, Any]) -> str:
        raise RuntimeError("API down")

    registry.add(WEATHER, runner)
    assert registry.run("c", "weather", {}) == ToolResult("c", "weather", "error: API down", True)


def test_run_an_error_without_a_message_names_its_type(registry: ToolRegistry):
    def runner(args: dict[str, Any]) -> str:
        raise KeyError()

    registry.add(WEATHER, runner)
    assert registry.run("c", "weather", {}).output == "error: KeyError"


def test_run_an_async_runner_that_raises(registry: ToolRegistry):
    async def runner(args: dict[str, Any]) -> str:
        raise ValueError("bad city")

    registry.add(WEATHER, runner)
    assert registry.run("c", "weather", {}) == ToolResult("c", "weather", "error: bad city", True)


def test_run_an_unknown_tool_answers_with_an_error(registry: ToolRegistry):
    registry.add(WEATHER, lambda args: "x")
    result = registry.run("c", "teleport", {})
    assert result.error and result.call_id == "c" and result.name == "teleport"
    assert result.output == "error: unknown tool 'teleport' (tools: weather)"
    assert ToolRegistry().run("c", "x", {}).output == "error: unknown tool 'x' (tools: none)"


def test_run_a_parse_error_answers_with_it_without_running(registry: ToolRegistry):
    ran: list[object] = []
    registry.add(WEATHER, ran.append)
    result = registry.run("c", "weather", {}, parse_error="invalid JSON arguments: boom")
    assert result == ToolResult("c", "weather", "error: invalid JSON arguments: boom", True)
    assert ran == []


def test_run_does_not_catch_base_exceptions(registry: ToolRegistry):
    def runner(args: dict[str, Any]) -> str:
        raise KeyboardInterrupt

    registry.add(WEATHER, runner)
    with pytest.raises(KeyboardInterrupt):
        registry.run("c", "weather", {})


# -- Registry on an event loop -------------------------------------------------------------


async def test_arun_awaits_async_runners_on_the_running_loop(registry: ToolRegistry):
    loops: list[asyncio.AbstractEventLoop] = []

    async def runner(args: dict[str, Any]) -> str:
        loops.append(asyncio.get_running_loop())
        return f"async {args['city']}"

    registry.add(WEATHER, runner)
    result = await registry.arun("c", "weather", {"city": "Rome"})
    assert result == ToolResult("c", "weather", "async Rome")
    assert loops == [asyncio.get_running_loop()]


async def test_arun_runs_sync_runners_off_the_loop_thread(registry: ToolRegistry):
    threads: list[threading.Thread] = []

    def runner(args: dict[str, Any]) -> str:
        threads.append(threading.current_thread())
        return "sync"

    registry.add(WEATHER, runner)
    assert (await registry.arun("c", "weather", {})).output == "sync"
    assert threads and threads[0] is not threading.current_thread()


async def test_arun_awaits_what_a_sync_callable_returns(registry: ToolRegistry):
    async def later(args: dict[str, Any]) -> str:
        return "from a coroutine"

    registry.add(WEATHER, lambda args: later(args))
    assert (await registry.arun("c", "weather", {})).output == "from a coroutine"


async def test_arun_errors(registry: ToolRegistry):
    async def failing(args: dict[str, Any]) -> str:
        raise RuntimeError("async down")

    def failing_sync(args: dict[str, Any]) -> str:
        raise RuntimeError("sync down")

    registry.add(WEATHER, failing)
    registry.add(Tool("clock"), failing_sync)
    assert await registry.arun("c", "weather", {}) == ToolResult(
        "c", "weather", "error: async down", True
    )
    assert await registry.arun("d", "clock", {}) == ToolResult(
        "d", "clock", "error: sync down", True
    )
    unknown = await registry.arun("e", "teleport", {})
    assert unknown.error and unknown.output.startswith("error: unknown tool 'teleport'")
    parse = await registry.arun("f", "clock", {}, parse_error="cut stream")
    assert parse == ToolResult("f", "clock", "error: cut stream", True)


async def test_arun_several_calls_concurrently(registry: ToolRegistry):
    gate = asyncio.Event()
    started: list[str] = []

    async def runner(args: dict[str, Any]) -> str:
        started.append(args["n"])
        if len(started) == 3:
            gate.set()
        await gate.wait()  # only returns once all three are running at the same time
        return args["n"]

    registry.add(WEATHER, runner)
    results = await asyncio.gather(
        *(registry.arun(f"c{n}", "weather", {"n": str(n)}) for n in range(3))
    )
    assert [r.output for r in results] == ["0", "1", "2"]


async def test_sync_run_of_an_async_runner_from_inside_a_running_loop(registry: ToolRegistry):
    # A blocking call (cw.call()) made from async code runs its tools on the loop's thread.
    async def runner(args: dict[str, Any]) -> str:
        return "ran"

    registry.add(WEATHER, runner)
    assert registry.run("c", "weather", {}) == ToolResult("c", "weather", "ran")
