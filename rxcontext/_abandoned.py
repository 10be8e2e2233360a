"""Asyncio replies whose driver was let go without its end having run.

A loop closed without ``shutdown_asyncgens()`` (a loop per job, as older code makes) never
runs the close of a generator dropped on it (its ``aclose()`` task is cleared with the
loop), nor the rest of a task still pending then. The driver's frame is then cleared without
its ``finally``: the reply stayed registered with the store's checkpointer and heartbeat for
good (its persister, and what that holds, alive; the checkpointer's thread ticking for the
rest of the process), and a reply whose consumer still held a chunk (its task never ended,
so its watch never saved it) stayed ``STREAMING``, its lease renewed: never resumable.

The driver's watch (``astreaming._Unended`` until the driver's end makes it a plain
``_Watch``), which only the driver's frame holds, tells as it goes (its ``__del__``) that
the driver's end never ran: :func:`settle` ends the reply as
that end would have (what was delivered, ``INTERRUPTED``; committed if the consumer held the
final ``DONE``; nothing if the watch or a write under way already ended it), then stops its
periodic checkpoints and its heartbeat, and its closed loop's SIGTERM hand-over lets go of it
(:func:`rxcontext._loopterm.forget`).

The frame is let go on the thread that closes the loop, or by the cyclic collector on any
thread, set off by any allocation, whatever locks that thread holds then (the store's, a
checkpointer's: none reentrant). So nothing is done there but starting a thread (through
``_thread``: no lock of ``threading`` a collection could find held), which does the rest.
Only replies so let go pay for it; a driver that ended changed its watch's class.

A forked child holds copies of the parent's drivers, which its collector may let go (its
copy of a reply live in the parent, or of a driver the parent let go and has not collected
yet): those are not ended there (the stopper's ``forks``, :data:`._forks.generation` as the
driver started), else the child ended the parent's reply in the shared database (a live one
``INTERRUPTED`` under the parent, a let-go one ended twice).

The frame may also be found unreachable with its generator's close still to run on a loop
that runs (its finaliser schedules it, and so brings it back): the finaliser here then runs
too, and both end the reply; one of the two final writes is made (the reply's claim), the
other is nothing, and each stops its checkpoints and heartbeat (either way: idempotent).
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import threading
from typing import TYPE_CHECKING

from . import _forks, _loopterm

if TYPE_CHECKING:
    from .astreaming import _Stopper

__all__ = ["settle"]

_log = logging.getLogger("rxcontext.astreaming")

_ROUNDS = 4
"""Ends tried at most (a commit refused by the database is followed by its checkpoint)."""


def settle(stopper: _Stopper, answers_calls: bool) -> None:
    """The driver of ``stopper`` was let go without its end: end its reply in a thread of
    its own. Not in a forked child whose copy of the parent's driver was let go: the
    reply is the parent's (live there, or let go there too and ended by the parent)."""
    if stopper.forks != _forks.generation:
        return
    # RuntimeError: the interpreter is shutting down (its daemon threads are gone too).
    with contextlib.suppress(RuntimeError):
        _thread.start_new_thread(_end, (stopper, answers_calls))


def _end(stopper: _Stopper, answers_calls: bool) -> None:
    run = stopper.run
    persister = run.persister
    try:
        for _ in range(_ROUNDS):
            if not persister.finished:
                # As the driver's end: committed if it was held whole, else interrupted (a
                # final write that another thread claimed meanwhile makes this one nothing).
                persister.let_go(answers_calls)
            # A final write under way (the watch's, in the closed loop's executor, or the
            # driver's commit in a worker thread) is waited for: the reply is unregistered
            # once it landed (or was kept for the heartbeat: a busy database).
            landed = threading.Event()
            if not persister.when_final_written(landed.set, handed_on=False):
                break
            landed.wait()
    except Exception:  # the store closed meanwhile is logged where it is raised
        _log.debug("ending reply %r let go with its loop failed", persister.reply_id, exc_info=True)
    finally:
        _loopterm.forget(stopper, stopper.loop)
        run.close()
