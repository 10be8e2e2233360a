"""What ``extra=`` (per call) and a model's constructor settings may not set: what the
provider builds itself from the window (the model, the history, the system prompt, the tools,
streaming or not).

Such a key would reach the SDK's call twice (a ``TypeError`` once the reply has begun) or
silently replace what the window built, so it is refused with
:class:`~rxcontext.errors.UnsupportedOption` when the call is made or the model is built,
before anything is sent or stored. Keys inside an ``extra_body`` dict count too: the SDK
merges them over the body. Each provider module passes its own table (key → why);
nothing here imports an SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import UnsupportedOption

__all__ = [
    "MODEL",
    "STREAM",
    "TOOLS",
    "refuse_keys",
    "refused",
    "refused_history",
    "refused_system",
    "with_tools",
]

MODEL = "the model is the one this object was made for (its first argument)"
STREAM = "rxcontext sets it (call(stream=False) asks for one non-streaming request)"
TOOLS = (
    "it would replace the window's own tools (add_tool): leave it out while the window "
    "offers tools (disable_tools=True to send a call without them)"
)


def refused_history(key: str) -> str:
    """Why ``key`` (``messages``, ``input``...) is refused."""
    return f"rxcontext sends the window's live records as {key!r} (add_prompt() and the like)"


def refused_system(key: str) -> str:
    """Why a per-call system prompt key is refused."""
    return f"rxcontext sends the window's system prompt as {key!r} (set_system_prompt())"


def with_tools(reasons: Mapping[str, str], tools: bool) -> Mapping[str, str]:
    """``reasons``, plus ``tools`` when the call offers the window's tools."""
    return {**reasons, "tools": TOOLS} if tools else reasons


def refuse_keys(
    settings: Mapping[str, Any], reasons: Mapping[str, str], *, model: str, per_call: bool
) -> None:
    """Raise :class:`UnsupportedOption` for the first key of ``settings`` (or of its
    ``extra_body``) that ``reasons`` names: ``option`` is ``"extra"`` for a call's
    ``extra=``, the setting's name for a constructor setting."""
    keys = list(settings)
    body = settings.get("extra_body")
    if isinstance(body, Mapping):
        keys += list(body)
    for key in keys:
        why = reasons.get(key)
        if why is not None:
            raise refused(model, key, why, per_call=per_call)


def refused(model: str, key: str, why: str, *, per_call: bool) -> UnsupportedOption:
    """The error for ``key`` of a call's ``extra=`` (or of a model's constructor settings)."""
    where = "extra" if per_call else "setting"
    return UnsupportedOption(
        f"{model}: {where} {key!r} is refused: {why}",
        option="extra" if per_call else key,
        model=model,
    )
