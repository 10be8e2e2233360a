"""What a watcher costs the PostgreSQL store: each look at the store (the reply's row and its
records, consistent with each other) is one pool checkout, not three.

A process that watches many replies shares one pool among their threads; in the scale-out
benchmark (benchmarks/scaleout.py, docs/benchmarks.md) three checkouts per look made the
watchers queue for connections behind each other for seconds."""

from __future__ import annotations

import threading

from reactivex.scheduler import NewThreadScheduler

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, ReplyState
from rxcontext import operators as rxops
from rxcontext.providers import ScriptedModel

T = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731
DONE = Chunk(ChunkKind.DONE, finish_reason="stop")


def _checkouts(store: object) -> int:
    return int(store._runner.pool().get_stats()["requests_num"])  # type: ignore[attr-defined]


def test_watching_a_stored_reply_takes_one_checkout(pg_url: str) -> None:
    store = rxcontext.open(pg_url)
    try:
        cw = ContextWindow(store, ScriptedModel([[T("Rivers: "), T("the Nile."), DONE]]), "w")
        cw.add_prompt("Name a river.")
        cw.call(reply_id="stored-1")
        before = _checkouts(store)
        watched = cw.watch("stored-1").pipe(rxops.reduce_reply()).run()
        assert watched.text == "Rivers: the Nile."
        assert _checkouts(store) - before == 1
    finally:
        store.close()


def test_reply_state_is_the_row_and_the_records(pg_url: str) -> None:
    """``reply_state`` answers what ``find_reply`` and ``reply_records`` answer, together:
    a streaming reply's row and no records; a stored reply's records and no row."""
    store = rxcontext.open(pg_url)
    try:
        gate = threading.Event()
        began = threading.Event()

        def hold(_: Chunk) -> None:
            began.set()
            assert gate.wait(10)

        model = ScriptedModel([[T("one "), T("two"), DONE]])
        cw = ContextWindow(store, model, "s", checkpoint_every=None)
        cw.add_prompt("Count.")
        owner = threading.Thread(
            target=cw.call, args=(rxops.middleware(on_chunk=hold),), kwargs={"reply_id": "r-1"}
        )
        owner.start()
        try:
            assert began.wait(10)
            row, records = store.reply_state("r-1")
            assert row is not None and row.state is ReplyState.STREAMING
            assert row == store.find_reply("r-1")
            assert records == [] == store.reply_records("r-1")
        finally:
            gate.set()
            owner.join(10)
        row, records = store.reply_state("r-1")
        assert row is None is store.find_reply("r-1")
        assert records == store.reply_records("r-1")
        assert [r.content for r in records] == ["one two"]
        assert store.reply_state("never") == (None, [])
    finally:
        store.close()


def test_a_live_log_from_its_start_spares_the_first_look(pg_url: str) -> None:
    """A watch that finds the reply's live log whole from its Begin shows it without
    reading the store first; it reads the store once, when the log ends (to end on the
    stored record). In the scale-out benchmark every watch began with a look at the store,
    and at 200 streams those looks queued for the pool for hundreds of milliseconds."""
    store = rxcontext.open(pg_url, fanout="memory")
    try:
        gate = threading.Event()
        began = threading.Event()

        def hold(chunk: Chunk) -> None:
            if chunk.text == " three":  # "one two" delivered, and published
                began.set()
                assert gate.wait(10)

        model = ScriptedModel([[T("one "), T("two"), T(" three"), DONE]])
        cw = ContextWindow(store, model, "live", checkpoint_every=None)
        cw.add_prompt("Count.")
        owner = threading.Thread(
            target=cw.call, args=(rxops.middleware(on_chunk=hold),), kwargs={"reply_id": "r-2"}
        )
        owner.start()
        seen: list[str] = []
        first_two = threading.Event()
        done = threading.Event()
        try:
            assert began.wait(10)
            looks: list[str] = []
            reply_state = store.reply_state

            def look(reply_id: str) -> object:
                looks.append(reply_id)
                return reply_state(reply_id)

            store.reply_state = look  # type: ignore[method-assign]
            before = _checkouts(store)

            def shown(chunk: Chunk) -> None:
                seen.append(chunk.text)
                if "".join(seen) == "one two":
                    first_two.set()

            cw.watch("r-2").subscribe(
                on_next=shown, on_completed=done.set, scheduler=NewThreadScheduler()
            )
            assert first_two.wait(10)
            assert _checkouts(store) == before and looks == []  # shown from the log alone
        finally:
            gate.set()
            owner.join(10)
        assert done.wait(10)
        assert "".join(seen) == "one two three"
        assert looks == ["r-2"]  # one look, at the end
    finally:
        store.close()
