"""Synthetic provider streams in each provider's real wire format (standard library only).

Every generator copies the frame layout of a recorded fixture in ../shared/fixtures/real
(key order, nulls, the fields a real server sends) and repeats its text-delta frame with
deterministic text, so a stream has as many events as a benchmark asks for. A stream is
returned as a list of byte pieces, one SSE event each, the way a server writes them; the
benchmarks serve those same pieces to every consumer they compare.

This module imports nothing outside the standard library, so benchmarks/peers/ (which runs
in its own virtual environment with openai<3) uses it too.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

__all__ = ["PROVIDERS", "Stream", "deltas", "make_stream"]

# Words and pieces a model might send: plain words, punctuation, newlines, quotes that need
# escaping, non-ASCII text (JSON-escaped by some servers, raw UTF-8 by others).
_VOCAB = (
    " the",
    " a",
    " stream",
    " of",
    " tokens",
    ",",
    ".",
    " and",
    " reply",
    " model",
    " context",
    " window",
    "\n",
    "\n\n",
    ' "quoted"',
    " café",
    " naïve",
    " 東京",
    " 😀",
    ' x = {"k": [1, 2]}',
    " back\\slash",
    "\ttab",
    " reactive",
    " observable",
    " persisted",
    " SQLite",
    " checkpoint",
    " resume",
    " 42",
    " -",
    " **bold**",
)


def deltas(n: int, seed: int = 6) -> list[str]:
    """``n`` deterministic text deltas of one to three vocabulary pieces each."""
    rng = random.Random(seed)
    return ["".join(rng.choices(_VOCAB, k=rng.randint(1, 3))) for _ in range(n)]


def _dumps(payload: object) -> str:
    # The servers send compact JSON; OpenAI escapes non-ASCII, which json does by default.
    return json.dumps(payload, separators=(",", ":"))


def _data(payload: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {_dumps(payload)}\n\n".encode()


@dataclass(frozen=True)
class Stream:
    """One synthetic response: its SSE pieces and the reply text they carry."""

    provider: str
    pieces: tuple[bytes, ...]
    text: str

    @property
    def events(self) -> int:
        return len(self.pieces)

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


def openai_chat(n_events: int) -> Stream:
    """Chat Completions, as openai_chat/tool_call_roundtrip_gpt4o_mini.2.sse (gpt-4o-mini)."""
    texts = deltas(max(1, n_events - 4))
    base = {
        "id": "chatcmpl-BWlJCN7VZTtSHROczp0AbrjFGhRMA",
        "object": "chat.completion.chunk",
        "created": 1747148050,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_0392822090",
    }

    def frame(delta: dict[str, object], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _data({**base, "choices": [choice], "usage": None})

    pieces = [frame({"role": "assistant", "content": "", "refusal": None})]
    pieces += [frame({"content": t}) for t in texts]
    pieces.append(frame({}, "stop"))
    usage = {
        "prompt_tokens": 87,
        "completion_tokens": len(texts),
        "total_tokens": 87 + len(texts),
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    pieces.append(_data({**base, "choices": [], "usage": usage}))
    pieces.append(b"data: [DONE]\n\n")
    return Stream("openai_chat", tuple(pieces), "".join(texts))


def _response(status: str, output: list[object], usage: object, completed: bool) -> dict:
    return {
        "id": "resp_00592e63e61b66660169fab1b9f8e481a2b321356198d7ac1b",
        "object": "response",
        "created_at": 1778037177,
        "status": status,
        "background": False,
        "completed_at": 1778037178 if completed else None,
        "error": None,
        "frequency_penalty": 0.0,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": "gpt-5.5-2026-04-23",
        "moderation": None,
        "output": output,
        "parallel_tool_calls": True,
        "presence_penalty": 0.0,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "prompt_cache_retention": "24h",
        "reasoning": {"effort": "low", "summary": None},
        "safety_identifier": None,
        "service_tier": "default" if completed else "auto",
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 0.98,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def openai_responses(n_events: int) -> Stream:
    """Responses API, as openai_responses/text_basic_gpt55.sse (gpt-5.5)."""
    texts = deltas(max(1, n_events - 8))
    text = "".join(texts)
    item_id = "msg_00592e63e61b66660169fab1bada8481a28ef92eb62c168ead"
    seq = iter(range(1 << 30))
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

    def ev(kind: str, **fields: object) -> bytes:
        return _data({"type": kind, **fields, "sequence_number": next(seq)}, kind)

    def part(t: str) -> dict:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": t}

    def item(status: str, content: list[object]) -> dict:
        return {
            "id": item_id,
            "type": "message",
            "status": status,
            "content": content,
            "phase": "final_answer",
            "role": "assistant",
        }

    pieces = [
        ev("response.created", response=_response("in_progress", [], None, False)),
        ev("response.in_progress", response=_response("in_progress", [], None, False)),
        ev("response.output_item.added", item=item("in_progress", []), output_index=0),
        ev(
            "response.content_part.added",
            content_index=0,
            item_id=item_id,
            output_index=0,
            part=part(""),
        ),
    ]
    for t in texts:
        obfuscation = "".join(rng.choices(alphabet, k=12))
        # Field order as the server sends it: sequence_number comes last via ev().
        pieces.append(
            ev(
                "response.output_text.delta",
                content_index=0,
                delta=t,
                item_id=item_id,
                logprobs=[],
                obfuscation=obfuscation,
                output_index=0,
            )
        )
    pieces.append(
        ev(
            "response.output_text.done",
            content_index=0,
            item_id=item_id,
            logprobs=[],
            output_index=0,
            text=text,
        )
    )
    pieces.append(
        ev(
            "response.content_part.done",
            content_index=0,
            item_id=item_id,
            output_index=0,
            part=part(text),
        )
    )
    done_item = item("completed", [part(text)])
    pieces.append(ev("response.output_item.done", item=done_item, output_index=0))
    usage = {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(texts),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 11 + len(texts),
    }
    pieces.append(
        ev("response.completed", response=_response("completed", [done_item], usage, True))
    )
    return Stream("openai_responses", tuple(pieces), text)


def anthropic(n_events: int) -> Stream:
    """Messages API, as anthropic/text_basic_sonnet45.sse (claude-sonnet-4-5)."""
    texts = deltas(max(1, n_events - 6))
    start = {
        "type": "message_start",
        "message": {
            "model": "claude-sonnet-4-5-20250929",
            "id": "msg_017A4s3HAsrqf5d2WvBmrpLr",
            "type": "message",
            "role": "assistant",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 17,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 1,
                "service_tier": "standard",
                "inference_geo": "not_available",
            },
        },
    }
    pieces = [
        _data(start, "message_start"),
        _data(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
        b'event: ping\ndata: {"type": "ping"}\n\n',
    ]
    for t in texts:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": t},
        }
        pieces.append(_data(delta, "content_block_delta"))
    pieces.append(_data({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    usage = {
        "input_tokens": 17,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": len(texts),
    }
    pieces.append(
        _data(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": usage,
            },
            "message_delta",
        )
    )
    pieces.append(_data({"type": "message_stop"}, "message_stop"))
    return Stream("anthropic", tuple(pieces), "".join(texts))


def gemini(n_events: int) -> Stream:
    """streamGenerateContent?alt=sse, as gemini/thought_summaries_gemini25pro.sse (2.5 pro).

    Gemini separates keys with ``", "`` and puts a usage block on every event, whose
    ``candidatesTokenCount`` grows as the reply does.
    """
    texts = deltas(max(1, n_events))
    pieces = []
    for i, t in enumerate(texts):
        candidate: dict[str, object] = {"content": {"parts": [{"text": t}], "role": "model"}}
        if i == len(texts) - 1:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        payload = {
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": 34,
                "candidatesTokenCount": i + 1,
                "totalTokenCount": 34 + 787 + i + 1,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 34}],
                "thoughtsTokenCount": 787,
            },
            "modelVersion": "gemini-2.5-pro",
            "responseId": "beHBaJfEMIi-qtsP3769-Q8",
        }
        data = json.dumps(payload, separators=(",", ": "), ensure_ascii=False)
        pieces.append(f"data: {data}\r\n\r\n".encode())
    return Stream("gemini", tuple(pieces), "".join(texts))


PROVIDERS = {
    "openai_chat": openai_chat,
    "openai_responses": openai_responses,
    "anthropic": anthropic,
    "gemini": gemini,
}


def make_stream(provider: str, n_events: int) -> Stream:
    """The synthetic stream of ``provider`` with about ``n_events`` SSE events."""
    return PROVIDERS[provider](n_events)
