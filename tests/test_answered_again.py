"""Which cut replies count as answered again (``ReplySuperseded``): only those a reply stored
after their place answered once more (a retry). A reply that goes on from an earlier one (it
answers the app's own tool round, or the model is asked to go on after a kept reply) saw
that earlier reply in its request: it is resumed or kept like any other, in its place.

Each case on SQLite and PostgreSQL, through ScriptedModel and through the real openai SDK
on the replay transport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import Replay
from replay import Reply as Canned
from stores import open_store

from rxcontext import (
    Chunk,
    ChunkKind,
    ContextWindow,
    Record,
    ReplyState,
    ReplySuperseded,
    StreamInterrupted,
)
from rxcontext.providers import ScriptedModel
from rxcontext.window import CONTINUE_PROMPT

pytestmark = pytest.mark.usefixtures("both_stores")  # every test on SQLite and PostgreSQL

DONE = Chunk(ChunkKind.DONE, finish_reason="stop")


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


def shape(cw: ContextWindow) -> list[tuple[str, str]]:
    return [(r.type.name, r.content) for r in cw.live_records()]


def cut(cw: ContextWindow) -> int:
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    return info.value.checkpoint.id


def settle(cw: ContextWindow, verb: str, cp_id: int) -> str:
    """Resume the cut reply to completion or keep it; the text stored for it."""
    if verb == "resume_call":
        return cw.resume_call(cp_id).text
    record: Record = cw.keep(cp_id)
    return record.content


def after_a_tool_round(cw: ContextWindow) -> int:
    """The app runs its own tool between two replies; the second reply is cut."""
    cw.add_prompt("Weather in Paris?")
    assert cw.call().text == "Let me look that up."
    call = cw.add_tool_call("weather", {"city": "Paris"}, id="call_w1")
    cw.add_tool_output("sunny, 21C", id=call.tool_call_id)
    return cut(cw)


TOOL_ROUND = [
    ("PROMPT", "Weather in Paris?"),
    ("MODEL_RESP", "Let me look that up."),
    ("TOOL_CALL", '{"city": "Paris"}'),
    ("TOOL_OUTPUT", "sunny, 21C"),
]


def after_a_kept_reply(cw: ContextWindow) -> int:
    """A cut reply is kept, the model is asked to go on (no new prompt) and is cut again."""
    cw.add_prompt("List the steps")
    cw.keep(cut(cw))
    return cut(cw)


KEPT = [("PROMPT", "List the steps"), ("MODEL_RESP", "Step 1, ")]

CASES: dict[str, tuple[Callable[[ContextWindow], int], list[tuple[str, str]], list[Any]]] = {
    "tool_round": (
        after_a_tool_round,
        TOOL_ROUND,
        [[T("Let me look that up."), DONE], [T("It is sunny "), ConnectionError("cut")]],
    ),
    "kept_reply": (
        after_a_kept_reply,
        KEPT,
        [[T("Step 1, "), ConnectionError("cut")], [T("It is sunny "), ConnectionError("cut")]],
    ),
}


@pytest.mark.parametrize("verb", ["resume_call", "keep"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_reply_that_goes_on_from_an_earlier_one_is_resumed_or_kept_in_place(
    case: str, verb: str
) -> None:
    setup, before, scripts = CASES[case]
    model = ScriptedModel([*scripts, [T("in Paris."), DONE]])
    cw = ContextWindow(open_store(), model, "goes-on", retry=None)
    cp_id = setup(cw)
    assert [c.text for c in cw.checkpoints()] == ["It is sunny "]
    text = settle(cw, verb, cp_id)
    expected = "It is sunny in Paris." if verb == "resume_call" else "It is sunny "
    assert text == expected
    assert shape(cw) == [*before, ("MODEL_RESP", expected)]
    assert cw.checkpoints() == []
    if verb == "resume_call":  # the continuation saw everything before the reply's place
        resumed = model.requests[-1].records
        assert [(r.type.name, r.content) for r in resumed] == [
            *before,
            ("MODEL_RESP", "It is sunny "),
            ("PROMPT", CONTINUE_PROMPT),
        ]


@pytest.mark.parametrize("case", list(CASES))
def test_a_reply_that_goes_on_and_was_answered_again_by_a_retry_is_still_refused(
    case: str,
) -> None:
    setup, before, scripts = CASES[case]
    model = ScriptedModel([*scripts, [T("Sunny, 21C."), DONE]])
    cw = ContextWindow(open_store(), model, "retried", retry=None)
    cp_id = setup(cw)
    cw.call()  # the user asked again: a new reply answers the same turn, after the cut one
    for verb in ("resume_call", "keep"):
        with pytest.raises(ReplySuperseded, match="answered again"):
            settle(cw, verb, cp_id)
    with pytest.raises(ReplySuperseded, match="answered again"):
        cw.resume(cp_id)
    assert cw.discard(cp_id).state is ReplyState.DISCARDED
    assert shape(cw) == [*before, ("MODEL_RESP", "Sunny, 21C.")]


def _cut_body(pieces: list[str]) -> Canned:
    """A Chat stream cut by the network after its role chunk and ``pieces``."""
    return Canned(text_body("chat", pieces), cut_after=1 + len(pieces))


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("verb", ["resume_call", "keep"])
@pytest.mark.parametrize("case", list(CASES))
def test_through_the_openai_sdk_a_reply_that_goes_on_is_resumed_or_kept(
    case: str, verb: str, wire: str
) -> None:
    setup, before, _ = CASES[case]
    first = (
        text_body("chat", ["Let me look that up."])
        if case == "tool_round"
        else _cut_body(["Step 1, "])
    )
    replay = Replay(first, _cut_body(["It is sunny "]), text_body("chat", ["in Paris."]))
    cw = ContextWindow(open_store(), model_for("chat", replay, wire), "sdk", retry=None)
    cp_id = setup(cw)
    text = settle(cw, verb, cp_id)
    expected = "It is sunny in Paris." if verb == "resume_call" else "It is sunny "
    assert text == expected
    assert shape(cw) == [*before, ("MODEL_RESP", expected)]
    if verb == "resume_call":
        assert len(replay.bodies) == 3
        messages = replay.bodies[2]["messages"]
        roles = [m["role"] for m in messages]
        if case == "tool_round":  # the earlier text and the app's call are one assistant turn
            assert roles == ["user", "assistant", "tool", "assistant", "user"]
            assert messages[1]["content"] == "Let me look that up."
            assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_w1"]
            output = messages[2]
            assert (output["tool_call_id"], output["content"]) == ("call_w1", "sunny, 21C")
        else:
            assert roles == ["user", "assistant", "assistant", "user"]
            assert messages[1]["content"] == "Step 1, "
        assert messages[-2]["content"] == "It is sunny "
    else:
        assert len(replay.bodies) == 2


@pytest.mark.parametrize("then", ["settle_the_later", "discard_the_later"])
def test_of_two_cut_answers_to_one_prompt_the_earlier_waits_for_the_later(then: str) -> None:
    # The second was sent while the first was cut and unsettled: it never saw it (a retry).
    # The first cannot be settled while the retry may still be: that could put two answers
    # to one prompt in a row, whichever went first.
    model = ScriptedModel(
        [
            [T("First try "), ConnectionError("cut")],
            [T("Second try "), ConnectionError("cut")],
            [T("goes on."), DONE],
        ]
    )
    cw = ContextWindow(open_store(), model, "two-cuts", retry=None)
    cw.add_prompt("A?")
    first, second = cut(cw), cut(cw)
    for verb in ("resume_call", "keep"):
        with pytest.raises(ReplySuperseded, match=rf"answered again.*checkpoint {second}"):
            settle(cw, verb, first)
    if then == "settle_the_later":
        assert cw.resume_call(second).text == "Second try goes on."
        with pytest.raises(ReplySuperseded, match="answered again"):
            cw.keep(first)
        cw.discard(first)
        assert shape(cw) == [("PROMPT", "A?"), ("MODEL_RESP", "Second try goes on.")]
    else:
        cw.discard(second)
        assert cw.resume_call(first).text == "First try goes on."
        assert shape(cw) == [("PROMPT", "A?"), ("MODEL_RESP", "First try goes on.")]
    assert cw.checkpoints() == []
