"""``rxcontext chat [PROMPT]``: one reply, or an interactive session."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from typing import Any

from ..attachments import Attachment
from ..errors import AttachmentError, RxContextError, UnsupportedAttachment
from ..options import CallOptions, check_options
from ..records import RecordType
from ..window import ContextWindow
from .common import (
    CLIError,
    Terminated,
    add_common,
    add_model_options,
    build_model,
    open_store,
    renderer,
)
from .errors import report
from .session import Session

__all__ = ["register", "run"]

HELP = (
    "Enter sends a message. Ctrl-C cancels a reply (its checkpoint is kept); "
    "Ctrl-C at the prompt, Ctrl-D or /exit quits. /resume [ID] finishes a cut reply, "
    "/checkpoints lists them, /help shows this."
)


def register(sub: Any) -> None:
    """Add ``chat`` to the subcommands."""
    chat = sub.add_parser(
        "chat",
        help="one reply, or an interactive chat",
        description="Send PROMPT and stream the reply; with no PROMPT, chat interactively "
        "(or read the prompt from stdin when it is not a terminal).",
    )
    chat.add_argument("prompt", nargs="*", metavar="PROMPT")
    add_model_options(chat, context_window=True)
    chat.add_argument("--context", "-c", default="default", help="context name (default: default)")
    chat.add_argument("--system", "-s", metavar="TEXT", help="set the context's system prompt")
    chat.add_argument(
        "--temperature", type=_non_negative, metavar="T", help="sampling temperature, this call"
    )
    chat.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="stop the reply at TEXT (repeatable; not on openai-responses)",
    )
    chat.add_argument(
        "--deadline",
        type=_positive,
        metavar="SECONDS",
        help="longest a whole reply may take; past it the reply is cut and kept as a checkpoint",
    )
    chat.add_argument(
        "--attach",
        "-a",
        action="append",
        default=[],
        metavar="FILE",
        help="send FILE (an image, a PDF...) with the prompt; repeat for more "
        "(interactive: with the first message)",
    )
    add_common(chat)
    chat.set_defaults(func=run)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more, not {text!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return value


def call_options(args: argparse.Namespace) -> dict[str, Any]:
    """The per-call options the command line gives (``--temperature``, ``--stop``...)."""
    options: dict[str, Any] = {}
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.stop:
        options["stop"] = list(args.stop)
    if args.deadline is not None:
        options["deadline"] = args.deadline
    return options


def _prompt(args: argparse.Namespace) -> tuple[str | None, bool]:
    """The prompt (None: interactive) and whether the session is interactive."""
    if args.prompt:
        prompt = " ".join(args.prompt).strip()
        if not prompt:
            raise CLIError(
                "the prompt is empty",
                'pass some text: rxcontext chat "Hello" (or no PROMPT for an interactive chat)',
                2,
            )
        return prompt, False
    if sys.stdin.isatty():
        return None, True
    prompt = sys.stdin.read().strip()
    if not prompt:
        raise CLIError("no prompt: stdin was empty", 'pass one: rxcontext chat "Hello"', 2)
    return prompt, False


def run(args: argparse.Namespace) -> int:
    """``rxcontext chat [PROMPT]``."""
    if not args.context.strip():
        raise CLIError("the context name is empty", "pass a name: --context notes", 2)
    prompt, interactive = _prompt(args)
    attachments = _attachments(args.attach)
    model = build_model(args)  # before the database is created: a bad model writes nothing
    if attachments and model is not None and hasattr(model, "check_attachments"):
        try:
            model.check_attachments(attachments)
        except UnsupportedAttachment as exc:
            raise CLIError(
                str(exc), "send it to a model that takes it, or leave it out", 2
            ) from None
    options = call_options(args)
    if model is not None:
        # An option the model lacks is refused before the database is created or written.
        check_options(model, CallOptions.make(**options), ())
    store = open_store(args.db, create=True)
    with contextlib.closing(store):
        cw = ContextWindow(store, model, context=args.context, max_tokens=args.context_window)
        cw.stream(**options)  # checks them again, against the window (before --system)
        if args.system and args.system not in _system_prompts(cw):
            cw.set_system_prompt(args.system)  # the same one again would only add a record
        render = renderer(plain_info_to_stderr=not interactive)
        session = Session(cw, render, args.base_url, options, attachments)
        if prompt is not None:
            return session.reply(prompt)
        return _interactive(session, store.path)


def _system_prompts(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.live_records() if r.type is RecordType.SYSTEM_PROMPT]


def _attachments(paths: list[str]) -> tuple[Attachment, ...]:
    """The ``--attach`` files, read now: a bad one stops before anything is written."""
    out = []
    for path in paths:
        try:
            out.append(Attachment(path=path))
        except AttachmentError as exc:
            raise CLIError(
                str(exc), "check the --attach path (media type: from its name)", 2
            ) from None
    return tuple(out)


def _interactive(session: Session, db: str) -> int:
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
    render.line(HELP, style="dim")
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
        except Terminated:
            raise
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
            report(exc, session.base_url)


def _command(session: Session, line: str) -> int | None:
    """Run one line of the interactive session; None ends it."""
    render = session.render
    cw = session.cw
    word, _, rest = line.partition(" ")
    if word in ("/exit", "/quit"):
        return None
    if word == "/help":
        render.line(HELP, style="dim")
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
            if checkpoint.context_id != cw.context_id:
                other = cw.store.get_context(checkpoint.context_id).name
                raise CLIError(
                    f"checkpoint {checkpoint.id} belongs to context {other!r}, "
                    f"not to this one ({cw.context_name!r})",
                    f"finish it there: rxcontext resume {checkpoint.id} "
                    f"(or rxcontext chat -c {shlex.quote(other)}, then /resume {checkpoint.id})",
                )
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
