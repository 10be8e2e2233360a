"""The sync driver's signal hand-over (:class:`rxcontext._signals.HandOver`) and the store's
:class:`~rxcontext._signals.deferred`: a handler the program installs is kept, and no signal
that arrives while another is being handled is lost.

Real signals throughout (``signal.raise_signal``, whose handler runs before it returns, in
the frame that called it). A signal "landing in rxcontext's own code" (where the hand-over
holds it) is made to land there by raising it from a function whose module is named
``rxcontext.…`` (:func:`_in_rxcontext`), wrapped around the persister's real fold.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext._signals import deferred
from rxcontext.providers import ScriptedModel

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs POSIX signals"),
    pytest.mark.skipif(
        threading.current_thread() is not threading.main_thread(),
        reason="signal handlers are the main thread's",
    ),
]

FAULT = textwrap.dedent(
    """
    def in_rxcontext(fold, signums):
        def add(self, chunk):
            for signum in signums(chunk):
                raise_signal(signum)  # lands here: in rxcontext's code, as the driver folds
            return fold(self, chunk)
        return add
    """
)


def _in_rxcontext(
    fold: Callable[..., Any], signums: Callable[[Chunk], list[int]]
) -> Callable[..., Any]:
    """``fold`` (the persister's real ``add``), first raising ``signums(chunk)`` from a
    frame whose module is named ``rxcontext.…`` (as in the driver's fold)."""
    space: dict[str, Any] = {"__name__": "rxcontext._fault", "raise_signal": signal.raise_signal}
    exec(FAULT, space)
    return space["in_rxcontext"](fold, signums)  # type: ignore[no-any-return]


@pytest.fixture
def handlers() -> Iterator[None]:
    """SIGINT and SIGTERM as a plain program has them, put back after the test."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _window(n: int = 6) -> ContextWindow:
    chunks = [Chunk(ChunkKind.TEXT, f"<{i}>") for i in range(n)]
    model = ScriptedModel([[*chunks, Chunk(ChunkKind.DONE, finish_reason="stop")]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "c", retry=None)
    cw.add_prompt("q")
    return cw


# --- 1. a handler the program installs during a reply stays -------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_handler_the_program_installs_during_a_reply_is_kept(handlers: None, signum: int) -> None:
    """The hand-over used to put back what it found (SIGTERM's default, Python's Ctrl-C
    handler) at the end of the reply, over a handler the program installed meanwhile
    (here from ``on_next``; a library set up from a hook would do the same)."""
    ran: list[int] = []

    def program(s: int, frame: Any) -> None:
        ran.append(s)

    def on_next(chunk: Chunk) -> None:
        if chunk.text == "<2>":
            signal.signal(signum, program)

    _window().stream().subscribe(on_next)
    assert signal.getsignal(signum) is program
    signal.raise_signal(signum)
    assert ran == [signum]


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    path, case = sys.argv[1], sys.argv[2]
    chunks = [Chunk(ChunkKind.TEXT, f"<{i}>") for i in range(10)]
    store = rxcontext.open(path)
    model = ScriptedModel([[*chunks, Chunk(ChunkKind.DONE, finish_reason="stop")]])
    cw = ContextWindow(store, model, "sig", retry=None)
    cw.add_prompt("go")

    def program(signum, frame):
        print("PROGRAM", signum, flush=True)

    def on_next(c):
        print("d", c.text, flush=True)
        if c.text == "<3>":
            signal.raise_signal(signal.SIGTERM if case == "term-then-handler" else signal.SIGINT)

    def on_error(e):
        print("E", type(e).__name__, flush=True)
        if case == "term-then-handler":
            signal.signal(signal.SIGTERM, program)  # installed after SIGTERM came

    if case == "int-then-term":
        from rxcontext.persist import ReplyPersister
        FAULT = '''
    def in_rxcontext(fold, raise_signal, signum):
        def add(self, chunk):
            if chunk.text == "<3>":
                raise_signal(signum)  # rxcontext's code, folding the chunk Ctrl-C left
            return fold(self, chunk)
        return add
    '''
        space = {"__name__": "rxcontext._fault"}
        exec(FAULT, space)
        ReplyPersister.add = space["in_rxcontext"](
            ReplyPersister.add, signal.raise_signal, signal.SIGTERM
        )
        ReplyPersister.folds_plainly = False
    try:
        cw.stream().subscribe(on_next, on_error)
    except BaseException as error:
        print("RAISED", type(error).__name__, flush=True)
        raise
    print("DONE", flush=True)
    """
)


def _child(tmp: Path, case: str) -> tuple[int, list[str], str]:
    """Run :data:`CHILD`: its exit status, its lines, and the checkpoint's text."""
    path = tmp / "t.db"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), case],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    store = rxcontext.open(path)
    try:
        (cp,) = store.checkpoints(store.get_context_by_name("sig").id)
        text = cp.text
    finally:
        store.close()
    return done.returncode, done.stdout.splitlines(), text


def test_sigterm_at_its_default_still_kills_when_the_program_installs_a_handler_after(
    tmp_path: Path,
) -> None:
    """SIGTERM came at its default (the program had no handler), then the program installed
    one (in ``on_error``, say). Keeping the program's handler must not turn that SIGTERM
    into a call of it: the reply is saved and the process dies by SIGTERM, as it would
    have."""
    status, lines, text = _child(tmp_path, "term-then-handler")
    assert status == -signal.SIGTERM, lines
    assert not any(line.startswith(("PROGRAM", "RAISED", "DONE")) for line in lines)
    assert text == "<0><1><2><3>"


# --- 2. a second signal during the first one's fold is delivered --------------------------


def test_sigterm_while_a_ctrl_c_in_on_next_is_folded_is_not_swallowed(tmp_path: Path) -> None:
    """Ctrl-C lands in ``on_next`` (the chunk counts as delivered, the driver folds it);
    SIGTERM lands in that fold and is held. It used to be dropped when the hand-over
    ended: the program got its ``KeyboardInterrupt`` and went on. It is SIGTERM at its
    default, so once the checkpoint is saved the process dies by it."""
    status, lines, text = _child(tmp_path, "int-then-term")
    assert status == -signal.SIGTERM, lines
    assert not any(line.startswith(("RAISED", "DONE")) for line in lines)
    assert text == "<0><1><2><3>"


def test_a_signal_held_in_the_fold_of_a_chunk_ctrl_c_left_is_delivered(
    handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above in process, the program handling SIGTERM itself: its handler runs, and
    the ``KeyboardInterrupt`` still reaches the program once the reply is saved."""
    from rxcontext.persist import ReplyPersister

    ran: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: ran.append(s))
    fold = ReplyPersister.add
    monkeypatch.setattr(
        ReplyPersister,
        "add",
        _in_rxcontext(fold, lambda c: [signal.SIGTERM] if c.text == "<3>" else []),
    )
    monkeypatch.setattr(ReplyPersister, "folds_plainly", False)
    cw = _window()

    def on_next(chunk: Chunk) -> None:
        if chunk.text == "<3>":
            signal.raise_signal(signal.SIGINT)  # lands here: the program's code

    with pytest.raises(KeyboardInterrupt):
        cw.stream().subscribe(on_next)
    assert ran == [signal.SIGTERM]
    (cp,) = cw.checkpoints()
    assert cp.text == "<0><1><2><3>"


def test_two_signals_held_in_one_fold_are_both_delivered(
    handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C and SIGTERM both land in the driver's fold (both held): the first's
    ``KeyboardInterrupt`` used to cut the delivery short, the SIGTERM handler never ran."""
    from rxcontext.persist import ReplyPersister

    ran: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: ran.append(s))
    both = [signal.SIGINT, signal.SIGTERM]
    monkeypatch.setattr(
        ReplyPersister,
        "add",
        _in_rxcontext(ReplyPersister.add, lambda c: both if c.text == "<3>" else []),
    )
    monkeypatch.setattr(ReplyPersister, "folds_plainly", False)
    cw = _window()
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        cw.stream().subscribe(lambda c: seen.append(c.text))
    assert ran == [signal.SIGTERM]
    (cp,) = cw.checkpoints()
    assert cp.text == "".join(seen) == "<0><1><2><3>"


def test_deferred_delivers_every_signal_it_held(handlers: None) -> None:
    """A store write holds Ctrl-C and SIGTERM (both paths, sync and asyncio, write through
    it): the first's ``KeyboardInterrupt`` used to cut the delivery short. The second
    Ctrl-C, held while one is held already, is the same Ctrl-C (tests/test_signals_chained.py)."""
    ran: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: ran.append(s))
    with pytest.raises(KeyboardInterrupt) as raised, deferred():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
    assert ran == [signal.SIGTERM]
    assert raised.value.__context__ is None  # one KeyboardInterrupt
