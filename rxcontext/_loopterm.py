"""SIGTERM at its default while asyncio replies stream: save them, then die by it.

A plain program (no SIGTERM handler: stopped by ``kill``, ``docker stop``, systemd) dies
on the spot at SIGTERM, a streaming reply keeping only its last periodic write. The sync
driver holds SIGTERM for the reply's length (:class:`rxcontext._signals.HandOver`). Under
asyncio, while at least one reply is driven on a loop of the main thread and SIGTERM is at
its default, a SIGTERM handler is installed (and the default put back when the loop's last
reply ends). It hands the signal to the loop (``call_soon_threadsafe``, as
``asyncio.run`` hands Ctrl-C over), where each of the loop's replies is ended as
``cw.stop`` ends it (:class:`~rxcontext.astreaming._Stopper`): one awaiting the model is
cancelled there, one whose consumer holds a delivered chunk is saved at once, one in a
step of its own (a store write, a running tool, an async hook) ends when that step does.
Each checkpoint holds exactly what its consumer received (error ``Terminated: SIGTERM``).
Once all are saved the default is restored and SIGTERM sent again: the process dies by
it as it would have (no exception reaches the program). A second SIGTERM meanwhile kills at
once.

Not ``loop.add_signal_handler``: asyncio checks the signal against every valid one each time
a handler is added or removed (about 0.2 ms each here), which every reply would pay;
``signal.signal`` at the C level costs about a microsecond. A handler the program installed
(``signal.signal``, or ``loop.add_signal_handler``, also one added while a reply streams) is
used as it is; one of rxcontext's own that the program put back after a reply is taken for
what it stands for (``_signals._stands_for``). Loops on other threads and other systems than
POSIX are left alone: there SIGTERM kills at once, as before. SIGTERM also kills at once on
a loop stepped with ``run_until_complete`` (a sync bridge over ``astream``) that it finds
stopped between two steps, its replies keeping their last periodic write (a blocking reply run
there takes SIGTERM as at its default, saved first: ``_signals._stopped_loop``). One that SIGTERM
finds in a step's last iteration (running, so the hand-over is queued, but stopping before
it runs) is watched: from SIGTERM on, a thread waits for the hand-over to run and, should
the loop stop first, sends SIGTERM to the main thread again, which then kills at once as
between two steps (no thread before SIGTERM: a reply costs what it did). PID 1 (a
container's init) is left alone too: the kernel drops a SIGTERM at its default there, so it
would not have died, and its replies go on.
"""

from __future__ import annotations

import _thread
import asyncio
import os
import threading
import weakref
from types import FrameType
from typing import Any, Protocol

from ._signals import _DFL, _MAIN, _getsignal, _setsignal, _stands_for  # C functions, no enums
from .errors import ReplyStopped

__all__ = ["Terminated", "enter", "forget", "leave"]

_TERM: int | None = None
if os.name == "posix":
    import signal

    _TERM = int(signal.SIGTERM)
_MAIN_ID = _MAIN.ident


class Terminated(ReplyStopped):
    """SIGTERM came at its default while the reply streamed under asyncio: the reply was
    saved, and the process dies by SIGTERM."""


class Ending(Protocol):
    """What a reply's driver offers: end the reply for SIGTERM (see :func:`enter`)."""

    def terminate(self, error: ReplyStopped) -> asyncio.Future[Any] | None:
        """End the reply with ``error``: a future done once its checkpoint is written, its
        final write under way ended, or nothing is to be written; or None when the driver
        ends it and calls :func:`leave`."""
        ...


class _LoopTerm:
    """The SIGTERM handler of one loop and the replies it waits for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.replies: set[Ending] = set()
        self.terminated = False
        self.resent: threading.Event | None = None
        """The hand-over whose watchdog sent SIGTERM again, until the handler takes it."""
        self.pid = os.getpid()
        """The process whose loop it is (a forked child's copy never runs: it dies)."""

    @property
    def ended(self) -> bool:
        """Whether it waits for no reply (or its loop is closed): it would kill at once."""
        return not self.replies or self.loop.is_closed()

    def handler(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler (main thread, between two bytecodes): over to the loop."""
        if os.getpid() != self.pid:  # reached in a forked child (through a handler put
            self.die()  # back that passes SIGTERM on here): its copy of the loop never runs
            return
        resent, self.resent = self.resent, None
        if resent is not None and resent.is_set():
            return  # the watchdog's, but the hand-over ran meanwhile
        if not self.loop.is_running():
            # Stepped by run_until_complete (a sync bridge over ``astream``) and stopped
            # between two steps (or stopped with the hand-over still queued: the watchdog
            # sent SIGTERM again): a next step may never come, so SIGTERM would be lost.
            # Its default kills at once (the checkpoints hold their last periodic write).
            self.die()
            return
        if resent is not None:  # the loop runs again: the queued hand-over will run
            self.watch(resent)
            return
        ran = threading.Event()
        try:
            self.loop.call_soon_threadsafe(self.hand_over, ran)
        except RuntimeError:  # its loop is closed: nothing of ours to save
            self.die()
            return
        self.watch(ran)

    def watch(self, ran: threading.Event) -> None:
        """Watch a queued hand-over: SIGTERM in the last iteration of a run_until_complete
        step finds the loop running, but the loop stops before the hand-over runs. A
        thread of ``_thread`` (no lock of ``threading`` a signal handler could find held)."""
        _thread.start_new_thread(self.watchdog, (ran,))

    def watchdog(self, ran: threading.Event) -> None:
        """Off the main thread, until the hand-over runs: should the loop stop first, send
        SIGTERM to the main thread again, whose handler then dies (signal.signal may be
        called there only)."""
        assert _TERM is not None and _MAIN_ID is not None
        while not ran.wait(0.05):
            if not self.loop.is_running():
                self.resent = ran
                signal.pthread_kill(_MAIN_ID, _TERM)
                return

    def hand_over(self, ran: threading.Event) -> None:
        """On the loop: SIGTERM's hand-over."""
        ran.set()
        self.on_term()

    def on_term(self) -> None:
        if self.terminated:  # a second SIGTERM: no more waiting
            self.die()
            return
        self.terminated = True
        for reply in list(self.replies):
            saved = reply.terminate(Terminated("SIGTERM"))
            if saved is not None:
                saved.add_done_callback(lambda _, reply=reply: self.settle(reply))  # type: ignore[misc]
        if not self.replies:
            self.die()

    def settle(self, reply: Ending) -> None:
        """``reply`` is saved (or ended): once none is left after SIGTERM, die."""
        self.replies.discard(reply)
        if self.replies:
            return
        if self.terminated:
            self.die()
        else:
            self.uninstall()

    def uninstall(self) -> None:
        if _terms.get(self.loop) is self:
            del _terms[self.loop]
        if _TERM is not None and _getsignal(_TERM) == self.handler:
            _setsignal(_TERM, _DFL)

    def die(self) -> None:
        assert _TERM is not None
        self.uninstall()
        _setsignal(_TERM, _DFL)
        os.kill(os.getpid(), _TERM)


_terms: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopTerm] = (
    weakref.WeakKeyDictionary()
)


def enter(reply: Ending) -> None:
    """On the loop, as a reply's driver starts: ``reply`` is ended and waited for at
    SIGTERM, if SIGTERM is at its default (or already this loop's) on the main thread."""
    if _TERM is None or threading.current_thread() is not _MAIN:
        return
    if os.getpid() == 1:  # a container's init: the kernel drops a default SIGTERM there
        return
    loop = asyncio.get_running_loop()
    term = _terms.get(loop)
    installed = _getsignal(_TERM)
    if term is None or installed != term.handler:
        # Ours only over the default, or over one a closed or other loop left behind; also
        # over an ended handler of rxcontext's that stands for the default (put back by the
        # program after a reply: taken for the program's own, it killed at once).
        stands = _stands_for(installed, _TERM)
        if stands != _DFL and not isinstance(getattr(stands, "__self__", None), _LoopTerm):
            return  # the program's own handler
        if term is None:
            term = _terms[loop] = _LoopTerm(loop)
        _setsignal(_TERM, term.handler)
    term.replies.add(reply)


def leave(reply: Ending) -> None:
    """On the loop, as a reply's driver ends (saved, stored or given up)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - closed outside its loop
        return
    term = _terms.get(loop)
    if term is not None and reply in term.replies:
        term.settle(reply)


def forget(reply: Ending, loop: asyncio.AbstractEventLoop | None) -> None:
    """From any thread: ``reply``'s driver was let go without its end, its loop closed
    (:mod:`rxcontext._abandoned`): no SIGTERM waits for it, and the closed loop's entry
    (which held the loop and, through its replies, their runs and persisters) goes once it
    waits for none. Only for a closed loop (nothing runs on it to race with). The handler
    stays installed until the next reply's replaces it (``signal.signal`` is for the main
    thread only): over a closed loop it kills at once, as SIGTERM's default does."""
    if loop is None or not loop.is_closed():
        return
    term = _terms.get(loop)
    if term is None:
        return
    term.replies.discard(reply)
    if not term.replies:
        _terms.pop(loop, None)


def _forked() -> None:
    """In a forked child: the parent's loops never run here, so a SIGTERM handed to one
    would wait for good (the child lived on). Their replies are the parent's: forget them,
    and put SIGTERM back to its default, as it was before a loop took it (:func:`enter`)."""
    _terms.clear()
    if _TERM is not None and isinstance(getattr(_getsignal(_TERM), "__self__", None), _LoopTerm):
        _setsignal(_TERM, _DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
