"""What the commands share: the database path, the model, common options, :class:`CLIError`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RxContextError, UnsupportedURL
from ..providers.base import Model
from ..store import SQLiteStore, check_target, is_postgres_url, open_postgres
from ..window import DEFAULT_MAX_TOKENS
from .render import Renderer

if TYPE_CHECKING:
    from ..store.postgres import PostgresStore

__all__ = [
    "DB_ENV",
    "DEFAULT_MODEL",
    "MODEL_ENV",
    "REPLAY_ENV",
    "CLIError",
    "add_common",
    "add_model_options",
    "build_model",
    "confirm",
    "db_path",
    "db_url",
    "default_db",
    "open_store",
    "output_limit",
    "positive_int",
    "renderer",
    "replay_from_file",
]

DB_ENV = "RXCONTEXT_DB"
MODEL_ENV = "RXCONTEXT_MODEL"
REPLAY_ENV = "RXCONTEXT_REPLAY"
"""Path of a JSON file of canned replies (see :func:`replay_from_file`): no key, no network."""
DEFAULT_MODEL = "openai:gpt-4o-mini"


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``), raised where Ctrl-C would be: the
    reply's checkpoint is kept the same way, and the program then ends (status 143)."""


class CLIError(RxContextError):
    """An error the command reports as one line plus ``hint``; ``status`` is the exit code."""

    def __init__(self, message: str, hint: str = "", status: int = 1) -> None:
        super().__init__(message)
        self.hint = hint
        self.status = status


def default_db() -> Path:
    """``$RXCONTEXT_DB``, else ``rxcontext.db`` in the user's data directory."""
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "rxcontext" / "rxcontext.db"


def db_path(value: str | None, *, create: bool) -> Path:
    """The database ``--db`` names (or the default); it must exist unless ``create``.

    A URL other than a PostgreSQL one is refused, not taken for a file (whose "no database
    at" would print the URL's password).
    """
    try:
        check_target(value or os.environ.get(DB_ENV) or "")
    except UnsupportedURL as exc:
        raise CLIError(
            str(exc), "check --db (or $RXCONTEXT_DB): a postgresql://user@host/db URL or a file"
        ) from None
    path = Path(value) if value else default_db()
    if not path.exists() and not create:
        raise CLIError(
            f"no database at {path}",
            "check --db (or $RXCONTEXT_DB); `rxcontext chat` and `rxcontext demo` create one",
        )
    if not value and create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def db_url(value: str | None) -> str | None:
    """``--db`` (or ``$RXCONTEXT_DB``) when it is a ``postgresql://`` URL rather than a path."""
    raw = value or os.environ.get(DB_ENV)
    return raw if is_postgres_url(raw) else None


def open_store(value: str | None, *, create: bool = False) -> SQLiteStore | PostgresStore:
    """The store at ``--db``: a PostgreSQL URL, or a file path (see :func:`db_path`)."""
    url = db_url(value)
    if url is not None:
        return open_postgres(url)
    return SQLiteStore(db_path(value, create=create))


def confirm(question: str) -> bool:
    """Ask ``question [y/N]`` on the terminal; only y or yes is a yes (Ctrl-D is a no)."""
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        print(file=sys.stdout, flush=True)
        return False
    return answer.strip().lower() in ("y", "yes")


def renderer(*, plain_info_to_stderr: bool = False) -> Renderer:
    """A renderer on stdout; off a terminal, notes can go to stderr to keep stdout clean."""
    return Renderer(sys.stdout, info=sys.stderr if plain_info_to_stderr else None)


# -- models ---------------------------------------------------------------------------------


def replay_from_file(path: Path) -> Model:
    """A model that replays canned replies from a JSON file, through the real OpenAI SDK.

    The file is ``{"delay": seconds_between_events, "replies": [reply, ...]}`` where each
    reply is ``{"text": ..., "tool_calls": [[id, name, {args}]], "cut_after": events,
    "usage": [input, output]}`` (all keys optional). Each request takes the next reply.
    Used by tests and offline trials (``--replay FILE`` or ``$RXCONTEXT_REPLAY``).
    """
    from ..providers.replay import ScriptedReply, replay_model

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        replies = [
            ScriptedReply(
                text=r.get("text", ""),
                tool_calls=[(c[0], c[1], c[2]) for c in r.get("tool_calls", ())],
                cut_after=r.get("cut_after"),
                usage=tuple(r.get("usage", (0, 0))),
            )
            for r in data["replies"]
        ]
        delay = float(data.get("delay", 0.0))
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CLIError(
            f"cannot read the replay file {path}: {exc}",
            'it must be JSON like {"delay": 0.02, "replies": [{"text": "Hello"}]}',
        ) from exc
    model: Model = replay_model(replies, delay=delay)[0]
    return model


def output_limit(provider: str, base_url: str | None, tokens: int) -> dict[str, int]:
    """The request parameter that caps a reply at ``tokens``, named as each SDK names it."""
    if provider == "openai":
        # OpenAI's own API wants max_completion_tokens (its reasoning models refuse
        # max_tokens); the OpenAI-compatible servers a base URL points at read max_tokens.
        return {"max_tokens" if base_url else "max_completion_tokens": tokens}
    if provider == "anthropic":
        return {"max_tokens": tokens}
    return {"max_output_tokens": tokens}  # openai-responses, gemini


def build_model(args: argparse.Namespace) -> Model:
    """The model ``--model`` names (or ``--replay``'s canned one); checks the API key.

    ``OPENAI_BASE_URL`` counts as ``--base-url`` for the OpenAI providers (the SDK reads it
    too), so a local server needs no key either way; ``args.base_url`` is set to the URL
    used, for error hints.
    """
    replay = getattr(args, "replay", None) or os.environ.get(REPLAY_ENV)
    if replay:
        return replay_from_file(Path(replay))
    from ..providers.factory import model_from_spec, split_spec

    provider, _ = split_spec(args.model)
    base_url: str | None = args.base_url
    if not base_url and provider.startswith("openai"):
        base_url = os.environ.get("OPENAI_BASE_URL") or None
    args.base_url = base_url
    tokens: int | None = getattr(args, "max_tokens", None)
    params: dict[str, Any] = output_limit(provider, base_url, tokens) if tokens else {}
    return model_from_spec(args.model, base_url=base_url, **params)


# -- options --------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, not {text!r}")
    return value


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--db`` and ``--verbose``, which every command takes."""
    parser.add_argument(
        "--db", metavar="PATH", help=f"database file (default: ${DB_ENV} or {default_db()})"
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="log retries and show full errors"
    )


def add_model_options(parser: argparse.ArgumentParser, *, context_window: bool = False) -> None:
    """``--model``, ``--base-url``, ``--max-tokens`` (and ``--context-window``)."""
    parser.add_argument(
        "--model",
        "-m",
        default=os.environ.get(MODEL_ENV, DEFAULT_MODEL),
        help="provider:model, e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-6, "
        f"gemini:gemini-2.5-flash (default: ${MODEL_ENV} or {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="server URL, e.g. an OpenAI-compatible local server (default for openai: "
        "$OPENAI_BASE_URL)",
    )
    parser.add_argument(
        "--max-tokens",
        type=positive_int,
        metavar="N",
        help="longest reply, in output tokens (sent as the SDK's max_tokens / "
        "max_completion_tokens / max_output_tokens; default: the provider's)",
    )
    if context_window:
        parser.add_argument(
            "--context-window",
            type=positive_int,
            default=DEFAULT_MAX_TOKENS,
            metavar="N",
            help="the model's context window in tokens, for the usage shown "
            f"(default: {DEFAULT_MAX_TOKENS})",
        )
    # Canned replies through the real SDK, for tests and offline trials.
    parser.add_argument("--replay", metavar="FILE", help=argparse.SUPPRESS)
