"""Who generates a reply: this process's worker id, and whether another one is still alive.

A worker id is ``host:pid:start`` where ``start`` is the process's start time (from
``/proc``; a random token where there is none), so a pid reused by a later process is not
taken for the dead one, and ``host`` names the process table: the host name, and on Linux
the boot and the PID namespace (``name/boot-namespace``), so two containers of one pod, or
two machines of one name, are not taken for one. Same process table: it tells a dead owner
at once. Any other:
an owner whose lease (renewed by its heartbeat, :mod:`rxcontext.heartbeat`) ran out is
presumed dead, even if its process still exists (stopped, starved, cut off).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import uuid
from datetime import datetime

__all__ = ["check_lease_ttl", "local_pid", "owner_alive", "process_gone", "worker_id"]


def _process_table() -> str:
    """The name of this process table: the host name and, where Linux tells them, the boot
    and the PID namespace (no ``:``, the worker id's separator)."""
    name = socket.gethostname().replace(":", "_")
    marks = []
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            marks.append(f.read().strip()[:8])
        marks.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return f"{name}/{'-'.join(marks)}" if marks else name


_HOST = _process_table()
_ids: dict[int, str] = {}


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 (starttime), counted after the command name, which may hold spaces.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields and fields[0] in (b"Z", b"X"):
        # Killed (or exited) and not yet reaped by its parent: it runs no more, though its
        # entry, start time included, stays until the parent waits for it.
        return None
    return fields[19].decode() if len(fields) > 19 else None


def check_seconds(value: object, name: str) -> float:
    """``value`` as a positive, finite number of seconds, or ``ValueError``/``TypeError``
    naming ``name`` and saying why not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite number of seconds, not {value!r}")
    if value > threading.TIMEOUT_MAX:  # what a thread can wait for (about 292 years)
        raise ValueError(f"{name} must be at most {threading.TIMEOUT_MAX:g} seconds, not {value!r}")
    return float(value)


def check_lease_ttl(value: object) -> float:
    """``value`` as a lease length in seconds, or ``ValueError``/``TypeError`` saying why not."""
    return check_seconds(value, "lease_ttl")


def worker_id() -> str:
    """This process's worker id (a forked child gets its own)."""
    pid = os.getpid()
    wid = _ids.get(pid)
    if wid is None:
        wid = _ids[pid] = f"{_HOST}:{pid}:{_start_time(pid) or uuid.uuid4().hex[:12]}"
    return wid


def owner_alive(owner: str | None, lease_until: datetime | None, now: datetime) -> bool:
    """Whether the worker ``owner`` may still be generating (its reply is not orphaned)."""
    return lease_until is not None and lease_until > now and not process_gone(owner)


def process_gone(owner: str | None) -> bool:
    """Whether a reply leased to ``owner`` is orphaned all the same: no owner, or one of
    this process table whose process is gone. The half of :func:`owner_alive` a query
    cannot tell (the lease half it can: ``lease_until > now``)."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != _HOST or not pid_text.isdigit():  # another process table: the lease decides
        return False
    if owner == worker_id():
        # This process renews the lease of every reply it still serves; one whose lease ran
        # out (the process was starved and fenced it) is over here as it is for every other
        # worker — unless it is held for a final write the database refused (the store's
        # readers ask the hold first: store/sqlite_holds.py).
        return False
    # On this host a dead process is seen at once; a live one still needs its lease (a
    # process stopped or starved past its lease is taken over as one on another host is).
    return not _running(int(pid_text), start)


def local_pid(owner: str | None) -> int | None:
    """The pid of worker ``owner`` if it is of this process table (else None: its pid
    names nothing here)."""
    host, _, rest = (owner or "").partition(":")
    pid_text = rest.partition(":")[0]
    return int(pid_text) if host == _HOST and pid_text.isdigit() else None


def _running(pid: int, start: str) -> bool:
    actual = _start_time(pid)
    if actual is not None:
        return actual == start
    if os.path.isdir("/proc"):
        return False  # no such process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
