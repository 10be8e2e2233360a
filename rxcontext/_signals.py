"""Store writes that a signal cannot cut in half.

Python runs signal handlers between bytecodes of the main thread, so ``KeyboardInterrupt``
(or a ``SystemExit`` raised by a SIGTERM handler) can land anywhere: right after
``BEGIN IMMEDIATE`` (the write lock stays held, other processes see "database is locked"),
between a commit and the line that notes it in memory (the next step then repeats or
contradicts it). :func:`deferred` holds such signals for the length of a write and its
bookkeeping, then delivers them to the handler that was installed, so the user still gets
their ``KeyboardInterrupt`` — after the write happened whole, or not at all.

Only the main thread runs Python signal handlers, so elsewhere this costs one comparison.
``asyncio.CancelledError`` needs nothing here: it only lands at an ``await``, and the store's
writes do not await.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["HandOver", "Terminated", "deferred"]

try:  # the C functions: signal.signal/getsignal wrap them in enum conversions that cost
    # ~10 µs a call (a failed Handlers(handler) lookup), on every store write's way
    import _signal as _c_signal  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - not CPython
    _c_signal = signal
# Assigned, not imported: rxcontext._loopterm uses the same three.
_getsignal, _setsignal, _DFL = _c_signal.getsignal, _c_signal.signal, _c_signal.SIG_DFL

_DEFERRED = tuple(
    int(s) for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None
)
_TERM = int(signal.SIGTERM) if hasattr(signal, "SIGTERM") else None
_MAIN = threading.main_thread()
_depth = 0  # main thread only: nested regions defer once, at the outermost


class deferred:  # lower case: used as ``with deferred():``, as when it was a function
    """Hold SIGINT/SIGTERM handlers until the block ends, then run them (main thread only).

    A class, not a ``@contextmanager`` generator: it is entered on every store write (twice
    on a reply's way to its first chunk), where the generator's machinery cost more than
    the work (issue 14)."""

    __slots__ = ("_pending", "_saved", "_state")

    def __enter__(self) -> None:
        global _depth
        if threading.current_thread() is not _MAIN:
            self._state = 0  # elsewhere no Python handler runs: nothing to hold
            return
        if _depth:  # nested regions defer once, at the outermost
            _depth += 1
            self._state = 1
            return
        self._state = 2
        self._pending: list[tuple[int, FrameType | None]] = []
        self._saved: dict[int, Any] = {}
        _depth = 1
        try:
            for signum in _DEFERRED:
                handler = _getsignal(signum)
                if callable(handler):  # a Python-level handler (default_int_handler included)
                    self._saved[signum] = handler
                    _setsignal(signum, self._hold)
        except BaseException:
            self._restore()
            raise

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        """Hold the signal; a second SIGTERM at its default kills at once instead (as this
        runs: see :func:`_again_at_default` for SQLite's lock wait)."""
        again = not _add(self._pending, signum, frame)
        if signum == _TERM and _again_at_default(self._saved[signum], signum, again):
            _die(signum)  # a second SIGTERM at its default: no more waiting for the write

    def __exit__(self, *exc: object) -> None:
        global _depth
        state = self._state
        if state == 2:
            self._restore()
        elif state == 1:
            _depth -= 1

    def _restore(self) -> None:
        global _depth
        _depth = 0
        saved = self._saved
        left = list(saved.items())
        came: BaseException | None = None
        while left:
            # A signal landing once its handler is back raises here (Ctrl-C): the others
            # go back all the same (before, SIGTERM's stayed this write's holder for good).
            try:
                while left:
                    signum, handler = left[-1]
                    _setsignal(signum, handler)
                    left.pop()
            except BaseException as error:
                came = error if came is None else came
        if came is None:
            _run_all(saved, self._pending)
            return
        try:  # what was held came first; then what came as the handlers went back
            _run_all(saved, self._pending)
        finally:
            raise came


def _add(pending: list[tuple[int, FrameType | None]], signum: int, frame: FrameType | None) -> bool:
    """Hold ``signum`` unless one of its kind is held already (then False): a flood of
    Ctrl-Cs (a key held, ``kill`` in a loop) during a long write is one Ctrl-C."""
    for held, _ in pending:
        if held == signum:
            return False
    pending.append((signum, frame))
    return True


def _again_at_default(handler: Any, signum: int, again: bool) -> bool:
    """Whether a SIGTERM (``signum``) that ``handler`` (the one a write or a fold replaced)
    would get is a second one at SIGTERM's default: ``again`` (one is held already), or the
    first was taken already (a reply's driver, or the asyncio loop's, is ending its replies
    for it). Then it kills at once, as the docs say, never waiting for a write (a lock) —
    once it runs: a Python handler runs on the main thread between two bytecodes, so not
    while SQLite waits for another process's lock in its own C code (``busy_timeout``);
    there it runs as that wait ends. PostgreSQL's waits (psycopg's, in Python) let it run."""
    while type(handler) is _Handler:  # (an inner reply's passes it on to an outer one's)
        forward = handler.saved.get(signum)
        if forward == handler.die:
            guard = handler.guard
            if guard is None and callable(handler.after):
                handler = handler.after  # (its die passes SIGTERM on there: a loop's)
                continue
            return again or (guard is not None and guard.terminated)
        handler = forward
    from ._loopterm import _LoopTerm  # (imports this module; only ever on a SIGTERM)

    owner = getattr(handler, "__self__", None)
    return type(owner) is _LoopTerm and handler == owner.handler and (again or owner.terminated)


def _run_all(
    handlers: dict[int, Any], pending: list[tuple[int, FrameType | None]], on: bool = False
) -> None:
    """Run each held signal's handler, in the order each kind first came: one that raises
    does not cut the rest short, and a second exception goes on with the first as its
    ``__context__``, as Python chains one raised while another unwinds. Before, a
    ``KeyboardInterrupt`` dropped a SIGTERM held with it. ``on``: passed on by a hand-over
    (see :func:`_pass_on`)."""
    raised: BaseException | None = None
    for signum, frame in pending:
        try:
            if on:
                _pass_on(handlers[signum], signum, frame)
            else:
                handlers[signum](signum, frame)
        except BaseException as error:
            if raised is not None and error is not raised:
                error.__context__ = raised
            raised = error
    if raised is not None:
        context = raised.__context__
        try:
            raise raised
        except BaseException:
            raised.__context__ = context  # (raise put the exception being handled there)
            raise


_passing = False
"""Main thread only: whether a hand-over is passing a signal on to the handler it replaced."""


def _pass_on(handler: Any, signum: int, frame: FrameType | None) -> None:
    """Call ``handler`` for a signal a hand-over passes on. A hand-over's handler found
    there (an outer reply's, when this reply was started from its ``on_next``; one a
    program's handler chains to) passes it on in turn, never holding it: the innermost
    hand-over decided already, and the outer one is in its subscriber's code."""
    global _passing
    if _passing:
        handler(signum, frame)
        return
    _passing = True
    try:
        handler(signum, frame)
    finally:
        _passing = False


class Terminated(BaseException):
    """SIGTERM came at its default disposition while a reply was driven (see
    :class:`HandOver`): the driver saves the checkpoint, then the process dies by SIGTERM."""


class HandOver:
    """Holds SIGINT/SIGTERM while the sync driver hands a chunk over and folds it in.

    A chunk is delivered once the subscriber's ``on_next`` ran; the driver folds it into the
    checkpoint right after. A ``KeyboardInterrupt`` landing between the two (in the driver's
    own code, after ``on_next`` returned) would leave a delivered chunk out of the
    checkpoint. While :attr:`critical` is set, a signal that arrives in rxcontext's own code
    waits for :meth:`release`; one that arrives in the subscriber's code is raised at once,
    as usual (the chunk then counts as delivered). Installed each time the driver starts
    (again when a retry wakes it), on the main thread only (elsewhere it does nothing): two
    flag writes per chunk.

    SIGTERM at its default disposition (a plain program stopped by ``kill``, ``docker
    stop``, systemd) would kill the process at once, the reply keeping only its last
    periodic write. While the driver runs it is handled like Ctrl-C instead, raising
    :class:`Terminated`; once the driver saved what was delivered and let go of the reply,
    :meth:`terminate` restores the default and sends SIGTERM again, so the process dies by
    it as it would have (no exception reaches the program). A second SIGTERM meanwhile kills
    at once (during SQLite's wait for a lock, once that wait ends: a Python handler does not
    run in its C code). A handler the program installed is used as is. As PID 1 (a
    container's init, where the kernel drops a SIGTERM at its default) SIGTERM is not taken
    over: it does nothing, as it would have done without rxcontext.

    Each run installs a handler of its own (:class:`_Handler`), which outlives the run. A
    reply started from another's ``on_next`` decides alone: its hand-over passes a signal
    it does not hold on to the outer one's handler, which does not hold it in turn (it is
    in its subscriber's code, whatever the frame says).
    """

    __slots__ = ("_run", "critical", "held", "terminated")

    def __init__(self) -> None:
        self.critical = False
        self.held: list[tuple[int, FrameType | None]] = []
        """Signals waiting for :meth:`release` (the driver looks before calling it)."""
        self._run: _Handler | None = None
        self.terminated = False
        """Whether SIGTERM came at its default (then :meth:`terminate` ends the process)."""

    def __enter__(self) -> HandOver:
        if threading.current_thread() is _MAIN:
            run = _Handler(self)
            for signum in _DEFERRED:
                # What an ended handler of rxcontext's, put back by the program, stands
                # for: saved itself, each reply would add a link to the chain
                # (RecursionError at Ctrl-C after some thousand replies), and one that
                # stands for SIGTERM's default would pass for the program's (it kills at
                # once, nothing saved).
                handler = after = _stands_for(_getsignal(signum), signum)
                if signum == _TERM and _stopped_loop(handler):
                    handler = _DFL  # as at the default, the loop's put back after
                if callable(handler):
                    run.saved[signum] = handler
                    _setsignal(signum, run)
                elif signum == _TERM and handler == _DFL and os.getpid() != 1:
                    # (As PID 1, a container's init, the kernel drops a default SIGTERM:
                    # the process would not die by it, so it is left to do nothing.)
                    run.saved[signum] = run.die
                    run.after = after
                    _setsignal(signum, run)
            if run.saved:
                self._run = run
        return self

    def __exit__(self, *exc: object) -> None:
        self.critical = False
        run, self._run = self._run, None
        if run is None:
            return
        run.guard = None  # from now on it passes signals on to what it replaced
        saved = run.saved
        die = run.die
        for signum, handler in saved.items():
            # A handler the program installed meanwhile (from a hook, or on_next) stays.
            if _getsignal(signum) is run:
                _setsignal(signum, run.after if handler == die else handler)
        held, self.held = self.held, []
        if held:  # (an exception left a fold with a signal held: deliver it, never drop it)
            pending = [(s, f) for s, f in held if saved[s] != die]
            if len(pending) < len(held):
                self.terminated = True  # SIGTERM at its default: terminate() dies by it
            _run_all(saved, pending, on=True)

    def _terminate(self, signum: int, frame: FrameType | None) -> None:
        if self.terminated:  # a second SIGTERM: no more waiting
            _die(signum)
            return
        self.terminated = True
        raise Terminated("SIGTERM")

    def terminate(self) -> None:
        """After :meth:`__exit__`: if SIGTERM came at its default, die by it now.

        Should the process outlive it (SIGTERM blocked or ignored meanwhile), it ends with
        ``SystemExit(128 + SIGTERM)`` instead, the status a shell gives a death by SIGTERM:
        never with :class:`Terminated`, which is rxcontext's own."""
        if self.terminated and _TERM is not None:
            self.terminated = False
            # A handler the program installed since (kept by __exit__) did not see this
            # SIGTERM, which came at the default: die by the default all the same.
            _die(_TERM)
            raise SystemExit(128 + _TERM)

    def release(self) -> None:
        """End a critical stretch; deliver the signals held during it (they raise here).

        Also on the way out of a fold that an exception interrupts (a Ctrl-C that landed
        in ``on_next``): a signal held meanwhile is delivered there, its exception
        replacing the first one (``__context__``), as Python does for a signal landing
        in an ``except`` block; before, it was dropped."""
        self.critical = False
        if self.held:
            pending, self.held = self.held, []
            run = self._run
            assert run is not None  # (only its handler holds signals)
            _run_all(run.saved, pending, on=True)


def _stands_for(handler: Any, signum: int) -> Any:
    """What ``handler``, installed for ``signum``, stands for when it is rxcontext's own and
    its work is over, put back by a program that swapped in its own handler during a reply
    and then put back what it had found: an ended run's :class:`_Handler` (of the blocking
    API) passes signals on to what it replaced, SIGTERM's default where it stood for it;
    the SIGTERM handler of an asyncio loop (:mod:`._loopterm`) that waits for no reply, or
    whose loop is closed, stands for the default too (it kills at once). Anything else
    stands for itself. The next reply, of either kind, decides by what it stands for: taken
    for the program's own, it left SIGTERM to a handler that killed at once, nothing saved;
    and the chain of handlers stays one link deep."""
    while type(handler) is _Handler and handler.guard is None:
        ended, handler = handler, handler.saved.get(signum, _DFL)
        if handler == ended.die:
            handler = ended.after  # the default, or a loop's that stood for it
            break
    if signum == _TERM and getattr(handler, "__self__", None) is not None:  # a bound method
        from ._loopterm import _LoopTerm  # (imports this module)

        owner = handler.__self__
        if type(owner) is _LoopTerm and handler == owner.handler and owner.ended:
            return _DFL
    return handler


class _Handler:
    """The SIGINT/SIGTERM handler of one run of a :class:`HandOver` (installed again for
    each): it keeps what it replaced after the run, so a handler the program installed
    meanwhile and chains to it (a library set up from ``on_next`` that calls the handler it
    found), or puts back, reaches that one — Python's Ctrl-C handler, SIGTERM's default
    (the process dies by it). A run entered later replaces this one, never itself: no
    loop. Found again at a run's start once its own run is over (put back by the program),
    it is replaced by what it forwards to: the chain stays one link deep, reply after
    reply."""

    __slots__ = ("after", "guard", "saved")

    def __init__(self, guard: HandOver) -> None:
        self.guard: HandOver | None = guard
        """The hand-over while its run lasts, then None."""
        self.saved: dict[int, Any] = {}
        self.after: Any = _DFL
        """What SIGTERM's default, where :attr:`die` took it, stood for: put back after."""

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        guard = self.guard
        if (
            guard is not None
            and guard.critical
            and not _passing  # (passed on by an inner reply's hand-over: it decided)
            and frame is not None
            and frame.f_globals.get("__name__", "").startswith("rxcontext")
        ):
            again = not _add(guard.held, signum, frame)
            if signum == _TERM and _again_at_default(self, signum, again):
                _die(signum)  # a second SIGTERM at its default: no more waiting
            return
        _pass_on(self.saved[signum], signum, frame)

    def die(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM at its default: see :class:`HandOver`; after the run, what that default
        stood for gets it (:attr:`after`: a stepped loop's handler, found stopped), else
        die by it."""
        guard = self.guard
        if guard is not None:
            guard._terminate(signum, frame)
        elif callable(self.after):  # (put back by the program: the loop saves its replies)
            _pass_on(self.after, signum, frame)
        else:
            _die(signum)


def _stopped_loop(handler: Any) -> bool:
    """Whether ``handler`` (what SIGTERM's stands for) is the handler of an asyncio loop
    that waits for replies (:mod:`._loopterm`) but is not running: stepped by a sync bridge
    (``run_until_complete``) and stopped between two steps, it would kill at once, this
    blocking reply's delivered chunks lost. So the blocking reply takes SIGTERM as at its
    default (saved, then the process dies by it, the loop's replies keeping their last
    periodic write, as SIGTERM between two steps leaves them), and puts the loop's handler
    back after. (A loop running, this call in one of its callbacks, is left its own: see
    docs/guarantees.md, a blocking reply inside an ``astream()`` consumer.)"""
    if getattr(handler, "__self__", None) is None:  # (a bound method: a loop's might be)
        return False
    from ._loopterm import _LoopTerm  # (imports this module)

    owner = handler.__self__
    return type(owner) is _LoopTerm and handler == owner.handler and not owner.loop.is_running()


def _die(signum: int) -> None:
    """Die by ``signum`` at its default; should the process outlive it (the signal blocked),
    the handler installed is back."""
    handler = _getsignal(signum)
    if handler != _DFL:
        _setsignal(signum, _DFL)
    os.kill(os.getpid(), signum)
    if handler != _DFL:
        _setsignal(signum, handler)
