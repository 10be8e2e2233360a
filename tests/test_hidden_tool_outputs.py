"""A tool output hidden by its live flag, and a call whose output was never stored, in the
requests every provider gets.

A user hides one output of a finished round of parallel calls (``set_record_live_state``,
e.g. a huge output) and goes on: the call and its output leave the requests together, as a
killed call takes its output with it, and nothing is written over the user's choice. A call
that truly has no output (a kill between the round's calls and its outputs) gets the
"interrupted" output, sent right after the round's calls even when the reply's later text
already shares the call's place. Each request body is the one the real SDK sent on the
replay transport, checked against the providers' rules (tests/provider_rules.py); the round
is a real Claude round of two parallel calls.
"""

from __future__ import annotations

from typing import Any

import pytest
from provider_rules import KINDS, check, model_for
from replay import Replay, real_fixture
from stores import open_store

from rxcontext import ContextWindow, RecordType, Tool
from rxcontext.history import INTERRUPTED_TOOL_OUTPUT, request_history
from rxcontext.store.base import RecordDraft

pytestmark = pytest.mark.usefixtures("both_stores")

PARALLEL = "anthropic/parallel_tool_use_no_args_roundtrip_haiku45.{}.sse"
"""Round 1: two parallel ``pelican_name_generator`` calls; round 2: the answer."""
TEXT_REPLY = {
    "chat": "openai_chat/usage_then_moderation_chunk_gpt5.sse",
    "responses": "openai_responses/text_basic_gpt55.sse",
    "anthropic": "anthropic/text_basic_sonnet45.sse",
    "gemini": "gemini/text_basic_gemini20.sse",
}


def shape(cw: ContextWindow) -> list[tuple[str, bool, str | None]]:
    return [(r.type.name, r.live, r.tool_call_id) for r in cw.records()]


def ask(cw: ContextWindow, kind: str, wire: str, prompt: str) -> dict[str, Any]:
    """Send ``prompt`` to a ``kind`` model; the body its SDK sent, checked by its rules."""
    replay = Replay(real_fixture(TEXT_REPLY[kind]))
    cw.model = model_for(kind, replay, wire)
    cw.add_prompt(prompt)
    cw.call()
    (body,) = replay.bodies
    check(kind, body)
    return body


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_hidden_output_leaves_the_requests_with_its_call(kind: str, wire: str) -> None:
    replay = Replay(real_fixture(PARALLEL.format(1)), real_fixture(PARALLEL.format(2)))
    cw = ContextWindow(open_store(), model_for("anthropic", replay), "hidden", retry=None)
    tool = Tool("pelican_name_generator", "names").string("x", required=False)
    cw.add_tool(tool, lambda _: "a very long output")
    cw.add_prompt("name my pelican")
    cw.call()
    kept, hidden = (r for r in cw.live_records() if r.type is RecordType.TOOL_OUTPUT)
    index = [r.id for r in cw.live_records()].index(hidden.id)
    cw.set_record_live_state(index, index, False)
    before = shape(cw)

    for prompt in ("thanks", "and again"):  # every later request, not only the next
        body = ask(cw, kind, wire, prompt)
        assert hidden.tool_call_id not in str(body)
        assert kept.tool_call_id in str(body)
        assert "a very long output" in str(body)  # the other call's output is still sent
    # Nothing was written over the user's choice: the output stays hidden, no other stored.
    assert shape(cw)[: len(before)] == before
    assert [t for t, _, _ in shape(cw)[len(before) :]] == ["PROMPT", "MODEL_RESP"] * 2
    assert INTERRUPTED_TOOL_OUTPUT not in [r.content for r in cw.records()]

    # Brought back, the pair is sent again as it was.
    cw.set_record_live_state(index, index, True, among="all")
    body = ask(cw, kind, wire, "once more")
    assert hidden.tool_call_id in str(body)


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_call_without_output_is_answered_right_after_its_round(kind: str, wire: str) -> None:
    """The reply's text already stored at the round's place (a database the earlier
    releases left so, or records written by hand): the interrupted output is stored, and
    sent right after the round's calls, not after the reply's text."""
    store = open_store()
    cw = ContextWindow(store, None, "missing", retry=None)
    cw.add_prompt("name my pelican")

    def call(id: str) -> RecordDraft:
        return RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id=id, tool_name="names")

    out = RecordDraft(RecordType.TOOL_OUTPUT, "Pelly", tool_call_id="c1", tool_name="names")
    answer = RecordDraft(RecordType.MODEL_RESP, "Pelly it is.")
    store.commit_reply(cw.context_id, [call("c1"), call("c2"), out, answer])

    for prompt in ("thanks", "and again"):
        ask(cw, kind, wire, prompt)
    outputs = [r for r in cw.records() if r.type is RecordType.TOOL_OUTPUT]
    assert [(o.tool_call_id, o.content) for o in outputs] == [
        ("c1", "Pelly"),
        ("c2", INTERRUPTED_TOOL_OUTPUT),  # stored once, so the history says so
    ]


def test_a_hidden_output_takes_its_own_call_when_call_ids_repeat() -> None:
    """Providers that send no call id get ``call_<index>`` every round: the first round's
    output hidden, the second round's output must not be taken for the first round's call's
    (leaving the second call to be answered as interrupted)."""
    store = open_store()
    ctx = store.get_or_create_context("repeat").id
    store.add_record(ctx, RecordDraft(RecordType.PROMPT, "go"))
    for text in ("one", "two"):
        store.commit_reply(
            ctx,
            [
                RecordDraft(RecordType.TOOL_CALL, text, tool_call_id="call_0", tool_name="f"),
                RecordDraft(RecordType.TOOL_OUTPUT, text, tool_call_id="call_0", tool_name="f"),
            ],
        )
    store.set_live_range(ctx, 2, 2, False, live_only=True)  # the output "one"
    before = [(r.type, r.live, r.content) for r in store.records(ctx)]
    sent = request_history(store, ctx, upto=None, reply_id=None)
    assert [(r.type.name, r.content) for r in sent] == [
        ("PROMPT", "go"),
        ("TOOL_CALL", "two"),
        ("TOOL_OUTPUT", "two"),
    ]
    assert [(r.type, r.live, r.content) for r in store.records(ctx)] == before


def test_an_interrupted_output_goes_to_its_own_call_when_call_ids_repeat() -> None:
    """The first round's output hidden and the second round's call killed before its output,
    its reply's text already stored at its place: the interrupted output, stored after that
    text, is the second call's (not the first's, whose id it shares), so it is sent right
    after that call."""
    store = open_store()
    ctx = store.get_or_create_context("repeat-interrupted").id
    store.add_record(ctx, RecordDraft(RecordType.PROMPT, "go"))

    def call(text: str) -> RecordDraft:
        return RecordDraft(RecordType.TOOL_CALL, text, tool_call_id="call_0", tool_name="f")

    store.commit_reply(
        ctx,
        [call("one"), RecordDraft(RecordType.TOOL_OUTPUT, "one", tool_call_id="call_0")],
    )
    store.commit_reply(ctx, [call("two"), RecordDraft(RecordType.MODEL_RESP, "done")])
    store.set_live_range(ctx, 2, 2, False, live_only=True)  # the output "one"

    for _ in range(2):  # the request that stores the interrupted output, and a later one
        sent = request_history(store, ctx, upto=None, reply_id=None)
        assert [(r.type.name, r.content) for r in sent] == [
            ("PROMPT", "go"),
            ("TOOL_CALL", "two"),
            ("TOOL_OUTPUT", INTERRUPTED_TOOL_OUTPUT),
            ("MODEL_RESP", "done"),
        ]
    outputs = [(r.live, r.content) for r in store.records(ctx) if r.type is RecordType.TOOL_OUTPUT]
    assert outputs == [(False, "one"), (True, INTERRUPTED_TOOL_OUTPUT)]
