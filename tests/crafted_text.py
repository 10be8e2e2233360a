"""Crafted SSE bodies of a plain text reply, one per provider, shaped like the recorded ones
in ../shared/fixtures/real (which hold no structured-output reply): the text arrives in the
given pieces, then a normal stop with usage."""

from __future__ import annotations

import json
from typing import Any

from replay import sse

KINDS = ("chat", "responses", "anthropic", "gemini")


def text_body(kind: str, pieces: list[str]) -> bytes:
    """The SSE body of a reply whose text is ``"".join(pieces)``, for provider ``kind``."""
    return {"chat": _chat, "responses": _responses, "anthropic": _anthropic, "gemini": _gemini}[
        kind
    ](pieces)


def _chat(pieces: list[str]) -> bytes:
    base = {"id": "chatcmpl-crafted", "object": "chat.completion.chunk", "created": 1}
    base["model"] = "gpt-test"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events: list[Any] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in pieces]
    events.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    events.append({**base, "choices": [], "usage": usage})
    events.append("[DONE]")
    return sse(*events)


def _responses(pieces: list[str]) -> bytes:
    text = "".join(pieces)
    rid, mid = "resp_crafted", "msg_crafted"
    response = {
        "id": rid,
        "object": "response",
        "created_at": 1,
        "status": "in_progress",
        "model": "gpt-test",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    item = {
        "id": mid,
        "type": "message",
        "status": "in_progress",
        "content": [],
        "role": "assistant",
    }
    done_item = {**item, "status": "completed", "content": [{**part, "text": text}]}
    usage = {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 21,
    }
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response},
        {"type": "response.output_item.added", "item": item, "output_index": 0},
        {
            "type": "response.content_part.added",
            "item_id": mid,
            "output_index": 0,
            "content_index": 0,
            "part": part,
        },
    ]
    for p in pieces:
        events.append(
            {
                "type": "response.output_text.delta",
                "item_id": mid,
                "output_index": 0,
                "content_index": 0,
                "delta": p,
                "logprobs": [],
            }
        )
    events += [
        {
            "type": "response.output_text.done",
            "item_id": mid,
            "output_index": 0,
            "content_index": 0,
            "text": text,
            "logprobs": [],
        },
        {"type": "response.output_item.done", "item": done_item, "output_index": 0},
        {
            "type": "response.completed",
            "response": {**response, "status": "completed", "output": [done_item], "usage": usage},
        },
    ]
    for n, event in enumerate(events):
        event["sequence_number"] = n
    return sse(*events, event_names=[e["type"] for e in events])


def _anthropic(pieces: list[str]) -> bytes:
    message = {
        "id": "msg_crafted",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in pieces
    ]
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    return sse(*events, event_names=[e["type"] for e in events])


def _gemini(pieces: list[str]) -> bytes:
    events = []
    for n, p in enumerate(pieces):
        candidate: dict[str, Any] = {"content": {"parts": [{"text": p}], "role": "model"}}
        if n == len(pieces) - 1:
            candidate["finishReason"] = "STOP"
        events.append(
            json.dumps(
                {
                    "candidates": [candidate],
                    "usageMetadata": {
                        "promptTokenCount": 12,
                        "candidatesTokenCount": 9,
                        "totalTokenCount": 21,
                    },
                    "modelVersion": "gemini-test",
                    "responseId": "crafted",
                }
            )
        )
    return sse(*events, crlf=True)
