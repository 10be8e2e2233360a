"""Optional properties under a strict structured-output mode that wants every one required.

OpenAI's strict mode needs each property of an object listed in ``required``; its documented
way to keep one optional is to let it be null. :func:`nullable_optionals` makes a schema so
(each property the schema leaves optional, and whose own schema does not allow null, now
does too), and :func:`drop_optional_nulls` reads a reply back for the schema as the user
wrote it: a null in such a property means the key was left out, so it is dropped. A null in
a required property, or in one whose own schema allows null, stays.

Both walk ``properties``, ``items``, ``anyOf`` / ``oneOf`` / ``allOf`` and local ``$ref``
(``#/...``) targets, the keywords the strict modes support. Under ``anyOf`` / ``oneOf`` a null
is dropped when every branch the value may be for would drop it; a branch is ruled out by the
value's types, ``const`` / ``enum`` values (a discriminating ``kind``, nested or not), keys,
and a ``discriminator`` mapping (pydantic writes one for ``Field(discriminator=...)``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["drop_optional_nulls", "nullable_optionals"]

_SCALARS = frozenset({"string", "integer", "number", "boolean"})
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _resolve(root: Any, ref: Any) -> Any:
    """The local target of ``ref``, or None when it cannot be followed here."""
    if ref == "#":
        return root
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return None
    node = root
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def allows_null(schema: Any, root: Any, seen: frozenset[int] = frozenset()) -> bool:
    """Whether ``schema`` lets a value be null (as far as its types, enums and unions say)."""
    if not isinstance(schema, dict):
        return schema is not False
    if id(schema) in seen:  # a recursive $ref: nothing more is learnt by going round again
        return True
    seen = seen | {id(schema)}
    if "$ref" in schema:
        target = _resolve(root, schema["$ref"])
        if target is not None and not allows_null(target, root, seen):
            return False
    kinds = schema.get("type")
    if kinds is not None and "null" not in (kinds if isinstance(kinds, list) else [kinds]):
        return False
    if "enum" in schema and not any(v is None for v in schema["enum"] or ()):
        return False
    if "const" in schema and schema["const"] is not None:
        return False
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and not any(allows_null(b, root, seen) for b in branches):
            return False
    branches = schema.get("allOf")
    return not isinstance(branches, list) or all(allows_null(b, root, seen) for b in branches)


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    kinds = schema.get("type")
    if "enum" not in schema and "const" not in schema:
        # The form OpenAI's docs show; not for objects and arrays, whose strict handling
        # (additionalProperties, items) keys on a single type.
        if isinstance(kinds, str) and kinds in _SCALARS:
            return {**schema, "type": [kinds, "null"]}
        if isinstance(kinds, list) and kinds and set(kinds) <= _SCALARS:
            return {**schema, "type": [*kinds, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def nullable_optionals(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (changed in place, and returned) with each property that some object of
    it leaves optional made nullable where its own schema does not already allow null."""

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        for key in ("$defs", "definitions"):
            defs = node.get(key)
            if isinstance(defs, dict):
                for sub in defs.values():
                    walk(sub)
        props = node.get("properties")
        if isinstance(props, dict):
            required = node.get("required")
            needed = set(required) if isinstance(required, list) else set()
            for name, prop in props.items():
                walk(prop)
                if name not in needed and isinstance(prop, dict) and not allows_null(prop, schema):
                    props[name] = _or_null(prop)
        walk(node.get("items"))
        for key in ("anyOf", "oneOf", "allOf"):
            branches = node.get(key)
            if isinstance(branches, list):
                for branch in branches:
                    walk(branch)

    walk(schema)
    return schema


def _same(a: Any, b: Any) -> bool:
    """Whether two JSON values are equal as JSON Schema's ``const`` / ``enum`` compare them
    (``1`` is ``1.0``, but ``true`` is not ``1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return bool(a == b)


def _branches(
    value: Any, schema: dict[str, Any], key: str, root: Any, seen: frozenset[int] = frozenset()
) -> list[Any]:
    """The ``key`` (``anyOf`` / ``oneOf``) branches of ``schema`` that ``value`` may be for:
    those :func:`_may_be` allows, narrowed to the one a ``discriminator`` mapping names for
    the value's tag, when it names one of them."""
    branches = schema.get(key)
    if not isinstance(branches, list):
        return []
    found = [b for b in branches if _may_be(value, b, root, seen)]
    disc = schema.get("discriminator")
    if isinstance(disc, dict) and isinstance(value, dict):
        mapping, tag = disc.get("mapping"), value.get(str(disc.get("propertyName")))
        target = mapping.get(tag) if isinstance(mapping, dict) and isinstance(tag, str) else None
        named = [b for b in found if isinstance(b, dict) and b.get("$ref") == target]
        if target is not None and named:
            return named
    return found


def _may_be(value: Any, schema: Any, root: Any, seen: frozenset[int] = frozenset()) -> bool:
    """Whether ``value`` could be an instance of ``schema``, once its optional nulls are read
    as left out: by its type, ``const`` and ``enum``, the unions it is under and, for an
    object, its keys (strict objects are closed unless they say otherwise) and their values;
    an array by its items.
    Undecided is "may be" (a recursive ``$ref`` back to the same value)."""
    if not isinstance(schema, dict):
        return schema is not False
    if id(schema) in seen:
        return True
    seen = seen | {id(schema)}
    target = _resolve(root, schema["$ref"]) if "$ref" in schema else None
    if target is not None and not _may_be(value, target, root, seen):
        return False
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        fits = [
            isinstance(value, _JSON_TYPES.get(n, ()))
            and not (isinstance(value, bool) and n in ("integer", "number"))
            for n in names
        ]
        if not any(fits):
            return False
    if "const" in schema and not _same(value, schema["const"]):
        return False
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(_same(value, e) for e in enum):
        return False
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and not _branches(value, schema, key, root, seen):
            return False
    every = schema.get("allOf")
    if isinstance(every, list) and not all(_may_be(value, b, root, seen) for b in every):
        return False
    props = schema.get("properties")
    if isinstance(value, dict) and isinstance(props, dict):
        if schema.get("additionalProperties", False) is False and not set(value) <= set(props):
            return False
        required = schema.get("required")
        needed = set(required) if isinstance(required, list) else set()
        if not needed <= set(value):
            return False
        for key, item in value.items():
            if item is None and key not in needed:
                continue  # left out, or a null the property allows: either way it may be
            if key in props and not _may_be(item, props[key], root):
                return False
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        return all(_may_be(item, items, root) for item in value)
    return True


def drop_optional_nulls(value: Any, schema: Any, root: Any = None) -> Any:
    """``value`` less the nulls found where ``schema`` lets the key be left out and the
    property's own schema does not allow null (a new value; ``value`` is not changed).

    A ``$ref`` that comes back to a schema already being read for the same value (``A`` is
    "``A`` or ..." through ``anyOf`` / ``oneOf`` / ``allOf``: a degenerate schema that
    JSON Schema leaves undefined, which pydantic never writes and
    :meth:`~rxcontext.schema.OutputSchema.of` refuses) is not followed round again: that
    reading leaves the value as it is, so under a union nothing is dropped that the cycle
    might keep. It always ends; recursion through a property or an item (a tree) is read
    to every level as usual.
    """
    root = schema if root is None else root
    return _drop(value, schema, root, frozenset())


def _drop(value: Any, schema: Any, root: Any, seen: frozenset[int]) -> Any:
    """:func:`drop_optional_nulls`; ``seen``: the schemas already being read for this very
    value (reset on going into a property or an item, which is a smaller value)."""
    if not isinstance(schema, dict) or id(schema) in seen:
        return value
    seen = seen | {id(schema)}
    if "$ref" in schema:
        target = _resolve(root, schema["$ref"])
        if target is not None:
            value = _drop(value, target, root, seen)
    props = schema.get("properties")
    if isinstance(value, dict) and isinstance(props, dict):
        required = schema.get("required")
        needed = set(required) if isinstance(required, list) else set()
        kept: dict[str, Any] = {}
        for key, item in value.items():
            if key not in props:
                kept[key] = item
            elif item is None and key not in needed and not allows_null(props[key], root):
                continue
            else:
                kept[key] = _drop(item, props[key], root, frozenset())
        value = kept
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        value = [_drop(item, items, root, frozenset()) for item in value]
    branches = schema.get("allOf")
    if isinstance(branches, list):
        for branch in branches:
            value = _drop(value, branch, root, seen)
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list):
            # Which branch the value is for is not known; drop only what every branch it
            # may be for would drop alike.
            readings = [_drop(value, b, root, seen) for b in _branches(value, schema, key, root)]
            if readings and all(r == readings[0] for r in readings[1:]):
                value = readings[0]
    return value
