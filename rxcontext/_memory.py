"""Handing a long reply's freed memory back to the operating system.

A streamed reply is held in blocks of a few kilobytes (:class:`~rxcontext.chunks.ReplyBuilder`)
that the C allocator takes from its heap. Once the reply is joined, the blocks are freed, but
glibc keeps freed heap memory for reuse whenever anything allocated later sits above it (it
only trims the heap's top), and the SQLite write that follows allocates its own buffers of
the reply's size elsewhere (``mmap``): a 100 MB reply then peaked at 4× its size, a full
copy of it being free memory the process still held (benchmarks/longreply.py, issue 14).
``malloc_trim(0)`` returns the free pages of every arena; it costs time in proportion to what
it hands back (~160 ms for 100 MB of freed blocks here, under load: ~1.6 ms a MB, against a
reply that took far longer to arrive), so it runs only when that much text was let go.
Elsewhere (not glibc) this does nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import cast

__all__ = ["TRIM_AT", "let_go"]

TRIM_AT = 4 << 20
"""Characters of text let go below which the free memory is left to the allocator."""


def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # here: most processes never let go of a long reply

    try:
        # The process's own symbols (libc's among them): ctypes.util.find_library would
        # start a subprocess to look for the library.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


_trim: Callable[[int], int] | None = None
_looked = False
_lock = threading.Lock()


def _forked() -> None:
    """In a forked child: the lock is new (a parent's thread may have held it at the fork)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def let_go(chars: int) -> bool:
    """Hand free heap memory back to the system if ``chars`` characters of text were just
    freed (at least :data:`TRIM_AT`); True if it was asked to."""
    global _trim, _looked
    if chars < TRIM_AT:
        return False
    if not _looked:
        with _lock:
            _trim = _malloc_trim()
            _looked = True
    if _trim is None:  # pragma: no cover - not glibc
        return False
    _trim(0)
    return True
