"""Cost per reply and per context (priced by genai-prices), and budgets refusing requests.

Replies come through the real SDKs on recorded streams (their usage as the providers sent
it); the expected prices are asked of genai-prices itself with the counts mapped by hand,
so these tests check the mapping (cached and cache-write tokens apart, Gemini's thoughts as
output), not a copy of a price table.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from faultmodels import Clock
from google import genai
from google.genai import types
from replay import NO_SSL, Replay, real_fixture, sse
from replay import Reply as Served
from stores import open_store

import rxcontext
from rxcontext import (
    Budget,
    BudgetExceeded,
    Chunk,
    ChunkKind,
    ContextWindow,
    RecordType,
    StreamInterrupted,
    Tool,
    Usage,
)
from rxcontext.cost import ContextCost, context_cost, format_usd, price, reply_cost
from rxcontext.providers import (
    AnthropicModel,
    GeminiModel,
    OpenAIModel,
    OpenAIResponsesModel,
    ScriptedModel,
)
from rxcontext.retry import RetryPolicy
from rxcontext.store import RecordDraft

genai_prices = pytest.importorskip("genai_prices", reason="needs rxcontext[prices]")

KEY = "sk-test-cost-0123456789"
RECORDED_ANTHROPIC = "anthropic/text_basic_sonnet45.sse"


def expected(model: str, provider: str, **counts: int) -> Decimal:
    result = genai_prices.calc_price(genai_prices.Usage(**counts), model, provider_id=provider)
    return Decimal(result.total_price)


def replies(cw: ContextWindow) -> list[rxcontext.Record]:
    return [r for r in cw.records() if "usage" in r.metadata]


# -- pricing stored replies ---------------------------------------------------------------


@pytest.mark.usefixtures("both_stores")
def test_openai_tool_loop_prices_both_rounds() -> None:
    replay = Replay(
        real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.1.sse"),
        real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.2.sse"),
    )
    client = openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client())
    cw = ContextWindow(open_store(), OpenAIModel("gpt-4o-mini", client=client))
    cw.add_tool(Tool("multiply", "Multiply.").number("a").number("b"), lambda a: "2869461")
    cw.add_prompt("What is 1231 * 2331?")
    cw.call()
    first, second = replies(cw)
    # The first round asked for the tool only: its TOOL_CALL carries the round's metadata.
    assert first.type is RecordType.TOOL_CALL and second.type is RecordType.MODEL_RESP
    assert reply_cost(first) == expected("gpt-4o-mini", "openai", input_tokens=54, output_tokens=20)
    assert reply_cost(second) == expected(
        "gpt-4o-mini", "openai", input_tokens=87, output_tokens=26
    )
    total = context_cost(cw.records())
    assert total == ContextCost(reply_cost(first) + reply_cost(second), 2, 0)  # type: ignore[operator]
    assert total.complete and total.describe() == format_usd(total.usd)
    assert total.describe() == "$0.000049"  # 4.875e-05: two significant digits


def test_a_responses_api_reply_is_priced_as_openai() -> None:
    # The Responses model is named "openai-responses:<model>": still OpenAI's price list.
    replay = Replay(real_fixture("openai_responses/text_basic_gpt55.sse"))
    client = openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client())
    cw = ContextWindow(open_store(), OpenAIResponsesModel("gpt-4o-mini", client=client))
    cw.add_prompt("Say hello.")
    cw.call()
    (reply,) = replies(cw)
    assert reply.metadata["provider"] == "openai-responses"
    assert reply_cost(reply) == expected("gpt-4o-mini", "openai", input_tokens=11, output_tokens=5)


def test_anthropic_reply_priced_with_cache_reads_and_writes_apart() -> None:
    replay = Replay(real_fixture("anthropic/text_basic_sonnet45.sse"))
    client = anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client())
    cw = ContextWindow(
        rxcontext.open(":memory:"), AnthropicModel("claude-sonnet-4-5", client=client)
    )
    cw.add_prompt("Hello")
    reply = cw.call()
    assert reply.usage is not None
    (stored,) = replies(cw)
    assert reply_cost(stored) == expected(
        "claude-sonnet-4-5",
        "anthropic",
        input_tokens=reply.usage.input_tokens,
        output_tokens=reply.usage.output_tokens,
    )
    # Same input, part of it read from the cache: cheaper; written to it: dearer.
    plain = price(Usage.of(2000, 100), "claude-sonnet-4-5", "anthropic")
    read = price(Usage.of(2000, 100, cached_tokens=1500), "claude-sonnet-4-5", "anthropic")
    written = price(Usage.of(2000, 100, cache_write_tokens=1500), "claude-sonnet-4-5", "anthropic")
    assert plain is not None and read is not None and written is not None
    assert read < plain < written
    assert written == expected(
        "claude-sonnet-4-5",
        "anthropic",
        input_tokens=2000,
        output_tokens=100,
        cache_write_tokens=1500,
    )


def _web_search_stream(searches: int) -> bytes:
    """An Anthropic stream that searched the web ``searches`` times (server tools: their
    blocks make no tool calls; usage.server_tool_use counts the searches, cumulatively)."""
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_search",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 2039,
                    "output_tokens": 1,
                    "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                },
            },
        }
    ]
    for n in range(searches):
        use = {"type": "server_tool_use", "id": f"srvtoolu_{n}", "name": "web_search", "input": {}}
        result = {"type": "web_search_tool_result", "tool_use_id": f"srvtoolu_{n}", "content": []}
        query = {"type": "input_json_delta", "partial_json": f'{{"query": "lisbon {n}"}}'}
        events += [
            {"type": "content_block_start", "index": 2 * n, "content_block": use},
            {"type": "content_block_delta", "index": 2 * n, "delta": query},
            {"type": "content_block_stop", "index": 2 * n},
            {"type": "content_block_start", "index": 2 * n + 1, "content_block": result},
            {"type": "content_block_stop", "index": 2 * n + 1},
        ]
    at = 2 * searches
    events += [
        {"type": "content_block_start", "index": at, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": at,
            "delta": {"type": "text_delta", "text": "Sunny in Lisbon."},
        },
        {"type": "content_block_stop", "index": at},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 10423,
                "output_tokens": 341,
                "server_tool_use": {"web_search_requests": searches, "web_fetch_requests": 0},
            },
        },
        {"type": "message_stop"},
    ]
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_anthropic_web_searches_are_stored_and_priced_per_search(wire: str) -> None:
    """Anthropic bills $10 per 1,000 web searches on top of the tokens: a reply that
    searched is stored with its count of searches and priced with them, not as its tokens
    alone."""
    replay = Replay(_web_search_stream(3))
    client = anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client())
    model = AnthropicModel("claude-sonnet-4-5", client=client, wire=wire)  # type: ignore[arg-type]
    cw = ContextWindow(open_store(), model)
    cw.add_prompt("Weather in Lisbon?")
    reply = cw.call()
    assert reply.text == "Sunny in Lisbon." and reply.tool_calls == ()
    assert reply.usage == Usage(10423, 341, 10764, web_search_requests=3)
    (stored,) = replies(cw)
    assert stored.metadata["usage"]["web_search_requests"] == 3
    tokens_only = expected("claude-sonnet-4-5", "anthropic", input_tokens=10423, output_tokens=341)
    assert reply_cost(stored) == expected(
        "claude-sonnet-4-5", "anthropic", input_tokens=10423, output_tokens=341, web_searches=3
    )
    assert reply_cost(stored) == tokens_only + Decimal("0.03")  # 3 x $10 / 1,000
    assert context_cost(cw.records()) == ContextCost(tokens_only + Decimal("0.03"), 1, 0)


# -- OpenAI Responses web_search_call and Gemini Google Search grounding -----------------


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_openai_responses_web_search_calls_are_stored_and_priced_per_call(wire: str) -> None:
    """OpenAI bills each web_search_call ($10 per 1,000 on gpt-5.2) on top of the tokens:
    the recorded reply made two, so it is stored with two searches and priced with them."""
    replay = Replay(real_fixture("openai_responses/web_search_annotations_gpt52.sse"))
    client = openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client())
    model = OpenAIResponsesModel("gpt-5.2", client=client, wire=wire)  # type: ignore[arg-type]
    cw = ContextWindow(open_store(), model)
    cw.add_prompt("Tallest mountain in Alberta?")
    reply = cw.call()
    assert reply.usage == Usage(12243, 140, 12383, 0, 100, web_search_requests=2)
    (stored,) = replies(cw)
    assert stored.metadata["usage"]["web_search_requests"] == 2
    tokens_only = expected("gpt-5.2", "openai", input_tokens=12243, output_tokens=140)
    assert reply_cost(stored) == expected(
        "gpt-5.2", "openai", input_tokens=12243, output_tokens=140, web_searches=2
    )
    assert reply_cost(stored) == tokens_only + Decimal("0.02")  # 2 x $10 / 1,000
    assert context_cost(cw.records()) == ContextCost(tokens_only + Decimal("0.02"), 1, 0)


def _responses_search_stream(model: str, searches: int, status: str = "completed") -> bytes:
    """A Responses stream that made ``searches`` web_search_call items, then answered."""
    usage = {"input_tokens": 9000, "output_tokens": 50, "total_tokens": 9050}
    events: list[dict[str, Any]] = []
    output: list[dict[str, Any]] = []
    for n in range(searches):
        item = {"id": f"ws_{n}", "type": "web_search_call", "status": "in_progress"}
        done = {**item, "status": "completed", "action": {"type": "search", "query": "alberta"}}
        events += [
            {"type": "response.output_item.added", "output_index": n, "item": item},
            {"type": "response.output_item.done", "output_index": n, "item": done},
        ]
        output.append(done)
    message = {
        "id": "msg_1",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Mount Columbia.", "annotations": []}],
    }
    events.append(
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": searches,
            "content_index": 0,
            "delta": "Mount Columbia.",
            "logprobs": [],
        }
    )
    response = {
        "id": "resp_ws",
        "object": "response",
        "created_at": 1,
        "model": model,
        "status": status,
        "output": [*output, message],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }
    if status == "incomplete":
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    events.append({"type": f"response.{status}", "response": response})
    numbered = [{**e, "sequence_number": i} for i, e in enumerate(events)]
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in numbered).encode()


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_searches_the_price_table_cannot_price_leave_the_cost_unknown(wire: str) -> None:
    """genai-prices knows gpt-4.1-nano's tokens but has no price for its web searches:
    the searches are stored, and the reply's cost is unknown (the context's total says so),
    not its tokens' price presented as the whole."""
    replay = Replay(_responses_search_stream("gpt-4.1-nano", 3))
    client = openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client())
    model = OpenAIResponsesModel("gpt-4.1-nano", client=client, wire=wire)  # type: ignore[arg-type]
    cw = ContextWindow(rxcontext.open(":memory:"), model)
    cw.add_prompt("Tallest mountain in Alberta?")
    reply = cw.call()
    assert reply.usage == Usage(9000, 50, 9050, web_search_requests=3)
    (stored,) = replies(cw)
    assert stored.metadata["usage"]["web_search_requests"] == 3
    assert price(Usage.of(9000, 50), "gpt-4.1-nano", "openai-responses") is not None
    assert reply_cost(stored) is None
    assert context_cost(cw.records()) == ContextCost(Decimal(0), 0, 1)
    # The same where the table has no price yet: Gemini 3 searches before 5 January 2026.
    searched = Usage.of(1000, 100, web_search_requests=2)
    before = datetime(2025, 12, 1, tzinfo=UTC)
    assert price(Usage.of(1000, 100), "gemini-3-flash-preview", "gemini", before) is not None
    assert price(searched, "gemini-3-flash-preview", "gemini", before) is None
    assert price(searched, "gemini-3-flash-preview", "gemini") == expected(
        "gemini-3-flash-preview", "google", input_tokens=1000, output_tokens=100, web_searches=2
    )


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_an_incomplete_responses_reply_keeps_its_searches(wire: str) -> None:
    """A response cut short (max_output_tokens) was billed for the searches it made."""
    replay = Replay(_responses_search_stream("gpt-5.2", 2, status="incomplete"))
    client = openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client())
    model = OpenAIResponsesModel("gpt-5.2", client=client, wire=wire)  # type: ignore[arg-type]
    cw = ContextWindow(rxcontext.open(":memory:"), model)
    cw.add_prompt("Tallest mountain in Alberta?")
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    assert info.value.checkpoint.usage == Usage(9000, 50, 9050, web_search_requests=2)


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_gemini_25_grounding_is_stored_and_priced_per_grounded_prompt(wire: str) -> None:
    """Gemini 2.5 bills Google Search grounding per grounded prompt ($35 per 1,000): the
    recorded reply searched, so it is stored with one billed search and priced with it."""
    replay = Replay(real_fixture("gemini/google_search_grounding_gemini25pro.sse"))
    options = types.HttpOptions(httpx_client=replay.client(), async_client_args={"ssl": NO_SSL})
    client = genai.Client(api_key=KEY, http_options=options)
    model = GeminiModel("gemini-2.5-pro", client=client, wire=wire)  # type: ignore[arg-type]
    cw = ContextWindow(open_store(), model)
    cw.add_prompt("What is the weather in San Francisco today?")
    reply = cw.call()
    assert reply.usage == Usage(119, 241, 772, 0, 412, web_search_requests=1)
    (stored,) = replies(cw)
    assert stored.metadata["usage"]["web_search_requests"] == 1
    counts = {"input_tokens": 119, "output_tokens": 241 + 412}
    tokens_only = expected("gemini-2.5-pro", "google", **counts)
    assert reply_cost(stored) == expected("gemini-2.5-pro", "google", **counts, web_searches=1)
    assert reply_cost(stored) == tokens_only + Decimal("0.035")
    assert context_cost(cw.records()) == ContextCost(tokens_only + Decimal("0.035"), 1, 0)


def _grounded_stream(*queries: list[str]) -> bytes:
    """A Gemini stream whose events carry ``groundingMetadata.webSearchQueries``."""
    usage = {"promptTokenCount": 20, "candidatesTokenCount": 30, "totalTokenCount": 150}
    usage["toolUsePromptTokenCount"] = 100
    events = []
    for n, said in enumerate(queries):
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": f"part {n}. "}], "role": "model"},
            "index": 0,
            "groundingMetadata": {"webSearchQueries": said} if said else {},
        }
        if n == len(queries) - 1:
            candidate["finishReason"] = "STOP"
        events.append({"candidates": [candidate], "usageMetadata": usage, "responseId": "r1"})
    return "".join(f"data: {json.dumps(e)}\r\n\r\n" for e in events).encode()


@pytest.mark.parametrize("wire", ["sdk", "fast"])
@pytest.mark.parametrize(
    ("model_name", "billed"),
    [("gemini-3-pro-preview", 2), ("gemini-2.5-flash", 1), ("gemini-2.0-flash", 1)],
)
def test_gemini_grounding_counts_queries_on_gemini_3_prompts_before(
    wire: str, model_name: str, billed: int
) -> None:
    """Gemini 3 bills each distinct search query ($14 per 1,000; empty ones are not
    billed), Gemini 2.x each grounded prompt once however many queries it ran: what is
    stored is what was billed, and priced by the table."""
    body = _grounded_stream([], ["lisbon weather", ""], ["lisbon weather", "lisbon forecast"])
    replay = Replay(body)
    options = types.HttpOptions(httpx_client=replay.client(), async_client_args={"ssl": NO_SSL})
    client = genai.Client(api_key=KEY, http_options=options)
    model = GeminiModel(model_name, client=client, wire=wire)  # type: ignore[arg-type]
    cw = ContextWindow(rxcontext.open(":memory:"), model)
    cw.add_prompt("Weather in Lisbon?")
    reply = cw.call()
    assert reply.usage == Usage(120, 30, 150, web_search_requests=billed)
    (stored,) = replies(cw)
    assert reply_cost(stored) == expected(
        model_name, "google", input_tokens=120, output_tokens=30, web_searches=billed
    )
    assert reply_cost(stored) != expected(model_name, "google", input_tokens=120, output_tokens=30)


def test_gemini_thoughts_are_priced_as_output() -> None:
    replay = Replay(real_fixture("gemini/thought_summaries_gemini25pro.sse"))
    options = types.HttpOptions(httpx_client=replay.client(), async_client_args={"ssl": NO_SSL})
    client = genai.Client(api_key=KEY, http_options=options)
    cw = ContextWindow(rxcontext.open(":memory:"), GeminiModel("gemini-2.5-pro", client=client))
    cw.add_prompt("Why is the sky blue?")
    reply = cw.call()
    assert reply.usage is not None and reply.usage.reasoning_tokens > 0
    (stored,) = replies(cw)
    assert reply_cost(stored) == expected(
        "gemini-2.5-pro",
        "google",
        input_tokens=reply.usage.input_tokens,
        output_tokens=reply.usage.output_tokens + reply.usage.reasoning_tokens,
        cache_read_tokens=reply.usage.cached_tokens,
    )


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("accepted", [True, False], ids=["accepted", "rejected"])
def test_a_summary_is_priced_once_accepted_or_not(path: str, accepted: bool) -> None:
    """The summariser's request (the largest a context sends) was billed: its cost is in
    the context's, as its usage is in the token totals, once, whether or not the summary
    is accepted, and a rejected one leaves the conversation as it was."""
    replay = Replay(real_fixture("anthropic/text_basic_sonnet45.sse"))
    summarizer = AnthropicModel(
        "claude-sonnet-4-5",
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )
    said = [Chunk(ChunkKind.TEXT, "Lisbon."), Chunk(ChunkKind.USAGE, usage=Usage.of(1000, 10))]
    model = ScriptedModel([said], name="openai:gpt-4o-mini")
    cw = ContextWindow(open_store(), model, summarizer=summarizer)
    cw.add_prompt("Capital of Portugal?")
    cw.call()
    live, before = cw.live_records(), context_cost(cw.records())
    proposal = cw.summarize() if path == "sync" else asyncio.run(cw.asummarize())
    if accepted:
        cw.accept_summary(proposal)
    else:
        cw.reject_summary(proposal)
        assert cw.live_records() == live
    billed = proposal.reply.usage
    assert billed is not None and billed.input_tokens > 0
    summary = expected(
        "claude-sonnet-4-5",
        "anthropic",
        input_tokens=billed.input_tokens,
        output_tokens=billed.output_tokens,
    )
    assert context_cost(cw.records()) == ContextCost(before.usd + summary, 2, 0)
    assert cw.stats().usage.total_tokens == 1010 + billed.total_tokens  # counted once


def test_unknown_models_cost_unknown_never_a_guess() -> None:
    usage = Usage.of(1000, 100)
    assert price(usage, "no-such-model-xyz", "openai") is None
    assert price(usage, "gpt-4o-mini", "scripted") is None
    assert price(usage, None, "openai") is None
    cw = ContextWindow(
        rxcontext.open(":memory:"),
        ScriptedModel(
            [
                [Chunk(ChunkKind.TEXT, "a"), Chunk(ChunkKind.USAGE, usage=usage)],
                [Chunk(ChunkKind.TEXT, "b"), Chunk(ChunkKind.USAGE, usage=usage)],
            ],
            name="openai:no-such-model-xyz",
        ),
    )
    cw.add_prompt("x")
    cw.call()
    assert context_cost(cw.records()) == ContextCost(Decimal(0), 0, 1)
    assert context_cost(cw.records()).describe() == "unknown"
    # One known reply beside an unknown one: at least its price, and said so.
    cw.model = ScriptedModel(
        [[Chunk(ChunkKind.TEXT, "b"), Chunk(ChunkKind.USAGE, usage=usage)]],
        name="openai:gpt-4o-mini",
    )
    cw.add_prompt("y")
    cw.call()
    cost = context_cost(cw.records())
    assert (cost.priced, cost.unpriced) == (1, 1) and not cost.complete
    assert cost.describe() == "≥" + format_usd(price(usage, "gpt-4o-mini", "openai"))


@pytest.mark.parametrize(
    "meta",
    [
        {"model": "gpt-4o-mini", "provider": "openai", "usage": {"input_tokens": "abc"}},
        {"model": "gpt-4o-mini", "provider": "openai", "usage": {"input_tokens": -5}},
        {"model": 5, "provider": "openai", "usage": {"input_tokens": 10}},
        {"model": "gpt-4o-mini", "provider": 7, "usage": {"input_tokens": 10}},
        {"model": "gpt-4o-mini", "usage": "lots"},
    ],
)
def test_a_reply_whose_stored_cost_fields_cannot_be_read_is_unpriced(meta: dict[str, Any]) -> None:
    """A value no rxcontext writes (a database edited by hand, an older import) makes that
    reply's cost unknown, not every cost read of the database fail."""
    store = rxcontext.open(":memory:")
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, RecordDraft(RecordType.MODEL_RESP, "a", metadata=meta))
    assert context_cost(store.records(ctx.id)) == ContextCost(Decimal(0), 0, 1)


def chat_model(replay: Replay, name: str) -> OpenAIModel:
    return OpenAIModel(
        name,
        client=openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )


def cut_call(cw: ContextWindow, path: str) -> rxcontext.Checkpoint:
    """Send the next request, which the wire cuts; its interrupted reply."""
    with pytest.raises(StreamInterrupted):
        cw.call() if path == "sync" else asyncio.run(cw.acall())
    (cp,) = cw.checkpoints()
    return cp


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_kept_reply_cut_before_its_usage_came_is_unpriced_never_free(path: str) -> None:
    """OpenAI Chat sends its usage last: a reply cut mid-text was billed for what it wrote
    but says no usage. Kept, its record has none: its cost is unknown, and the context's
    total says it misses one (``≥``), never a whole total without it."""
    body = real_fixture("openai_chat/usage_then_moderation_chunk_gpt5.sse").read_bytes()
    replay = Replay(body, Served(body, cut_after=2, error=httpx2.ReadError("connection reset")))
    cw = ContextWindow(open_store(), chat_model(replay, "gpt-5"), retry=None)
    cw.add_prompt("Capital of France?")
    cw.call()
    before = context_cost(cw.records())
    assert (before.priced, before.unpriced) == (1, 0)
    cw.add_prompt("And of Spain?")
    cp = cut_call(cw, path)
    assert cp.text == "Paris" and cp.usage is None
    kept = cw.keep(cp.id)
    assert kept.metadata == {"partial": True, "model": "gpt-5", "provider": "openai"}
    assert reply_cost(kept) is None  # no usage: nothing to price
    cost = context_cost(cw.records())
    assert cost == ContextCost(before.usd, 1, 1) and not cost.complete
    assert cost.describe() == "≥" + format_usd(before.usd)
    cw.budget = Budget(max_usd="100")  # a money budget cannot be kept: refused, unsent
    cw.add_prompt("And of Italy?")
    with pytest.raises(BudgetExceeded, match="cost of 1 of its replies is unknown"):
        cw.call()
    assert len(replay.requests) == 2


def anthropic_model(replay: Replay, name: str = "claude-sonnet-4-5") -> AnthropicModel:
    return AnthropicModel(
        name,
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_discarded_attempt_that_was_billed_is_in_the_cost_priced(path: str) -> None:
    """Anthropic bills the input as the stream starts (``message_start`` says so): an
    attempt cut after it and discarded was paid for. Its usage is in the token totals, and
    its cost in the context's, priced from the model its checkpoint names, so a money
    budget counts it; the conversation the next request sends is as it was."""
    body = real_fixture("anthropic/text_basic_sonnet45.sse").read_bytes()
    replay = Replay(Served(body, cut_after=5, error=httpx2.ReadError("connection reset")), body)
    store = open_store()
    cw = ContextWindow(store, anthropic_model(replay), retry=None)
    cw.add_prompt("Hello")
    cp = cut_call(cw, path)
    assert cp.text and cp.usage is not None and cp.usage.input_tokens > 0
    live = cw.live_records()
    cw.discard(cp.id)
    assert cw.stats().usage == cp.usage
    cut = expected(
        "claude-sonnet-4-5",
        "anthropic",
        input_tokens=cp.usage.input_tokens,
        output_tokens=cp.usage.output_tokens or 0,
    )
    assert cut > 0 and context_cost(cw.records()) == ContextCost(cut, 1, 0)
    # Kept as a dead record of its own, named by no reply: the conversation, its
    # discarded reply and a watcher of it see nothing new.
    (dead,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert not dead.live and dead.reply_id is None and dead.content == cp.text
    assert dead.metadata == {
        "partial": True,
        "discarded": True,
        "usage": cp.usage.to_dict(),
        "model": "claude-sonnet-4-5",
        "provider": "anthropic",
    }
    assert cw.live_records() == live and store.reply_records(cp.reply_id) == []
    cw.budget = Budget(max_usd=str(cut))  # spent already: the next request is refused
    with pytest.raises(BudgetExceeded):
        cw.call() if path == "sync" else asyncio.run(cw.acall())
    assert len(replay.requests) == 1  # refused unsent
    cw.budget = None
    reply = cw.call() if path == "sync" else asyncio.run(cw.acall())
    assert replay.bodies[1]["messages"] == replay.bodies[0]["messages"]
    assert reply.usage is not None
    whole = expected(
        "claude-sonnet-4-5",
        "anthropic",
        input_tokens=reply.usage.input_tokens,
        output_tokens=reply.usage.output_tokens,
    )
    assert context_cost(cw.records()) == ContextCost(cut + whole, 2, 0)


@pytest.mark.usefixtures("both_stores")
def test_a_discarded_reply_cut_before_its_usage_came_is_unpriced() -> None:
    body = real_fixture("openai_chat/usage_then_moderation_chunk_gpt5.sse").read_bytes()
    replay = Replay(Served(body, cut_after=2, error=httpx2.ReadError("connection reset")))
    cw = ContextWindow(open_store(), chat_model(replay, "gpt-5"), retry=None)
    cw.add_prompt("Capital of France?")
    cp = cut_call(cw, "sync")
    assert cp.text == "Paris" and cp.usage is None
    cw.discard(cp.id)
    assert context_cost(cw.records()) == ContextCost(Decimal(0), 0, 1)
    (dead,) = [r for r in cw.records() if not r.live]
    assert dead.metadata == {
        "partial": True,
        "discarded": True,
        "model": "gpt-5",
        "provider": "openai",
    }


@pytest.mark.usefixtures("both_stores")
def test_a_discarded_request_that_got_no_answer_costs_nothing() -> None:
    """An HTTP error before any reply (a 500 here) delivered nothing and reported no usage:
    discarded, nothing was billed that anything says, and nothing is stored for it."""
    error = b'{"type":"error","error":{"type":"api_error","message":"Internal server error"}}'
    replay = Replay(Served(error, status=500, headers={"content-type": "application/json"}))
    cw = ContextWindow(open_store(), anthropic_model(replay), retry=None)
    cw.add_prompt("Hello")
    cp = cut_call(cw, "sync")
    assert (cp.text, cp.chunks, cp.usage) == ("", 0, None)
    records = cw.records()
    cw.discard(cp.id)
    assert cw.records() == records
    assert context_cost(records) == ContextCost(Decimal(0), 0, 0)


def test_format_usd() -> None:
    assert format_usd(None) == "unknown"
    assert format_usd(Decimal(0)) == "$0"
    assert format_usd(Decimal("0.0000123")) == "$0.000012"
    assert format_usd(Decimal("0.000000001")) == "<$0.00000001"
    assert format_usd(Decimal("0.01234")) == "$0.0123"
    assert format_usd(Decimal("1234.5")) == "$1,234.50"
    assert ContextCost(Decimal(0), 0, 0).describe() == "-"


# -- budgets ------------------------------------------------------------------------------


def usage_script(text: str, total: int) -> list[Any]:
    return [Chunk(ChunkKind.TEXT, text), Chunk(ChunkKind.USAGE, usage=Usage.of(total - 10, 10))]


@pytest.mark.usefixtures("both_stores")
def test_a_token_budget_refuses_the_request_that_would_exceed_it() -> None:
    # 998 spent; the next request's input (its live records) is estimated above 2 tokens.
    model = ScriptedModel([usage_script("a", 998), usage_script("b", 900)])
    store = open_store()
    cw = ContextWindow(store, model, context="b", budget=Budget(max_tokens=1000))
    cw.add_prompt("first")
    cw.call()
    cw.add_prompt("second")
    with pytest.raises(BudgetExceeded) as refused:
        cw.call()
    assert refused.value.limit == "tokens"
    assert refused.value.spent == 998 and refused.value.maximum == 1000
    assert refused.value.estimate == cw.live_tokens()
    assert "998 spent" in str(refused.value) and "1000 tokens" in str(refused.value)
    assert len(model.requests) == 1  # never sent
    assert cw.checkpoints() == [] and cw.active_replies() == []  # no reply begun
    # stream() delivers it to on_error (nothing was begun: not a StreamInterrupted).
    errors: list[BaseException] = []
    cw.stream().subscribe(on_error=errors.append)
    assert [type(e) for e in errors] == [BudgetExceeded]
    with pytest.raises(BudgetExceeded):
        asyncio.run(cw.acall())
    # A larger budget lets it through.
    cw.budget = Budget(max_tokens=5000)
    assert cw.call().text == "b"


@pytest.mark.usefixtures("both_stores")
def test_astream_checks_the_budget_when_iterated_and_off_the_loop() -> None:
    """As ``stream()`` checks at subscription, ``astream()`` checks when its iteration
    starts (not when the generator is made: spending in between is counted), in the
    executor: the store's reads never run on the event loop's thread."""
    model = ScriptedModel([usage_script("a", 998), usage_script("b", 900)])
    store = open_store()
    cw = ContextWindow(store, model, context="b", budget=Budget(max_tokens=1000))
    cw.add_prompt("first")
    read_on: list[int] = []
    spent = store.budget_spent  # what the check reads (totals, unsettled replies' usage)
    store.budget_spent = lambda *a, **k: read_on.append(threading.get_ident()) or spent(*a, **k)

    async def main() -> None:
        later = cw.astream()  # made under budget
        assert read_on == []
        await cw.acall()  # spends 998 of 1000
        cw.add_prompt("second")
        read_on.clear()
        with pytest.raises(BudgetExceeded):
            async for _ in later:
                pass
        assert read_on and threading.get_ident() not in read_on

    asyncio.run(main())
    assert len(model.requests) == 1  # never sent
    assert cw.checkpoints() == [] and cw.active_replies() == []


@pytest.mark.usefixtures("both_stores")
def test_a_tool_loop_round_over_budget_is_refused_with_a_checkpoint() -> None:
    call = Chunk(ChunkKind.TOOL_CALL, "{}", id="c1", name="t")
    model = ScriptedModel(
        [
            [call, Chunk(ChunkKind.USAGE, usage=Usage.of(590, 10))],
            usage_script("done", 100),
        ]
    )
    cw = ContextWindow(open_store(), model, budget=Budget(max_tokens=600), retry=None)
    cw.add_tool(Tool("t", "a tool"), lambda args: "x")
    cw.add_prompt("go")
    with pytest.raises(StreamInterrupted) as cut:
        cw.call()
    assert isinstance(cut.value.__cause__, BudgetExceeded)
    assert len(model.requests) == 1


def _billed_then_overloaded(input_tokens: int) -> bytes:
    """Anthropic's stream opening with message_start (the input is billed: its usage says
    so), then an overloaded_error: retryable, since nothing but usage was delivered."""
    recording = real_fixture("anthropic/text_basic_sonnet45.sse").read_bytes()
    start = recording.split(b"\n\n")[0] + b"\n\n"
    assert b"message_start" in start and b'"input_tokens":17' in start
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    return start.replace(b'"input_tokens":17', b'"input_tokens":%d' % input_tokens) + sse(
        overloaded, event_names=["error"]
    )


async def _on_clock(clock: Clock, call: Awaitable[rxcontext.Reply]) -> rxcontext.Reply:
    """Await ``call``, letting each retry wait it arms on ``clock`` pass."""
    task = asyncio.ensure_future(call)
    passed = 0
    while not task.done():
        armed = asyncio.ensure_future(clock.armed(passed + 1))
        await asyncio.wait({task, armed}, return_when=asyncio.FIRST_COMPLETED)
        armed.cancel()
        if len(clock.timers) > passed:
            began, due = clock.timers[passed]
            passed += 1
            clock.advance_by(due - began)
    return await task


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("limit", ["tokens", "usd"])
@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_retry_that_would_go_over_the_budget_is_refused_unsent(path: str, limit: str) -> None:
    """Each retry sends the whole request again, and Anthropic bills each attempt's input at
    message_start: before sending again, what the reply's failed attempts were billed counts
    as spent. Here one retry fits the budget and the next does not: it is refused unsent,
    the reply is kept in a checkpoint with both attempts' usage, which discarding it adds
    to the context's totals, as for any cut attempt."""
    billed = 1000  # input tokens each attempt is billed; and 1 output token
    replay = Replay(*[_billed_then_overloaded(billed)] * 2, real_fixture(RECORDED_ANTHROPIC))
    clock = Clock()
    retry = RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.0)
    cw = ContextWindow(open_store(), anthropic_model(replay), retry=retry, scheduler=clock)
    cw.add_prompt("Hello")
    estimate = cw.live_tokens()
    attempt = expected("claude-sonnet-4-5", "anthropic", input_tokens=billed, output_tokens=1)
    ahead = price(Usage.of(estimate), "claude-sonnet-4-5", "anthropic")
    assert ahead is not None
    # The first request fits, and so does its retry; a second retry would not.
    cw.budget = (
        Budget(max_tokens=billed + 1 + estimate + billed // 2)
        if limit == "tokens"
        else Budget(max_usd=attempt + ahead + attempt / 2)
    )
    with pytest.raises(StreamInterrupted) as cut:
        cw.call() if path == "sync" else asyncio.run(_on_clock(clock, cw.acall()))
    refused = cut.value.__cause__
    assert isinstance(refused, BudgetExceeded) and refused.limit == limit
    assert len(replay.requests) == 2  # the third attempt was never sent
    assert clock.clock == 1.0  # nor waited for: one wait, before the second
    if limit == "tokens":
        assert (refused.spent, refused.estimate) == (2 * (billed + 1), estimate)
        assert f"{2 * (billed + 1)} spent" in str(refused)
    else:
        both = expected("claude-sonnet-4-5", "anthropic", input_tokens=2 * billed, output_tokens=2)
        assert (refused.spent, refused.estimate) == (both, ahead)
    cp = cut.value.checkpoint
    assert cp.text == "" and cp.usage is not None
    assert (cp.usage.input_tokens, cp.usage.output_tokens) == (2 * billed, 2)
    assert cw.checkpoints() == [cp] and cw.active_replies() == []
    assert cw.stats().usage.total_tokens == 0  # nothing settled yet
    cw.discard(cp.id)
    assert cw.stats().usage == cp.usage
    with pytest.raises(BudgetExceeded):  # spent: the next request is refused unsent
        cw.call() if path == "sync" else asyncio.run(cw.acall())
    assert len(replay.requests) == 2


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_retry_prices_what_the_reply_carries_by_the_model_that_billed_it(path: str) -> None:
    """A reply cut on claude-opus-4-1 (its input billed) is resumed on claude-haiku-4-5,
    whose first attempt is billed and fails: before sending again, the opus part counts at
    opus's price and haiku's at haiku's, as the stored reply is priced. Priced all at haiku
    (what the window uses now) it would look 15x cheaper and the retry would go out over
    the budget."""
    billed = 1000
    replay = Replay(*[_billed_then_overloaded(billed)] * 2, real_fixture(RECORDED_ANTHROPIC))
    clock = Clock()
    store = open_store()
    cw = ContextWindow(
        store,
        anthropic_model(replay, "claude-opus-4-1"),
        retry=RetryPolicy(max_attempts=1),
        scheduler=clock,
    )
    cw.add_prompt("Hello")
    with pytest.raises(StreamInterrupted) as cut:
        cw.call()
    cp = cut.value.checkpoint
    assert cp.metadata["model"] == "claude-opus-4-1"
    opus = expected("claude-opus-4-1", "anthropic", input_tokens=billed, output_tokens=1)
    haiku = expected("claude-haiku-4-5", "anthropic", input_tokens=billed, output_tokens=1)
    cw.model = anthropic_model(replay, "claude-haiku-4-5")
    cw.retry = RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=0.0)
    ahead = price(Usage.of(cw.live_tokens()), "claude-haiku-4-5", "anthropic")
    assert ahead is not None
    # The resume's first request fits (what its checkpoint carries counted, at opus's
    # price); its retry, opus's part and haiku's attempt, does not, unless priced all as
    # haiku (2 * haiku).
    cw.budget = Budget(max_usd=ahead + opus + haiku / 2)
    with pytest.raises(StreamInterrupted) as again:
        if path == "sync":
            cw.resume_call(cp.id)
        else:

            async def resumed() -> None:
                async for _ in cw.aresume(cp.id):
                    pass

            asyncio.run(_on_clock(clock, resumed()))
    refused = again.value.__cause__
    assert isinstance(refused, BudgetExceeded) and refused.limit == "usd"
    assert (refused.spent, refused.estimate) == (opus + haiku, ahead)
    assert len(replay.requests) == 2  # the retry was never sent
    cw.discard(again.value.checkpoint.id)
    assert context_cost(cw.records()).usd == opus + haiku  # as the budget counted it


@pytest.mark.usefixtures("both_stores")
def test_a_budget_is_checked_against_the_context_the_request_is_for() -> None:
    """Not the window's current context: a summary of another context, and a tool loop's
    later round after the window was switched to another context meanwhile."""
    call = Chunk(ChunkKind.TOOL_CALL, "{}", id="c1", name="t")
    model = ScriptedModel(
        [
            [call, Chunk(ChunkKind.USAGE, usage=Usage.of(590, 10))],
            usage_script("never", 100),
            usage_script("never either", 100),
        ]
    )
    cw = ContextWindow(open_store(), model, "spent", budget=Budget(max_tokens=600), retry=None)
    cw.summarizer = model

    def moves_on(args: Any) -> str:
        cw.switch_context("fresh")  # another task of the app moves the window on meanwhile
        return "x"

    cw.add_tool(Tool("t", "a tool"), moves_on)
    cw.add_prompt("go")
    with pytest.raises(StreamInterrupted) as cut:
        cw.call()
    assert isinstance(cut.value.__cause__, BudgetExceeded)
    assert "'spent'" in str(cut.value.__cause__)
    assert cw.context.name == "fresh" and len(model.requests) == 1
    with pytest.raises(BudgetExceeded) as refused:
        cw.summarize(context="spent")
    assert "'spent'" in str(refused.value)
    with pytest.raises(BudgetExceeded):
        asyncio.run(cw.asummarize(context="spent"))
    assert len(model.requests) == 1  # neither summary was sent


@pytest.mark.usefixtures("both_stores")
def test_a_money_budget_counts_dollars_and_refuses_unknown_prices() -> None:
    usage = Usage.of(100_000, 10_000)
    one = price(usage, "gpt-4o-mini", "openai")
    assert one is not None
    model = ScriptedModel(
        [[Chunk(ChunkKind.TEXT, "a"), Chunk(ChunkKind.USAGE, usage=usage)]] * 3,
        name="openai:gpt-4o-mini",
    )
    cw = ContextWindow(open_store(), model, budget=Budget(max_usd=one * 3 / 2))
    cw.add_prompt("first")
    cw.call()
    cw.add_prompt("second")
    cw.call()  # one reply's cost spent, under the limit: sent
    cw.add_prompt("third")
    with pytest.raises(BudgetExceeded) as refused:
        cw.call()
    assert refused.value.limit == "usd" and refused.value.spent == one * 2
    assert len(model.requests) == 2
    # A model genai-prices does not know: a money budget cannot be kept, so it refuses.
    unknown = ContextWindow(
        open_store(),
        ScriptedModel([usage_script("a", 10)], name="openai:no-such-model-xyz"),
        budget=Budget(max_usd="1.00"),
    )
    unknown.add_prompt("x")
    with pytest.raises(BudgetExceeded, match="no price for 'openai:no-such-model-xyz'"):
        unknown.call()


def test_budget_values_are_checked() -> None:
    with pytest.raises(ValueError):
        Budget(max_tokens=-1)
    with pytest.raises(ValueError):
        Budget(max_usd="nan")
    assert Budget(max_usd=0.5).usd == Decimal("0.5")
    # A limit that would never hold (NaN compares false: every request went through) or
    # that is no number at all: a clear error at once, not when the budget is first used.
    for bad in (float("nan"), float("inf"), "100", 2.5, True):
        with pytest.raises((ValueError, TypeError), match="max_tokens"):
            Budget(max_tokens=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_usd"):
        Budget(max_usd="abc")


@pytest.mark.usefixtures("both_stores")
def test_a_clone_or_fork_starts_its_own_account_in_tokens_and_in_cost() -> None:
    """A clone or fork copies the conversation, not the spend: the parent's replies were
    billed to the parent. Its token totals start at 0, and so must its cost (and so a
    money budget), or the two accounts of one context disagree and a clone's budget
    counts the parent's dollars. Its own replies are its spend; an export and import
    keeps that split, and a clone of a clone starts at 0 again."""
    replay = Replay(
        real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.1.sse"),
        real_fixture("openai_chat/tool_call_roundtrip_gpt4o_mini.2.sse"),
        real_fixture("anthropic/text_basic_sonnet45.sse"),
    )
    client = openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client())
    store = open_store()
    cw = ContextWindow(store, OpenAIModel("gpt-4o-mini", client=client), context="parent")
    cw.add_tool(Tool("multiply", "Multiply.").number("a").number("b"), lambda a: "2869461")
    cw.add_prompt("What is 1231 * 2331?")
    cw.call()
    parent_usage, parent_cost = cw.stats().usage, context_cost(cw.records())
    assert parent_usage.total_tokens > 0 and parent_cost.priced == 2 and parent_cost.usd > 0
    none = ContextCost(Decimal(0), 0, 0)

    def account(name: str) -> tuple[int, int, ContextCost]:
        other = ContextWindow(store, None, context=name)
        spent = other.stats().usage.total_tokens
        return other.token_usage().total_tokens, spent, context_cost(other.records())

    cw.clone("copy")
    cw.fork("forked", at=cw.records()[-1].id)
    for name in ("copy", "forked"):
        copied = ContextWindow(store, None, context=name)
        assert [r.content for r in copied.records()] == [r.content for r in cw.records()]
        assert account(name) == (0, 0, none), name
    assert (cw.stats().usage, context_cost(cw.records())) == (parent_usage, parent_cost)

    # The clone's own reply is its spend, and a money budget counts that alone: with
    # the parent's spend counted too, this request would be refused.
    copy = ContextWindow(store, anthropic_model(replay), context="copy")
    copy.add_prompt("Hello")
    ahead = price(Usage.of(copy.live_tokens()), "claude-sonnet-4-5", "anthropic")
    assert ahead is not None
    copy.budget = Budget(max_usd=ahead + parent_cost.usd / 2)
    reply = copy.call()
    assert reply.usage is not None
    own = expected(
        "claude-sonnet-4-5",
        "anthropic",
        input_tokens=reply.usage.input_tokens,
        output_tokens=reply.usage.output_tokens,
    )
    assert account("copy") == (
        reply.usage.total_tokens,
        reply.usage.total_tokens,
        ContextCost(own, 1, 0),
    )
    # An export carries the account as it is; a clone of the clone starts a new one.
    copy.import_context(copy.export(), name="moved")
    assert account("moved") == account("copy")
    copy.clone("copy of copy")
    assert account("copy of copy") == (0, 0, none)
    assert (cw.stats().usage, context_cost(cw.records())) == (parent_usage, parent_cost)


# -- a reply resumed on another model -----------------------------------------------------

CUT_ANTHROPIC = Served(
    real_fixture(RECORDED_ANTHROPIC).read_bytes(),
    cut_after=5,  # message_start's usage and a few deltas, then the connection drops
    error=httpx2.ReadError("connection reset"),
)
CONTINUATION = "openai_chat/tool_call_roundtrip_gpt4o_mini.2.sse"


def anthropic_named(replay: Replay, name: str) -> AnthropicModel:
    return AnthropicModel(
        name,
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )


def on(model: str, provider: str, usage: Usage) -> Decimal:
    """``usage`` priced by genai-prices on ``model``, the counts mapped by hand."""
    return expected(
        model, provider, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
    )


def resume(cw: ContextWindow, cp_id: int, path: str) -> None:
    if path == "sync":
        cw.resume_call(cp_id)
        return

    async def drain() -> None:
        async for _ in cw.aresume(cp_id):
            pass

    asyncio.run(drain())


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_reply_resumed_on_another_model_prices_the_cut_attempt_on_its_own(path: str) -> None:
    """A reply on Claude Opus is cut after its input was billed; the window now uses
    gpt-4o-mini and resumes it. The stored reply's usage is the attempt's plus the
    continuation's (the token totals), its text whole, and each part is priced by the model
    that billed it: the Opus tokens at Opus's price, not gpt-4o-mini's (about a tenth)."""
    cut = Replay(CUT_ANTHROPIC)
    store = open_store()
    cw = ContextWindow(store, anthropic_named(cut, "claude-opus-4-1"), retry=None)
    cw.add_prompt("Tell me a pirate joke")
    cp = cut_call(cw, path)
    assert cp.usage is not None and cp.usage.input_tokens > 0
    assert (cp.metadata["provider"], cp.metadata["model"]) == ("anthropic", "claude-opus-4-1")
    cw.model = chat_model(Replay(real_fixture(CONTINUATION)), "gpt-4o-mini")
    resume(cw, cp.id, path)
    (stored,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    continued = Usage.from_dict(stored.metadata["usage"])
    assert stored.content.startswith(cp.text) and len(stored.content) > len(cp.text)
    assert (stored.metadata["provider"], stored.metadata["model"]) == ("openai", "gpt-4o-mini")
    own = Usage.of(
        continued.input_tokens - cp.usage.input_tokens,
        continued.output_tokens - cp.usage.output_tokens,
    )
    assert own.input_tokens > 0  # the continuation's usage is in the sum as well
    assert cw.stats().usage.total_tokens == continued.total_tokens
    whole = on("claude-opus-4-1", "anthropic", cp.usage) + on("gpt-4o-mini", "openai", own)
    assert whole > on("gpt-4o-mini", "openai", continued) * 5
    assert reply_cost(stored) == whole
    assert context_cost(cw.records()) == ContextCost(whole, 1, 0)
    # A money budget counts the Opus part at Opus's price: what is left is too little.
    cw.budget = Budget(max_usd=str(on("gpt-4o-mini", "openai", continued) * 2))
    cw.add_prompt("Another one")
    with pytest.raises(BudgetExceeded):
        cw.call()


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("settle", ["keep", "discard", "resume"])
def test_a_resume_on_another_model_cut_again_prices_each_models_attempt(settle: str) -> None:
    """Cut on Opus, resumed on Sonnet and cut again: the checkpoint's usage is both
    attempts', and it names Sonnet only as the model now. Kept, discarded, or resumed on
    gpt-4o-mini, each attempt is priced by the model that made it."""
    store = open_store()
    cw = ContextWindow(store, anthropic_named(Replay(CUT_ANTHROPIC), "claude-opus-4-1"))
    cw.retry = None
    cw.add_prompt("Tell me a pirate joke")
    first = cut_call(cw, "sync")
    cw.model = anthropic_named(Replay(CUT_ANTHROPIC), "claude-sonnet-4-5")
    with pytest.raises(StreamInterrupted) as again:
        cw.resume_call(first.id)
    cp = again.value.checkpoint
    assert first.usage is not None and cp.usage == first.usage + first.usage
    parts = on("claude-opus-4-1", "anthropic", first.usage) + on(
        "claude-sonnet-4-5", "anthropic", first.usage
    )
    if settle == "keep":
        stored = cw.keep(cp.id)
        assert stored.live and stored.content == cp.text
        assert reply_cost(stored) == parts
    elif settle == "discard":
        cw.discard(cp.id)
        (stored,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
        assert not stored.live and stored.metadata["discarded"] is True
        assert reply_cost(stored) == parts
    else:
        cw.model = chat_model(Replay(real_fixture(CONTINUATION)), "gpt-4o-mini")
        cw.resume_call(cp.id)
        (stored,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
        total = Usage.from_dict(stored.metadata["usage"])
        own = Usage.of(
            total.input_tokens - cp.usage.input_tokens,
            total.output_tokens - cp.usage.output_tokens,
        )
        assert own.input_tokens > 0
        parts += on("gpt-4o-mini", "openai", own)
        assert reply_cost(stored) == parts
    assert stored.metadata["usage"]["input_tokens"] >= cp.usage.input_tokens
    assert context_cost(cw.records()) == ContextCost(parts, 1, 0)


@pytest.mark.usefixtures("both_stores")
def test_a_reply_resumed_on_its_own_model_is_stored_as_before() -> None:
    """Resumed on the model that was cut, the reply's metadata is what it always was: one
    model, one usage, priced whole by it."""
    cw = ContextWindow(open_store(), anthropic_named(Replay(CUT_ANTHROPIC), "claude-opus-4-1"))
    cw.retry = None
    cw.add_prompt("Tell me a pirate joke")
    cp = cut_call(cw, "sync")
    assert set(cp.metadata) == {"model", "provider"}
    body = real_fixture(RECORDED_ANTHROPIC)
    cw.model = anthropic_named(Replay(body), "claude-opus-4-1")
    cw.resume_call(cp.id)
    (stored,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert set(stored.metadata) == {
        "model",
        "provider",
        "usage",
        "finish_reason",
        "truncated",
        "first_chunk_ms",
        "duration_ms",
        "partial",
        "resumed",
    }
    usage = Usage.from_dict(stored.metadata["usage"])
    assert reply_cost(stored) == on("claude-opus-4-1", "anthropic", usage)
