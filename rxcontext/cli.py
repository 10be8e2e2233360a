"""The ``rxcontext`` command (also ``python -m rxcontext``).

::

    rxcontext demo                                  # offline: a reply streamed live and stored
    rxcontext chat "Name three rivers."             # one reply (interactive without a prompt)
    rxcontext contexts [list|show|export|delete|clone]
    rxcontext checkpoints                           # interrupted replies
    rxcontext resume ID                             # finish one
    rxcontext summarize --context NAME              # propose a summary, accept on confirmation

Every command takes ``--db PATH`` (default :func:`default_db`). Output that is not a terminal
is plain text with no redraws, so the commands compose in scripts. Errors a user can meet
print one line and a hint to stderr and exit with status 1 (2 for usage errors), never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from . import __version__, summarize
from .chunks import Chunk
from .errors import (
    CheckpointNotFound,
    CheckpointResolved,
    ContextNotFound,
    NotADatabaseError,
    ProviderError,
    RxContextError,
    StoreError,
    StreamInterrupted,
    StreamTimeout,
    ToolLoopLimit,
)
from .providers.base import Model
from .records import Checkpoint, ContextStats, RecordType
from .render import Renderer, Window
from .store import SQLiteStore, is_postgres_url, open_postgres
from .summarize import SummaryProposal
from .window import DEFAULT_MAX_TOKENS, ContextWindow

__all__ = ["DB_ENV", "MODEL_ENV", "REPLAY_ENV", "CLIError", "default_db", "main"]

DB_ENV = "RXCONTEXT_DB"
MODEL_ENV = "RXCONTEXT_MODEL"
REPLAY_ENV = "RXCONTEXT_REPLAY"
"""Path of a JSON file of canned replies (see :func:`replay_from_file`): no key, no network."""
DEFAULT_MODEL = "openai:gpt-4o-mini"


class CLIError(RxContextError):
    """An error the command reports as one line plus ``hint``."""

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


# -- stores and models ----------------------------------------------------------------------


def _db_path(value: str | None, *, create: bool) -> Path:
    path = Path(value) if value else default_db()
    if not path.exists() and not create:
        raise CLIError(
            f"no database at {path}",
            "check --db (or $RXCONTEXT_DB); `rxcontext chat` and `rxcontext demo` create one",
        )
    if not value and create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _db_url(value: str | None) -> str | None:
    """``--db`` (or ``$RXCONTEXT_DB``) when it is a ``postgresql://`` URL rather than a path."""
    raw = value or os.environ.get(DB_ENV)
    return raw if is_postgres_url(raw) else None


def _open_store(value: str | None, *, create: bool = False) -> Any:
    url = _db_url(value)
    if url is not None:
        return open_postgres(url)
    return SQLiteStore(_db_path(value, create=create))


def replay_from_file(path: Path) -> Model:
    """A model that replays canned replies from a JSON file, through the real OpenAI SDK.

    The file is ``{"delay": seconds_between_events, "replies": [reply, ...]}`` where each
    reply is ``{"text": ..., "tool_calls": [[id, name, {args}]], "cut_after": events,
    "usage": [input, output]}`` (all keys optional). Each request takes the next reply.
    Used by tests and offline trials (``--replay FILE`` or ``$RXCONTEXT_REPLAY``).
    """
    from .providers.replay import ScriptedReply, replay_model

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
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CLIError(
            f"cannot read the replay file {path}: {exc}",
            'it must be JSON like {"delay": 0.02, "replies": [{"text": "Hello"}]}',
        ) from exc
    model: Model = replay_model(replies, delay=delay)[0]
    return model


def _model(args: argparse.Namespace) -> Model:
    replay = getattr(args, "replay", None) or os.environ.get(REPLAY_ENV)
    if replay:
        return replay_from_file(Path(replay))
    from .providers.factory import model_from_spec

    return model_from_spec(args.model, base_url=args.base_url)


# -- streaming a reply ----------------------------------------------------------------------


class _Session:
    """One window on the terminal: streams replies and reports how they ended."""

    def __init__(self, cw: ContextWindow, render: Renderer, base_url: str | None) -> None:
        self.cw = cw
        self.render = render
        self.base_url = base_url

    def window(self) -> Window:
        return Window(self.cw.live_tokens(), self.cw.max_tokens)

    def reply(self, prompt: str) -> int:
        """Add ``prompt``, stream the reply; the exit status (130 when cancelled)."""
        cw = self.cw
        before = {cp.id for cp in cw.checkpoints()}
        record = cw.add_prompt(prompt)
        window = self.window()
        try:
            stats = self.render.stream(cw.stream(), window=window)
        except KeyboardInterrupt:
            new = [cp for cp in cw.checkpoints() if cp.id not in before]
            checkpoint = new[-1] if new else None
            if self.undo_if_nothing_arrived(checkpoint, record.id):
                self.render.note(
                    "reply cancelled before anything arrived; the prompt was not answered "
                    "(it stays in the context as a dead record)"
                )
            else:
                self.cancelled(checkpoint)
            return 130
        except StreamInterrupted as exc:
            self.undo_if_nothing_arrived(exc.checkpoint, record.id)
            raise
        stored = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
        extra = f"stored as record {stored[-1].id}" if stored else "stored"
        self.render.status(stats, window, extra)
        return 0

    def resume(self, checkpoint: Checkpoint) -> int:
        """Stream the rest of an interrupted reply."""
        window = self.window()
        try:
            stats = self.render.stream(
                self.cw.resume(checkpoint.id), prefix=checkpoint.text, window=window
            )
        except KeyboardInterrupt:
            # The driver saved the checkpoint and released the claim: it can be resumed again.
            self.cancelled(self.cw.store.get_checkpoint(checkpoint.id))
            return 130
        self.render.status(stats, window, f"checkpoint {checkpoint.id} resolved")
        return 0

    def cancelled(self, checkpoint: Checkpoint | None) -> None:
        if checkpoint is None:
            self.render.note("reply cancelled before anything arrived; nothing to keep")
            return
        self.render.note(
            f"reply cancelled; its checkpoint {checkpoint.id} is kept "
            f"({len(checkpoint.text)} characters): rxcontext resume {checkpoint.id}"
        )

    def undo_if_nothing_arrived(self, checkpoint: Checkpoint | None, prompt_id: int) -> bool:
        """Drop an empty checkpoint and retire the unanswered prompt; whether it did.

        A request that failed or was cancelled before any output (no key, unreachable
        server, Ctrl-C while connecting) would otherwise leave an empty checkpoint and a
        dangling prompt, and running the same command again would send the prompt twice.
        """
        if checkpoint is not None and (
            checkpoint.text or checkpoint.thinking or checkpoint.tool_calls
        ):
            return False
        records = self.cw.records()
        if not records or records[-1].id != prompt_id:
            return False  # a tool round was stored: the checkpoint can continue from it
        if checkpoint is not None:
            self.cw.discard(checkpoint.id)
        self.cw.set_record_live_state(len(records) - 1, len(records) - 1, False)
        return True


# -- commands -------------------------------------------------------------------------------


def _renderer(*, plain_info_to_stderr: bool = False) -> Renderer:
    return Renderer(sys.stdout, info=sys.stderr if plain_info_to_stderr else None)


def cmd_demo(args: argparse.Namespace) -> int:
    """``rxcontext demo``."""
    from .demo import run_demo

    delay = 0.0 if args.fast else 0.03
    db = _db_url(args.db) or _db_path(args.db, create=True)
    return run_demo(db, delay=delay, out=sys.stdout)


def cmd_chat(args: argparse.Namespace) -> int:
    """``rxcontext chat [PROMPT]``: one reply, or an interactive session."""
    model = _model(args)
    prompt = " ".join(args.prompt).strip() if args.prompt else None
    interactive = prompt is None and sys.stdin.isatty()
    if prompt is None and not interactive:
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise CLIError("no prompt: stdin was empty", 'pass one: rxcontext chat "Hello"', 2)
    store = _open_store(args.db, create=True)
    with contextlib.closing(store):
        cw = ContextWindow(store, model, context=args.context, max_tokens=args.max_tokens)
        if args.system:
            cw.set_system_prompt(args.system)
        render = _renderer(plain_info_to_stderr=not interactive)
        session = _Session(cw, render, args.base_url)
        if prompt is not None:
            return session.reply(prompt)
        return _interactive(session, store.path)


_HELP = (
    "Enter sends a message. Ctrl-C cancels a reply (its checkpoint is kept); "
    "Ctrl-C at the prompt, Ctrl-D or /exit quits. /resume [ID] finishes a cut reply, "
    "/checkpoints lists them, /help shows this."
)


def _interactive(session: _Session, db: str) -> int:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    render = session.render
    cw = session.cw
    usage = cw.token_usage()
    render.line(
        f"rxcontext chat · {cw.model.name if cw.model else '?'} · context {cw.context_name!r} "
        f"({len(cw.live_records())} live records, {usage.live_tokens:,} tokens) in {db}",
        style="bold",
    )
    render.line(_HELP, style="dim")
    open_checkpoints = cw.checkpoints()
    if open_checkpoints:
        count = len(open_checkpoints)
        render.note(
            f"{count} interrupted repl{'y' if count == 1 else 'ies'} in this context: "
            f"/resume {open_checkpoints[-1].id} finishes the last one"
        )
    while True:
        try:
            prompt = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stdout, flush=True)
            render.line("bye", style="dim")
            return 0
        if not prompt:
            continue
        try:
            status = _command(session, prompt)
            if status is None:
                return 0
            if status == 130:
                render.line("(Ctrl-C again to quit)", style="dim")
        except RxContextError as exc:
            # Report it and keep the session: the next prompt may work.
            _report(exc, session.base_url)


def _command(session: _Session, line: str) -> int | None:
    """Run one line of the interactive session; None ends it."""
    render = session.render
    cw = session.cw
    word, _, rest = line.partition(" ")
    if word in ("/exit", "/quit"):
        return None
    if word == "/help":
        render.line(_HELP, style="dim")
        return 0
    if word == "/checkpoints":
        found = cw.checkpoints()
        if found:
            render.checkpoints([(cw.context_name, cp) for cp in found])
        else:
            render.note("no open checkpoints in this context")
        return 0
    if word == "/resume":
        found = cw.checkpoints()
        if rest.strip():
            if not rest.strip().isdigit():
                raise CLIError(f"not a checkpoint id: {rest.strip()!r}", "use /resume 12")
            checkpoint = cw.store.get_checkpoint(int(rest))
        elif found:
            checkpoint = found[-1]
        else:
            render.note("no open checkpoints in this context")
            return 0
        render.note(f"resuming checkpoint {checkpoint.id} ({len(checkpoint.text)} characters)")
        return session.resume(checkpoint)
    if word.startswith("/") and word[1:].isalpha():
        raise CLIError(f"unknown command {word}", "/help lists the commands")
    return session.reply(line)


def cmd_contexts(args: argparse.Namespace) -> int:
    """``rxcontext contexts [list|show|export|delete|clone]``."""
    action = args.action or "list"
    store = _open_store(args.db)
    with contextlib.closing(store):
        render = _renderer()
        if action == "list":
            stats = [store.context_stats(c.id) for c in store.list_contexts()]
            if args.json:
                print(json.dumps([_stats_dict(s) for s in stats], indent=2))
                return 0
            render.table(
                "contexts",
                ("name", "records", "live tokens", "replies", "checkpoints", "last activity"),
                (
                    (
                        s.name,
                        s.records,
                        s.live_tokens,
                        s.replies,
                        s.open_checkpoints,
                        s.last_activity.strftime("%Y-%m-%d %H:%M:%S") if s.last_activity else "",
                    )
                    for s in stats
                ),
            )
            return 0
        name = _need(args.name, f"contexts {action} needs a context name")
        ctx = store.get_context_by_name(name)
        if action == "show":
            s = store.context_stats(ctx.id)
            render.line(
                f"context {ctx.name!r} · {s.records} records ({s.live_records} live, "
                f"{s.live_tokens} live tokens) · provider usage {s.usage.input_tokens} in / "
                f"{s.usage.output_tokens} out",
                style="bold",
            )
            render.records(store.records(ctx.id), title=f"records of {ctx.name!r}")
            tools = store.context_tools(ctx.id)
            if tools:
                render.line("tools: " + ", ".join(t["name"] for t in tools))
            cps = store.checkpoints(ctx.id)
            if cps:
                render.checkpoints([(ctx.name, cp) for cp in cps])
            return 0
        if action == "export":
            text = json.dumps(store.export_context(ctx.id), indent=2, ensure_ascii=False)
            if args.out:
                try:
                    Path(args.out).write_text(text + "\n", encoding="utf-8")
                except OSError as exc:
                    raise CLIError(
                        f"cannot write {args.out}: {exc.strerror or exc}",
                        "give --out a writable file path",
                    ) from exc
                print(f"exported context {ctx.name!r} to {args.out}", file=sys.stderr)
            else:
                print(text)
            return 0
        if action == "delete":
            if not args.yes:
                if not sys.stdin.isatty():
                    raise CLIError(
                        f"not deleting context {ctx.name!r} without confirmation",
                        "pass --yes to delete from a script",
                    )
                count = len(store.records(ctx.id))
                answer = input(f"Delete context {ctx.name!r} and its {count} records? [y/N] ")
                if answer.strip().lower() not in ("y", "yes"):
                    render.line("kept")
                    return 1
            store.delete_context(ctx.id)
            render.line(f"deleted context {ctx.name!r}")
            return 0
        # clone
        dest = _need(args.dest, "contexts clone needs SRC and DEST names")
        try:
            clone = store.clone_context(ctx.id, dest)
        except ValueError as exc:
            raise CLIError(str(exc), "choose another DEST name") from exc
        render.line(f"cloned {ctx.name!r} to {clone.name!r}")
        return 0


def _need(value: str | None, message: str) -> str:
    if not value:
        raise CLIError(message, "see rxcontext contexts --help", 2)
    return value


def _stats_dict(s: ContextStats) -> dict[str, Any]:
    return {
        "name": s.name,
        "id": s.context_id,
        "records": s.records,
        "live_records": s.live_records,
        "live_tokens": s.live_tokens,
        "replies": s.replies,
        "open_checkpoints": s.open_checkpoints,
        "usage": s.usage.to_dict(),
        "last_activity": s.last_activity.isoformat() if s.last_activity else None,
    }


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """``rxcontext checkpoints [--context NAME] [--all]``."""
    store = _open_store(args.db)
    with contextlib.closing(store):
        contexts = (
            [store.get_context_by_name(args.context)] if args.context else store.list_contexts()
        )
        found = [
            (ctx.name, cp)
            for ctx in contexts
            for cp in store.checkpoints(ctx.id, include_resolved=args.all)
        ]
        found.sort(key=lambda item: item[1].id)
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "id": cp.id,
                            "context": name,
                            "text": cp.text,
                            "error": cp.error,
                            "created_at": cp.created_at.isoformat(),
                            "resolved_at": cp.resolved_at.isoformat() if cp.resolved_at else None,
                        }
                        for name, cp in found
                    ],
                    indent=2,
                    ensure_ascii=False,
                )
            )
            return 0
        render = _renderer()
        if not found:
            render.note("no open checkpoints" if not args.all else "no checkpoints")
            return 0
        render.checkpoints(found)
        return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """``rxcontext resume ID``: finish an interrupted reply."""
    model = _model(args)
    store = _open_store(args.db)
    with contextlib.closing(store):
        checkpoint = store.get_checkpoint(args.id)
        if checkpoint.resolved:
            raise CheckpointResolved(f"checkpoint {args.id} was already resumed")
        ctx = store.get_context(checkpoint.context_id)
        cw = ContextWindow(store, model, context=ctx.name)
        render = _renderer(plain_info_to_stderr=True)
        render.note(
            f"resuming checkpoint {checkpoint.id} of context {ctx.name!r} "
            f"({len(checkpoint.text)} characters so far)"
        )
        return _Session(cw, render, args.base_url).resume(checkpoint)


def _summary_stream(cw: ContextWindow, out: list[SummaryProposal]) -> Observable[Chunk]:
    def subscribe(
        observer: abc.ObserverBase[Chunk], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        try:
            out.append(cw.summarize(on_chunk=observer.on_next))
        except Exception as error:
            observer.on_error(error)
        else:
            observer.on_completed()
        return Disposable()

    return reactivex.create(subscribe)


def cmd_summarize(args: argparse.Namespace) -> int:
    """``rxcontext summarize``: propose a summary, show it, accept it on confirmation."""
    model = _model(args)
    store = _open_store(args.db)
    with contextlib.closing(store):
        ctx = store.get_context_by_name(args.context)
        cw = ContextWindow(store, model, context=ctx.name)
        if not summarize.replaceable(cw.live_records()):
            raise CLIError(
                f"nothing to summarize: context {ctx.name!r} has no live records "
                "besides system prompts",
                "add some conversation first: rxcontext chat",
            )
        render = _renderer(plain_info_to_stderr=True)
        render.note(f"summarizing context {ctx.name!r} with {model.name}")
        proposals: list[SummaryProposal] = []
        try:
            render.stream(_summary_stream(cw, proposals))
        except ValueError as exc:
            raise CLIError(str(exc), "add some conversation first: rxcontext chat") from exc
        proposal = proposals[0]
        render.note(
            f"summary: {proposal.summary_tokens} tokens in place of "
            f"{len(proposal.replaced_ids)} records ({proposal.original_tokens} tokens)"
        )
        accept = args.yes
        if not accept and sys.stdin.isatty():
            answer = input("Accept this summary? [y/N] ")
            accept = answer.strip().lower() in ("y", "yes")
        if not accept:
            cw.reject_summary(proposal)
            hint = "" if sys.stdin.isatty() else " (pass --yes to accept from a script)"
            render.note(f"summary not applied; the context is unchanged{hint}")
            return 1 if not args.yes and not sys.stdin.isatty() else 0
        record = cw.accept_summary(proposal)
        render.note(
            f"summary accepted as record {record.id}; {len(proposal.replaced_ids)} records "
            "marked dead (they stay in the database)"
        )
        return 0


# -- errors ---------------------------------------------------------------------------------


def _hint_for(exc: BaseException, base_url: str | None) -> tuple[str, str]:
    """The one-line message and the hint for an error a user can meet."""
    if isinstance(exc, StreamInterrupted):
        cause = exc.__cause__
        cp = exc.checkpoint
        message, hint = _hint_for(cause, base_url) if cause is not None else (str(exc), "")
        if cp.text or cp.tool_calls:
            # Something arrived, so the server was reachable: the stream broke midway.
            message = f"the reply was cut off after {len(cp.text)} characters: {cause or exc}"
            hint = f"the partial reply is kept as checkpoint {cp.id}: rxcontext resume {cp.id}"
        return message, hint
    if isinstance(exc, CLIError):
        return str(exc), exc.hint
    if hasattr(exc, "hint") and isinstance(exc.hint, str):  # ModelSpecError
        return str(exc), exc.hint
    if isinstance(exc, NotADatabaseError):
        return str(exc), "pass --db with the path of an rxcontext database, or of a new file"
    if isinstance(exc, StoreError):
        return str(exc), "pass --db with a writable file path (its folder must exist)"
    if isinstance(exc, ContextNotFound):
        return str(exc), "list them with: rxcontext contexts"
    if isinstance(exc, CheckpointNotFound | CheckpointResolved):
        return str(exc), "list open checkpoints with: rxcontext checkpoints"
    if isinstance(exc, ProviderError):
        where = base_url or f"the {exc.provider} API"
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
    if isinstance(exc, StreamTimeout):
        return str(exc), f"the model sent nothing for {exc.seconds:g} s: retry, or check the server"
    if isinstance(exc, ToolLoopLimit):
        return str(exc), "the model kept calling tools; rephrase the prompt"
    return str(exc) or type(exc).__name__, "run it again with --verbose for the full error"


def _report(exc: BaseException, base_url: str | None) -> None:
    message, hint = _hint_for(exc, base_url)
    first = " ".join(message.split()) or type(exc).__name__
    print(f"rxcontext: error: {first}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.stderr.flush()


# -- parser ---------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", metavar="PATH", help=f"database file (default: ${DB_ENV} or {default_db()})"
    )
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="log retries and other warnings to stderr"
    )


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        "-m",
        default=os.environ.get(MODEL_ENV, DEFAULT_MODEL),
        help="provider:model, e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-5, "
        f"gemini:gemini-2.5-flash (default: ${MODEL_ENV} or {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--base-url", metavar="URL", help="server URL, e.g. an OpenAI-compatible local server"
    )
    # Canned replies through the real SDK, for tests and offline trials.
    parser.add_argument("--replay", metavar="FILE", help=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxcontext",
        description="Stream LLM replies into durable SQLite conversations.",
        epilog="Start with `rxcontext demo` (offline, no API key).",
    )
    parser.add_argument("--version", action="version", version=f"rxcontext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="offline demo: a reply streamed live and stored (no key)")
    _common(demo)
    demo.add_argument("--fast", action="store_true", help="no pauses between events")
    demo.set_defaults(func=cmd_demo)

    chat = sub.add_parser(
        "chat",
        help="one reply, or an interactive chat",
        description="Send PROMPT and stream the reply; with no PROMPT, chat interactively "
        "(or read the prompt from stdin when it is not a terminal).",
    )
    chat.add_argument("prompt", nargs="*", metavar="PROMPT")
    _model_options(chat)
    chat.add_argument("--context", "-c", default="default", help="context name (default: default)")
    chat.add_argument("--system", "-s", metavar="TEXT", help="set the context's system prompt")
    chat.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"the model's context window, for the usage shown (default: {DEFAULT_MAX_TOKENS})",
    )
    _common(chat)
    chat.set_defaults(func=cmd_chat)

    contexts = sub.add_parser(
        "contexts",
        help="list, show, export, delete or clone contexts",
        description="contexts [list] | show NAME | export NAME [--out FILE] | "
        "delete NAME [--yes] | clone SRC DEST",
    )
    contexts.add_argument(
        "action", nargs="?", choices=("list", "show", "export", "delete", "clone")
    )
    contexts.add_argument("name", nargs="?", metavar="NAME")
    contexts.add_argument("dest", nargs="?", metavar="DEST")
    contexts.add_argument("--out", "-o", metavar="FILE", help="export: write JSON to FILE")
    contexts.add_argument("--yes", "-y", action="store_true", help="delete: do not ask")
    contexts.add_argument("--json", action="store_true", help="list: JSON output")
    _common(contexts)
    contexts.set_defaults(func=cmd_contexts)

    checkpoints = sub.add_parser("checkpoints", help="list interrupted replies")
    checkpoints.add_argument("--context", "-c", metavar="NAME", help="only this context")
    checkpoints.add_argument("--all", action="store_true", help="include resolved ones")
    checkpoints.add_argument("--json", action="store_true", help="JSON output")
    _common(checkpoints)
    checkpoints.set_defaults(func=cmd_checkpoints)

    resume = sub.add_parser("resume", help="finish an interrupted reply")
    resume.add_argument("id", type=int, metavar="ID", help="checkpoint id (see `checkpoints`)")
    _model_options(resume)
    _common(resume)
    resume.set_defaults(func=cmd_resume)

    summarize = sub.add_parser(
        "summarize", help="propose a summary of a context; accept it on confirmation"
    )
    summarize.add_argument("--context", "-c", default="default", help="context name")
    summarize.add_argument("--yes", "-y", action="store_true", help="accept without asking")
    _model_options(summarize)
    _common(summarize)
    summarize.set_defaults(func=cmd_summarize)
    return parser


@contextlib.contextmanager
def _quiet_broken_pipe() -> Iterator[None]:
    # `rxcontext contexts export x | head` closes the pipe early: not an error.
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    # Library warnings (a retry, say) would break the one-line error contract: opt-in.
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.CRITICAL,
        format="rxcontext: %(message)s",
    )
    try:
        with _quiet_broken_pipe():
            return func(args)
    except BrokenPipeError:
        return 0
    except RxContextError as exc:
        if args.verbose:
            traceback.print_exc()
        _report(exc, getattr(args, "base_url", None))
        return exc.status if isinstance(exc, CLIError) else 1
    except KeyboardInterrupt:
        print("\nrxcontext: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
