"""Who generates a reply: this process's worker id, and whether another one is still alive.

A worker id is ``host:pid:start`` where ``start`` is the process's start time (from
``/proc``; a random token where there is none), so a pid reused by a later process is not
taken for the dead one. Same host: the process table answers at once. Another host: only
the reply's lease (renewed by its owner's heartbeat) can tell.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime

__all__ = ["owner_alive", "worker_id"]

_HOST = socket.gethostname()
_ids: dict[int, str] = {}


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 (starttime), counted after the command name, which may hold spaces.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


def worker_id() -> str:
    """This process's worker id (a forked child gets its own)."""
    pid = os.getpid()
    wid = _ids.get(pid)
    if wid is None:
        wid = _ids[pid] = f"{_HOST}:{pid}:{_start_time(pid) or uuid.uuid4().hex[:12]}"
    return wid


def owner_alive(owner: str | None, lease_until: datetime | None, now: datetime) -> bool:
    """Whether the worker ``owner`` may still be generating (its reply is not orphaned)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != _HOST or not pid_text.isdigit():
        return lease_until is not None and lease_until > now
    pid = int(pid_text)
    if owner == worker_id():
        return True
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
