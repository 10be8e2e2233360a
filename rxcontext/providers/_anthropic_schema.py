"""The JSON schema Anthropic's structured output is sent for a user's schema.

The SDK's own transform (what its ``output_format=`` sends: objects closed, unsupported
constraints moved into descriptions) takes one ``type`` per schema, and fails on JSON
Schema's other ways of saying what a value may be. So a type list, the usual way to write
nullable (``"type": ["string", "null"]``), is first written as the ``anyOf`` it means, each
variant with the keywords of its own type; a schema that still cannot be sent (no type at
all, a ``true``/``false`` schema, draft 7's tuple ``items``) is refused with a
:class:`~rxcontext.errors.SchemaError` naming where, before the request is built.
"""

from __future__ import annotations

from typing import Any

from ..errors import SchemaError

try:  # the SDK's own schema transform (what its ``output_format=`` sends)
    from anthropic.lib._parse._transform import transform_schema as _sdk_transform
except ImportError:  # pragma: no cover - an SDK without it: send the schema as given
    _sdk_transform = None  # type: ignore[assignment]

__all__ = ["anthropic_schema"]

_COMBINATORS = ("anyOf", "oneOf", "allOf")
# The keywords that only say something about values of one type: each goes with that type's
# variant when a type list is split (the rest describe the value whatever its type).
_TYPE_KEYWORDS = {
    "object": (
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedProperties",
    ),
    "array": (
        "items",
        "prefixItems",
        "additionalItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "unevaluatedItems",
    ),
    "string": (
        "format",
        "pattern",
        "minLength",
        "maxLength",
        "contentEncoding",
        "contentMediaType",
    ),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
}
_TYPE_KEYWORDS["integer"] = _TYPE_KEYWORDS["number"]


def anthropic_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` in the subset Anthropic's structured outputs accept; raises
    :class:`~rxcontext.errors.SchemaError` for one it cannot be sent in."""
    rewritten = _rewrite(schema, "#")
    if _sdk_transform is None:  # pragma: no cover
        return rewritten
    try:
        return dict(_sdk_transform(rewritten))
    except Exception as exc:  # the SDK's own refusal (ValueError, AssertionError, ...)
        raise SchemaError(f"Anthropic's structured output cannot take this schema: {exc}") from exc


def _refuse(where: str, what: str) -> SchemaError:
    return SchemaError(
        f"Anthropic's structured output cannot take the schema at {where}: {what}. "
        "Give it a 'type' (or an 'anyOf' of typed schemas), or ask without schema= "
        "and validate the text yourself"
    )


def _literal(node: dict[str, Any]) -> bool:
    """Whether the SDK sends ``node`` as its ``enum`` / ``const`` (and drops its type)."""
    enum = node.get("enum")
    if isinstance(enum, list) and enum and all(_primitive(v) for v in enum):
        return True
    return "const" in node and _primitive(node["const"])


def _primitive(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _rewrite(node: Any, where: str) -> dict[str, Any]:
    """``node`` without type lists, along the paths the SDK's transform walks."""
    if not isinstance(node, dict):
        raise _refuse(where, f"{node!r} is not a schema object")
    out = dict(node)
    defs = out.get("$defs")
    if isinstance(defs, dict):
        out["$defs"] = {name: _rewrite(sub, f"{where}/$defs/{name}") for name, sub in defs.items()}
    if "$ref" in out:
        return out  # the SDK sends the reference alone
    literal = _literal(out)
    types = out.get("type")
    if isinstance(types, list):
        if literal:
            del out["type"]  # the enum / const says it all (the SDK drops the type)
        elif len(types) == 1:
            out["type"] = types[0]
        else:
            out = _split(out, types)
    for key in _COMBINATORS:
        variants = out.get(key)
        if isinstance(variants, list):
            out[key] = [_rewrite(v, f"{where}/{key}/{i}") for i, v in enumerate(variants)]
    kind = out.get("type")
    if kind == "object" and isinstance(out.get("properties"), dict):
        out["properties"] = {
            name: _rewrite(sub, f"{where}/properties/{name}")
            for name, sub in out["properties"].items()
        }
    elif kind == "array" and "items" in out:
        if isinstance(out["items"], list):
            raise _refuse(f"{where}/items", "a list of item schemas (draft 7's tuple form)")
        out["items"] = _rewrite(out["items"], f"{where}/items")
    if kind is None and not literal and not any(k in out for k in _COMBINATORS):
        raise _refuse(where, "it has no type")
    return out


def _split(node: dict[str, Any], types: list[Any]) -> dict[str, Any]:
    """``node`` with ``"type": [A, B, ...]`` written as ``anyOf: [{"type": A, ...}, ...]``."""
    out = {k: v for k, v in node.items() if k != "type"}
    variants = []
    for kind in types:
        variant: dict[str, Any] = {"type": kind}
        for key in _TYPE_KEYWORDS.get(kind, ()):
            if key in node:
                variant[key] = node[key]
        variants.append(variant)
    moved = {key for kind in types for key in _TYPE_KEYWORDS.get(kind, ())}
    out = {k: v for k, v in out.items() if k not in moved}
    given = [{key: out.pop(key)} for key in _COMBINATORS if key in out]
    if given:  # both must hold: the type list and the combinators already there
        out["allOf"] = [{"anyOf": variants}, *given]
    else:
        out["anyOf"] = variants
    return out
