"""The history a reply's request carries: the live records before its place in the conversation.

A reply's place is fixed when its request is sent, so its history is the live records up
to its position (with its own earlier tool rounds, which share that position): a resume
after the conversation moved on continues the reply where it was asked, and a later tool
round never sees a prompt added meanwhile. Records of other replies still being generated
are left out (their half-finished tool rounds are not history yet).

A tool call with no output (its process was killed between storing the calls and their
outputs, or a tool raised ``BaseException``) would make every later request invalid for
OpenAI and Anthropic. The first request that meets one stores an output saying the call was
interrupted, at the call's place, so the history stays honest and valid.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .records import Record, RecordType
from .store.base import RecordDraft, Store

__all__ = ["INTERRUPTED_TOOL_OUTPUT", "request_history", "unanswered_calls"]

INTERRUPTED_TOOL_OUTPUT = (
    "Error: this tool call was interrupted before it returned; it has no output. "
    "Call the tool again if its result is still needed."
)


def unanswered_calls(records: Sequence[Record]) -> list[Record]:
    """The TOOL_CALL records in ``records`` that no TOOL_OUTPUT answers.

    Outputs answer calls by id; an output without an id answers the earliest unanswered call
    of the same name before it.
    """
    answered = {r.tool_call_id for r in records if r.type is RecordType.TOOL_OUTPUT}
    open_by_name: defaultdict[str | None, list[Record]] = defaultdict(list)
    waiting: list[Record] = []
    for r in records:
        if r.type is RecordType.TOOL_CALL:
            if r.tool_call_id is not None and r.tool_call_id in answered:
                continue
            waiting.append(r)
            if r.tool_call_id is None:
                open_by_name[r.tool_name].append(r)
        elif r.type is RecordType.TOOL_OUTPUT and r.tool_call_id is None:
            calls = open_by_name.get(r.tool_name)
            if calls:
                waiting.remove(calls.pop(0))
    return waiting


def request_history(
    store: Store, context_id: str, *, upto: int | None, reply_id: str | None
) -> list[Record]:
    """The live records a reply at position ``upto`` sends (see the module docstring)."""
    records = store.records(context_id, live_only=True, upto=upto)
    if any(r.reply_id is not None and r.reply_id != reply_id for r in records):
        busy = {cp.reply_id for cp in store.active_replies(context_id)} - {reply_id}
        if busy:
            records = [r for r in records if r.reply_id not in busy]
    if not any(r.type is RecordType.TOOL_CALL for r in records):
        return records
    dangling = unanswered_calls(records)
    if not dangling:
        return records
    by_pos: defaultdict[int, list[Record]] = defaultdict(list)
    for call in dangling:
        by_pos[call.pos].append(call)
    for pos, calls in by_pos.items():
        store.commit_reply(
            context_id,
            [
                RecordDraft(
                    RecordType.TOOL_OUTPUT,
                    INTERRUPTED_TOOL_OUTPUT,
                    tool_call_id=c.tool_call_id,
                    tool_name=c.tool_name,
                    metadata={"interrupted": True},
                )
                for c in calls
            ],
            at=pos,
        )
    return request_history(store, context_id, upto=upto, reply_id=reply_id)
