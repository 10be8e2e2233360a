"""Structured output with the usual nullable spellings of JSON Schema (``"type": [T, "null"]``
and ``anyOf`` with ``{"type": "null"}``), through the real SDKs on the replay transport: the
request each provider is sent, on both wires, and the reply validated against the user's own
schema; and a schema Anthropic's structured output cannot take refused at the call, before
anything is sent or stored."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from crafted_text import text_body
from provider_rules import model_for
from pydantic import BaseModel
from replay import Replay

import rxcontext
from rxcontext import ContextWindow, RecordType, SchemaError, SchemaValidationError

NULLABLE = {
    "title": "person",
    "type": "object",
    "properties": {
        "nick": {"type": ["string", "null"], "description": "a nickname", "minLength": 1},
        "age": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"type": ["string", "integer", "null"]}},
        "home": {"$ref": "#/$defs/place"},
        "only": {"type": ["boolean"]},
        "mood": {"type": ["string", "null"], "enum": ["calm", "busy", None]},
    },
    "required": ["nick", "age", "tags", "home", "only", "mood"],
    "additionalProperties": False,
    "$defs": {
        "place": {
            "type": ["object", "null"],
            "properties": {"city": {"type": ["string", "null"]}},
            "required": ["city"],
            "additionalProperties": False,
        }
    },
}
REPLIES = [
    {"nick": None, "age": None, "tags": [], "home": None, "only": True, "mood": None},
    {
        "nick": "Bo",
        "age": 41,
        "tags": ["a", 2, None],
        "home": {"city": None},
        "only": False,
        "mood": "calm",
    },
    {"nick": "Al", "age": 3, "tags": [], "home": {"city": "Oslo"}, "only": True, "mood": "busy"},
]
# What the user's schema refuses, and so must the schema sent in its place.
REFUSED = [
    {**REPLIES[0], "nick": 3},
    {**REPLIES[0], "age": "old"},
    {**REPLIES[0], "tags": [1.5]},
    {**REPLIES[0], "home": "Oslo"},
    {**REPLIES[0], "home": {"city": 7}},
    {**REPLIES[0], "only": None},
    {**REPLIES[0], "mood": "sad"},
]


def window(kind: str, replay: Replay, wire: str) -> ContextWindow:
    cw = ContextWindow(rxcontext.open(":memory:"), model_for(kind, replay, wire), "n", retry=None)
    cw.add_prompt("Who is it, as JSON?")
    return cw


def type_lists(node: Any, path: str = "#") -> list[str]:
    """Where ``node`` has a list-valued ``type`` (the places Anthropic's SDK cannot take)."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("type"), list):
            found.append(path)
        for key, value in node.items():
            found += type_lists(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += type_lists(value, f"{path}/{i}")
    return found


def accepts(schema: dict[str, Any], value: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def sent_schema(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind == "anthropic":
        fmt = body["output_config"]["format"]
        assert fmt["type"] == "json_schema"
        return fmt["schema"]  # type: ignore[no-any-return]
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    return config["responseJsonSchema"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
def test_nullable_schemas_are_sent_and_the_replies_validate(kind: str, wire: str) -> None:
    replay = Replay(*(text_body(kind, [json.dumps(r)]) for r in REPLIES))
    cw = window(kind, replay, wire)
    for i, want in enumerate(REPLIES):
        if i:
            cw.add_prompt("Another.")
        reply = cw.call(schema=NULLABLE)
        assert reply.parsed == want
        stored = cw.live_records()[-1]
        assert stored.type is RecordType.MODEL_RESP and stored.metadata["parsed"] == want
        assert stored.metadata["schema"]["json_schema"] == NULLABLE  # the user's, as given
    assert len(replay.requests) == len(REPLIES) and cw.checkpoints() == []
    sent = sent_schema(kind, replay.bodies[0])
    if kind == "gemini":
        # responseJsonSchema takes JSON Schema's type lists and anyOf as they are.
        assert sent == NULLABLE
        return
    assert type_lists(sent) == []
    props = sent["properties"]
    string, null = props["nick"]["anyOf"]
    assert string["type"] == "string" and null == {"type": "null"}
    assert "minLength: 1" in string["description"]  # the SDK's way with string constraints
    assert props["nick"]["description"] == "a nickname"
    assert props["age"] == NULLABLE["properties"]["age"]  # anyOf with null: as it was
    assert props["only"] == {"type": "boolean"}
    assert props["mood"]["enum"] == ["calm", "busy", None]
    place = sent["$defs"]["place"]["anyOf"]
    assert place[0]["type"] == "object" and place[0]["additionalProperties"] is False
    assert place[0]["required"] == ["city"] and place[1] == {"type": "null"}
    # The schema sent in its place takes the same replies and refuses the same mistakes.
    for value in REPLIES:
        assert accepts(sent, value)
    for value in REFUSED:
        assert not accepts(NULLABLE, value)
        assert not accepts(sent, value), value


@pytest.mark.parametrize("wire", ["fast", "sdk"])
async def test_async_anthropic_sends_a_nullable_root_and_validates(wire: str) -> None:
    schema = {
        "type": ["object", "null"],
        "properties": {"nick": {"type": ["string", "null"]}},
        "required": ["nick"],
    }
    replay = Replay(
        text_body("anthropic", ['{"nick": ', "null}"]), text_body("anthropic", ["null"])
    )
    cw = window("anthropic", replay, wire)
    assert (await cw.acall(schema=schema)).parsed == {"nick": None}
    cw.add_prompt("Again.")
    chunks = [c async for c in cw.astream(schema=schema)]
    assert "".join(c.text for c in chunks) == "null"
    assert cw.live_records()[-1].metadata["parsed"] is None
    for body in replay.bodies:
        sent = sent_schema("anthropic", body)
        assert type_lists(sent) == []
        (obj, null) = sent["anyOf"]
        assert obj["type"] == "object" and obj["required"] == ["nick"]
        assert obj["properties"]["nick"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
        assert null == {"type": "null"}


def test_a_reply_outside_the_nullable_schema_still_fails_validation() -> None:
    replay = Replay(text_body("anthropic", [json.dumps(REFUSED[0])]))
    cw = window("anthropic", replay, "fast")
    with pytest.raises(SchemaValidationError, match="nick"):
        cw.call(schema=NULLABLE)
    assert cw.live_records()[-1].content == json.dumps(REFUSED[0])


class Loose(BaseModel):
    name: str
    extra: Any  # pydantic writes {"title": "Extra"}: a schema without a type


UNSENDABLE = [
    (
        {"type": "object", "properties": {"data": {"description": "anything"}}},
        "#/properties/data",
    ),
    ({"type": "object", "properties": {"flag": True}}, "#/properties/flag"),
    (
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "array",
            "items": [{"type": "string"}, {"type": "integer"}],  # draft 7's tuple form
        },
        "#/items",
    ),
    (
        {"type": ["object", "null"], "properties": {"x": {"type": ["array"], "items": {}}}},
        "#/anyOf/0/properties/x/items",
    ),
    (Loose, "#/properties/extra"),
]


@pytest.mark.parametrize(("schema", "where"), UNSENDABLE)
def test_a_schema_anthropic_cannot_take_is_refused_before_anything(schema: Any, where: str) -> None:
    replay = Replay()
    cw = window("anthropic", replay, "fast")
    before = cw.records()
    with pytest.raises(SchemaError, match="Anthropic") as info:
        cw.call(schema=schema)
    assert where in str(info.value)
    with pytest.raises(SchemaError):
        cw.stream(schema=schema)  # refused at the call, not when subscribed
    assert replay.requests == [] and cw.checkpoints() == [] and cw.records() == before
