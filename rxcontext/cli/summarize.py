"""``rxcontext summarize``: propose a summary of a context, accept it on confirmation."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from typing import Any

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from .. import summarize as summaries
from ..chunks import Chunk
from ..summarize import SummaryProposal
from ..window import ContextWindow
from .common import (
    CLIError,
    add_common,
    add_model_options,
    build_model,
    confirm,
    open_store,
    renderer,
)
from .errors import refused

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add ``summarize`` to the subcommands."""
    summarize = sub.add_parser(
        "summarize",
        help="propose a summary of a context; accept it on confirmation",
        description="Stream a proposed summary of the context's live records (one model "
        "request), then accept it on confirmation. Off a terminal nobody can confirm, so "
        "--yes is required there, and without it nothing is sent.",
    )
    summarize.add_argument("--context", "-c", default="default", help="context name")
    summarize.add_argument(
        "--yes", "-y", action="store_true", help="accept without asking (needed in scripts)"
    )
    add_model_options(summarize)
    add_common(summarize)
    summarize.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    """``rxcontext summarize [--context NAME] [--yes]``.

    Everything that can refuse does so before the summary is requested (and paid for): an
    unknown or empty context, and a script without ``--yes``. Only then is the model built
    (and its API key checked).
    """
    terminal = sys.stdin.isatty()
    store = open_store(args.db)
    with contextlib.closing(store):
        ctx = store.get_context_by_name(args.context)
        cw = ContextWindow(store, context=ctx.name)
        if not summaries.replaceable(cw.live_records()):
            raise CLIError(
                f"nothing to summarize: context {ctx.name!r} has no live records "
                "besides system prompts",
                "add some conversation first: rxcontext chat",
            )
        if not args.yes and not terminal:
            raise CLIError(
                "not summarizing: stdin is not a terminal, so nobody could accept the summary; "
                "nothing was sent to the model",
                "pass --yes to summarize and accept in one go from a script",
            )
        cw.model = build_model(args)
        render = renderer(plain_info_to_stderr=True)
        render.note(f"summarizing context {ctx.name!r} with {cw.model.name}")
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
        if not args.yes and not confirm("Accept this summary?"):
            cw.reject_summary(proposal)
            render.note("summary not applied; the conversation is unchanged")
            return 0
        try:
            record = cw.accept_summary(proposal)
        except ValueError as exc:
            if not refused(exc):
                raise
            # Stale: the context changed (another summary, a new reply) while it was read.
            again = "" if ctx.name == "default" else f" --context {shlex.quote(ctx.name)}"
            raise CLIError(
                str(exc), f"summarize the context as it is now: rxcontext summarize{again}"
            ) from exc
        render.note(
            f"summary accepted as record {record.id}; {len(proposal.replaced_ids)} records "
            "marked dead (they stay in the database)"
        )
        return 0
