"""Per-call options (:class:`~rxcontext.options.CallOptions`) as each provider's parameters.

One function per API, each returning the keyword arguments to lay over the model's own
settings; the SDK-specific schema transforms are passed in by the provider modules (only
they import an SDK).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ..options import CallOptions

__all__ = [
    "anthropic_options",
    "chat_options",
    "gemini_options",
    "responses_options",
    "split_extra",
]

Transform = Callable[[dict[str, Any]], dict[str, Any]]


def split_extra(kwargs: dict[str, Any], create: Callable[..., Any]) -> dict[str, Any]:
    """Move what ``create`` has no keyword for into ``extra_body`` (which the SDK merges
    into the JSON it sends), so ``extra={"top_k": 5}`` works whatever the SDK's version."""
    known = frozenset(inspect.signature(create).parameters) - {"self"}
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        moved = {k: kwargs.pop(k) for k in unknown}
        kwargs["extra_body"] = {**moved, **(kwargs.get("extra_body") or {})}
    return kwargs


def chat_options(opts: CallOptions, strict: Transform) -> dict[str, Any]:
    """Chat Completions: ``temperature``, ``max_completion_tokens``, ``tool_choice``,
    ``stop``, ``response_format`` (json_schema, strict)."""
    out: dict[str, Any] = {}
    if opts.temperature is not None:
        out["temperature"] = opts.temperature
    if opts.max_output_tokens is not None:
        out["max_completion_tokens"] = opts.max_output_tokens
    if opts.tool_choice is not None:
        choice = opts.tool_choice
        out["tool_choice"] = (
            choice
            if choice in ("auto", "none", "required")
            else {"type": "function", "function": {"name": choice}}
        )
    if opts.stop is not None:
        out["stop"] = list(opts.stop)
    if opts.schema is not None:
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": opts.schema.name,
                "schema": strict(opts.schema.json_schema),
                "strict": True,
            },
        }
    return out


def responses_options(
    opts: CallOptions, strict: Transform, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Responses: ``temperature``, ``max_output_tokens``, ``tool_choice``, ``text.format``
    (json_schema, strict; other ``text`` settings of the model are kept). No ``stop``."""
    out: dict[str, Any] = {}
    if opts.temperature is not None:
        out["temperature"] = opts.temperature
    if opts.max_output_tokens is not None:
        out["max_output_tokens"] = opts.max_output_tokens
    if opts.tool_choice is not None:
        choice = opts.tool_choice
        out["tool_choice"] = (
            choice
            if choice in ("auto", "none", "required")
            else {"type": "function", "name": choice}
        )
    if opts.schema is not None:
        text = dict(params.get("text") or {})
        text["format"] = {
            "type": "json_schema",
            "name": opts.schema.name,
            "schema": strict(opts.schema.json_schema),
            "strict": True,
        }
        out["text"] = text
    return out


def anthropic_options(
    opts: CallOptions, transform: Transform, params: Mapping[str, Any]
) -> dict[str, Any]:
    """Messages: ``temperature``, ``max_tokens``, ``tool_choice`` (auto / none / any /
    tool), ``stop_sequences``, ``output_config.format`` (json_schema; the model's other
    ``output_config`` settings are kept)."""
    out: dict[str, Any] = {}
    if opts.temperature is not None:
        out["temperature"] = opts.temperature
    if opts.max_output_tokens is not None:
        out["max_tokens"] = opts.max_output_tokens
    if opts.tool_choice is not None:
        choice = opts.tool_choice
        if choice == "required":
            out["tool_choice"] = {"type": "any"}
        elif choice in ("auto", "none"):
            out["tool_choice"] = {"type": choice}
        else:
            out["tool_choice"] = {"type": "tool", "name": choice}
    if opts.stop is not None:
        out["stop_sequences"] = list(opts.stop)
    if opts.schema is not None:
        config = dict(params.get("output_config") or {})
        config["format"] = {"type": "json_schema", "schema": transform(opts.schema.json_schema)}
        out["output_config"] = config
    return out


_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def gemini_options(opts: CallOptions) -> dict[str, Any]:
    """``GenerateContentConfig`` fields: ``temperature``, ``max_output_tokens``,
    ``tool_config.function_calling_config``, ``stop_sequences``, ``response_mime_type`` +
    ``response_json_schema``; then ``extra`` (more config fields)."""
    out: dict[str, Any] = {}
    if opts.temperature is not None:
        out["temperature"] = opts.temperature
    if opts.max_output_tokens is not None:
        out["max_output_tokens"] = opts.max_output_tokens
    if opts.tool_choice is not None:
        choice = opts.tool_choice
        config: dict[str, Any] = {"mode": _MODES.get(choice, "ANY")}
        if choice not in _MODES:
            config["allowed_function_names"] = [choice]
        out["tool_config"] = {"function_calling_config": config}
    if opts.stop is not None:
        out["stop_sequences"] = list(opts.stop)
    if opts.schema is not None:
        out["response_mime_type"] = "application/json"
        out["response_json_schema"] = opts.schema.json_schema
    out.update(opts.extra)
    return out
