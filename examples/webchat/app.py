"""The web chat's command line: open the database and the model, listen, serve until stopped.

Every start-up problem (a busy port, a database that cannot be opened, a model without its
key) is one line on stderr and exit status 1, never a traceback. Ctrl-C or SIGTERM stops the
server cleanly: each reply still streaming is cut and keeps its checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import signal
import socket
import sys
from collections.abc import Callable, Sequence

import rxcontext
from rxcontext.fanout import open_fanout
from rxcontext.providers.base import Model
from rxcontext.store import without_password

from .bot import Delay, Pace, offline_model
from .chat import Chat
from .server import Server

__all__ = ["StartupError", "main", "parser", "serve"]


class StartupError(Exception):
    """The server cannot start; the message says why and what to do."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="05_webchat.py",
        description="A small web chat: replies stream to the page and are stored in SQLite "
        "(or PostgreSQL, shared by several workers).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument(
        "--db", default="webchat.db", help="SQLite file (default webchat.db) or postgresql:// URL"
    )
    p.add_argument(
        "--fanout",
        default="memory",
        help="where live replies go to their watchers: memory (this process, the default) or "
        "a redis:// URL shared by every worker of the --db",
    )
    p.add_argument("--fanout-prefix", default="rx", help="Redis key prefix (default rx)")
    p.add_argument(
        "--lease-ttl",
        type=_seconds,
        default=5.0,
        help="seconds: a reply whose worker died (killed, cut off) shows as interrupted to the "
        "other workers this long after its last sign of life, and can be resumed there "
        "(default 5)",
    )
    p.add_argument("--context", default="webchat", help="the context the page opens first")
    p.add_argument("--delay", type=float, default=0.06, help="offline bot: seconds per event")
    p.add_argument("--model", help="a real model, e.g. openai:gpt-4o-mini (default: offline bot)")
    return p


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def _model(spec: str | None, pace: Pace) -> Model:
    if not spec:
        return offline_model(pace)
    from rxcontext.providers.factory import ModelSpecError, model_from_spec

    try:
        return model_from_spec(spec)
    except ModelSpecError as exc:
        raise StartupError(f"{exc}; {exc.hint}") from None
    except rxcontext.MissingDependency as exc:
        raise StartupError(f"{exc}: {exc.hint}") from None


def _bind(host: str, port: int) -> socket.socket:
    # Bound before anything slow is loaded, so a busy port is said at once.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise StartupError(
            f"cannot listen on {host}:{port}: {why}; stop the other server or pick another "
            "--port (--port 0 picks a free one)"
        ) from None


async def serve(
    args: argparse.Namespace,
    pace: Pace | None = None,
    ready: Callable[[str, Chat], None] | None = None,
) -> None:
    """Serve until cancelled (or SIGINT / SIGTERM). ``pace`` paces the offline bot (default:
    ``--delay``); ``ready`` is called with the URL and the chat once the server listens."""
    db = without_password(args.db)
    try:
        redis = args.fanout.startswith(("redis://", "rediss://", "unix://"))
        fanout = open_fanout(args.fanout, **({"prefix": args.fanout_prefix} if redis else {}))
    except rxcontext.MissingDependency as exc:
        raise StartupError(f"--fanout {args.fanout}: {exc}: {exc.hint}") from None
    except ValueError as exc:
        raise StartupError(f"--fanout: {exc}") from None
    try:
        store = rxcontext.open(args.db, fanout=fanout, lease_ttl=args.lease_ttl)
    except rxcontext.StoreError as exc:
        raise StartupError(f"cannot open the database {db}: {exc}") from None
    try:
        sock = _bind(args.host, args.port)
        port = sock.getsockname()[1]
        try:
            chat = Chat(store, _model(args.model, pace or Delay(args.delay)))
            await chat.create_context(args.context)
        except BaseException:
            sock.close()
            raise
        server = Server(chat, args.context)
        server.listen_on(args.host, port)
        listener = await asyncio.start_server(server.handle, sock=sock)
        url = f"http://{args.host}:{port}"
        print(f"serving on {url} (database {db})", flush=True)
        if ready is not None:
            ready(url, chat)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        try:
            async with listener:
                await stop.wait()
        finally:
            listener.close()
            await chat.close()  # replies still streaming keep their checkpoints
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        asyncio.run(serve(args))
    except StartupError as exc:
        print(f"webchat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
