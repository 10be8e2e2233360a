"""Which union branches a reply may be for, when the optional nulls of OpenAI's strict mode
are read back (rxcontext._optional_nulls): a branch the value cannot match by a ``const``, an
``enum``, a nested property or a ``discriminator`` mapping has no say on whether a null is
dropped. (The end-to-end cases, through the openai SDK: test_strict_optional.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from rxcontext._optional_nulls import _may_be, drop_optional_nulls


def union(a: dict[str, Any], b: dict[str, Any], key: str = "anyOf") -> dict[str, Any]:
    """A schema whose one property ``u`` is ``a`` or ``b``."""
    return {"type": "object", "properties": {"u": {key: [a, b]}}, "required": ["u"]}


def tagged(tag: dict[str, Any], nullable: bool) -> dict[str, Any]:
    """An object told apart by ``tag`` (the schema of its ``kind``) whose optional ``limit``
    does not allow null (a null there means it was left out) or does (a null is a null)."""
    limit = {"type": ["integer", "null"] if nullable else "integer"}
    return {"type": "object", "properties": {"kind": tag, "limit": limit}, "required": ["kind"]}


@pytest.mark.parametrize(
    ("search", "fetch", "key"),
    [
        ({"const": "search"}, {"const": "fetch"}, "anyOf"),
        ({"type": "string", "const": "search"}, {"type": "string", "const": "fetch"}, "oneOf"),
        ({"enum": ["search", "find"]}, {"enum": ["fetch"]}, "anyOf"),
    ],
)
def test_the_branch_the_tag_names_decides(
    search: dict[str, Any], fetch: dict[str, Any], key: str
) -> None:
    schema = union(tagged(search, False), tagged(fetch, True), key)
    tag = search.get("const", (search.get("enum") or [""])[0])
    left_out = {"u": {"kind": tag, "limit": None}}
    assert drop_optional_nulls(left_out, schema) == {"u": {"kind": tag}}
    other = fetch.get("const", (fetch.get("enum") or [""])[0])
    a_null = {"u": {"kind": other, "limit": None}}
    assert drop_optional_nulls(a_null, schema) == a_null  # Fetch's limit allows null


def test_branches_the_value_may_be_for_still_both_have_a_say() -> None:
    # Nothing tells the branches apart: the null could be Fetch's, so it stays.
    schema = union(tagged({"type": "string"}, False), tagged({"type": "string"}, True))
    value = {"u": {"kind": "search", "limit": None}}
    assert drop_optional_nulls(value, schema) == value
    # Both would drop it: dropped.
    schema = union(tagged({"const": "a"}, False), tagged({"type": "string"}, False))
    assert drop_optional_nulls({"u": {"kind": "a", "limit": None}}, schema) == {"u": {"kind": "a"}}


def test_a_branch_that_requires_the_null_key_is_ruled_out() -> None:
    # A null where a branch requires the key and does not allow null: not that branch.
    fetch = {**tagged({"type": "string"}, False), "required": ["kind", "limit"]}
    schema = union(tagged({"type": "string"}, False), fetch)
    assert drop_optional_nulls({"u": {"kind": "x", "limit": None}}, schema) == {"u": {"kind": "x"}}


def test_a_tag_nested_in_a_sub_object_and_behind_refs_decides() -> None:
    def branch(name: str, nullable: bool) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "meta": {"$ref": f"#/$defs/{name}Meta"},
                "limit": {"type": ["integer", "null"] if nullable else "integer"},
            },
            "required": ["meta"],
        }

    schema = {
        "type": "array",
        "items": {"anyOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}]},
        "$defs": {
            "A": branch("A", False),
            "B": branch("B", True),
            "AMeta": {
                "type": "object",
                "properties": {"kind": {"const": "a"}, "note": {"type": "string"}},
                "required": ["kind"],
            },
            "BMeta": {
                "type": "object",
                "properties": {"kind": {"const": "b"}, "note": {"type": ["string", "null"]}},
                "required": ["kind"],
            },
        },
    }
    value = [
        {"meta": {"kind": "a", "note": None}, "limit": None},
        {"meta": {"kind": "b", "note": None}, "limit": None},
    ]
    assert drop_optional_nulls(value, schema) == [{"meta": {"kind": "a"}}, value[1]]


def test_a_discriminator_mapping_picks_the_branch() -> None:
    # No const on the tag: only the (OpenAPI / pydantic) discriminator mapping tells which.
    schema = {
        "type": "object",
        "properties": {
            "u": {
                "oneOf": [{"$ref": "#/$defs/S"}, {"$ref": "#/$defs/F"}],
                "discriminator": {
                    "propertyName": "kind",
                    "mapping": {"search": "#/$defs/S", "fetch": "#/$defs/F"},
                },
            }
        },
        "required": ["u"],
        "$defs": {"S": tagged({"type": "string"}, False), "F": tagged({"type": "string"}, True)},
    }
    assert drop_optional_nulls({"u": {"kind": "search", "limit": None}}, schema) == {
        "u": {"kind": "search"}
    }
    kept = {"u": {"kind": "fetch", "limit": None}}
    assert drop_optional_nulls(kept, schema) == kept
    unmapped = {"u": {"kind": "other", "limit": None}}  # the mapping does not say: both count
    assert drop_optional_nulls(unmapped, schema) == unmapped


@pytest.mark.parametrize(
    ("value", "schema", "may"),
    [
        ("a", {"const": "a"}, True),
        ("b", {"const": "a"}, False),
        (1, {"const": 1.0}, True),
        (True, {"const": 1}, False),  # JSON true is not 1
        (1, {"enum": [True, "1"]}, False),
        ({"k": [1, True]}, {"const": {"k": [1, True]}}, True),
        ({"k": [1, 1]}, {"const": {"k": [1, True]}}, False),
        (None, {"enum": ["x", None]}, True),
        ("z", {"enum": ["x", "y"]}, False),
        ({"kind": "b"}, {"properties": {"kind": {"const": "a"}}}, False),
        ({"kind": "a", "x": 1}, {"properties": {"kind": {"const": "a"}}}, False),  # closed
        ({"kind": "a", "x": 1}, {"properties": {"kind": {}}, "additionalProperties": True}, True),
        ({}, {"properties": {"kind": {"const": "a"}}, "required": ["kind"]}, False),
        # a null where the key may be left out is no evidence against the branch ...
        ({"n": None}, {"properties": {"n": {"type": "integer"}}}, True),
        # ... but a null where it is required and not nullable is
        ({"n": None}, {"properties": {"n": {"type": "integer"}}, "required": ["n"]}, False),
        ([{"k": "a"}, {"k": "b"}], {"items": {"properties": {"k": {"enum": ["a"]}}}}, False),
        ("a", {"anyOf": [{"const": "b"}, {"const": "a"}]}, True),
        ("a", {"oneOf": [{"const": "b"}, {"const": "c"}]}, False),
        ("a", {"allOf": [{"type": "string"}, {"const": "b"}]}, False),
    ],
)
def test_may_be(value: Any, schema: dict[str, Any], may: bool) -> None:
    assert _may_be(value, schema, schema) is may


def test_may_be_stops_on_a_ref_that_comes_back_to_the_same_value() -> None:
    schema = {"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"const": "x"}]}}}
    node = {"$ref": "#/$defs/A"}
    assert _may_be("x", node, schema) is True
    assert _may_be("y", node, schema) is True  # undecided: it may be, as before


def _degenerate(branch: dict[str, Any]) -> dict[str, Any]:
    """A schema whose ``A`` is "``A`` or ``branch``": its ``$ref`` comes back to itself
    through ``anyOf`` on the same value (JSON Schema leaves its meaning undefined)."""
    return {
        "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/A"}, branch]}},
        "$ref": "#/$defs/A",
    }


def test_a_ref_back_to_itself_through_any_of_ends_and_leaves_the_value_alone() -> None:
    optional = {"type": "object", "properties": {"n": {"type": "integer"}}}
    schema = _degenerate(optional)
    # Round the cycle nothing is learnt: that reading keeps the null, so it stays.
    assert drop_optional_nulls({"n": None}, schema) == {"n": None}
    assert drop_optional_nulls("x", schema) == "x"
    # Below the cycle, in a property's own value, nulls are read as usual.
    outer = {
        "type": "object",
        "properties": {"inner": optional, "u": {"$ref": "#/$defs/A"}},
        "required": ["u"],
        "$defs": schema["$defs"],
    }
    assert drop_optional_nulls({"inner": {"n": None}, "u": 1}, outer) == {"inner": {}, "u": 1}


def test_a_recursive_schema_through_its_values_still_reads_every_level() -> None:
    tree = {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#"}},
        },
        "required": ["children"],
    }
    value = {"label": None, "children": [{"label": None, "children": [{"children": []}]}]}
    assert drop_optional_nulls(value, tree) == {"children": [{"children": [{"children": []}]}]}


def test_output_schema_refuses_a_ref_cycle_that_never_reaches_a_value() -> None:
    from rxcontext import SchemaError
    from rxcontext.schema import OutputSchema

    with pytest.raises(SchemaError, match=r"#/\$defs/A"):
        OutputSchema.of(_degenerate({"type": "string"}))
    with pytest.raises(SchemaError, match="cycle"):
        OutputSchema.of({"allOf": [{"$ref": "#"}], "type": "object"})
    # Recursion through properties / items is a tree, not a cycle: accepted.
    OutputSchema.of({"type": "object", "properties": {"next": {"$ref": "#"}}})
