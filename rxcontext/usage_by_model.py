"""Usage billed by more than one model, kept apart so that each part is priced by its own.

A reply cut on one model may be resumed by a window that now uses another. The resumed
reply carries the usage its cut attempts were billed (so does the checkpoint of a resume
cut again): it is summed into the record's ``usage``, which the token totals count, but each
attempt was billed at the price of the model that made it. Where the models differ, the
MODEL_RESP's (or checkpoint's) metadata lists the parts under :data:`USAGE_BY_MODEL`,
oldest first, ``{"model", "provider", "usage"}`` each, their usages summing to its
``usage``; :mod:`rxcontext.cost` prices each by its own model. Absent when one model billed
it all: ``model`` and ``provider`` then say which, as they always have.

A native resume (OpenAI Responses background mode) streams the rest of the checkpoint's own
response, made by the model the checkpoint names, whatever model the window uses now: that
model billed the stream, and the reply names it (:func:`natively`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .chunks import Usage

__all__ = ["USAGE_BY_MODEL", "Part", "by_model", "natively", "parse", "parts_of"]

USAGE_BY_MODEL = "usage_by_model"
"""Metadata key of a reply (or checkpoint) whose ``usage`` more than one model billed."""

Part = tuple[str | None, str | None, Usage]
"""``(provider, model, usage)``: what one model billed."""


def parse(listed: object) -> list[Part] | None:
    """The parts a :data:`USAGE_BY_MODEL` value lists; None if it is not one rxcontext wrote
    (a cost read then says unknown, never a guess)."""
    if not isinstance(listed, list) or not listed:
        return None
    parts: list[Part] = []
    for entry in listed:
        if not isinstance(entry, Mapping):
            return None
        model, provider, usage = entry.get("model"), entry.get("provider"), entry.get("usage")
        if (
            not isinstance(model, str)
            or not isinstance(provider, str | None)
            or Usage.problem(usage) is not None
        ):
            return None
        parts.append((provider, model, Usage.from_dict(usage)))  # type: ignore[arg-type]
    return parts


def parts_of(metadata: Mapping[str, Any], usage: Usage | None) -> list[Part] | None:
    """Who billed ``usage``, as a checkpoint's ``metadata`` says: its :data:`USAGE_BY_MODEL`
    parts, or all of it by the model it names; None when it names none (written before
    checkpoints named their model)."""
    if usage is None:
        return []
    listed = parse(metadata.get(USAGE_BY_MODEL))
    if listed is not None:
        return listed
    model, provider = metadata.get("model"), metadata.get("provider")
    if not isinstance(model, str) or not model:
        return None
    return [(provider if isinstance(provider, str) else None, model, usage)]


def by_model(
    carried: Sequence[Part], provider: str | None, model: str | None, own: Usage | None
) -> list[dict[str, Any]] | None:
    """The :data:`USAGE_BY_MODEL` value of a reply that carries ``carried`` and was billed
    ``own`` by ``provider``'s ``model`` (the one it names); None when that model billed it
    all. One part per model, in the order they first billed."""
    merged: dict[tuple[str | None, str | None], Usage] = {}
    for key, usage in [((p, m), u) for p, m, u in carried] + [((provider, model), own)]:
        if usage is not None:
            merged[key] = merged[key] + usage if key in merged else usage
    if all(key == (provider, model) for key in merged):
        return None
    return [{"model": m, "provider": p, "usage": u.to_dict()} for (p, m), u in merged.items()]


def natively(
    metadata: Mapping[str, Any],
    billed_before: Usage | None,
    provider: str | None,
    model: str | None,
    own: Usage | None,
) -> list[dict[str, Any]] | None:
    """The :data:`USAGE_BY_MODEL` value of a native resume of the checkpoint whose
    ``metadata`` names ``provider``'s ``model``, the model that made the stream: it carries
    ``billed_before`` (what was billed before that stream began) and the stream reports
    ``own``, its response's whole usage. None when that model billed it all.

    The checkpoint's parts (all but that model's are billed before its stream) count its
    stream's usage so far in that model's part, which the stream reports again whole: that
    part is what was billed before less the other models' parts. Parts that do not add up
    (not what rxcontext writes) are left out: the reply is then priced as the model that
    made the stream.
    """
    listed = parse(metadata.get(USAGE_BY_MODEL))
    if listed is None:  # the checkpoint's model billed it all (or it names none)
        return None
    made_by = (provider, model)
    others = [u for p, m, u in listed if (p, m) != made_by]
    mine = _less(billed_before or Usage(), sum(others, Usage()))
    if mine is None:
        return None
    # That model's part as billed before its stream (where it was listed), then the stream's.
    carried = [(p, m, mine if (p, m) == made_by else u) for p, m, u in listed]
    if all((p, m) != made_by for p, m, _ in listed):
        carried.append((provider, model, mine))
    return by_model([c for c in carried if c[2] != Usage()], provider, model, own)


def _less(a: Usage, b: Usage) -> Usage | None:
    """``a - b`` count by count; None if ``b`` counts more than ``a`` anywhere."""
    counts = {k: v - b.to_dict()[k] for k, v in a.to_dict().items()}
    return None if min(counts.values()) < 0 else Usage.from_dict(counts)
