"""The public names ../shared/DESIGN.md promises, importable and shaped as described."""

from __future__ import annotations

import dataclasses

import rxcontext
from rxcontext import (
    Checkpoint,
    Chunk,
    ChunkKind,
    ContextWindow,
    Record,
    RecordType,
    Reply,
    StreamInterrupted,
)
from rxcontext import operators as rxops
from rxcontext.providers import (
    AnthropicModel,
    GeminiModel,
    OpenAIModel,
    OpenAIResponsesModel,
    ScriptedModel,
)


def test_design_names_import():
    assert rxcontext.operators is rxops
    for name in ("accumulate", "reduce_reply", "text", "batch_text", "middleware"):
        assert callable(getattr(rxops, name))
    assert callable(rxcontext.open) and callable(rxcontext.Tool)
    for model in (AnthropicModel, GeminiModel, OpenAIModel, OpenAIResponsesModel, ScriptedModel):
        assert isinstance(model, type)
    assert issubclass(StreamInterrupted, Exception)
    assert isinstance(ContextWindow, type)


def test_values_are_frozen_slotted_dataclasses():
    for cls in (Chunk, Reply, Record, Checkpoint, rxcontext.Usage, rxcontext.ToolCall):
        assert dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert hasattr(cls, "__slots__")


def test_chunk_fields_and_kinds_match_the_design():
    fields = [f.name for f in dataclasses.fields(Chunk)]
    assert fields == [
        "kind",
        "text",
        "index",
        "id",
        "name",
        "usage",
        "finish_reason",
        "response_id",
        "metadata",
    ]
    assert {"TEXT", "THINKING", "TOOL_CALL", "USAGE", "DONE"} <= set(ChunkKind.__members__)


def test_record_types_keep_contextwindow_values():
    assert [(t.name, int(t)) for t in RecordType] == [
        ("PROMPT", 0),
        ("MODEL_RESP", 1),
        ("TOOL_CALL", 2),
        ("TOOL_OUTPUT", 3),
        ("SYSTEM_PROMPT", 4),
    ]
    record_fields = {f.name for f in dataclasses.fields(Record)}
    assert {
        "id",
        "context_id",
        "type",
        "content",
        "live",
        "est_tokens",
        "timestamp",
        "response_id",
        "streamed",
    } <= record_fields
    checkpoint_fields = {f.name for f in dataclasses.fields(Checkpoint)}
    assert {
        "id",
        "context_id",
        "text",
        "thinking",
        "tool_calls",
        "usage",
        "error",
        "created_at",
        "resolved_at",
    } <= checkpoint_fields


def test_the_design_snippet_runs():
    store = rxcontext.open(":memory:")
    model = ScriptedModel(
        [[Chunk(ChunkKind.TEXT, "hi"), Chunk(ChunkKind.DONE, finish_reason="stop")]]
    )
    cw = ContextWindow(store, model, context="demo")
    cw.set_system_prompt("...")
    assert cw.add_prompt("Hello").type is RecordType.PROMPT
    got: list[str] = []
    cw.stream().pipe(rxops.text()).subscribe(on_next=got.append)
    assert got == ["hi"]
    assert cw.checkpoints() == []
    assert [r.type for r in cw.live_records()][-1] is RecordType.MODEL_RESP
    store.close()  # (left open, its heartbeat's thread outlived the test)
