"""How an error reaches the user: one line saying what went wrong, one saying what to do.

Every exception that ends a command comes here (``--verbose`` adds the traceback). Known
errors get a message and a hint of their own; a refusal rxcontext raises on purpose (a
``ValueError`` such as "holds no text to keep") is said as such; a value in the database that
rxcontext cannot decode (a bad date, an unknown record type, bad JSON) is reported as such;
anything else is named as an unexpected error (a bug to report), still on one line.
"""

from __future__ import annotations

import dis
import sqlite3
import sys
from pathlib import Path

from ..errors import (
    CheckpointNotFound,
    CheckpointResolved,
    ContextNotFound,
    DeadlineExceeded,
    MissingDependency,
    NotADatabaseError,
    PoolBusy,
    ProviderError,
    RxContextError,
    SchemaTooNew,
    StoreBusy,
    StoreError,
    StreamInterrupted,
    StreamTimeout,
    ToolLoopLimit,
)
from ..store import without_password
from .common import CLIError
from .text import one_line

__all__ = ["describe", "refused", "report", "unreadable_value"]

_PACKAGE = Path(__file__).resolve().parents[1]
# Where a stored value is decoded into records, checkpoints and contexts.
_DECODERS = (_PACKAGE / "store", _PACKAGE / "records.py", _PACKAGE / "chunks.py")
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)
_RAISE = dis.opmap["RAISE_VARARGS"]


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``ValueError`` rxcontext raised on purpose: a ``raise`` statement
    in its own code ("checkpoint 1 holds no text to keep", a stale summary), not a decoder
    (``datetime``, ``json``, an enum) failing on a value it was given."""
    if not isinstance(exc, ValueError) or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    # A callee that raised (C code, or Python outside the package) leaves this frame's
    # entry at the call; a `raise` here leaves it at the raise.
    return (
        Path(code.co_filename).is_relative_to(_PACKAGE)
        and 0 <= tb.tb_lasti < len(code.co_code)
        and code.co_code[tb.tb_lasti] == _RAISE
    )


def unreadable_value(exc: BaseException) -> bool:
    """Whether ``exc`` is the store failing to decode a value it read from the database."""
    if isinstance(exc, sqlite3.DatabaseError):
        return True
    if not isinstance(exc, _DECODE_ERRORS) or isinstance(exc, RxContextError) or refused(exc):
        return False
    innermost: Path | None = None
    tb = exc.__traceback__
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename)
        if path.is_relative_to(_PACKAGE):
            innermost = path
        tb = tb.tb_next
    return innermost is not None and any(
        innermost == place or innermost.is_relative_to(place) for place in _DECODERS
    )


def describe(exc: BaseException, base_url: str | None, db: Path | None = None) -> tuple[str, str]:
    """The one-line message and the hint for ``exc``."""
    if isinstance(exc, StreamInterrupted):
        cause = exc.__cause__
        cp = exc.checkpoint
        message, hint = describe(cause, base_url, db) if cause is not None else (str(exc), "")
        if cp.text or cp.tool_calls:
            # Something arrived, so the server was reachable: the stream broke midway.
            message = f"the reply was cut off after {len(cp.text)} characters: {cause or exc}"
            hint = f"the partial reply is kept as checkpoint {cp.id}: rxcontext resume {cp.id}"
        return message, hint
    if isinstance(exc, CLIError):
        return str(exc), exc.hint
    if isinstance(exc, MissingDependency):  # its remedy is the hint line, not said twice
        return exc.problem, exc.hint
    own_hint = getattr(exc, "hint", None)
    if isinstance(exc, RxContextError) and isinstance(own_hint, str):  # ModelSpecError & co.
        return str(exc), own_hint
    if isinstance(exc, NotADatabaseError):
        return str(exc), "pass --db with the path of an rxcontext database, or of a new file"
    if isinstance(exc, SchemaTooNew):
        return str(exc), "upgrade rxcontext (pip install -U rxcontext) to open this database"
    if isinstance(exc, PoolBusy):  # the store's own calls, no other process
        return str(exc), "make fewer calls at once, or open the store with a larger pool_size"
    if isinstance(exc, StoreBusy):
        return str(exc), "another process holds the database: let it finish, then try again"
    if isinstance(exc, StoreError) and str(exc).startswith(
        ("cannot connect to postgresql", "PostgreSQL")
    ):
        return str(exc), "check that the server is up and the URL (host, port, database) is right"
    if isinstance(exc, StoreError) and str(exc).startswith("database error on postgres"):
        # The server refused the statement (a permission, a table changed by hand...).
        return str(exc), "run it again with --verbose for the full error"
    if isinstance(exc, StoreError):
        return str(exc), "pass --db with a writable file path (its folder must exist)"
    if isinstance(exc, ContextNotFound):
        return str(exc), "list them with: rxcontext contexts"
    if isinstance(exc, CheckpointNotFound | CheckpointResolved):
        return str(exc), "list open checkpoints with: rxcontext checkpoints"
    if isinstance(exc, ProviderError):
        return _provider(exc, base_url)
    if isinstance(exc, DeadlineExceeded):
        # Not its own message ("what was delivered is saved as a checkpoint: resume it"):
        # this is reached when nothing was delivered, and the CLI dropped that checkpoint.
        return (
            f"the reply took longer than its deadline of {exc.seconds:g} s",
            "allow a longer --deadline, or retry",
        )
    if isinstance(exc, StreamTimeout):
        return str(exc), f"the model sent nothing for {exc.seconds:g} s: retry, or check the server"
    if isinstance(exc, ToolLoopLimit):
        return str(exc), "the model kept calling tools; rephrase the prompt"
    if isinstance(exc, RxContextError) or refused(exc):
        return str(exc) or type(exc).__name__, "run it again with --verbose for the full error"
    if unreadable_value(exc):
        where = f"the database {db}" if db is not None else "the database"
        return (
            f"{where} holds a value rxcontext cannot read ({type(exc).__name__}: {exc})",
            "it was changed outside rxcontext or by a newer version: --verbose shows where; "
            "restore a backup or fix that row",
        )
    return (
        f"unexpected {type(exc).__name__}: {exc}",
        "this is a bug in rxcontext: run it again with --verbose and report the traceback",
    )


def _shown_url(base_url: str) -> str:
    """``base_url`` without a proxy's ``user:password@`` (as ``--db``'s) and without its
    query and fragment, where a key may be (``?key=``, as Google's APIs take it)."""
    return without_password(base_url)


def _provider(exc: ProviderError, base_url: str | None) -> tuple[str, str]:
    where = _shown_url(base_url) if base_url else f"the {exc.provider} API"
    if exc.error_type in ("connection_error", "timeout"):
        return (
            f"cannot reach {where}: {exc}",
            "check --base-url and that the server is running"
            if base_url
            else "check your network connection",
        )
    if exc.status_code in (401, 403):
        return str(exc), "check the API key (or --base-url's server credentials)"
    if exc.status_code == 404:
        return str(exc), "check the model name in --model and the --base-url"
    if exc.status_code == 429:
        return str(exc), "rate limited or out of quota: wait, or check your plan"
    if exc.error_type == "configuration":
        return str(exc), "set the provider's API key environment variable"
    return str(exc), "retry; if it keeps failing, check --model and --base-url"


def report(exc: BaseException, base_url: str | None = None, db: Path | None = None) -> None:
    """Print ``exc`` as ``rxcontext: error: …`` and ``hint: …`` on stderr."""
    message, hint = describe(exc, base_url, db)
    print(f"rxcontext: error: {one_line(message) or type(exc).__name__}", file=sys.stderr)
    if hint:
        print(f"hint: {one_line(hint)}", file=sys.stderr)
    sys.stderr.flush()
