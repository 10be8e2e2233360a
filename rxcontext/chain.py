"""Server-side threading: when a request may send only new input plus ``previous_response_id``.

The rules are contextwindow's ``ValidateResponseIDChain``: the context must know its last
response id; no live tool records (they break the chain); the live replies' ids must not be
mixed (some set, some missing); and the last live reply's id must be the context's last one.
A record killed, revived or replaced by a summary changes what the server's thread would
show the model, so the stores clear the context's last response id with it: the next
request sends the live history whole, and its reply starts a thread again.
"""

from __future__ import annotations

from collections.abc import Sequence

from .records import Context, Record, RecordType

__all__ = ["new_input", "validate_chain"]


def validate_chain(context: Context, live: Sequence[Record]) -> tuple[bool, str]:
    """Whether ``live`` may be continued server-side from ``context.last_response_id``."""
    last_id = context.last_response_id
    if not last_id:
        return False, "no last_response_id set"
    if any(r.type in (RecordType.TOOL_CALL, RecordType.TOOL_OUTPUT) for r in live):
        return False, "tool calls present (they break server-side threading)"
    replies = [r for r in live if r.type is RecordType.MODEL_RESP]
    if not replies:
        return False, "no live model reply to continue from"
    with_id = [r for r in replies if r.response_id]
    if with_id and len(with_id) != len(replies):
        return False, "mixed response_id state (some replies have no id)"
    if not any(r.response_id == last_id for r in replies):
        return False, f"last_response_id {last_id!r} is not among the live replies (chain broken)"
    if replies[-1].response_id != last_id:
        return False, f"last reply's id {replies[-1].response_id!r} is not {last_id!r}"
    return True, "chain valid"


def new_input(live: Sequence[Record]) -> list[Record]:
    """What a threaded request sends: system prompts, then the records after the last reply.

    System prompts are sent every time because providers do not carry instructions over
    from the previous response.
    """
    last = max((i for i, r in enumerate(live) if r.type is RecordType.MODEL_RESP), default=-1)
    system = [r for r in live[: last + 1] if r.type is RecordType.SYSTEM_PROMPT]
    return [*system, *live[last + 1 :]]
