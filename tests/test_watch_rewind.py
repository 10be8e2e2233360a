"""Takeover rewinds: a reply resumed by a new owner from its checkpoint goes back to the
checkpoint's text, and its watchers get a ``ChunkKind.REWIND`` chunk saying where to.

The watcher core is pulled one chunk at a time while the test plays the owners' part with
the real store and fan-out (begin, publish, checkpoint, claim, commit), so every step of
the takeover happens at a known point of the watch.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import reactivex
import redistest
from gated import words
from hypothesis import given
from hypothesis import strategies as st
from watching import text_of, until

from rxcontext import Chunk, ChunkKind, RecordType
from rxcontext import operators as rxops
from rxcontext.chunks import ReplyBuilder
from rxcontext.fanout import Fanout, MemoryFanout
from rxcontext.fanout.watcher import watch_chunks
from rxcontext.records import ReplyState
from rxcontext.store.base import CheckpointDraft, RecordDraft, ReplyTicket

T = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731


def test_accumulate_and_reduce_apply_a_rewind() -> None:
    chunks = [
        Chunk(ChunkKind.THINKING, "mull it over"),
        T("Hello "),
        T("wor"),
        Chunk(ChunkKind.REWIND, index=6, metadata={"thinking": 4}),
        T("world"),
    ]
    snapshots: list[str] = []
    reactivex.from_iterable(chunks).pipe(rxops.accumulate()).subscribe(
        lambda reply: snapshots.append(reply.text)
    )
    assert snapshots == ["", "Hello ", "Hello wor", "Hello ", "Hello world"]
    final: list[Any] = []
    reactivex.from_iterable(chunks).pipe(rxops.reduce_reply()).subscribe(final.append)
    assert final[0].text == "Hello world" and final[0].thinking == "mull"
    texts: list[str] = []
    reactivex.from_iterable(chunks).pipe(rxops.text()).subscribe(texts.append)
    assert "".join(texts) == "Hello worworld"  # text() is deltas only: it cannot go back


def partials(chunks: list[Chunk]) -> list[Any]:
    out: list[Any] = []
    reactivex.from_iterable(chunks).pipe(rxops.partial_objects()).subscribe(out.append)
    return out


def test_partial_objects_apply_a_rewind() -> None:
    chunks = [T('{"name": "Ab'), Chunk(ChunkKind.REWIND, index=10), T('Xy"}')]
    assert partials(chunks) == [{"name": "Ab"}, {"name": ""}, {"name": "Xy"}]


def test_a_rewind_takes_back_text_that_was_not_json() -> None:
    chunks = [T('{"a": 1'), T("x"), Chunk(ChunkKind.REWIND, index=7), T("}")]
    assert partials(chunks) == [{}, {}, {"a": 1}]


def test_a_rewind_counts_the_whole_reply_s_text_across_tool_rounds() -> None:
    result = Chunk(ChunkKind.TOOL_RESULT, "sunny", id="c1", name="weather")
    first = '{"a": "x'  # the first round's document, then a tool round starts another
    within = [T(first), result, T('{"b": "y'), Chunk(ChunkKind.REWIND, index=len(first) + 7)]
    assert partials([*within, T('z"}')])[-2:] == [{"b": ""}, {"b": "z"}]
    before = [T(first), result, T('{"b": "y'), Chunk(ChunkKind.REWIND, index=5), T(" 2}")]
    assert partials(before)[-2:] == [{}, {"a": 2}]  # back into the first round's document


@given(
    st.dictionaries(st.text(max_size=5), st.text(max_size=8) | st.integers(), max_size=4),
    st.data(),
)
def test_partial_objects_end_with_the_value_whatever_was_rewound(value: Any, data: Any):
    # A takeover's watchers: the text up to the checkpoint, more the old owner delivered
    # (taken back), then the new owner's rest of the document.
    document = json.dumps(value)
    at = data.draw(st.integers(0, len(document)))
    taken_back = data.draw(st.text(max_size=8))

    def pieces(text: str) -> list[Chunk]:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=4)))
        bounds = [0, *cuts, len(text)]
        return [T(text[a:b]) for a, b in itertools.pairwise(bounds) if b > a]

    rewind = Chunk(ChunkKind.REWIND, index=at)
    chunks = [*pieces(document[:at] + taken_back), rewind, *pieces(document[at:])]
    assert partials(chunks)[-1] == value


def test_a_rewind_past_the_start_or_beyond_the_end_is_harmless() -> None:
    builder = ReplyBuilder()
    builder.add(T("abc"))
    builder.add(Chunk(ChunkKind.REWIND, index=10))
    assert builder.text == "abc"
    builder.add(Chunk(ChunkKind.REWIND, index=-3))
    assert builder.text == ""


@pytest.fixture(params=["memory", "redis"])
def fanout(request: pytest.FixtureRequest) -> Iterator[Fanout]:
    if request.param == "memory":
        yield MemoryFanout()
        return
    from rxcontext.fanout.redis import RedisFanout

    for url, prefix in redistest.shared_prefix():
        live = RedisFanout(url, prefix=prefix)
        yield live
        live.close()


def test_a_takeover_rewinds_watchers_to_the_checkpoint(
    make_store: Callable[..., Any], fanout: Fanout
) -> None:
    store = make_store()
    ctx = store.get_or_create_context("takeover").id
    store.add_record(ctx, RecordDraft(RecordType.PROMPT, "Greet the world."))
    row = store.begin_reply(ctx, "r-take", owner="worker-a")
    first = ReplyTicket(row.id, row.epoch)
    old = fanout.open_channel("r-take", row.epoch)
    old.chunk(T("Hello "))
    store.save_checkpoint(first, CheckpointDraft(append_text="Hello ", chunks=1))
    old.chunk(T("wor"))  # delivered, but the owner dies before its next checkpoint

    cancelled = threading.Event()
    watch = watch_chunks(store, fanout, "r-take", cancelled, poll=0.05, wait=0.2)
    assert next(watch) == T("Hello ")
    assert next(watch) == T("wor")

    # worker A is gone; worker B takes the reply over from its checkpoint
    store.save_checkpoint(
        first, CheckpointDraft(error="worker A died"), state=ReplyState.INTERRUPTED
    )
    claimed = store.claim_checkpoint(row.id, owner="worker-b")
    assert claimed.text == "Hello " and claimed.epoch == row.epoch + 1
    new = fanout.open_channel("r-take", claimed.epoch, claimed.text)
    new.chunk(T("world"))

    rewind = next(watch)
    assert rewind.kind is ChunkKind.REWIND and rewind.index == len("Hello ")
    assert next(watch) == T("world")

    second = ReplyTicket(claimed.id, claimed.epoch)
    store.commit_reply(
        ctx, [RecordDraft(RecordType.MODEL_RESP, "Hello world")], reply=second, end="reply"
    )
    new.end("completed")
    rest = list(watch)
    assert [c.kind for c in rest] == [ChunkKind.DONE]
    seen = [T("Hello "), T("wor"), rewind, T("world"), *rest]
    assert text_of(seen) == "Hello world" == store.reply_records("r-take")[-1].content


def test_the_fenced_old_owner_cannot_publish_over_the_new_one() -> None:
    fanout = MemoryFanout()
    old = fanout.open_channel("r-fence", 1)
    new = fanout.open_channel("r-fence", 2, "Hi ")
    zombie = fanout.open_channel("r-fence", 1)  # the old owner, back from a pause
    zombie.chunk(T("stale"))
    old.chunk(T("stale too"))
    new.chunk(T("there"))
    entries = fanout.read("r-fence", None, epoch=1, wait=0, cancelled=threading.Event())
    assert entries is not None
    assert [type(e).__name__ for e in entries] == ["Begin", "Chunks"]
    assert entries[1].chunks == [T("there")]  # type: ignore[union-attr]


# -- the shown text ------------------------------------------------------------------------


def _naive_common(a: str, b: str) -> int:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_the_common_prefix_is_the_one_a_character_loop_finds(shared: str, a: str, b: str):
    from rxcontext.fanout.watcher import _common

    for x, y in ((shared + a, shared + b), (a, b), (shared, shared + a), (shared + a, shared)):
        assert _common(x, y) == _naive_common(x, y)


def test_a_watch_keeps_the_shown_text_in_pieces_until_it_compares_it():
    # Appending a chunk to what a watch has shown costs the chunk: the text is joined only
    # where the whole is compared (a str += on the attribute copied it all every chunk).
    from rxcontext.fanout.watcher import _Watch

    watch = _Watch("r", True, poll=1.0, wait=1.0)
    for i in range(1000):
        assert list(watch.live(T(f"w{i} "))) == [T(f"w{i} ")]
    assert len(watch._text._parts) == 1000 and watch._text.size == len(words(1000))
    assert watch.text == words(1000)  # joined once, kept joined
    assert len(watch._text._parts) == 1
    assert list(watch.rebase(words(999), None, force=True)) == [
        Chunk(ChunkKind.REWIND, index=len(words(999)))
    ]
    assert watch.text == words(999) and watch._text.size == len(words(999))


def test_a_memory_read_waiting_on_an_old_epoch_returns_when_a_new_epoch_opens() -> None:
    """A takeover opens the reply's next epoch; a watch waiting on the old one must move on
    at once (to read the new epoch), not when its ``wait`` ends."""
    fanout = MemoryFanout()
    old = fanout.open_channel("r", 1)
    old.chunk(Chunk(ChunkKind.TEXT, "Hello "))
    got: list[Any] = []
    waiting = threading.Event()

    def read() -> None:
        waiting.set()
        got.append(fanout.read("r", (1, 1), epoch=1, wait=600.0, cancelled=threading.Event()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert waiting.wait(30)
    log = fanout._logs["r"]
    assert until(lambda: log.waiters == 1)  # the read waits in the old epoch's log
    fanout.open_channel("r", 2, "Hello ")
    reader.join(30)
    assert not reader.is_alive(), "the read still waits on the old epoch"
    assert got == [[]]  # the next read, after epoch 1, gets the new epoch
