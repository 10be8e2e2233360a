"""OpenAI strict structured output and the schema's optional properties.

Strict mode wants every property required, so an optional one is sent required but nullable
(OpenAI's documented way to emulate an optional field), and a null that comes back where
the user's schema lets the key be left out is dropped before the reply is validated. Through
the real openai SDK on the replay transport, both APIs and both wires."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from crafted_text import text_body
from provider_rules import model_for
from pydantic import BaseModel, Field
from replay import Replay

import rxcontext
from rxcontext import ContextWindow, SchemaValidationError

CONTACT = {
    "title": "Contact",
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "description": "only if the text states it"},
        "nick": {"type": ["string", "null"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city"],
        },
        "phones": {"type": "array", "items": {"$ref": "#/$defs/Phone"}},
    },
    "required": ["name", "address"],
    "$defs": {
        "Phone": {
            "type": "object",
            "properties": {"number": {"type": "string"}, "kind": {"enum": ["home", "work"]}},
            "required": ["number"],
        }
    },
}
ANSWER = {
    "name": "Ana",
    "age": None,
    "nick": None,
    "address": {"city": "Porto", "zip": None},
    "phones": [{"number": "123", "kind": None}],
}


def window(kind: str, replay: Replay, wire: str) -> ContextWindow:
    cw = ContextWindow(rxcontext.open(":memory:"), model_for(kind, replay, wire), "so", retry=None)
    cw.add_prompt("Extract: 'Ana from Porto called from 123.'")
    return cw


def sent_schema(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind == "chat":
        spec = body["response_format"]["json_schema"]
        assert spec["strict"] is True
        return dict(spec["schema"])
    fmt = body["text"]["format"]
    assert fmt["strict"] is True
    return dict(fmt["schema"])


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", ["chat", "responses"])
def test_optional_properties_are_sent_nullable_and_a_null_means_left_out(
    kind: str, wire: str
) -> None:
    replay = Replay(text_body(kind, [json.dumps(ANSWER)]))
    cw = window(kind, replay, wire)
    reply = cw.call(schema=CONTACT)

    sent = sent_schema(kind, replay.bodies[0])
    props = sent["properties"]
    assert sent["required"] == ["name", "age", "nick", "address", "phones"]
    assert props["name"] == {"type": "string"}  # required: no null allowed
    assert props["age"] == {
        "type": ["integer", "null"],
        "description": "only if the text states it",
    }
    assert props["nick"] == {"type": ["string", "null"]}  # already nullable: as given
    address = props["address"]
    assert address["required"] == ["city", "zip"] and address["additionalProperties"] is False
    assert address["properties"] == {
        "city": {"type": "string"},
        "zip": {"type": ["string", "null"]},
    }
    assert props["phones"] == {
        "anyOf": [{"type": "array", "items": {"$ref": "#/$defs/Phone"}}, {"type": "null"}]
    }
    phone = sent["$defs"]["Phone"]
    assert phone["required"] == ["number", "kind"]
    assert phone["properties"]["kind"] == {"anyOf": [{"enum": ["home", "work"]}, {"type": "null"}]}

    # The nulls where the user's schema lets the key be left out are dropped; a null the
    # property itself allows (nick) stays.
    want = {
        "name": "Ana",
        "nick": None,
        "address": {"city": "Porto"},
        "phones": [{"number": "123"}],
    }
    assert reply.parsed == want
    assert reply.text == json.dumps(ANSWER)  # the reply as it came
    stored = cw.live_records()[-1]
    assert stored.content == json.dumps(ANSWER) and stored.metadata["parsed"] == want
    assert stored.metadata["schema"]["json_schema"] == CONTACT  # the user's schema, as given


@pytest.mark.parametrize("kind", ["chat", "responses"])
def test_a_null_in_a_required_property_still_fails_validation(kind: str) -> None:
    bad = {"name": None, "age": None, "nick": None, "address": {"city": "Porto", "zip": None}}
    replay = Replay(text_body(kind, [json.dumps(bad)]))
    cw = window(kind, replay, "fast")
    with pytest.raises(SchemaValidationError) as info:
        cw.call(schema=CONTACT)
    assert "name" in str(info.value) and "None is not of type 'string'" in str(info.value)
    assert "age" not in str(info.value) and "zip" not in str(info.value)
    assert cw.live_records()[-1].content == json.dumps(bad)


class Person(BaseModel):
    name: str
    age: int = 0
    nick: str | None = None


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", ["chat", "responses"])
async def test_a_pydantic_model_with_defaults_gets_its_defaults_for_nulls(
    kind: str, wire: str
) -> None:
    pieces = ['{"name": "Ana", "age": nu', 'll, "nick": null}']
    replay = Replay(text_body(kind, pieces), text_body(kind, pieces))
    cw = window(kind, replay, wire)
    reply = cw.call(schema=Person)
    sent = sent_schema(kind, replay.bodies[0])
    assert sent["required"] == ["name", "age", "nick"]
    assert sent["properties"]["age"]["type"] == ["integer", "null"]
    assert sent["properties"]["nick"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert reply.parsed == Person(name="Ana", age=0, nick=None)
    cw.add_prompt("Again.")
    again = await cw.acall(schema=Person)
    assert again.parsed == Person(name="Ana", age=0, nick=None)
    assert cw.live_records()[-1].metadata["parsed"] == {"name": "Ana", "age": 0, "nick": None}


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
def test_the_other_providers_keep_the_schema_and_its_verdict_on_null(kind: str) -> None:
    # (no "nick": the anthropic SDK's schema transform refuses a list of types)
    schema = {**CONTACT, "properties": {**CONTACT["properties"]}}  # type: ignore[dict-item]
    del schema["properties"]["nick"]
    replay = Replay(text_body(kind, ['{"name": "Ana", "age": null, "address": {"city": "P"}}']))
    cw = window(kind, replay, "fast")
    with pytest.raises(SchemaValidationError, match="age: None is not of type 'integer'"):
        cw.call(schema=schema)
    body = replay.bodies[0]
    sent = (
        body["output_config"]["format"]["schema"]
        if kind == "anthropic"
        else body["generationConfig"]["responseJsonSchema"]
    )
    assert sent["required"] == ["name", "address"]
    assert sent["properties"]["age"] == CONTACT["properties"]["age"]  # type: ignore[index]


class Search(BaseModel):
    kind: Literal["search"]
    query: str
    limit: int = 10


class Fetch(BaseModel):
    kind: Literal["fetch"]
    query: str
    limit: int


class Action(BaseModel):
    action: Search | Fetch = Field(discriminator="kind")


class FetchAny(BaseModel):
    kind: Literal["fetch"]
    query: str
    limit: int | None = None  # a null here is a null


class AnyAction(BaseModel):
    action: Search | FetchAny = Field(discriminator="kind")


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", ["chat", "responses"])
@pytest.mark.parametrize("model", [Action, AnyAction])
def test_a_null_in_one_branch_of_a_union_is_read_for_the_branch_the_kind_names(
    model: type[Action | AnyAction], kind: str, wire: str
) -> None:
    # The branches have the same keys and are told apart by their 'kind' const: the null is
    # Search's optional limit left out. (The other branch would keep it: Fetch requires
    # limit, FetchAny's allows null; only the const rules FetchAny out.)
    answer = {"action": {"kind": "search", "query": "cats", "limit": None}}
    replay = Replay(text_body(kind, [json.dumps(answer)]))
    cw = window(kind, replay, wire)
    reply = cw.call(schema=model)
    sent = sent_schema(kind, replay.bodies[0])["$defs"]
    assert sent["Search"]["properties"]["limit"]["type"] == ["integer", "null"]
    assert reply.parsed == model(action=Search(kind="search", query="cats", limit=10))
    assert reply.text == json.dumps(answer)


@pytest.mark.parametrize("kind", ["chat", "responses"])
def test_a_null_the_named_branch_allows_stays(kind: str) -> None:
    answer = {"action": {"kind": "fetch", "query": "dogs", "limit": None}}
    replay = Replay(text_body(kind, [json.dumps(answer)]))
    cw = window(kind, replay, "fast")
    assert cw.call(schema=AnyAction).parsed == AnyAction(
        action=FetchAny(kind="fetch", query="dogs", limit=None)
    )


@pytest.mark.parametrize("kind", ["chat", "responses"])
def test_a_null_in_the_branch_that_requires_the_key_still_fails(kind: str) -> None:
    answer = {"action": {"kind": "fetch", "query": "cats", "limit": None}}
    replay = Replay(text_body(kind, [json.dumps(answer)]))
    cw = window(kind, replay, "fast")
    with pytest.raises(SchemaValidationError, match=r"action\.fetch\.limit"):
        cw.call(schema=Action)


SHAPES = {
    "title": "Shape",
    "type": "object",
    "properties": {
        "shape": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"kind": {"enum": ["circle"]}, "size": {"type": "number"}},
                    "required": ["kind"],
                },
                {
                    "type": "object",
                    "properties": {
                        "kind": {"enum": ["square", "cube"]},
                        "size": {"type": ["number", "null"]},
                    },
                    "required": ["kind"],
                },
            ]
        }
    },
    "required": ["shape"],
}


@pytest.mark.parametrize("kind", ["chat", "responses"])
def test_a_dict_schema_union_told_apart_by_enum_drops_the_optional_null(kind: str) -> None:
    answer = {"shape": {"kind": "circle", "size": None}}
    replay = Replay(text_body(kind, [json.dumps(answer)]))
    cw = window(kind, replay, "fast")
    assert cw.call(schema=SHAPES).parsed == {"shape": {"kind": "circle"}}
