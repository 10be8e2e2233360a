"""The hand-over's handler outlives its reply, held signals stay few, nested replies.

* A program (or a library set up from ``on_next``) that chains to the handler it found —
  the hand-over's — and is kept after the reply must reach, through it, the handler the
  hand-over replaced: Python's Ctrl-C handler, or SIGTERM's default (death by SIGTERM).
* A store write or a fold holds at most one signal of each kind: a flood of Ctrl-Cs used
  to be delivered one by one, recursively, ending in ``RecursionError`` with the SIGTERM
  held among them never handled.
* A reply started from another reply's ``on_next`` (a summary, a sub-question): its own
  hand-over decides; the outer one, folding nothing meanwhile, used to hold Ctrl-C and
  SIGTERM until the inner reply had run to its end.

Real signals throughout (``signal.raise_signal`` in process, ``os.kill`` from the parent
for a child process).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_signal_handover import _in_rxcontext, _window, handlers  # noqa: F401
from test_signal_handover import pytestmark as _posix_main_thread

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext._signals import HandOver, _Handler, deferred
from rxcontext.providers import ScriptedModel

# SIGINT and SIGTERM as a plain program has them, put back after each test.
pytestmark = [*_posix_main_thread, pytest.mark.usefixtures("handlers"), pytest.mark.slow]

# --- 1. a kept handler that chains to the hand-over's --------------------------------------


def _chaining(signum: int, ran: list[int]) -> Callable[[Chunk], None]:
    """An ``on_next`` that, at the second chunk, installs a handler chaining to the one it
    finds there (the hand-over's)."""

    def on_next(chunk: Chunk) -> None:
        if chunk.text == "<1>":
            prev = signal.getsignal(signum)

            def library(s: int, frame: Any) -> None:
                ran.append(s)
                if callable(prev):
                    prev(s, frame)

            signal.signal(signum, library)

    return on_next


def test_a_kept_handler_chaining_to_the_hand_over_reaches_ctrl_c() -> None:
    """After the reply, Ctrl-C runs the library's handler, then Python's (it used to end
    in ``KeyError(2)``: the hand-over had forgotten what it replaced)."""
    ran: list[int] = []
    _window().stream().subscribe(_chaining(signal.SIGINT, ran))
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert ran == [signal.SIGINT]


def test_the_hand_over_s_handler_put_back_after_the_reply_reaches_ctrl_c() -> None:
    """A library that found the hand-over's handler puts it back once done with the
    signal: Ctrl-C raises ``KeyboardInterrupt`` as before it all."""
    found: list[Any] = []

    def on_next(chunk: Chunk) -> None:
        if chunk.text == "<1>":
            found.append(signal.signal(signal.SIGINT, lambda s, f: None))

    _window().stream().subscribe(on_next)
    signal.signal(signal.SIGINT, found[0])
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def _chain_depth(signum: int) -> int:
    """How many hand-over handlers a signal passes through from the one installed."""
    depth, handler = 0, signal.getsignal(signum)
    while isinstance(handler, _Handler):
        depth, handler = depth + 1, handler.saved[signum]
    return depth


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_handlers_put_back_after_many_replies_stay_one_link_deep(signum: int) -> None:
    """The put-back pattern above, once per reply: each reply's hand-over used to save the
    previous reply's (ended) handler, so the chain grew by one link a reply, and after
    ~3,000 replies Ctrl-C gave ``RecursionError`` instead of ``KeyboardInterrupt``."""
    n = 2000
    chunks = [Chunk(ChunkKind.TEXT, "x"), Chunk(ChunkKind.DONE, finish_reason="stop")]
    cw = ContextWindow(rxcontext.open(":memory:"), ScriptedModel([chunks] * n), "c", retry=None)
    for _ in range(n):
        cw.add_prompt("q")
        found: list[Any] = []

        def on_next(chunk: Chunk, found: list[Any] = found) -> None:
            if not found:
                found.append(signal.signal(signum, lambda s, f: None))

        cw.stream().subscribe(on_next)
        signal.signal(signum, found[0])
        assert _chain_depth(signum) == 1
    if signum == signal.SIGINT:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_a_hand_over_entered_again_under_a_chaining_handler_does_not_loop() -> None:
    """The driver enters its hand-over again when a retry wakes it: the chaining handler
    installed during the first run is what it replaces then; a Ctrl-C used to go round
    between the two until ``RecursionError``."""
    ran: list[int] = []
    guard = HandOver()
    with guard:
        _chaining(signal.SIGINT, ran)(Chunk(rxcontext.ChunkKind.TEXT, "<1>"))
    with guard, pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert ran == [signal.SIGINT]


CHAINED_TERM = textwrap.dedent(
    """
    import signal, sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    case = sys.argv[1]
    chunks = [Chunk(ChunkKind.TEXT, f"<{i}>") for i in range(4)]
    model = ScriptedModel([[*chunks, Chunk(ChunkKind.DONE, finish_reason="stop")]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "c", retry=None)
    cw.add_prompt("q")
    found = []

    def library(s, frame):
        print("LIBRARY", flush=True)
        found[0](s, frame)

    def on_next(c):
        if c.text == "<1>":
            found.append(signal.signal(signal.SIGTERM, library))

    cw.stream().subscribe(on_next)
    if case == "put-back":
        signal.signal(signal.SIGTERM, found[0])
    try:
        signal.raise_signal(signal.SIGTERM)
    except BaseException as error:
        print("RAISED", repr(error), flush=True)
        sys.exit(3)
    print("SURVIVED", flush=True)
    """
)


@pytest.mark.parametrize("case", ["chained", "put-back"])
def test_sigterm_through_the_hand_over_s_handler_after_the_reply_kills(case: str) -> None:
    """SIGTERM at its default before the reply; a library kept from it chains to (or puts
    back) the hand-over's handler: the next SIGTERM kills, as the default it replaced."""
    done = subprocess.run(
        [sys.executable, "-c", CHAINED_TERM, case],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == -signal.SIGTERM, (lines, done.stderr[-2000:])
    assert lines == (["LIBRARY"] if case == "chained" else [])


PUT_BACK_ACROSS = textwrap.dedent(
    """
    import asyncio, signal, sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    path, first = sys.argv[1], sys.argv[2]
    T = lambda text: Chunk(ChunkKind.TEXT, text)
    DONE = Chunk(ChunkKind.DONE, finish_reason="stop")
    chunks = [T(f"<{i}>") for i in range(50)]
    store = rxcontext.open(path)
    model = ScriptedModel([[T("a"), DONE], [*chunks, DONE]])
    cw = ContextWindow(store, model, "sig", retry=None, checkpoint_every=None)
    cw.add_prompt("q")
    found = []

    def swap(c):  # a library swaps in its own SIGTERM handler during the reply
        if not found:
            found.append(signal.signal(signal.SIGTERM, lambda s, f: None))

    def show(c):
        if c.text:
            print("d", c.text, flush=True)
        return c.text == "<4>"

    def wait_in_on_next(c):
        if show(c):
            print("WAIT", flush=True)
            sys.stdin.readline()  # SIGTERM lands in the program's own code

    async def areply(sees, holds=False):
        async for c in cw.astream():
            sees(c)
            if holds and show(c):
                print("WAIT", flush=True)
                await asyncio.Event().wait()  # it holds the chunk at SIGTERM

    if first == "sync":
        cw.stream().subscribe(swap)
    else:
        asyncio.run(areply(swap))
    signal.signal(signal.SIGTERM, found[0])  # ... and puts back what it found
    cw.add_prompt("q2")
    if first == "sync":
        asyncio.run(areply(lambda c: None, holds=True))
    else:
        cw.stream().subscribe(wait_in_on_next)
    print("SURVIVED", flush=True)
    """
)


@pytest.mark.parametrize("first", ["sync", "async"])
def test_sigterm_after_a_put_back_across_sync_and_asyncio_keeps_what_was_delivered(
    tmp_path: Path, first: str
) -> None:
    """The put-back pattern above, then a reply of the other kind (``first``: the one the
    library swapped in its handler during), SIGTERM at its default: the checkpoint holds
    what was delivered and the process dies by SIGTERM. rxcontext's own handler put back
    after its reply used to pass for the program's: after a blocking reply, the asyncio
    reply took the ended run's handler for one of the program's and left SIGTERM to it,
    which killed at once; after an asyncio one, the blocking reply passed SIGTERM on to the
    ended loop's handler, which killed at once too. Both checkpoints held ``''``."""
    path = tmp_path / "t.db"
    child = subprocess.Popen(
        [sys.executable, "-c", PUT_BACK_ACROSS, str(path), first],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        shown: list[str] = []
        for line in child.stdout:  # (bounded: the communicate below kills a hung child)
            if line.startswith("d "):
                shown.append(line[2:].rstrip("\n"))
            elif line == "WAIT\n":
                break
        child.send_signal(signal.SIGTERM)  # os.kill
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGTERM, (out, err[-2000:])
    assert out == ""  # nothing more was delivered, no exception reached the program
    store = rxcontext.open(path)
    try:
        (cp,) = store.checkpoints(store.get_context_by_name("sig").id)
        assert cp.text == "".join(shown) == "<0><1><2><3><4>"
        assert cp.error == "Terminated: SIGTERM"
    finally:
        store.close()


# --- 2. at most one held signal of each kind -----------------------------------------------


def _context_chain(error: BaseException) -> list[type[BaseException]]:
    chain: list[type[BaseException]] = []
    at: BaseException | None = error
    while at is not None:
        chain.append(type(at))
        at = at.__context__
    return chain


def test_a_store_write_holding_a_flood_of_ctrl_c_delivers_each_kind_once() -> None:
    """1,200 Ctrl-Cs and a SIGTERM held by one write: one ``KeyboardInterrupt`` (it used
    to be ``RecursionError``), and the SIGTERM handler runs."""
    ran: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: ran.append(s))
    with pytest.raises(KeyboardInterrupt) as raised, deferred():
        for _ in range(1200):
            signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
    assert ran == [signal.SIGTERM]
    assert _context_chain(raised.value) == [KeyboardInterrupt]


SECOND_TERM = textwrap.dedent(
    """
    import asyncio, signal, sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.persist import ReplyPersister
    from rxcontext.providers import ScriptedModel
    from rxcontext._signals import deferred

    mode = sys.argv[1]
    # A store write that waits (a row lock, SQLite's busy wait), in rxcontext's code as a
    # real one is: SIGTERM comes in it (a second one, or the first already taken in on_next).
    space = {"__name__": "rxcontext._fault", "deferred": deferred, "print": print,
             "raise_signal": signal.raise_signal, "twice": mode != "after"}
    exec('''
    def wrap(write):
        def written(self, *args):
            if getattr(args[0] if args else None, "text", "<3>") == "<3>":
                with deferred():
                    print("IN WRITE", flush=True)
                    if twice:
                        raise_signal(15)
                        print("HELD", flush=True)
                    raise_signal(15)
                    print("WRITE GOES ON", flush=True)
            return write(self, *args)
        return written
    ''', space)
    if mode == "after":  # the checkpoint's write, once the first SIGTERM ended the reply
        ReplyPersister._write_final = space["wrap"](ReplyPersister._write_final)
    else:  # a write as a chunk is folded in
        ReplyPersister.add = space["wrap"](ReplyPersister.add)
        ReplyPersister.folds_plainly = False
    chunks = [Chunk(ChunkKind.TEXT, f"<{i}>") for i in range(6)]
    model = ScriptedModel([[*chunks, Chunk(ChunkKind.DONE, finish_reason="stop")]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "c", retry=None)
    cw.add_prompt("q")

    def on_next(c):
        if mode == "after" and c.text == "<0>":
            signal.raise_signal(signal.SIGTERM)  # the first: the reply ends, then saves

    if mode == "async":
        async def main():
            async for _ in cw.astream():
                pass
        asyncio.run(main())
    else:
        cw.stream().subscribe(on_next)
    print("SURVIVED", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["sync", "async", "after"])
def test_a_second_sigterm_at_its_default_during_a_store_write_kills_at_once(mode: str) -> None:
    """SIGTERM at its default is held by a store write like Ctrl-C; a second one meanwhile
    (``after``: the first came in ``on_next`` and the reply's checkpoint is being saved)
    must kill at once, as the docs say. The write used to fold it into the first, and the
    process lived on until the write was over (a lock wait, however long)."""
    done = subprocess.run(
        [sys.executable, "-c", SECOND_TERM, mode],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert done.stdout.splitlines() == (["IN WRITE", "HELD"] if mode != "after" else ["IN WRITE"])


def test_held_signals_come_in_the_order_each_kind_first_came() -> None:
    """Ctrl-C, SIGTERM, Ctrl-C: Ctrl-C's handler runs first, then SIGTERM's, whose
    exception goes on with the ``KeyboardInterrupt`` as its context."""

    def program(s: int, frame: Any) -> None:
        raise SystemExit("program's SIGTERM handler")

    signal.signal(signal.SIGTERM, program)
    with pytest.raises(BaseException) as raised, deferred():
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            signal.raise_signal(signum)
    assert _context_chain(raised.value) == [SystemExit, KeyboardInterrupt]


def test_a_fold_holding_a_flood_of_ctrl_c_delivers_each_kind_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above in the driver's fold (the hand-over holds them)."""
    from rxcontext.persist import ReplyPersister

    ran: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: ran.append(s))
    flood = [signal.SIGINT] * 1200 + [signal.SIGTERM]
    monkeypatch.setattr(
        ReplyPersister,
        "add",
        _in_rxcontext(ReplyPersister.add, lambda c: flood if c.text == "<3>" else []),
    )
    monkeypatch.setattr(ReplyPersister, "folds_plainly", False)
    cw = _window()
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt) as raised:
        cw.stream().subscribe(lambda c: seen.append(c.text))
    assert ran == [signal.SIGTERM]
    assert _context_chain(raised.value) == [KeyboardInterrupt]
    (cp,) = cw.checkpoints()
    assert cp.text == "".join(seen) == "<0><1><2><3>"


# --- 3. a reply started from another reply's on_next ---------------------------------------

NESTED = textwrap.dedent(
    """
    import sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.operators import middleware
    from rxcontext.providers import ScriptedModel

    store = rxcontext.open(sys.argv[1])

    def window(name, n, delay):
        chunks = [Chunk(ChunkKind.TEXT, f"<{i}>") for i in range(n)]
        model = ScriptedModel([[*chunks, Chunk(ChunkKind.DONE, finish_reason="stop")]], delay=delay)
        cw = ContextWindow(store, model, name, retry=None)
        cw.add_prompt("q")
        return cw

    outer = window("outer", 3, 0)
    inner = window("inner", 2000, 0.05)  # ~100 s: the signal must not wait for its end

    def inner_next(c):
        print("inner", c.text, flush=True)

    def on_next(c):
        print("outer", c.text, flush=True)
        if c.text == "<0>":
            inner.call(middleware(on_chunk=inner_next))

    try:
        outer.stream().subscribe(on_next)
    except BaseException as error:
        print("RAISED", type(error).__name__, flush=True)
        raise SystemExit(3)
    print("DONE", flush=True)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_reply_started_from_on_next_ends_it_at_once(
    tmp_path: Path, signum: int
) -> None:
    """Ctrl-C (or SIGTERM at its default) while the inner reply streams: both replies are
    saved with what their subscribers got, and the program gets ``KeyboardInterrupt`` (or
    dies by SIGTERM) — not after the inner reply has run to its end."""
    path = tmp_path / "t.db"
    child = subprocess.Popen(
        [sys.executable, "-c", NESTED, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert child.stdout is not None
    try:
        lines = [child.stdout.readline().rstrip("\n") for _ in range(2)]
        assert lines == ["outer <0>", "inner <0>"], child.stderr.read() if child.stderr else ""
        child.send_signal(signum)  # os.kill
        out, err = child.communicate(timeout=60)  # bounded: it used to run ~100 s more
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lines += out.splitlines()
    if signum == signal.SIGINT:
        assert lines[-1] == "RAISED KeyboardInterrupt", (lines, err[-2000:])
        assert child.returncode == 3
    else:
        assert child.returncode == -signal.SIGTERM, (lines, err[-2000:])
        assert not any(line.startswith(("RAISED", "DONE")) for line in lines)
    shown = {
        name: "".join(line.split()[1] for line in lines if line.startswith(name))
        for name in ("outer", "inner")
    }
    store = rxcontext.open(path)
    try:
        for name in ("outer", "inner"):
            (cp,) = store.checkpoints(store.get_context_by_name(name).id)
            assert cp.text == shown[name], name
    finally:
        store.close()
    assert shown["outer"] == "<0>"
