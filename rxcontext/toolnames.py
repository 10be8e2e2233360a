"""Which tool and parameter names each provider takes.

A provider refuses the whole request when one tool's name or one of its parameter names
breaks its rule, so every request of a window offering that tool would fail. A new
:class:`~rxcontext.Tool` is held to the rule all four APIs take (:func:`check_new`); a tool
loaded from the store keeps the names it was stored with, and ``ContextWindow.add_tool``
refuses it only for a provider that refuses it (:func:`check_for`).

The rules, from the providers' API references:

* tool names: OpenAI (Chat Completions and Responses) and Anthropic take 1-64 of
  ``[a-zA-Z0-9_-]``; Gemini takes a letter or ``_`` followed by up to 127 of
  ``[a-zA-Z0-9_.:-]``;
* parameter names (the keys of the parameter schema's ``properties``): Anthropic takes 1-64
  of ``[a-zA-Z0-9_.-]``; Gemini a letter or ``_`` followed by up to 63 of ``[a-zA-Z0-9_]``;
  OpenAI sets no rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["check_for", "check_new", "check_stored", "provider_of"]

_Rule = tuple["re.Pattern[str]", str]

_OPENAI_TOOL: _Rule = (re.compile(r"[A-Za-z0-9_-]{1,64}"), "1-64 letters, digits, '_' or '-'")
_TOOL_RULES: dict[str, _Rule] = {
    "OpenAI": _OPENAI_TOOL,
    "Anthropic": _OPENAI_TOOL,
    "Gemini": (
        re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}"),
        "a letter or '_', then up to 127 letters, digits, '_', '.', ':' or '-'",
    ),
}
_PARAMETER_RULES: dict[str, _Rule] = {
    "Anthropic": (re.compile(r"[A-Za-z0-9_.-]{1,64}"), "1-64 letters, digits, '_', '.' or '-'"),
    "Gemini": (
        re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}"),
        "a letter or '_', then up to 63 letters, digits or '_'",
    ),
}
# What all of them take (the intersection of the rules above).
_COMMON_TOOL = (
    re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}"),
    "a letter or '_', then up to 63 letters, digits, '_' or '-'",
)
_COMMON_PARAMETER = (
    re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}"),
    "a letter or '_', then up to 63 letters, digits or '_'",
)
# A model's name starts with its API's label ("openai-responses:gpt-5-mini").
_LABELS = {
    "openai": "OpenAI",
    "openai-responses": "OpenAI",
    "anthropic": "Anthropic",
    "gemini": "Gemini",
}


def _ok(rule: _Rule, name: Any) -> bool:
    # fullmatch: "$" would also accept a trailing newline ("weather\n").
    return isinstance(name, str) and rule[0].fullmatch(name) is not None


def _refused(rules: dict[str, _Rule], name: Any) -> str:
    refusers = [provider for provider, rule in rules.items() if not _ok(rule, name)]
    if len(refusers) == 1:
        return f"{refusers[0]} refuses it"
    return f"{' and '.join(refusers) or 'the providers'} refuse it"


def check_new(tool_name: Any, parameters: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming a tool or parameter name that some provider refuses."""
    if not _ok(_COMMON_TOOL, tool_name):
        raise ValueError(
            f"tool name {tool_name!r} must be {_COMMON_TOOL[1]}, the rule every provider "
            f"takes ({_refused(_TOOL_RULES, tool_name)})"
        )
    for name in parameters:
        if not _ok(_COMMON_PARAMETER, name):
            raise ValueError(
                f"parameter name {name!r} of tool {tool_name!r} must be {_COMMON_PARAMETER[1]}, "
                f"the rule every provider takes ({_refused(_PARAMETER_RULES, name)})"
            )


def provider_of(model: Any) -> str | None:
    """The API whose name rules ``model`` is held to, or None (a scripted model, others)."""
    name = getattr(model, "name", None)
    return _LABELS.get(name.split(":", 1)[0]) if isinstance(name, str) else None


def check_for(provider: str | None, tool_name: str, parameters: Iterable[Any]) -> None:
    """Raise ``ValueError`` if ``provider`` (from :func:`provider_of`) refuses a name."""
    tool_rule = _TOOL_RULES.get(provider or "")
    if tool_rule is not None and not _ok(tool_rule, tool_name):
        raise ValueError(
            f"tool {tool_name!r} cannot be offered to {provider}: {provider} refuses every "
            f"request with it, as its tool names must be {tool_rule[1]}"
        )
    rule = _PARAMETER_RULES.get(provider or "")
    bad = [name for name in parameters if rule is not None and not _ok(rule, name)]
    if rule is not None and bad:
        raise ValueError(
            f"tool {tool_name!r} cannot be offered to {provider}: {provider} refuses every "
            f"request with its parameter name {bad[0]!r}, as parameter names must be {rule[1]}"
        )


def check_stored(name: str) -> None:
    """A ``ValueError`` unless ``name`` is a tool name some version of rxcontext stored: the
    rule tools were held to before every provider's counted (OpenAI's and Anthropic's)."""
    pattern, rule = _OPENAI_TOOL
    if not pattern.fullmatch(name):  # fullmatch: "$" would also take a trailing newline
        raise ValueError(f"tool name {name!r} must be {rule}")
