"""The sync driver ends a reply at its time limit while the server is silent.

A real local server sends the response's headers and its first events (the text "Hello"),
then nothing, the connection open. The SDK clients are real, with their own read timeout (600
s for OpenAI) far away: only the driver's watchdog, shutting the connection's socket, can
end the blocked read. The call runs on a thread joined with a generous bound; nothing here
asserts how long the library took.
"""

from __future__ import annotations

import threading
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from crafted_text import KINDS, text_body
from google import genai
from google.genai import types
from localserver import silent_server
from replay import pieces

import rxcontext
from rxcontext import ContextWindow, DeadlineExceeded, IdleTimeout, StreamInterrupted, Timeouts
from rxcontext.providers import AnthropicModel, GeminiModel, OpenAIModel, OpenAIResponsesModel

pytestmark = pytest.mark.slow  # seconds of real deadlines and faults: a step of its own (setup.cfg)

KEY = "sk-test-silent-0123456789"
BOUND = 30.0
"""How long the test waits for the call (the SDK's own read timeout is 600 s)."""


def first_events(kind: str) -> bytes:
    """The SSE events of ``kind``'s reply up to and including the one carrying "Hello"."""
    out = b""
    for piece in pieces(text_body(kind, ["Hello", " never sent"])):
        out += piece
        if b'"Hello"' in piece:
            return out
    raise AssertionError("no Hello event")


def model_at(kind: str, url: str, wire: str) -> Any:
    """A model whose real SDK client talks to ``url`` over real sockets."""
    if kind in ("chat", "responses"):
        client = openai.OpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0)
        cls = OpenAIModel if kind == "chat" else OpenAIResponsesModel
        return cls("gpt-test", client=client, wire=wire)
    if kind == "anthropic":
        client = anthropic.Anthropic(api_key=KEY, base_url=url, max_retries=0)
        return AnthropicModel("claude-test", client=client, wire=wire)
    options = types.HttpOptions(base_url=url, httpx_client=httpx2.Client())
    return GeminiModel(
        "gemini-test", client=genai.Client(api_key=KEY, http_options=options), wire=wire
    )


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("limit", ["deadline", "idle"])
def test_a_silent_server_cannot_hold_a_sync_call_past_its_limit(
    tmp_path: Any, kind: str, wire: str, limit: str
) -> None:
    with silent_server(first_events(kind)) as server:
        store = rxcontext.open(str(tmp_path / "chat.db"))
        timeouts = Timeouts(idle=0.5) if limit == "idle" else None
        cw = ContextWindow(store, model_at(kind, server.url, wire), "silent", timeouts=timeouts)
        cw.add_prompt("hi")
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                # The deadline counts from the call, so it must outlast the way to the
                # first event (the Responses SDK's first parse, at a load of ~20, took
                # more than 0.5 s once): the reply is to end while the server is silent.
                cw.call(deadline=1.5 if limit == "deadline" else None)
            except BaseException as error:
                outcome.append(error)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(BOUND)
        blocked = thread.is_alive()
        # The client's end of the connection is shut (the server's thread sees it when its
        # recv returns, which may come after the call has returned).
        closed = not blocked and server.gone.wait(BOUND)
        # Leaving the block shuts the server's side, which ends a call still blocked.
    thread.join(BOUND)
    assert not blocked, f"the call was still reading after {BOUND} s"
    assert closed, "the HTTP response was left open"
    (error,) = outcome
    assert isinstance(error, StreamInterrupted), repr(error)
    assert isinstance(error.__cause__, DeadlineExceeded if limit == "deadline" else IdleTimeout)
    assert error.checkpoint.text == "Hello"
    (checkpoint,) = cw.checkpoints()
    assert checkpoint.text == "Hello"
    store.close()
