"""A ``$ref`` cycle that never reaches a value: a degenerate JSON schema.

A schema may refer to itself through a property or an item (a tree: each round goes one
level into the value, so it ends with the value). One whose ``$ref`` comes back to the same
schema through ``anyOf`` / ``oneOf`` / ``allOf`` / ``not`` / ``if``-``then``-``else`` only
(``A`` is "``A`` or a string") applies itself to the same value again and again; JSON
Schema leaves its meaning undefined and a validator following it recurses without end
(``jsonschema`` raises ``RecursionError``). pydantic never writes one; a hand-written
schema can. :func:`ref_cycle` finds one, so it is refused before any request is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._optional_nulls import _resolve

__all__ = ["ref_cycle"]

_SAME_VALUE_LISTS = ("anyOf", "oneOf", "allOf")
_SAME_VALUE = ("not", "if", "then", "else")
_CHILD = ("items", "additionalProperties", "contains", "propertyNames")
_CHILD_LISTS = ("items", "prefixItems")
_CHILD_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _same_value(node: dict[str, Any], root: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(how, schema) for each schema ``node`` applies to the very value it is applied to."""
    if "$ref" in node:
        target = _resolve(root, node["$ref"])
        if isinstance(target, dict):
            yield str(node["$ref"]), target
    for key in _SAME_VALUE_LISTS:
        branches = node.get(key)
        if isinstance(branches, list):
            yield from ((key, b) for b in branches if isinstance(b, dict))
    for key in _SAME_VALUE:
        if isinstance(node.get(key), dict):
            yield key, node[key]


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every schema written in ``node`` (``$ref`` not followed)."""
    if not isinstance(node, dict):
        return
    yield node
    subs: list[Any] = [node.get(k) for k in _CHILD]
    subs += [b for k in _SAME_VALUE_LISTS if isinstance(node.get(k), list) for b in node[k]]
    subs += [node.get(k) for k in _SAME_VALUE]
    subs += [s for k in _CHILD_LISTS if isinstance(node.get(k), list) for s in node[k]]
    subs += [s for k in _CHILD_MAPS if isinstance(node.get(k), dict) for s in node[k].values()]
    for sub in subs:
        yield from _schemas(sub)


def ref_cycle(schema: Any) -> list[str] | None:
    """The way round a cycle of ``schema`` that stays on one value (``["#/$defs/A",
    "anyOf", "#/$defs/A"]``: from a schema of it, the ``$ref`` targets and keywords
    followed back to a schema on the way), or None when it has none."""
    done: set[int] = set()
    on_path: set[int] = set()

    def visit(node: dict[str, Any], path: list[str]) -> list[str] | None:
        if id(node) in on_path:
            return path
        if id(node) in done:
            return None
        on_path.add(id(node))
        for how, sub in _same_value(node, schema):
            found = visit(sub, [*path, how])
            if found is not None:
                return found
        on_path.discard(id(node))
        done.add(id(node))
        return None

    for node in _schemas(schema):
        found = visit(node, [])
        if found is not None:
            return found
    return None
