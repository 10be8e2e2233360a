"""Holds: a reply whose final write is under way or pending stays its process's on SQLite.

A reply's lease is renewed by writes, so another process's write lock (a long write, a
backup) stops the renewals: held longer than what is left of the lease, it makes the reply
read as dead. That is right for a reply still streaming (its owner could not keep it and
gives it up, :mod:`rxcontext.heartbeat`), not for one whose owner has ended it and only
waits to write its last checkpoint — what it showed its user, which no other process has.
With the defaults (``busy_timeout`` = ``lease_ttl``) such a final write is refused only
after the lease ran out; another worker that read the reply as interrupted then resumed it
from its last periodic checkpoint, and the text shown was lost.

So the owner holds the reply from before its final write (commit, or checkpoint) until the
write is done or given up: a POSIX record lock on the byte ``checkpoint id`` of a file
beside the database (``<db>-rxholds``). The kernel drops it when the process dies (SIGKILL
included), and keeps it while the process lives (stopped or not). Readers judge a live row
whose lease ran out by it: if its owner, of this process table, holds the row, the row is
live still (:func:`held`). Every process that can open a WAL database shares the host's
file locks (WAL needs shared memory: no network file systems), so this holds across them;
only processes of another PID namespace cannot name each other's pids, and there the
lease decides, as before.

POSIX record locks belong to the process and are all dropped when it closes *any*
descriptor of the file: one descriptor per file and process is opened, and closed only
when nothing of it is held and no store of its database is open in the process (the last
``store.close()``, or the release of a hold that outlived its stores).
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import threading
from collections.abc import Callable

__all__ = ["attach", "detach", "held", "hold", "holds_path"]

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no holds, the lease decides
    fcntl = None  # type: ignore[assignment]

# struct flock: Linux (l_type, l_whence, l_start, l_len, l_pid), the BSDs and macOS
# (l_start, l_len, l_pid, l_type, l_whence). Elsewhere there are no holds.
if sys.platform.startswith("linux"):
    _FLOCK = "hhqqi4x"

    def _pack(kind: int, start: int) -> bytes:
        return struct.pack(_FLOCK, kind, os.SEEK_SET, start, 1, 0)

    def _unpack(data: bytes) -> tuple[int, int]:
        kind, _, _, _, pid = struct.unpack(_FLOCK, data)
        return kind, pid

elif sys.platform == "darwin" or "bsd" in sys.platform:
    _FLOCK = "qqihh"

    def _pack(kind: int, start: int) -> bytes:
        return struct.pack(_FLOCK, start, 1, 0, kind, os.SEEK_SET)

    def _unpack(data: bytes) -> tuple[int, int]:
        _, _, pid, kind, _ = struct.unpack(_FLOCK, data)
        return kind, pid

else:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class _File:
    """This process's descriptor of one holds file, and the rows it holds (counted)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.rows: dict[int, int] = {}


_files: dict[str, _File] = {}
_stores: dict[str, int] = {}
"""Open stores of each holds file's database in this process (:func:`attach`)."""
_files_lock = threading.Lock()
"""Guards the two dicts and every use of a descriptor (each a quick, non-blocking
``fcntl``): a descriptor is closed under it, so none is used, or closed, twice."""


def _forked() -> None:
    """A forked child holds nothing of its parent's (record locks are not inherited): it
    opens its own descriptors (the inherited ones stay open: nothing needs them), and its
    lock is new (a parent's thread may have held it at the fork)."""
    global _files_lock
    _files_lock = threading.Lock()
    _files.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def holds_path(db_path: str) -> str | None:
    """The holds file of the SQLite database at ``db_path`` (None: an in-memory or URI one)."""
    if db_path == ":memory:" or db_path.startswith("file:") or fcntl is None:
        return None
    return os.path.realpath(db_path) + "-rxholds"


def attach(path: str | None) -> None:
    """A store of the database opened: its holds file's descriptor may stay open (it is
    opened when first needed) until :func:`detach` of the last such store."""
    if path is None:
        return
    with _files_lock:
        _stores[path] = _stores.get(path, 0) + 1


def detach(path: str | None) -> None:
    """A store of the database closed (once per :func:`attach`): the descriptor is closed
    with the last one, unless a row is held still (then with its release)."""
    if path is None:
        return
    with _files_lock:
        left = _stores.get(path, 0) - 1
        if left > 0:
            _stores[path] = left
        else:
            _stores.pop(path, None)
        _close_unused(path)


def _close_unused(path: str) -> None:
    """Close the descriptor of ``path`` if no open store and no held row need it (under
    ``_files_lock``). Closing drops this process's record locks on the file: there are none."""
    f = _files.get(path)
    if f is not None and not f.rows and path not in _stores:
        del _files[path]
        with contextlib.suppress(OSError):
            os.close(f.fd)


def _file(path: str) -> _File | None:
    """The descriptor of ``path``, opened if it is not (under ``_files_lock``)."""
    found = _files.get(path)
    if found is not None:
        return found
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        try:  # a reader that may not create it: nothing it could find held
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # not created: nothing ever held here (not remembered)
    found = _files[path] = _File(fd)
    return found


def hold(path: str | None, checkpoint_id: int) -> Callable[[], None]:
    """Hold row ``checkpoint_id`` for this process until the returned call (idempotent);
    a no-op where there are no holds (or the file cannot be written)."""
    if path is None or fcntl is None:
        return _nothing
    with _files_lock:
        f = _file(path)
        if f is None:
            return _nothing
        n = f.rows.get(checkpoint_id, 0)
        if n == 0:
            try:
                fcntl.fcntl(f.fd, fcntl.F_SETLK, _pack(fcntl.F_WRLCK, checkpoint_id))
            except OSError:
                # Read-only here, no locks on this file system, or (never) held by another
                # process: no hold, the lease decides — the write itself must not fail.
                _close_unused(path)
                return _nothing
        f.rows[checkpoint_id] = n + 1
    done = False

    def release() -> None:
        nonlocal done
        assert path is not None and f is not None and fcntl is not None
        with _files_lock:
            if done:
                return
            done = True
            left = f.rows[checkpoint_id] - 1
            if left:
                f.rows[checkpoint_id] = left
                return
            del f.rows[checkpoint_id]
            if _files.get(path) is not f:  # (a fork's child: this one is not its own)
                return
            with contextlib.suppress(OSError):  # unlocking cannot fail on a held range
                fcntl.fcntl(f.fd, fcntl.F_SETLK, _pack(fcntl.F_UNLCK, checkpoint_id))
            _close_unused(path)  # a hold that outlived its stores

    return release


def held(path: str | None, checkpoint_id: int, pid: int, *, here: bool) -> bool:
    """Whether process ``pid`` (this one if ``here``) holds row ``checkpoint_id``."""
    if path is None or fcntl is None:
        return False
    if here:
        mine = _files.get(path)
        return mine is not None and checkpoint_id in mine.rows
    with _files_lock:
        f = _file(path)
        if f is None:
            return False
        try:
            found = fcntl.fcntl(f.fd, fcntl.F_GETLK, _pack(fcntl.F_WRLCK, checkpoint_id))
        except OSError:
            return False  # no locks here: the lease decides
        finally:
            _close_unused(path)  # (asked with no store open: nothing keeps it)
    kind, holder = _unpack(found)
    return kind != fcntl.F_UNLCK and holder == pid


def _nothing() -> None:
    pass
