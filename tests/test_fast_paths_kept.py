"""What the first chunk's faster paths must keep (issue 14's cuts, reviewed).

* A store subclass's own ``begin_reply`` is still called for every reply (the SQLite
  store's ticket-only begin skipped it).
* ``Record`` and ``Request`` constructors written by hand keep the generated ones'
  signature and values: an explicit None stays None, the default is a fresh dict.
* The store's lock is never left held by a Ctrl-C landing at any point of a read, an
  asyncio open or a write (a class in place of ``_read``'s generator left it held: every
  other thread of the store then blocked for good). Real SIGINTs from a thread, many
  bounded trials.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import random
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, SQLiteStore
from rxcontext.providers import ScriptedModel
from rxcontext.providers.base import Request
from rxcontext.records import Record


def test_a_store_subclass_begin_reply_is_called_for_every_reply(tmp_path: Any) -> None:
    calls: list[str] = []

    class Audited(SQLiteStore):
        def begin_reply(self, context_id: str, reply_id: str, *, owner: str) -> Any:
            calls.append(reply_id)
            return super().begin_reply(context_id, reply_id, owner=owner)

    store = Audited(str(tmp_path / "s.db"))
    try:
        model = ScriptedModel(
            [[Chunk(ChunkKind.TEXT, "a"), Chunk(ChunkKind.DONE)]], repeat_last=True
        )
        cw = ContextWindow(store, model, context="c", checkpoint_every=None)
        cw.add_prompt("hi")
        assert cw.call(reply_id="r1").text == "a"
        assert calls == ["r1"]
    finally:
        store.close()


def test_hand_written_constructors_keep_none_and_the_fresh_default() -> None:
    at = datetime.now(UTC)
    given = Record(1, "c", RecordType.PROMPT, "x", True, 1, at, metadata=None)
    assert given.metadata is None
    assert dataclasses.replace(given, metadata=None).metadata is None
    a = Record(1, "c", RecordType.PROMPT, "x", True, 1, at)
    b = Record(1, "c", RecordType.PROMPT, "x", True, 1, at)
    assert a.metadata == {} and a.metadata is not b.metadata
    assert Request([], options=None).options is None
    assert Request([]).options == {} and Request([]).options is not Request([]).options
    for cls in (Record, Request):
        for p in inspect.signature(cls).parameters.values():
            if p.name in ("metadata", "options"):
                assert repr(p.default) == "<factory>"
                assert "None" not in str(p.annotation)


class _Hit(BaseException):
    pass


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("which", ["_read", "at_once", "_tx"])
def test_a_ctrl_c_anywhere_in_a_store_block_never_leaves_its_lock_held(
    tmp_path: Any, which: str
) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    main = threading.main_thread().ident
    assert main == threading.get_ident()
    done = threading.Event()
    armed = [False]

    def handler(signum: int, frame: Any) -> None:
        if armed[0]:
            raise _Hit()

    def killer() -> None:
        while not done.is_set():
            time.sleep(random.uniform(0, 0.0003))
            signal.pthread_kill(main, signal.SIGINT)

    block = {"_read": store._read, "at_once": store.at_once, "_tx": store._tx}[which]
    old = signal.signal(signal.SIGINT, handler)
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    hits = 0
    leaks: list[str] = []
    try:
        deadline = time.monotonic() + 5.0
        while hits < 400 and time.monotonic() < deadline:
            try:
                armed[0] = True
                while True:
                    with block() as _:
                        pass
            except _Hit:
                hits += 1
            finally:
                armed[0] = False
            if store._lock._is_owned():  # type: ignore[attr-defined]
                leaks.append("lock")
                while store._lock._is_owned():  # type: ignore[attr-defined]
                    store._lock.release()
            if store._at_once is not None:
                leaks.append("at_once")
                store._at_once = None
    finally:
        done.set()
        thread.join(5)
        signal.signal(signal.SIGINT, old)
        store.close()
    assert hits >= 50, hits  # (the signals did land)
    assert leaks == [], (which, hits, leaks)
