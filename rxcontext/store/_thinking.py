"""A reply's reasoning stored once.

A reply's record keeps its reasoning in ``metadata["thinking"]`` and, for providers that
need it back with signatures (Anthropic), per block in ``metadata["thinking_blocks"]``:
the same text twice. In the stored JSON a block whose text is a part of ``thinking`` holds
where (``"thinking_span": [start, end]``) instead; reading puts the text back (a slice of
``thinking``; the whole of it, not a copy, for the usual one block), so a record's
metadata is the same object before and after. The schema step ``thinking_spans`` marks a
database that may hold such blocks, which an older rxcontext then refuses to open.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SPAN", "pack", "unpack"]

SPAN = "thinking_span"


def pack(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    """``metadata`` to store: each thinking block's text, where ``thinking`` has it, as a
    span of it (``metadata`` itself when there is nothing to do; never changed in place).

    Spans count the characters as stored: a surrogate pair split between two deltas (an
    emoji a provider cut) is one character there (:func:`storable`), so the texts are
    compared as stored, and ``thinking`` is given as stored."""
    blocks = metadata.get("thinking_blocks")
    given = metadata.get("thinking")
    if not blocks or not isinstance(blocks, list) or not isinstance(given, str):
        return metadata
    from ._sqlite_rows import storable  # here: that module imports this one

    thinking = storable(given)
    packed: list[Any] = []
    at = 0
    for block in blocks:
        text = block.get("thinking") if isinstance(block, dict) else None
        start = -1
        if isinstance(text, str) and SPAN not in block:
            text = thinking if text is given else storable(text)
            if text is thinking or thinking.startswith(text, at):
                start = 0 if text is thinking else at
            else:
                start = thinking.find(text, at)
                if start < 0:
                    start = thinking.find(text)
        if start < 0:
            packed.append(block)
            continue
        at = start + len(text)  # type: ignore[arg-type]
        span = [start, at]
        packed.append(dict((SPAN, span) if k == "thinking" else (k, v) for k, v in block.items()))
    if thinking is not given:
        return {**metadata, "thinking": thinking, "thinking_blocks": packed}
    return {**metadata, "thinking_blocks": packed}


def unpack(metadata: dict[str, Any]) -> dict[str, Any]:
    """Stored ``metadata`` (just parsed, so changed in place) with each block's text back."""
    blocks = metadata.get("thinking_blocks")
    thinking = metadata.get("thinking")
    if not blocks or not isinstance(blocks, list) or not isinstance(thinking, str):
        return metadata
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or "thinking" in block:
            continue
        span = block.get(SPAN)
        if (
            isinstance(span, list)
            and len(span) == 2
            and all(type(n) is int for n in span)
            and 0 <= span[0] <= span[1] <= len(thinking)
        ):
            start, end = span
            blocks[i] = {
                ("thinking" if k == SPAN else k): (thinking[start:end] if k == SPAN else v)
                for k, v in block.items()
            }
    return metadata
