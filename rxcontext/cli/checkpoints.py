"""``rxcontext checkpoints`` (interrupted replies: list, ``keep ID``, ``discard ID``) and
``rxcontext resume ID``."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from ..errors import CheckpointResolved
from ..records import ReplyState
from ..store.base import settle_refusal
from ..window import ContextWindow
from .common import CLIError, add_common, add_model_options, build_model, open_store, renderer
from .session import Session
from .text import to_json

__all__ = ["discard", "keep", "register", "resume", "run"]


def register(sub: Any) -> None:
    """Add ``checkpoints`` (with ``keep`` / ``discard``) and ``resume`` to the subcommands."""
    checkpoints = sub.add_parser(
        "checkpoints",
        help="list interrupted replies; keep or discard one",
        description="List interrupted replies (state interrupted), or settle one: `keep ID` "
        "stores its partial text as the reply, `discard ID` drops it (kept for audit). "
        "`rxcontext resume ID` finishes it instead.",
    )
    checkpoints.add_argument("--context", "-c", metavar="NAME", help="only this context")
    checkpoints.add_argument(
        "--all", action="store_true", help="include settled ones (completed, discarded)"
    )
    checkpoints.add_argument("--json", action="store_true", help="JSON output")
    add_common(checkpoints)
    checkpoints.set_defaults(func=run)
    actions = checkpoints.add_subparsers(dest="action", metavar="{keep,discard}")
    for name, func, text in (
        ("keep", keep, "store an interrupted reply's partial text as its reply"),
        ("discard", discard, "drop an interrupted reply (its row is kept for audit)"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("id", type=int, metavar="ID", help="checkpoint id")
        action.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="database")
        action.add_argument(
            "--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="full errors"
        )
        action.set_defaults(func=func)

    resume_ = sub.add_parser("resume", help="finish an interrupted reply")
    resume_.add_argument("id", type=int, metavar="ID", help="checkpoint id (see `checkpoints`)")
    add_model_options(resume_, context_window=True)
    add_common(resume_)
    resume_.set_defaults(func=resume)


def run(args: argparse.Namespace) -> int:
    """``rxcontext checkpoints [--context NAME] [--all] [--json]``."""
    store = open_store(args.db)
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
                to_json(
                    [
                        {
                            "id": cp.id,
                            "context": name,
                            "text": cp.text,
                            "error": cp.error,
                            "state": cp.state.value,
                            "reply_id": cp.reply_id,
                            "created_at": cp.created_at.isoformat(),
                            "resolved_at": cp.resolved_at.isoformat() if cp.resolved_at else None,
                        }
                        for name, cp in found
                    ]
                )
            )
            return 0
        render = renderer()
        if not found:
            render.note("no open checkpoints" if not args.all else "no checkpoints")
            return 0
        render.checkpoints(found)
        return 0


def _settled(state: ReplyState) -> str:
    return "resumed (or kept)" if state is ReplyState.COMPLETED else state.value


def _settle(args: argparse.Namespace, verb: str) -> tuple[ContextWindow, int]:
    store = open_store(args.db)
    checkpoint = store.get_checkpoint(args.id)
    refusal: Exception | None = settle_refusal(checkpoint, verb)
    if refusal is None and verb == "keep" and not checkpoint.text:
        refusal = CLIError(
            f"checkpoint {checkpoint.id} holds no text to keep",
            f"discard it instead: rxcontext checkpoints discard {checkpoint.id}",
        )
    if refusal is not None:
        store.close()
        raise refusal
    ctx = store.get_context(checkpoint.context_id)
    return ContextWindow(store, None, context=ctx.name), checkpoint.id


def keep(args: argparse.Namespace) -> int:
    """``rxcontext checkpoints keep ID``: the partial text becomes the reply, in its place."""
    cw, checkpoint_id = _settle(args, "keep")
    with contextlib.closing(cw.store):
        record = cw.keep(checkpoint_id)
        renderer().note(
            f"checkpoint {checkpoint_id} kept: its {len(record.content)} characters are "
            f"record {record.id} of context {cw.context_name!r} (marked partial)"
        )
    return 0


def discard(args: argparse.Namespace) -> int:
    """``rxcontext checkpoints discard ID``: drop an interrupted reply."""
    cw, checkpoint_id = _settle(args, "discard")
    with contextlib.closing(cw.store):
        dropped = cw.discard(checkpoint_id)
        assert dropped.state is ReplyState.DISCARDED
        renderer().note(
            f"checkpoint {checkpoint_id} discarded: it is out of the conversation "
            "(`rxcontext checkpoints --all` still lists it)"
        )
    return 0


def resume(args: argparse.Namespace) -> int:
    """``rxcontext resume ID``: finish an interrupted reply.

    The checkpoint is looked up before the model is built, so a wrong id or a resolved
    checkpoint is named as such, not as a missing API key.
    """
    store = open_store(args.db)
    with contextlib.closing(store):
        checkpoint = store.get_checkpoint(args.id)
        if checkpoint.resolved:
            raise CheckpointResolved(
                f"checkpoint {args.id} was already {_settled(checkpoint.state)}"
            )
        refusal = settle_refusal(checkpoint, "resume")
        if refusal is not None:
            raise refusal
        ctx = store.get_context(checkpoint.context_id)
        model = build_model(args)
        cw = ContextWindow(store, model, context=ctx.name, max_tokens=args.context_window)
        render = renderer(plain_info_to_stderr=True)
        render.note(
            f"resuming checkpoint {checkpoint.id} of context {ctx.name!r} "
            f"({len(checkpoint.text)} characters so far)"
        )
        return Session(cw, render, args.base_url).resume(checkpoint)
