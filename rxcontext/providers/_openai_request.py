"""OpenAI requests with the history spliced in: the stand-in clients of :mod:`._stainless`.

``chat.completions.create`` and ``responses.create`` run the SDK's own code with the
history (``messages`` / ``input``) replaced by a marker, so its per-message transform (about
185 µs a message) never sees the history; the history goes in already encoded, by
:class:`._openai_chat.ChatHistory` / :class:`._openai_responses.ResponsesHistory`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import openai
from openai.resources.chat.completions import AsyncCompletions, Completions
from openai.resources.responses import AsyncResponses, Responses

from ._stainless import AsyncSplicingClient, SplicingClient, given

try:  # the SDK's own encoder, so spliced bodies match what it sends exactly
    from openai._utils._json import openapi_dumps
except ImportError:  # pragma: no cover - another SDK layout: requests use dicts
    openapi_dumps = None  # type: ignore[assignment]

__all__ = ["chat_client", "encode_body", "responses_client", "splicing"]


def encode_body(body: Mapping[str, Any], extra_json: Mapping[str, Any] | None) -> bytes:
    """What the SDK sends for ``body`` (already transformed) and ``extra_body``."""
    # The SDK strips NOT_GIVEN from extra_body's top level before it merges it (a NOT_GIVEN
    # over a body key leaves the body's value), and omit from the merged body.
    merged = {**body, **given(extra_json, openai.NotGiven)} if extra_json else body
    merged = {k: v for k, v in merged.items() if not isinstance(v, openai.Omit)}
    return openapi_dumps(merged)


def splicing(client: openai.OpenAI | openai.AsyncOpenAI) -> bool:
    """Whether ``client`` may be sent a spliced body: not subclasses (Azure rewrites the
    request from the body's ``model``)."""
    return openapi_dumps is not None and type(client) in (openai.OpenAI, openai.AsyncOpenAI)


def _stand_in(client: openai.OpenAI | openai.AsyncOpenAI, key: str, history: list[bytes]) -> Any:
    if isinstance(client, openai.AsyncOpenAI):
        return AsyncSplicingClient(client, key, encode_body, history)
    return SplicingClient(client, key, encode_body, history)


def chat_client(client: openai.OpenAI | openai.AsyncOpenAI, history: list[bytes]) -> Any:
    """A stand-in for ``client`` whose ``chat.completions`` sends ``history`` as ``messages``."""
    spliced = _stand_in(client, "messages", history)
    resource = AsyncCompletions if isinstance(client, openai.AsyncOpenAI) else Completions
    spliced.chat = SimpleNamespace(completions=resource(spliced))
    return spliced


def responses_client(client: openai.OpenAI | openai.AsyncOpenAI, history: list[bytes]) -> Any:
    """A stand-in for ``client`` whose ``responses`` sends ``history`` as ``input``."""
    spliced = _stand_in(client, "input", history)
    resource = AsyncResponses if isinstance(client, openai.AsyncOpenAI) else Responses
    spliced.responses = resource(spliced)
    return spliced
