"""Structured output through the real SDKs: each provider's native request, partial objects
while the JSON streams, the validated object on Reply.parsed and in the stored metadata,
and a reply that does not validate stored all the same with a typed error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from crafted_text import KINDS, text_body
from provider_rules import model_for
from pydantic import BaseModel
from replay import Replay

import rxcontext
from rxcontext import (
    ContextWindow,
    RecordType,
    SchemaError,
    SchemaValidationError,
    UnsupportedOption,
)
from rxcontext import operators as rxops


class City(BaseModel):
    name: str
    population: int
    rivers: list[str] = []


PIECES = ['{"name": "Pa', 'ris", "popu', 'lation": 2102', '650, "rivers": ["Sei', 'ne"]}']
WANT = City(name="Paris", population=2102650, rivers=["Seine"])
DICT_SCHEMA = {
    "title": "city",
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "population": {"type": "integer"},
        "rivers": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "population"],
    "additionalProperties": False,
}


def window(kind: str, replay: Replay, wire: str = "fast") -> ContextWindow:
    cw = ContextWindow(rxcontext.open(":memory:"), model_for(kind, replay, wire), "so", retry=None)
    cw.add_prompt("The largest city of France, as JSON.")
    return cw


def native_request(kind: str, body: dict[str, Any], name: str, schema: dict[str, Any]) -> None:
    """``body`` asks ``kind``'s API for its native structured output with ``schema``."""
    if kind == "chat":
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema"
        spec = fmt["json_schema"]
        assert spec["name"] == name and spec["strict"] is True
        sent = spec["schema"]
        assert sent["additionalProperties"] is False  # strict: closed, every property required
        assert sorted(sent["required"]) == sorted(schema["properties"])
    elif kind == "responses":
        fmt = body["text"]["format"]
        assert fmt["type"] == "json_schema" and fmt["name"] == name and fmt["strict"] is True
        sent = fmt["schema"]
        assert sent["additionalProperties"] is False
        assert sorted(sent["required"]) == sorted(schema["properties"])
    elif kind == "anthropic":
        fmt = body["output_config"]["format"]
        assert fmt["type"] == "json_schema"
        sent = fmt["schema"]
        assert sent["additionalProperties"] is False
    else:
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        sent = config["responseJsonSchema"]
        assert sent == schema
    assert set(sent["properties"]) == set(schema["properties"])


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", KINDS)
def test_call_with_a_pydantic_model_sends_the_native_request_and_parses(
    kind: str, wire: str
) -> None:
    replay = Replay(text_body(kind, PIECES))
    cw = window(kind, replay, wire)
    reply = cw.call(schema=City)
    native_request(kind, replay.bodies[0], "City", City.model_json_schema())
    assert reply.parsed == WANT and reply.text == "".join(PIECES)
    stored = cw.live_records()[-1]
    assert stored.type is RecordType.MODEL_RESP and stored.content == reply.text
    assert stored.metadata["schema"] == {"name": "City", "json_schema": City.model_json_schema()}
    assert stored.metadata["parsed"] == WANT.model_dump(mode="json")


@pytest.mark.parametrize("kind", KINDS)
def test_stream_gives_partial_objects_as_the_json_grows(kind: str) -> None:
    replay = Replay(text_body(kind, PIECES))
    cw = window(kind, replay)
    partials: list[Any] = []
    done: list[bool] = []
    cw.stream(schema=City).pipe(rxops.partial_objects()).subscribe(
        partials.append, on_completed=lambda: done.append(True)
    )
    assert done == [True]
    # A key still growing ("popu) and a number that may still grow (2102) are not shown.
    assert partials == [
        {"name": "Pa"},
        {"name": "Paris"},
        {"name": "Paris", "population": 2102650, "rivers": ["Sei"]},
        WANT.model_dump(),
    ]
    assert cw.live_records()[-1].metadata["parsed"] == WANT.model_dump(mode="json")


@pytest.mark.parametrize("kind", KINDS)
async def test_async_call_and_stream_parse_the_same(kind: str) -> None:
    replay = Replay(text_body(kind, PIECES), text_body(kind, PIECES))
    cw = window(kind, replay)
    reply = await cw.acall(schema=City)
    assert reply.parsed == WANT
    cw.add_prompt("Again.")
    chunks = [c async for c in cw.astream(schema=DICT_SCHEMA)]
    assert "".join(c.text for c in chunks) == "".join(PIECES)
    native_request(kind, replay.bodies[1], "city", DICT_SCHEMA)
    # A dict schema gives the plain JSON value (validated by jsonschema).
    assert cw.live_records()[-1].metadata["parsed"] == WANT.model_dump(mode="json")


@pytest.mark.parametrize("kind", KINDS)
def test_a_reply_that_does_not_validate_is_stored_and_raises_with_its_text(kind: str) -> None:
    bad = ['{"name": "Paris", ', '"population": "many"}']
    replay = Replay(text_body(kind, bad), text_body(kind, bad))
    cw = window(kind, replay)
    with pytest.raises(SchemaValidationError) as info:
        cw.call(schema=City)
    error = info.value
    assert error.text == "".join(bad) and error.reply.parsed is None
    assert "population" in error.errors
    stored = cw.live_records()[-1]
    assert stored.content == error.text  # nothing lost
    assert "population" in stored.metadata["parse_error"] and "parsed" not in stored.metadata
    assert cw.checkpoints() == []  # the reply completed; only its content is wrong
    cw.add_prompt("Again.")
    with pytest.raises(SchemaValidationError, match="population"):
        cw.call(schema=DICT_SCHEMA)


def test_text_that_is_not_json_fails_validation_and_stops_the_partials() -> None:
    replay = Replay(text_body("chat", ["Sure! ", "Here it is: {}"]))
    cw = window("chat", replay)
    partials: list[Any] = []
    errors: list[Exception] = []
    cw.stream(schema=City).pipe(rxops.partial_objects()).subscribe(partials.append, errors.append)
    assert partials == []
    (error,) = errors
    assert isinstance(error, SchemaValidationError) and error.text == "Sure! Here it is: {}"
    assert cw.live_records()[-1].content == error.text


def test_bad_schemas_are_refused_before_the_request() -> None:
    replay = Replay()
    cw = window("chat", replay)
    for bad in (42, {"type": "no-such-type"}, str):
        with pytest.raises(SchemaError):
            cw.call(schema=bad)
    assert replay.requests == [] and len(cw.records()) == 1


def test_a_model_without_schema_support_refuses_it() -> None:
    class Plain:
        name = "plain:x"
        call_options = frozenset({"temperature"})

    cw = ContextWindow(rxcontext.open(":memory:"), Plain(), "x")  # type: ignore[arg-type]
    cw.add_prompt("hi")
    with pytest.raises(UnsupportedOption, match="schema"):
        cw.call(schema=City)


def test_the_stored_metadata_is_json() -> None:
    replay = Replay(text_body("gemini", PIECES))
    cw = window("gemini", replay)
    cw.call(schema=City)
    exported = json.loads(json.dumps(cw.export()))
    resp = [r for r in exported["records"] if r["type"] in (1, "MODEL_RESP")][-1]
    assert resp["metadata"]["parsed"]["name"] == "Paris"


def test_a_resumed_reply_is_validated_whole() -> None:
    from replay import Reply as ReplayReply

    cut = ReplayReply(text_body("anthropic", PIECES), cut_after=3)  # after '{"name": "Pa'
    replay = Replay(cut, text_body("anthropic", ['ris", "population": 2102650}']))
    cw = window("anthropic", replay)
    with pytest.raises(rxcontext.StreamInterrupted) as info:
        cw.call(schema=City)
    assert info.value.checkpoint.text == '{"name": "Pa'
    reply = cw.resume_call(info.value.checkpoint.id, schema=City)
    assert reply.parsed == City(name="Paris", population=2102650)
    native_request("anthropic", replay.bodies[1], "City", City.model_json_schema())
    (stored,) = [r for r in cw.live_records() if r.type is RecordType.MODEL_RESP]
    assert stored.metadata["parsed"]["population"] == 2102650


@pytest.mark.parametrize("kind", ["chat", "anthropic"])
def test_the_non_streaming_api_asks_and_parses_alike(kind: str) -> None:
    whole = {
        "chat": {
            "id": "chatcmpl-w",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-test",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(PIECES)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        },
        "anthropic": {
            "id": "msg_w",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [{"type": "text", "text": "".join(PIECES)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 4},
        },
    }[kind]
    from replay import Reply as ReplayReply

    replay = Replay(
        ReplayReply(json.dumps(whole).encode(), headers={"content-type": "application/json"})
    )
    cw = window(kind, replay)
    reply = cw.call(schema=City, stream=False)
    assert "stream" not in replay.bodies[0] or replay.bodies[0]["stream"] is False
    native_request(kind, replay.bodies[0], "City", City.model_json_schema())
    assert reply.parsed == WANT


def test_partial_objects_start_over_after_a_tool_round() -> None:
    from rxcontext import Chunk, ChunkKind, Tool
    from rxcontext.providers import ScriptedModel

    def T(text: str) -> Chunk:
        return Chunk(ChunkKind.TEXT, text)

    call = Chunk(ChunkKind.TOOL_CALL, '{"city": "Paris"}', id="c1", name="census")
    model = ScriptedModel(
        [[T('{"name": "gu'), call], [T('{"name": "Paris", '), T('"population": 1}')]]
    )
    cw = ContextWindow(rxcontext.open(":memory:"), model, "x")
    cw.add_tool(Tool("census", "Population").string("city"), lambda args: "2102650")
    cw.add_prompt("hi")
    partials: list[Any] = []
    cw.stream(schema=City).pipe(rxops.partial_objects()).subscribe(partials.append)
    assert partials == [{"name": "gu"}, {"name": "Paris"}, {"name": "Paris", "population": 1}]
    assert cw.live_records()[-1].metadata["parsed"] == {
        "name": "Paris",
        "population": 1,
        "rivers": [],
    }


async def test_async_validation_failure_keeps_the_reply() -> None:
    bad = ['{"name": 3}']
    replay = Replay(text_body("gemini", bad))
    cw = window("gemini", replay)
    with pytest.raises(SchemaValidationError) as info:
        await cw.acall(schema=City)
    assert info.value.text == '{"name": 3}'
    assert cw.live_records()[-1].content == '{"name": 3}' and cw.checkpoints() == []


def test_a_dict_schema_without_jsonschema_installed_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rxcontext.schema

    monkeypatch.setattr(rxcontext.schema, "_jsonschema", lambda: None)
    replay = Replay()
    cw = window("chat", replay)
    with pytest.raises(SchemaError, match=r"rxcontext\[schema\]"):
        cw.call(schema=DICT_SCHEMA)
    assert replay.requests == []
    cw2 = window("chat", Replay(text_body("chat", PIECES)))
    assert cw2.call(schema=City).parsed == WANT  # pydantic models need nothing more
