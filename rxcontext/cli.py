"""The ``rxcontext`` command (also ``python -m rxcontext``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import RxContextError

__all__ = ["default_db", "main"]

DB_ENV = "RXCONTEXT_DB"


def default_db() -> Path:
    """``$RXCONTEXT_DB``, else ``rxcontext.db`` in the user's data directory."""
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "rxcontext" / "rxcontext.db"


def _db_path(value: str | None) -> Path:
    path = Path(value) if value else default_db()
    if not value:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxcontext",
        description="Stream LLM replies into durable SQLite conversations.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="offline demo: a reply streamed live and stored (no API key)"
    )
    demo.add_argument("--db", help=f"database file (default: ${DB_ENV} or the user data dir)")
    demo.add_argument("--fast", action="store_true", help="no pauses between events")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(_db_path(args.db), delay=0.0 if args.fast else 0.03, out=sys.stdout)
        _parser().print_help()
        return 2
    except RxContextError as exc:
        print(f"rxcontext: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rxcontext: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
