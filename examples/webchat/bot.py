"""The offline bot: a model that needs no key and no network, reached through the real SDK.

Its replies are computed from the request the ``openai`` SDK sends (like a real model would
answer it): a Markdown answer quoting the last prompt, streamed as Chat Completions SSE
frames over an ``httpx2`` transport. A continuation request (a resume: the partial reply as
an assistant turn, then :data:`rxcontext.window.CONTINUE_PROMPT`) gets exactly the rest of
the same answer, so a resumed reply reads as if it had never been cut.

``pace`` decides when each event goes out: :class:`Delay` for people (and the CLI's
``--delay``), or any object with the same ``async wait(n)`` method (the browser tests use a
gate they open event by event).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx2

from rxcontext.providers.base import Model
from rxcontext.providers.replay import ScriptedReply, chat_sse
from rxcontext.window import CONTINUE_PROMPT

__all__ = ["BOT_NAME", "Delay", "OfflineBot", "Pace", "answer", "offline_model"]

BOT_NAME = "offline-bot"


class Pace(Protocol):
    """When the bot may send its ``n``-th event of a reply (n counts from 1)."""

    async def wait(self, n: int) -> None: ...


class Delay:
    """``seconds`` between two events, like a model that writes at a steady speed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def wait(self, n: int) -> None:
        if self.seconds > 0:
            await asyncio.sleep(self.seconds)


def answer(prompt: str) -> str:
    """The bot's whole answer to ``prompt``: Markdown that shows what the page renders."""
    quoted = "\n".join("> " + line for line in prompt.splitlines() or [""])
    return (
        f"You wrote:\n\n{quoted}\n\n"
        "This reply is **streamed** by an asyncio server, a few words at a time:\n\n"
        "1. the *offline bot* answers through the real `openai` SDK;\n"
        "2. rxcontext turns each event into a `Chunk` and stores the reply in SQLite "
        "when it ends;\n"
        "3. the page renders the Markdown as it arrives, and shows HTML as text.\n\n"
        "```python\n"
        "async for chunk in cw.astream(reply_id=reply_id):\n"
        "    await send(chunk)\n"
        "```\n\n"
        "Press **Stop** mid-reply and what you saw is kept as a checkpoint: *Resume* "
        "finishes it in place, *Keep* stores it as it is, *Discard* drops it. Reloading "
        "the page does not stop a reply: it goes on streaming. More on the streams in the "
        "[RxPY documentation](https://rxpy.readthedocs.io/)."
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def reply_to(messages: list[dict[str, Any]]) -> str:
    """What the bot says to a Chat Completions ``messages`` list."""
    said = [(m.get("role"), _text(m.get("content"))) for m in messages]
    if len(said) >= 2 and said[-1] == ("user", CONTINUE_PROMPT) and said[-2][0] == "assistant":
        partial = said[-2][1]
        asked = [text for role, text in said[:-2] if role == "user"]
        whole = answer(asked[-1]) if asked else ""
        return whole[len(partial) :] if whole.startswith(partial) else " …"
    asked = [text for role, text in said if role == "user"]
    return answer(asked[-1]) if asked else "Hello."


class _PacedBody(httpx2.AsyncByteStream):
    def __init__(self, events: list[bytes], pace: Pace) -> None:
        self._events = events
        self._pace = pace

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for n, event in enumerate(self._events):
            if n:
                await self._pace.wait(n)
            yield event

    async def aclose(self) -> None:
        pass


class OfflineBot(httpx2.AsyncBaseTransport):
    """An ``httpx2`` transport that answers Chat Completions requests as the offline bot."""

    def __init__(self, pace: Pace) -> None:
        self.pace = pace
        self.requests = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(await request.aread())
        messages = body.get("messages", [])
        self.requests += 1
        text = reply_to(messages)
        # A rough token count: about four characters a token.
        prompt_tokens = max(1, sum(len(_text(m.get("content"))) for m in messages) // 4)
        events = chat_sse(
            ScriptedReply(text, model=BOT_NAME, usage=(prompt_tokens, max(1, len(text) // 4))),
            response_id=f"chatcmpl-offline-{self.requests}",
        )
        return httpx2.Response(
            200,
            headers={"content-type": "text/event-stream"},
            stream=_PacedBody(events, self.pace),
        )


def offline_model(pace: Pace) -> Model:
    """An ``OpenAIModel`` whose real async ``openai`` client talks to the offline bot."""
    import openai

    from rxcontext.providers import OpenAIModel

    client = openai.AsyncOpenAI(
        api_key="offline-bot-needs-no-key",
        base_url="http://offline-bot.invalid/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=OfflineBot(pace)),
    )
    return OpenAIModel(BOT_NAME, async_client=client)
