"""The Redis fan-out when Redis misbehaves: paused (a cut network), killed and restarted
empty, a reply's stream evicted mid-reply, never there at all; fenced old owners; the
client settings that keep the owner from waiting on any of it.

Destructive cases run a private ``redis-server`` on a random port; the others use the
shared server under a key prefix of the test's own. In every case the owner's stream and
its storage go on with no error, and the watcher ends with the stored record.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redistest
from provider_rules import model_for
from replay import Replay, sse
from watching import WAIT, AsyncWatcher, Owner, Watcher, published, stored_text, until

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.providers import ScriptedModel

redis = pytest.importorskip("redis")
from rxcontext.fanout.redis import RedisFanout  # noqa: E402

T = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731
N = 12
WORDS = [f"w{i} " for i in range(N)]


def words(n: int) -> str:
    return "".join(WORDS[:n])


def _window(fanout: RedisFanout) -> ContextWindow:
    store = rxcontext.open(":memory:", fanout=fanout)
    script = [*(T(w) for w in WORDS), Chunk(ChunkKind.DONE, finish_reason="stop")]
    # No periodic checkpoints: mid-reply, only the live channel can show new text.
    cw = ContextWindow(
        store, ScriptedModel([script]), context="faults", retry=None, checkpoint_every=None
    )
    cw.add_prompt("Count.")
    return cw


@pytest.fixture
def shared() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


@pytest.fixture(params=[Watcher, AsyncWatcher], ids=["watch", "awatch"])
def watching(request: pytest.FixtureRequest) -> type[Watcher]:
    """``cw.watch`` (an Rx subscription on a thread) or ``cw.awatch`` (an ``async for`` on
    an event loop, its waits futures the tail thread resolves)."""
    return request.param  # type: ignore[no-any-return]


def _started(
    cw: ContextWindow, gate: threading.Semaphore, n: int, watching: type[Watcher] = Watcher
) -> tuple[Owner, Watcher]:
    """An owner held by ``gate`` and a live watcher that has seen its first ``n`` chunks."""
    owner = Owner(cw, "r", gate=gate).start()
    gate.release(n)
    watcher = watching(cw, "r", poll=0.05).start()
    assert watcher.wait_for(words(n)), watcher.text
    return owner, watcher


def test_the_clients_fail_fast_and_never_retry() -> None:
    fanout = RedisFanout("redis://127.0.0.1:1/0")
    try:
        writer = fanout._writer.connection_pool.connection_kwargs
        reader = fanout._reader.connection_pool.connection_kwargs
        assert writer["socket_timeout"] == 0.5 and writer["socket_connect_timeout"] == 0.5
        assert writer["retry"].get_retries() == 0 and reader["retry"].get_retries() == 0
        assert reader["socket_timeout"] > 1.0  # longer than any XREAD BLOCK
        tail = fanout._tail._client.connection_pool.connection_kwargs  # the watches' tail
        assert tail["socket_timeout"] > 1.0 and tail["retry"].get_retries() == 0
    finally:
        fanout.close()


def test_redis_never_there_costs_the_owner_nothing(
    private: redistest.PrivateRedis, watching: type[Watcher]
) -> None:
    private.kill()  # its port now refuses connections
    fanout = RedisFanout(private.url)
    cw = _window(fanout)
    owner = Owner(cw, "r", hold=4).start()
    watcher = watching(cw, "r", poll=0.05).start()
    owner.join()
    watcher.join()
    fanout.close()
    assert owner.error is None and watcher.completed
    assert watcher.text == stored_text(cw, "r") == words(N)


def test_a_paused_redis_never_blocks_the_owner(
    private: redistest.PrivateRedis, watching: type[Watcher]
) -> None:
    fanout = RedisFanout(private.url)
    cw = _window(fanout)
    gate = threading.Semaphore(0)
    owner, watcher = _started(cw, gate, 3, watching)
    private.pause()  # connections hang, as behind a cut network
    try:
        gate.release(10_000)
        # redis-py's default client would retry each write for ~99 s; pinned, the owner
        # finishes (and stores) while Redis is still unreachable.
        assert owner.done.wait(WAIT) and owner.error is None
        assert stored_text(cw, "r") == words(N)
        watcher.join()  # falls back to the store, which has the completed reply
        assert watcher.completed and watcher.text == words(N)
    finally:
        private.resume()
        fanout.close()


def test_redis_restarted_empty_watchers_go_live_again(
    private: redistest.PrivateRedis, watching: type[Watcher]
) -> None:
    fanout = RedisFanout(private.url)
    cw = _window(fanout)
    gate = threading.Semaphore(0)
    owner, watcher = _started(cw, gate, 3, watching)
    private.kill()
    gate.release(3)  # delivered while Redis is down: the owner does not notice
    assert owner.error is None
    private.start()  # back, and empty
    # No checkpoints are written mid-reply, so only the live channel can bring these.
    assert watcher.wait_for(words(6)), watcher.text
    client = private.client()
    assert client.pttl(fanout.key("r")) > 0  # the log made whole again expires too
    client.close()
    gate.release(2)
    assert watcher.wait_for(words(8)), watcher.text
    owner.join()
    watcher.join()
    fanout.close()
    assert owner.error is None and watcher.completed
    assert watcher.chunks == owner.delivered  # nothing lost, nothing twice
    assert watcher.text == stored_text(cw, "r") == words(N)


def test_a_stream_evicted_mid_reply_is_made_whole(shared: tuple[str, str]) -> None:
    url, prefix = shared
    fanout = RedisFanout(url, prefix=prefix)
    cw = _window(fanout)
    gate = threading.Semaphore(0)
    owner, watcher = _started(cw, gate, 4)
    client = redis.Redis.from_url(url)
    assert client.delete(fanout.key("r")) == 1  # as an eviction policy would
    gate.release(2)
    assert watcher.wait_for(words(6)), watcher.text
    owner.join()
    watcher.join()
    fanout.close()
    client.close()
    assert watcher.chunks == owner.delivered
    assert watcher.text == stored_text(cw, "r") == words(N)


def test_every_stream_key_expires(shared: tuple[str, str]) -> None:
    url, prefix = shared
    fanout = RedisFanout(url, prefix=prefix, live_ttl=120, end_ttl=60)
    cw = _window(fanout)
    gate = threading.Semaphore(0)
    owner, watcher = _started(cw, gate, 2)  # the watcher saw them: the stream exists
    client = redis.Redis.from_url(url)
    key = fanout.key("r")
    assert 60_000 < client.pttl(key) <= 120_000  # while streaming
    owner.join()
    watcher.join()
    assert fanout.drain(WAIT)  # the end was sent, and with it the shorter expiry
    fanout.close()
    ttl = client.pttl(key)
    client.close()
    assert 0 < ttl <= 60_000


def test_a_fenced_owner_cannot_write_into_the_new_epoch(shared: tuple[str, str]) -> None:
    url, prefix = shared
    fanout = RedisFanout(url, prefix=prefix)
    new = fanout.open_channel("r", 2, "Hi ")
    new.chunk(T("there"))
    new.end("completed")
    zombie = fanout.open_channel("r", 1)  # the old owner, back from a pause
    zombie.chunk(T("stale"))
    zombie.end("interrupted")
    fanout.close()
    reader = RedisFanout(url, prefix=prefix)
    entries = reader.read("r", None, epoch=1, wait=0, cancelled=threading.Event())
    reader.close()
    assert entries is not None
    assert [type(e).__name__ for e in entries] == ["Begin", "Chunks", "End"]
    assert all(e.epoch == 2 for e in entries)
    assert entries[1].chunks == [T("there")]  # type: ignore[union-attr]


def test_a_reply_that_overflows_the_queue_is_served_from_the_store(
    shared: tuple[str, str],
) -> None:
    url, prefix = shared
    fanout = RedisFanout(url, prefix=prefix, max_queue=3, flush_every=3600.0)
    cw = _window(fanout)
    gate = threading.Semaphore(0)
    owner = Owner(cw, "r", gate=gate).start()
    gate.release(10_000)  # all twelve chunks queue up before the writer's next turn
    assert owner.done.wait(WAIT) and owner.error is None
    assert fanout.drain(WAIT)
    watcher = Watcher(cw, "r", poll=0.05).start().join()
    client = redis.Redis.from_url(url)
    assert not client.exists(fanout.key("r"))  # given up: nothing half there
    client.close()
    fanout.close()
    assert watcher.completed and watcher.text == stored_text(cw, "r") == words(N)


def test_a_reply_given_up_before_its_end_is_let_go_when_it_ends(shared: tuple[str, str]) -> None:
    """A reply whose queue overflowed, its stream already deleted, and whose end comes
    after that: the writer lets go of it. It used to keep it for as long as no other reply
    had something to send (``drain`` waited its whole timeout; an idle process kept it)."""
    url, prefix = shared
    fanout = RedisFanout(url, prefix=prefix, max_queue=3, flush_every=3600.0)
    client = redis.Redis.from_url(url)
    try:
        channel = fanout.open_channel("r", 1)  # wakes the writer: its Begin is sent
        assert published(fanout, "r", 0)
        for word in WORDS[:5]:
            channel.chunk(T(word))
        assert not fanout.drain(0.01)  # a nudge: the writer's turn finds five queued
        # Given up: its stream deleted.
        assert until(lambda: not client.exists(fanout.key("r"))), "never given up"
        channel.end("completed")
        assert fanout.drain(5.0)
        assert not client.exists(fanout.key("r"))
    finally:
        client.close()
        fanout.close()


def test_a_healed_partition_resumes_the_live_channel_without_a_gap(
    private: redistest.PrivateRedis, watching: type[Watcher]
) -> None:
    fanout = RedisFanout(private.url)
    cw = _window(fanout)
    gate = threading.Semaphore(0)
    owner, watcher = _started(cw, gate, 3, watching)
    private.pause()
    try:
        gate.release(3)  # delivered while Redis hangs: queued, the owner unaware
        assert owner.error is None
    finally:
        private.resume()
    # The stream kept what it had: the writer sends what is queued, and the watcher (live
    # again; no checkpoints are written mid-reply) shows it.
    assert watcher.wait_for(words(6)), watcher.text
    owner.join()
    watcher.join()
    fanout.close()
    assert watcher.chunks == owner.delivered
    assert watcher.text == stored_text(cw, "r") == words(N)


HIGH, LOW = "\ud83d", "\ude00"  # 😀 escaped as a pair, cut between two deltas


def _chat_event(content: str | None) -> dict[str, object]:
    delta = {} if content is None else {"content": content}
    finish = "stop" if content is None else None
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-test",
        "choices": [choice],
    }


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_an_emoji_cut_between_two_entries_is_published_and_others_still_are(
    shared: tuple[str, str], watching: type[Watcher], wire: str
) -> None:
    """The OpenAI SDK, on both wires, delivers an escaped emoji cut between two deltas as
    two lone halves, which UTF-8 cannot hold. Its entry used to fail the writer's whole
    pipeline as if Redis were unreachable, every turn: no reply of the process was published
    again. Here the high half ends one entry and the low half begins the next, and a reply
    begun after them, in the same process, must be published too."""
    url, prefix = shared
    fanout = RedisFanout(url, prefix=prefix)
    store = rxcontext.open(":memory:", fanout=fanout)
    pieces = ["smile ", HIGH, LOW, *WORDS]
    replay = Replay(sse(*(_chat_event(p) for p in pieces), _chat_event(None), "[DONE]"))
    done = Chunk(ChunkKind.DONE, finish_reason="stop")
    models = {
        "s": model_for("chat", replay, wire),
        "p": ScriptedModel([[*(T(w) for w in WORDS), done]]),
    }
    windows = {}
    for reply, model in models.items():
        windows[reply] = ContextWindow(
            store, model, context=reply, retry=None, checkpoint_every=None
        )
        windows[reply].add_prompt("Go.")
    try:
        gate = threading.Semaphore(0)
        owner = Owner(windows["s"], "s", gate=gate).start()
        gate.release(2)  # "smile " and the high half
        assert published(fanout, "s", 2, timeout=5.0), "the high half was never published"
        watcher = watching(windows["s"], "s", poll=0.05).start()
        # No checkpoints mid-reply: only the live log can show these. The high half is
        # held until its low half comes (the store joins them: one character).
        assert watcher.wait_for("smile "), watcher.text
        gate.release(1)  # the low half, in an entry of its own
        assert published(fanout, "s", 3, timeout=5.0)
        assert watcher.wait_for("smile 😀"), watcher.text
        # A reply begun after the emoji, in the same process, is published live.
        other_gate = threading.Semaphore(0)
        other = Owner(windows["p"], "p", gate=other_gate).start()
        other_gate.release(3)
        other_watcher = watching(windows["p"], "p", poll=0.05).start()
        assert other_watcher.wait_for(words(3)), other_watcher.text
        for o in (owner, other):
            o.join()
        for w in (watcher, other_watcher):
            w.join()
        assert fanout.drain(WAIT) and fanout.connected  # the Ends were sent
    finally:
        fanout.close()
    assert owner.error is None and other.error is None
    assert watcher.completed and other_watcher.completed
    # Live, the watcher got the very chunks the owner's subscriber got, the halves joined
    # as the store joins them, and no REWIND at the end.
    assert [c.text for c in owner.delivered[:3]] == ["smile ", HIGH, LOW]
    joined = [owner.delivered[0], T("😀"), *owner.delivered[3:]]
    assert watcher.chunks == joined
    assert other_watcher.chunks == other.delivered
    # And it ends with the stored text (the store joins the halves into the emoji).
    assert watcher.text == stored_text(windows["s"], "s") == "smile 😀" + words(N)
    assert other_watcher.text == stored_text(windows["p"], "p") == words(N)


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("a bug in a value's repr")


def test_an_entry_that_cannot_be_encoded_gives_up_its_own_reply_alone(
    shared: tuple[str, str],
) -> None:
    """An error that is not Redis's (one entry that cannot be encoded) is that reply's: it
    is given up (its watchers read the store), the other replies of the process are sent.
    It used to fail the whole pipeline every turn, as if Redis were unreachable."""
    url, prefix = shared
    fanout = RedisFanout(url, prefix=prefix)
    try:
        bad = fanout.open_channel("bad", 1)
        good = fanout.open_channel("good", 1)
        bad.chunk(Chunk(ChunkKind.TEXT, "x", metadata={"odd": _Unprintable()}))
        good.chunk(T("fine"))
        for channel in (bad, good):
            channel.end("completed")
        assert fanout.drain(5.0) and fanout.connected
        entries = fanout.read("good", None, epoch=1, wait=0, cancelled=threading.Event())
        assert fanout.read("bad", None, epoch=1, wait=0, cancelled=threading.Event()) is None
    finally:
        fanout.close()
    assert entries is not None
    assert [type(e).__name__ for e in entries] == ["Begin", "Chunks", "End"]
    assert entries[1].chunks == [T("fine")]  # type: ignore[union-attr]


def test_a_reply_queued_past_max_queue_while_redis_hangs_is_given_up_and_let_go(
    private: redistest.PrivateRedis,
) -> None:
    """``max_queue`` counts every unsent chunk of a reply, those the writer took from its
    inbox included. The writer moved each inbox into its unsent list every turn whether or
    not Redis answered, so the inbox never grew past ``max_queue``: while Redis hung, a
    reply's unsent chunks grew without bound, and an ended reply was kept until sent."""
    fanout = RedisFanout(private.url, max_queue=50, timeout=0.1, reconnect_max=0.1)
    client = private.client()
    try:
        channels = [fanout.open_channel(f"r{i}", 1) for i in range(3)]
        for channel in channels:
            assert published(fanout, channel.reply_id, 0)  # each one's Begin is there
        private.pause()  # connections hang, as behind a cut network
        for batch in range(5):  # 200 chunks a reply, never more than 40 in its inbox
            for channel in channels:
                for i in range(40):
                    channel.chunk(T(f"b{batch}c{i} "))
            for channel in channels:
                assert until(lambda c=channel: not c.inbox), "the writer never took them"
        for channel in channels:
            assert channel.dropped, f"{len(channel.pending)} chunks unsent, none given up"
            assert not channel.pending and not channel.chunks
        for channel in channels:
            channel.end("completed")
        # Given up and ended: nothing is kept for them, Redis or not.
        assert until(lambda: not fanout._open), f"{len(fanout._open)} replies kept"
        assert not fanout.connected
        private.resume()
        # Back: their streams are deleted (their watchers read the store).
        assert fanout.drain(WAIT)
        assert not any(client.exists(fanout.key(c.reply_id)) for c in channels)
    finally:
        private.resume()
        client.close()
        fanout.close()
