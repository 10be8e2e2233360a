"""Random interleavings of prompts, replies, tool rounds, cuts, resumes, keeps and discards
always leave a conversation whose live records alternate sensibly and whose next request
every provider accepts (checked on the bodies the real SDKs send)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from provider_rules import KINDS, check, model_for
from replay import Replay, real_fixture

import rxcontext
from rxcontext import (
    Checkpoint,
    Chunk,
    ChunkKind,
    ContextWindow,
    Record,
    RecordType,
    ReplySuperseded,
    StreamInterrupted,
    Tool,
)
from rxcontext.history import answered_again
from rxcontext.providers import ScriptedModel

TEXT_REPLY = {
    "chat": "openai_chat/usage_then_moderation_chunk_gpt5.sse",
    "responses": "openai_responses/text_basic_gpt55.sse",
    "anthropic": "anthropic/text_basic_sonnet45.sse",
    "gemini": "gemini/text_basic_gemini20.sse",
}


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


DONE = Chunk(ChunkKind.DONE, finish_reason="stop")
# How a reply begins: words, or whitespace only, as claude-opus-4-6 opens one ("\n\n").
OPENINGS = ["let me check", "\n\n"]
TOOLS_DONE = Chunk(ChunkKind.DONE, finish_reason="tool_calls")


def calls(n: int, tag: int) -> list[Chunk]:
    return [
        Chunk(ChunkKind.TOOL_CALL, json.dumps({"i": i}), index=i, id=f"c{tag}_{i}", name="t")
        for i in range(n)
    ]


def sensible(records: list[Record]) -> None:
    """What any provider needs of a history, before its own rules: no reply answering a reply,
    every tool output after its call, every call answered before the next prompt."""
    live = [r for r in records if r.type is not RecordType.SYSTEM_PROMPT]
    open_calls: set[str | None] = set()
    for prev, r in zip([None, *live], live, strict=False):
        if r.type is RecordType.MODEL_RESP:
            assert prev is None or prev.type is not RecordType.MODEL_RESP, "reply after reply"
        if r.type is RecordType.TOOL_CALL:
            open_calls.add(r.tool_call_id)
        if r.type is RecordType.TOOL_OUTPUT:
            assert r.tool_call_id in open_calls, f"output for unknown call {r.tool_call_id}"
            open_calls.discard(r.tool_call_id)
        if r.type is RecordType.PROMPT:
            assert not open_calls, f"prompt while calls {open_calls} wait for outputs"


class Conversation(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = rxcontext.open(":memory:")
        self.cw = ContextWindow(self.store, ScriptedModel([]), "prop", retry=None)
        self.breaks = False
        self.tag = 0

        def runner(args: dict[str, Any]) -> str:
            if self.breaks:
                raise KeyboardInterrupt  # the process is told to stop mid-tool
            return f"out {args['i']}"

        self.cw.add_tool(Tool("t", "a tool").number("i", "n"), runner)
        self.cw.set_system_prompt("be brief")

    # -- what may happen ----------------------------------------------------------------

    def _last_is_prompt(self) -> bool:
        live = [r for r in self.cw.live_records() if r.type is not RecordType.SYSTEM_PROMPT]
        return bool(live) and live[-1].type is RecordType.PROMPT

    def _play(self, *scripts: list[Any]) -> None:
        self.cw.model = ScriptedModel(list(scripts))
        self.tag += 1
        with contextlib.suppress(StreamInterrupted):
            self.cw.call()

    @rule(text=st.sampled_from(["hi", "why?", "more", "ok"]))
    def prompt(self, text: str) -> None:
        self.cw.add_prompt(text)

    @precondition(lambda self: self._last_is_prompt())
    @rule(parts=st.integers(1, 3))
    def answer(self, parts: int) -> None:
        self._play([*(T(f"a{i} ") for i in range(parts)), DONE])

    @precondition(lambda self: self._last_is_prompt())
    @rule(n=st.integers(1, 2), then_cut=st.booleans(), opening=st.sampled_from(OPENINGS))
    def answer_with_tools(self, n: int, then_cut: bool, opening: str) -> None:
        second = [T("so "), ConnectionError("cut")] if then_cut else [T("after tools"), DONE]
        self._play([T(opening), *calls(n, self.tag), TOOLS_DONE], second)

    @precondition(lambda self: self._last_is_prompt())
    @rule(delivered=st.integers(0, 3), opening=st.sampled_from(OPENINGS))
    def cut(self, delivered: int, opening: str) -> None:
        pieces = [T(opening), *(T(f"p{i} ") for i in range(delivered - 1))] if delivered else []
        self._play([*pieces, ConnectionError("cut")])

    @precondition(lambda self: self._last_is_prompt())
    @rule(n=st.integers(1, 2))
    def tool_breaks(self, n: int) -> None:
        self.breaks = True
        try:
            self._play([*calls(n, self.tag), TOOLS_DONE])
        except KeyboardInterrupt:
            pass
        finally:
            self.breaks = False

    def _answered_again(self, cp: Checkpoint) -> bool:
        # A later reply (a retry of the same prompt) answered it: it must be discarded.
        return answered_again(self.store, cp) is not None

    @precondition(lambda self: bool(self.cw.checkpoints()))
    @rule(which=st.integers(0, 5), ok=st.booleans())
    def resume(self, which: int, ok: bool) -> None:
        cps = self.cw.checkpoints()
        cp = cps[which % len(cps)]
        self.cw.model = ScriptedModel([[T("rest"), DONE] if ok else [T("x"), OSError("cut")]])
        if self._answered_again(cp):
            with pytest.raises(ReplySuperseded, match="discard it"):
                self.cw.resume_call(cp.id)
            return
        with contextlib.suppress(StreamInterrupted):
            self.cw.resume_call(cp.id)

    @precondition(lambda self: bool(self.cw.checkpoints()))
    @rule(which=st.integers(0, 5))
    def keep(self, which: int) -> None:
        cps = self.cw.checkpoints()
        cp = cps[which % len(cps)]
        if self._answered_again(cp):
            with pytest.raises(ReplySuperseded):
                self.cw.keep(cp.id)
        elif cp.text:
            assert self.cw.keep(cp.id).metadata["partial"] is True
        else:
            with pytest.raises(ValueError, match="discard it instead"):
                self.cw.keep(cp.id)

    @precondition(lambda self: bool(self.cw.checkpoints()))
    @rule(which=st.integers(0, 5))
    def discard(self, which: int) -> None:
        cps = self.cw.checkpoints()
        self.cw.discard(cps[which % len(cps)].id)

    # -- what must always hold ----------------------------------------------------------

    @invariant()
    def nothing_is_left_streaming(self) -> None:
        assert self.cw.active_replies() == []

    def teardown(self) -> None:
        # The next request, as each provider's SDK sends it, after one more prompt.
        self.cw.add_prompt("next?")
        for kind in KINDS:
            copy = self.store.clone_context(self.cw.context_id, f"{kind}-{self.tag}")
            replay = Replay(real_fixture(TEXT_REPLY[kind]))
            probe = ContextWindow(self.store, model_for(kind, replay), copy.name, retry=None)
            probe.call()
            sensible(probe.live_records()[:-1])
            body = replay.bodies[0]
            try:
                check(kind, body)
            except AssertionError as exc:
                raise AssertionError(
                    f"{kind}: {exc}\n{json.dumps(body, indent=1)[:4000]}"
                ) from None
        self.store.close()


Conversation.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_conversations = Conversation.TestCase
