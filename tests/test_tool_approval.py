"""Tool approval: a hook sees each complete, parsed tool call before its tool runs, and lets
it run, refuses it (the model is told) or answers it — sync and asyncio, and through a real
SDK's recorded tool round."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from provider_rules import model_for
from reactivex.scheduler import NewThreadScheduler
from replay import Replay, real_fixture

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, Tool, ToolCall
from rxcontext.providers import ScriptedModel
from rxcontext.tools import Replace, Veto


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


def calls(*args: tuple[str, str, str]) -> list[Chunk]:
    out = []
    for i, (call_id, name, raw) in enumerate(args):
        # Streamed in two fragments: the hook must see the whole arguments, parsed.
        out.append(Chunk(ChunkKind.TOOL_CALL, raw[:3], index=i, id=call_id, name=name))
        out.append(Chunk(ChunkKind.TOOL_CALL, raw[3:], index=i))
    return [*out, Chunk(ChunkKind.DONE, finish_reason="tool_calls")]


def window(approval: Any) -> tuple[ContextWindow, ScriptedModel, list[dict[str, Any]]]:
    model = ScriptedModel(
        [
            calls(
                ("c1", "rm", '{"path": "/tmp/x"}'),
                ("c2", "ls", '{"path": "/"}'),
                ("c3", "rm", '{"path": "/"}'),
            ),
            [T("done"), Chunk(ChunkKind.DONE, finish_reason="stop")],
        ]
    )
    ran: list[dict[str, Any]] = []
    cw = ContextWindow(rxcontext.open(":memory:"), model, "t", tool_approval=approval)
    for name in ("rm", "ls"):
        cw.add_tool(Tool(name, name).string("path", "p"), lambda a, n=name: ran.append(a) or n)
    cw.add_prompt("clean up")
    return cw, model, ran


def review(call: ToolCall) -> Any:
    if call.name == "ls":
        return True
    if call.arguments["path"] == "/":
        return Veto("deleting / is not allowed")
    return Replace("pretended to remove /tmp/x")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_hook_lets_a_call_run_refuses_one_and_answers_one(mode: str):
    seen: list[tuple[str, dict[str, Any]]] = []

    def hook(call: ToolCall) -> Any:
        seen.append((call.id, dict(call.arguments)))
        return review(call)

    async def ahook(call: ToolCall) -> Any:
        await asyncio.sleep(0)
        return hook(call)

    cw, model, ran = window(hook if mode == "sync" else ahook)
    chunks = cw.stream() if mode == "sync" else None
    got: list[Chunk] = []
    if chunks is not None:
        chunks.subscribe(got.append)
    else:

        async def consume() -> None:
            got.extend([c async for c in cw.astream()])

        asyncio.run(consume())
    # The hook saw each whole call, parsed, in order; only the approved tool ran.
    assert seen == [("c1", {"path": "/tmp/x"}), ("c2", {"path": "/"}), ("c3", {"path": "/"})]
    assert ran == [{"path": "/"}]
    results = [c for c in got if c.kind is ChunkKind.TOOL_RESULT]
    assert [(r.id, r.text, dict(r.metadata)) for r in results] == [
        ("c1", "pretended to remove /tmp/x", {"replaced": True}),
        ("c2", "ls", {}),
        (
            "c3",
            "error: the user did not allow this tool call (deleting / is not allowed)",
            {"error": True, "vetoed": True},
        ),
    ]
    # The model was told: the next request carries the three outputs.
    outputs = [r for r in model.requests[1].records if r.type is RecordType.TOOL_OUTPUT]
    assert [(o.tool_call_id, o.content) for o in outputs] == [(r.id, r.text) for r in results]


def test_a_hook_returning_something_else_is_a_clear_error():
    cw, _, ran = window(lambda call: "yes")
    with pytest.raises(rxcontext.StreamInterrupted) as info:
        cw.call()
    assert isinstance(info.value.__cause__, TypeError)
    assert "Veto(reason)" in str(info.value.__cause__) and ran == []


def test_a_veto_through_the_real_openai_sdk_is_sent_back_as_the_calls_output():
    replay = Replay(
        real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.1.sse"),
        real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.2.sse"),
    )
    cw = ContextWindow(
        rxcontext.open(":memory:"),
        model_for("chat", replay),
        "real",
        tool_approval=lambda call: Veto(f"no {call.name} with {json.dumps(dict(call.arguments))}"),
    )
    cw.add_tool(Tool("multiply", "a*b").number("a", "a").number("b", "b"), lambda a: "never")
    cw.add_prompt("What is 1231 * 2331?")
    cw.call()
    tool_message = [m for m in replay.bodies[1]["messages"] if m["role"] == "tool"]
    assert tool_message == [
        {
            "role": "tool",
            "tool_call_id": tool_message[0]["tool_call_id"],
            "content": "error: the user did not allow this tool call (no multiply with "
            '{"a": 1231, "b": 2331})',
        }
    ]


def test_a_dispose_while_the_hook_decides_asks_and_runs_nothing_more():
    """The subscriber went away while the hook was deciding (asking a person): the driver
    asks about no further call and runs no tool, as a cancelled asyncio task does."""
    asked: list[str] = []
    deciding, decided = threading.Event(), threading.Event()

    def approval(call: ToolCall) -> bool:
        asked.append(call.id)
        deciding.set()
        decided.wait(30)
        return True

    cw, _, ran = window(approval)
    threads: list[threading.Thread] = []

    def factory(target: Any) -> threading.Thread:
        threads.append(threading.Thread(target=target, daemon=True))
        return threads[-1]

    sub = cw.stream().subscribe(
        lambda c: None, lambda e: None, scheduler=NewThreadScheduler(thread_factory=factory)
    )
    assert deciding.wait(30)
    sub.dispose()
    decided.set()
    threads[0].join(30)
    assert not threads[0].is_alive()
    assert asked == ["c1"] and ran == []
    (cp,) = cw.checkpoints()
    assert cp.state is rxcontext.ReplyState.INTERRUPTED
