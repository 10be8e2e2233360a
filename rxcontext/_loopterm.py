"""SIGTERM at its default while asyncio replies stream: save them, then die by it.

A plain program (no SIGTERM handler: stopped by ``kill``, ``docker stop``, systemd) dies
on the spot at SIGTERM, a streaming reply keeping only its last periodic write. The sync
driver holds SIGTERM for the reply's length (:class:`rxcontext._signals.HandOver`); under
asyncio the equivalent is the loop's own signal handling: while at least one reply is
driven on a loop that runs on the main thread, and SIGTERM is at its default there, the
loop gets a SIGTERM handler (``loop.add_signal_handler``; nothing else is installed, and
it is removed when the last reply ends, SIGTERM back at its default). A SIGTERM then ends
each of the loop's replies as ``cw.stop`` does (:class:`~rxcontext.astreaming._Stopper`):
one awaiting the model is cancelled there, one whose consumer holds a delivered chunk is
saved at once, one in a step of its own (a store write, a running tool, an async hook)
ends when that step does. Each checkpoint holds exactly what its consumer received (error
``Terminated: SIGTERM``). Once all are saved the default is restored and SIGTERM sent
again: the process dies by it as it would have (no exception reaches the program). A
second SIGTERM meanwhile kills at once.

A handler the program installed (``signal.signal``, or ``loop.add_signal_handler``, also
one added while a reply streams) is used as it is. Loops that do not show their signal
handlers (``_signal_handlers``: uvloop, Windows) are left alone, as are loops on other
threads: there SIGTERM kills at once, as before.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import weakref
from typing import Any, Protocol

from .errors import ReplyStopped

__all__ = ["Terminated", "enter", "leave"]

_TERM: signal.Signals | None = getattr(signal, "SIGTERM", None)


class Terminated(ReplyStopped):
    """SIGTERM came at its default while the reply streamed under asyncio: the reply was
    saved, and the process dies by SIGTERM."""


class Ending(Protocol):
    """What a reply's driver offers: end the reply for SIGTERM (see :func:`enter`)."""

    def terminate(self, error: ReplyStopped) -> asyncio.Future[Any] | None:
        """End the reply with ``error``: a future done once its checkpoint is written (or
        nothing is to be written), or None when the driver ends it and calls :func:`leave`."""
        ...


class _LoopTerm:
    """The SIGTERM handler of one loop and the replies it waits for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.replies: set[Ending] = set()
        self.terminated = False

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
        if self.terminated:
            if not self.replies:
                self.die()
        elif not self.replies:
            self.uninstall()

    def uninstall(self) -> None:
        if _terms.get(self.loop) is self:
            del _terms[self.loop]
        if _TERM is not None and _ours(self.loop, self):
            self.loop.remove_signal_handler(_TERM)  # SIGTERM at its default again

    def die(self) -> None:
        self.uninstall()
        assert _TERM is not None
        signal.signal(_TERM, signal.SIG_DFL)
        os.kill(os.getpid(), _TERM)


_terms: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopTerm] = (
    weakref.WeakKeyDictionary()
)


def _ours(loop: asyncio.AbstractEventLoop, term: _LoopTerm) -> bool:
    """Whether SIGTERM is still handled by ``term`` (through the loop: not replaced since,
    by ``loop.add_signal_handler`` nor by ``signal.signal``)."""
    if _TERM is None:
        return False
    handlers = getattr(loop, "_signal_handlers", None)
    handle = handlers.get(_TERM) if isinstance(handlers, dict) else None
    return (
        handle is not None
        and getattr(handle, "_callback", None) == term.on_term
        and getattr(signal.getsignal(_TERM), "__module__", None) == "asyncio.unix_events"
    )


def enter(reply: Ending) -> None:
    """On the loop, as a reply's driver starts: ``reply`` is ended and waited for at
    SIGTERM, if this loop handles SIGTERM for its replies (see the module docstring)."""
    loop = asyncio.get_running_loop()
    term = _terms.get(loop)
    if term is not None and not _ours(loop, term):  # the program handles SIGTERM now
        del _terms[loop]
        term = None
    if term is None:
        if _TERM is None:
            return
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(_TERM) is not signal.SIG_DFL
            or not isinstance(getattr(loop, "_signal_handlers", None), dict)
        ):
            return
        term = _LoopTerm(loop)
        try:
            loop.add_signal_handler(_TERM, term.on_term)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
            return
        _terms[loop] = term
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
