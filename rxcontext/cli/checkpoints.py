"""``rxcontext checkpoints`` (interrupted replies) and ``rxcontext resume ID``."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from ..errors import CheckpointResolved
from ..window import ContextWindow
from .common import add_common, add_model_options, build_model, open_store, renderer
from .session import Session
from .text import to_json

__all__ = ["register", "resume", "run"]


def register(sub: Any) -> None:
    """Add ``checkpoints`` and ``resume`` to the subcommands."""
    checkpoints = sub.add_parser("checkpoints", help="list interrupted replies")
    checkpoints.add_argument("--context", "-c", metavar="NAME", help="only this context")
    checkpoints.add_argument("--all", action="store_true", help="include resolved ones")
    checkpoints.add_argument("--json", action="store_true", help="JSON output")
    add_common(checkpoints)
    checkpoints.set_defaults(func=run)

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


def resume(args: argparse.Namespace) -> int:
    """``rxcontext resume ID``: finish an interrupted reply.

    The checkpoint is looked up before the model is built, so a wrong id or a resolved
    checkpoint is named as such, not as a missing API key.
    """
    store = open_store(args.db)
    with contextlib.closing(store):
        checkpoint = store.get_checkpoint(args.id)
        if checkpoint.resolved:
            raise CheckpointResolved(f"checkpoint {args.id} was already resumed")
        ctx = store.get_context(checkpoint.context_id)
        model = build_model(args)
        cw = ContextWindow(store, model, context=ctx.name, max_tokens=args.context_window)
        render = renderer(plain_info_to_stderr=True)
        render.note(
            f"resuming checkpoint {checkpoint.id} of context {ctx.name!r} "
            f"({len(checkpoint.text)} characters so far)"
        )
        return Session(cw, render, args.base_url).resume(checkpoint)
