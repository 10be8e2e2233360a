"""The plain values: Usage, Chunk, ToolCall, Reply and the ReplyBuilder that folds chunks."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxcontext import (
    Checkpoint,
    Chunk,
    ChunkKind,
    Context,
    ContextStats,
    Record,
    RecordType,
    Reply,
    ReplyState,
    TokenUsage,
    ToolCall,
    Usage,
)
from rxcontext.chunks import ReplyBuilder
from rxcontext.store import CheckpointDraft, RecordDraft
from rxcontext.tokens import estimate_tokens


def build(*chunks: Chunk) -> Reply:
    builder = ReplyBuilder()
    for chunk in chunks:
        builder.add(chunk)
    return builder.build()


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


def K(text: str, index: int = 0, **metadata: str) -> Chunk:
    return Chunk(ChunkKind.THINKING, text, index=index, metadata=metadata)


def C(index: int, text: str = "", id: str | None = None, name: str | None = None) -> Chunk:
    return Chunk(ChunkKind.TOOL_CALL, text, index=index, id=id, name=name)


def splits(text: str) -> st.SearchStrategy[list[str]]:
    """Every way of cutting ``text`` into consecutive pieces (empty pieces included)."""
    cuts = st.lists(st.integers(0, len(text)), max_size=12).map(sorted)
    return cuts.map(lambda cs: [text[a:b] for a, b in zip([0, *cs], [*cs, len(text)], strict=True)])


# -- Usage ------------------------------------------------------------------------------


def test_usage_of_fills_missing_counts_and_derives_the_total():
    assert Usage.of() == Usage(0, 0, 0, 0, 0)
    assert Usage.of(10, 5) == Usage(10, 5, 15)
    assert Usage.of(None, 5) == Usage(0, 5, 5)
    # The provider's own total wins (Gemini counts thought tokens in it).
    assert Usage.of(10, 5, 40, cached_tokens=3, reasoning_tokens=25) == Usage(10, 5, 40, 3, 25)
    assert Usage.of(10, 5, 0) == Usage(10, 5, 15)


def test_usage_adds_field_by_field():
    assert Usage(1, 2, 3, 4, 5) + Usage(10, 20, 30, 40, 50) == Usage(11, 22, 33, 44, 55)
    assert Usage() + Usage() == Usage()


@given(st.builds(Usage, *[st.integers(0, 2**40)] * 5))
def test_usage_dict_round_trip(usage: Usage):
    data = usage.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(Usage)}
    assert Usage.from_dict(json.loads(json.dumps(data))) == usage


def test_usage_from_dict_ignores_unknown_keys_and_defaults_missing_ones():
    assert Usage.from_dict({"input_tokens": 4, "bogus": 9, "total_tokens": None}) == Usage(4)


# -- Frozen, slotted values ---------------------------------------------------------------

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
VALUES = [
    Usage(1, 2, 3),
    Chunk(ChunkKind.TEXT, "x"),
    ToolCall.parse("c1", "f", "{}"),
    Reply("x"),
    Record(1, "ctx", RecordType.PROMPT, "hi", True, 1, NOW),
    Context("ctx", "name", NOW),
    Checkpoint(1, "ctx", "", "", (), None, None, NOW),
    TokenUsage(1, 2, 50.0),
    ContextStats("ctx", "n", 0, 0, 0, 0, 0, 0, 0, 0, 0, Usage(), None),
    RecordDraft(RecordType.PROMPT, "x"),
    CheckpointDraft("x"),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_values_are_frozen_and_slotted(value: object):
    assert dataclasses.is_dataclass(value)
    assert not hasattr(value, "__dict__")
    first = dataclasses.fields(value)[0].name  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, first, getattr(value, first))
    with pytest.raises((AttributeError, TypeError)):
        value.not_a_field = 1  # type: ignore[attr-defined]


def test_record_types_keep_contextwindows_stored_values():
    assert [(t.name, int(t)) for t in RecordType] == [
        ("PROMPT", 0),
        ("MODEL_RESP", 1),
        ("TOOL_CALL", 2),
        ("TOOL_OUTPUT", 3),
        ("SYSTEM_PROMPT", 4),
    ]


def test_chunk_defaults():
    chunk = Chunk(ChunkKind.DONE)
    assert (chunk.text, chunk.index, chunk.id, chunk.name, chunk.usage) == ("", 0, None, None, None)
    assert (chunk.finish_reason, chunk.response_id, dict(chunk.metadata)) == (None, None, {})
    assert Chunk(ChunkKind.TEXT).metadata is not Chunk(ChunkKind.TEXT).metadata


def test_checkpoint_resolved_follows_resolved_at():
    open_ = Checkpoint(1, "c", "t", "", (), None, None, NOW)
    assert not open_.resolved
    assert dataclasses.replace(open_, state=ReplyState.COMPLETED).resolved
    assert dataclasses.replace(open_, state=ReplyState.DISCARDED).resolved
    assert not dataclasses.replace(open_, state=ReplyState.STREAMING).resolved


# -- ToolCall.parse -----------------------------------------------------------------------


def test_tool_call_parse_valid_object():
    call = ToolCall.parse("c1", "weather", '{"city": "Oslo", "days": 3}', index=2)
    assert call.arguments == {"city": "Oslo", "days": 3}
    assert (call.id, call.name, call.raw, call.index, call.error) == (
        "c1",
        "weather",
        '{"city": "Oslo", "days": 3}',
        2,
        None,
    )


@pytest.mark.parametrize("raw", ["", "   ", "\n\t"])
def test_tool_call_parse_empty_raw_is_no_arguments(raw: str):
    call = ToolCall.parse("c1", "f", raw)
    assert call.arguments == {} and call.error is None and call.raw == raw


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('{"city": "Os', "invalid JSON"),  # a cut stream
        ("{city: 'Oslo'}", "invalid JSON"),
        ('{"a": 1}}', "invalid JSON"),
        ("[1, 2]", "got list"),
        ('"Oslo"', "got str"),
        ("42", "got int"),
        ("null", "got NoneType"),
        ("[" * 100_000, "invalid JSON"),  # deeper than the decoder's recursion limit
    ],
)
def test_tool_call_parse_records_bad_arguments_instead_of_raising(raw: str, fragment: str):
    call = ToolCall.parse("c1", "f", raw)
    assert call.arguments == {}
    assert call.error is not None and fragment in call.error
    assert call.raw == raw


@given(st.text(max_size=40))
def test_tool_call_parse_never_raises(raw: str):
    call = ToolCall.parse("c1", "f", raw)
    assert call.raw == raw
    assert (call.error is None) == (isinstance(call.arguments, dict) and _is_object_or_blank(raw))


def _is_object_or_blank(raw: str) -> bool:
    if not raw.strip():
        return True
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


# -- ReplyBuilder ------------------------------------------------------------------------


def test_empty_builder_builds_an_empty_reply():
    assert ReplyBuilder().build() == Reply()


def test_text_and_thinking_accumulate_separately():
    builder = ReplyBuilder()
    for chunk in [K("let me "), T("He"), K("think"), T(""), T("llo")]:
        builder.add(chunk)
    assert builder.chunks == 5
    assert builder.text == "Hello" and builder.thinking == "let me think"
    reply = builder.build()
    assert (reply.text, reply.thinking) == ("Hello", "let me think")
    # Plain reasoning text without a signature is not a thinking block.
    assert "thinking_blocks" not in reply.metadata


def test_thinking_blocks_keep_signatures_and_redacted_data_in_order():
    reply = build(
        K("first ", index=0),
        K("thought", index=0),
        K("", index=0, signature="sig-"),
        K("", index=0, signature="part2"),
        K("", index=1, redacted="opaque=="),
        K("second", index=2),
        K("", index=2, signature="s2"),
        K("no signature", index=3),
        T("answer"),
    )
    assert reply.metadata["thinking_blocks"] == [
        {"type": "thinking", "thinking": "first thought", "signature": "sig-part2"},
        {"type": "redacted_thinking", "data": "opaque=="},
        {"type": "thinking", "thinking": "second", "signature": "s2"},
    ]
    assert reply.thinking == "first thoughtsecondno signature"
    assert reply.text == "answer"


def test_tool_call_fragments_are_keyed_by_index():
    reply = build(
        C(0, "", id="call_a", name="weather"),  # empty first argument piece
        C(1, '{"q"', id="call_b", name="search"),
        C(0, '{"city":'),
        C(1, ': "rx"}'),
        C(0, ' "Oslo"}'),
    )
    a, b = reply.tool_calls
    assert (a.id, a.name, a.index, a.arguments, a.raw) == (
        "call_a",
        "weather",
        0,
        {"city": "Oslo"},
        '{"city": "Oslo"}',
    )
    assert (b.id, b.name, b.index, b.arguments) == ("call_b", "search", 1, {"q": "rx"})
    assert a.error is None and b.error is None


def test_tool_calls_come_out_sorted_by_index_whatever_the_arrival_order():
    reply = build(C(5, "{}", id="late", name="f"), C(2, "{}", id="early", name="g"))
    assert [(c.index, c.id) for c in reply.tool_calls] == [(2, "early"), (5, "late")]


def test_repeated_id_and_name_on_every_fragment_are_taken_once():
    reply = build(
        C(0, '{"a"', id="call_1", name="f"),
        C(0, ": 1}", id="call_1", name="f"),
    )
    (call,) = reply.tool_calls
    assert (call.id, call.name, call.arguments) == ("call_1", "f", {"a": 1})


def test_id_and_name_may_arrive_after_the_first_fragment():
    reply = build(C(0, '{"a": 1}'), C(0, "", id="late_id", name="late_name"))
    (call,) = reply.tool_calls
    assert (call.id, call.name, call.arguments) == ("late_id", "late_name", {"a": 1})


def test_whole_arguments_in_one_fragment_and_missing_id_gets_a_stable_one():
    (call,) = build(C(3, '{"x": [1, 2]}', name="f")).tool_calls
    assert call.arguments == {"x": [1, 2]}
    assert call.id == "call_3"


def test_tool_call_metadata_merges_across_fragments():
    reply = build(
        Chunk(ChunkKind.TOOL_CALL, "{}", index=0, id="c", name="f", metadata={"item_id": "i1"}),
        Chunk(ChunkKind.TOOL_CALL, "", index=0, metadata={"thought_signature": "ts"}),
    )
    assert dict(reply.tool_calls[0].metadata) == {"item_id": "i1", "thought_signature": "ts"}


def test_cut_tool_call_records_an_error_in_the_reply():
    (call,) = build(C(0, '{"city": "Os', id="c", name="f")).tool_calls
    assert call.arguments == {} and call.error is not None


def test_tool_fragments_show_partial_arguments_for_checkpoints():
    builder = ReplyBuilder()
    for chunk in [C(1, '{"a', id="c1", name="f"), C(0, "", id="c0", name="g")]:
        builder.add(chunk)
    assert builder.tool_fragments() == [
        {"index": 0, "id": "c0", "name": "g", "arguments": "", "metadata": {}},
        {"index": 1, "id": "c1", "name": "f", "arguments": '{"a', "metadata": {}},
    ]
    json.dumps(builder.tool_fragments())


def test_usage_chunks_replace_never_add():
    reply = build(
        Chunk(ChunkKind.USAGE, usage=Usage.of(10, 1)),
        T("x"),
        Chunk(ChunkKind.USAGE, usage=Usage.of(10, 7)),
        Chunk(ChunkKind.USAGE),  # no usage: keeps the last one
    )
    assert reply.usage == Usage(10, 7, 17)


def test_done_sets_finish_reason_response_id_usage_and_metadata():
    reply = build(
        T("hi"),
        Chunk(ChunkKind.USAGE, usage=Usage.of(1, 1)),
        Chunk(
            ChunkKind.DONE,
            finish_reason="stop",
            response_id="resp_1",
            usage=Usage.of(3, 4),
            metadata={"model": "m"},
        ),
        Chunk(ChunkKind.DONE),  # a bare DONE keeps what came before
    )
    assert reply == Reply(
        text="hi",
        usage=Usage(3, 4, 7),
        finish_reason="stop",
        response_id="resp_1",
        metadata={"model": "m"},
    )


def test_tool_result_chunks_do_not_change_the_reply():
    reply = build(T("a"), Chunk(ChunkKind.TOOL_RESULT, "output", id="c", name="f"))
    assert reply == Reply("a")


# -- Properties ---------------------------------------------------------------------------


@given(st.data(), st.text())
def test_any_split_of_a_text_accumulates_to_that_text(data: st.DataObject, text: str):
    pieces = data.draw(splits(text))
    builder = ReplyBuilder()
    seen = []
    for piece in pieces:
        builder.add(T(piece))
        seen.append(builder.text)
    assert builder.build().text == text
    assert builder.chunks == len(pieces)
    assert seen == ["".join(pieces[: i + 1]) for i in range(len(pieces))]


@settings(max_examples=12)
@given(
    st.lists(
        st.tuples(st.sampled_from([ChunkKind.TEXT, ChunkKind.THINKING]), st.text(max_size=3)),
        min_size=250,
        max_size=900,
    ),
    st.sets(st.integers(0, 900), max_size=8),
)
def test_long_streams_with_snapshots_anywhere_keep_every_delta(
    deltas: list[tuple[ChunkKind, str]], peeks: set[int]
):
    # Hundreds of deltas: the builder joins runs of them internally; reading a snapshot
    # (as accumulate() and checkpoints do) at any point must not lose or reorder one.
    builder = ReplyBuilder()
    for i, (kind, delta) in enumerate(deltas):
        builder.add(Chunk(kind, delta))
        if i in peeks:
            done = deltas[: i + 1]
            assert builder.text == "".join(d for k, d in done if k is ChunkKind.TEXT)
            assert builder.build().thinking == "".join(
                d for k, d in done if k is ChunkKind.THINKING
            )
    reply = builder.build()
    assert reply.text == "".join(d for k, d in deltas if k is ChunkKind.TEXT)
    assert reply.thinking == "".join(d for k, d in deltas if k is ChunkKind.THINKING)
    assert builder.chunks == len(deltas)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
ARGUMENTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)


@given(st.data(), st.lists(ARGUMENTS, min_size=1, max_size=4), st.booleans())
def test_any_split_and_interleaving_of_argument_fragments_parses_back(
    data: st.DataObject, calls: list[dict[str, object]], repeat_identity: bool
):
    raws = [json.dumps(args, ensure_ascii=data.draw(st.booleans())) for args in calls]
    pieces = [data.draw(splits(raw)) for raw in raws]
    order = data.draw(st.permutations([i for i, p in enumerate(pieces) for _ in p]))
    builder = ReplyBuilder()
    started: set[int] = set()
    cursor = [0] * len(pieces)
    for i in order:
        first = i not in started
        started.add(i)
        piece = pieces[i][cursor[i]]
        cursor[i] += 1
        identity = first or repeat_identity
        builder.add(
            C(i, piece, id=f"call_{i}x" if identity else None, name=f"f{i}" if identity else None)
        )
    reply = builder.build()
    assert [c.index for c in reply.tool_calls] == list(range(len(calls)))
    for i, call in enumerate(reply.tool_calls):
        assert call.error is None
        assert call.raw == raws[i]
        assert call.arguments == calls[i]
        assert (call.id, call.name) == (f"call_{i}x", f"f{i}")


# -- tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("é", 1), ("😀😀", 2)]
)
def test_estimate_tokens_is_a_quarter_of_the_utf8_bytes_rounded_up(text: str, tokens: int):
    assert estimate_tokens(text) == tokens


def test_estimate_tokens_survives_lone_surrogates():
    assert estimate_tokens("\ud800") == 1
