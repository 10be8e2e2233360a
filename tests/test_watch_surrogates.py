"""Watching a reply whose emoji arrives as two surrogate halves, as the OpenAI SDK delivers
one an escaped pair cut between two deltas ("\\ud83d", then "\\ude00").

The store holds such a pair joined (one character), the live log the halves as delivered
(two). A watcher used to count the log's text in halves and the store's joined: caught up
from a checkpoint it showed one character twice per emoji, and a live one ended with a
REWIND to before the emoji and the whole tail again (a consumer joining the text pieces
got the tail twice). The watcher now shows the text as the store holds it: a pair joined,
a high half held until its low half comes; it ends with the stored text and no REWIND.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redistest
from provider_rules import model_for
from replay import Replay, sse
from watching import WAIT, AsyncWatcher, Owner, Watcher, published, stored_text, until

from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType
from rxcontext.fanout import fanout_for
from rxcontext.providers import ScriptedModel
from rxcontext.store.base import CheckpointDraft, RecordDraft, ReplyTicket

T = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731
HIGH, LOW = "\ud83d", "\ude00"  # 😀 escaped as a pair, cut between two deltas
WORDS = [f" w{i}" for i in range(8)]


@pytest.fixture(params=["memory", "redis"])
def fanout_spec(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The memory fan-out, or Redis under this test's own key prefix on the shared server."""
    if request.param == "memory":
        yield "memory"
        return
    pytest.importorskip("redis")
    from rxcontext.fanout.redis import RedisFanout

    for url, prefix in redistest.shared_prefix():
        fanout = RedisFanout(url, prefix=prefix)
        yield fanout
        fanout.close()


@pytest.fixture(params=[Watcher, AsyncWatcher], ids=["watch", "awatch"])
def watching(request: pytest.FixtureRequest) -> type[Watcher]:
    return request.param  # type: ignore[no-any-return]


def _pieces(watcher: Watcher) -> str:
    """What a consumer that joins the TEXT pieces (``rxops.text()``) ends with."""
    return "".join(c.text for c in watcher.chunks if c.kind is ChunkKind.TEXT)


def _rewinds(watcher: Watcher) -> list[Chunk]:
    return [c for c in watcher.chunks if c.kind is ChunkKind.REWIND]


def test_a_watcher_caught_up_from_a_checkpoint_counts_an_emoji_once(
    make_store: Callable[..., Any], fanout_spec: Any, watching: type[Watcher]
) -> None:
    store = make_store(fanout=fanout_spec)
    cw = ContextWindow(store, ScriptedModel([]), context="emoji", retry=None)
    cw.add_prompt("Go.")
    row = store.begin_reply(cw.context_id, "r-up", owner="worker-a")
    ticket = ReplyTicket(row.id, row.epoch)
    # The owner's checkpoint: what it delivered so far, the pair joined by the store.
    store.save_checkpoint(ticket, CheckpointDraft(append_text="Hi " + HIGH + LOW + " w", chunks=4))
    # No live log yet (a fan-out that was unreachable): the watcher shows the checkpoint.
    watcher = watching(cw, "r-up", poll=0.02, wait=0.05).start()
    assert watcher.wait_for("Hi 😀 w"), watcher.text
    # The log appears, whole from its start: the very chunks the owner delivered.
    channel = fanout_for(store).open_channel("r-up", row.epoch)
    for chunk in (T("Hi "), T(HIGH), T(LOW), T(" w"), T("orld")):
        channel.chunk(chunk)
    assert until(lambda: "orld" in watcher.text), watcher.text
    # Caught up by offsets: "w" was shown already, only "orld" is new (it showed "wworld").
    assert watcher.text == "Hi 😀 world"
    store.commit_reply(
        cw.context_id,
        [RecordDraft(RecordType.MODEL_RESP, "Hi " + HIGH + LOW + " world")],
        reply=ticket,
        end="reply",
    )
    channel.end("completed")
    watcher.join()
    assert watcher.completed and watcher.error is None
    assert stored_text(cw, "r-up") == "Hi 😀 world"
    assert _rewinds(watcher) == []
    assert _pieces(watcher) == watcher.text == "Hi 😀 world"


def _chat_event(content: str | None) -> dict[str, object]:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": None if content else "stop"}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-test",
        "choices": [choice],
    }


def test_a_live_watcher_of_an_emoji_in_halves_ends_without_a_rewind(
    make_store: Callable[..., Any], fanout_spec: Any, watching: type[Watcher]
) -> None:
    pieces = ["smile ", HIGH, LOW, *WORDS]
    replay = Replay(sse(*(_chat_event(p) for p in pieces), _chat_event(None), "[DONE]"))
    store = make_store(fanout=fanout_spec)
    cw = ContextWindow(
        store, model_for("chat", replay), context="emoji", retry=None, checkpoint_every=None
    )
    cw.add_prompt("Go.")
    gate = threading.Semaphore(0)
    owner = Owner(cw, "s", gate=gate).start()
    gate.release(1)  # "smile "
    assert published(fanout_for(store), "s", 1, timeout=WAIT)
    watcher = watching(cw, "s", poll=0.05).start()
    assert watcher.wait_for("smile "), watcher.text  # live: no checkpoints mid-reply
    gate.release(2)  # the halves, each a chunk of its own
    # Shown as one character (it was shown as the two halves the owner's subscriber got).
    assert until(lambda: watcher.text != "smile "), watcher.text
    assert watcher.text == "smile 😀"
    owner.join()
    watcher.join()
    assert owner.error is None and watcher.completed and watcher.error is None
    assert [c.text for c in owner.delivered[:3]] == ["smile ", HIGH, LOW]
    stored = stored_text(cw, "s")
    assert stored == "smile 😀" + "".join(WORDS)
    # No REWIND back to the emoji and the tail sent again: text pieces join to the record.
    assert _rewinds(watcher) == []
    assert _pieces(watcher) == watcher.text == stored
    texts = [c.text for c in watcher.chunks if c.kind is ChunkKind.TEXT]
    assert texts == ["smile ", "😀", *WORDS]
