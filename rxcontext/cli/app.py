"""The parser and :func:`main`: dispatch to a command, turn every error into two lines."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from .. import __version__
from ..store import without_password
from . import chat, checkpoints, contexts, demo, summarize
from .common import DB_ENV, CLIError, Terminated, default_db
from .errors import report

__all__ = ["main", "parser"]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are reported like every other error."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(message, f"see {self.prog} --help", 2)


def parser() -> argparse.ArgumentParser:
    """The ``rxcontext`` argument parser, one subcommand per command module."""
    root = _Parser(
        prog="rxcontext",
        description="Stream LLM replies into durable SQLite conversations.",
        epilog="Start with `rxcontext demo` (offline, no API key).",
    )
    root.add_argument("--version", action="version", version=f"rxcontext {__version__}")
    sub = root.add_subparsers(dest="command", metavar="COMMAND")
    for module in (demo, chat, contexts, checkpoints, summarize):
        module.register(sub)
    return root


@contextlib.contextmanager
def _quiet_broken_pipe() -> Iterator[None]:
    # `rxcontext contexts export x | head` closes the pipe early: not an error.
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise


def _terminate(signum: int, frame: FrameType | None) -> NoReturn:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) while a command runs, so a
    reply it cuts keeps its checkpoint as after Ctrl-C (by default it kills the process on
    the spot); a handler the embedding program set is left alone."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    root = parser()
    try:
        args = root.parse_args(argv)
    except CLIError as exc:
        report(exc)
        return exc.status
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        root.print_help()
        return 2
    # Library warnings (a retry, say) would break the one-line error contract: opt-in.
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.CRITICAL,
        format="rxcontext: %(message)s",
    )
    try:
        with _quiet_broken_pipe(), _sigterm_as_ctrl_c():
            return func(args)
    except BrokenPipeError:
        return 0
    except Terminated:
        print("\nrxcontext: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("\nrxcontext: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every error ends as two lines; --verbose adds the traceback
        if args.verbose:
            traceback.print_exc()
        given = getattr(args, "db", None) or os.environ.get(DB_ENV)
        db = Path(without_password(given)) if given else default_db()
        report(exc, getattr(args, "base_url", None), db)
        return exc.status if isinstance(exc, CLIError) else 1
