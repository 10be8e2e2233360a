"""ContextWindow: a named conversation in a store, and the model calls that extend it."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Unpack, cast

from reactivex import Observable, abc

from . import _forks, summarize
from ._requests import CONTINUE_PROMPT, RoundRequests
from ._summary_stream import SummaryLimits
from .astreaming import off_loop, run_async
from .attachments import Attachment
from .budget import Budget, check_budget, spending
from .checkpointer import checkpointer_for
from .chunks import Chunk, Reply, Usage
from .errors import CheckpointNotFound, ReplySuperseded, RxContextError
from .fanout import fanout_for
from .fanout.observe import awatch_chunks, watch_observable
from .heartbeat import heartbeat_for, request_stop
from .history import (
    HistoryCache,
    answered_again,
    busy_replies,
    request_history,
    unanswered_calls,
)
from .interop import fork_context, import_context
from .operators import Middleware
from .options import NO_OPTIONS, CallKeywords, CallOptions, check_options
from .persist import ReplyPersister
from .providers.base import Model, ResumeCursor
from .records import Checkpoint, Context, ContextStats, Record, RecordType, TokenUsage
from .resume import NativeResumeRun
from .retry import DEFAULT_RETRY, RetryPolicy, Timeouts
from .store.base import RecordDraft, Store, check_text, settle_refusal
from .store.owner import check_seconds, worker_id
from .streaming import Run, _drive, _Flag, run_observable
from .summarize import SummaryProposal
from .toolnames import check_for, provider_of
from .tools import Tool, ToolApproval, ToolRegistry, ToolRunner
from .tracing import Tracing
from .usage_by_model import Part

__all__ = ["CONTINUE_PROMPT", "ContextReader", "ContextWindow"]

DEFAULT_MAX_TOKENS = 128_000
HISTORY_CACHES = 8
"""How many contexts' live histories a window keeps in memory (the most recently used):
switching back to one of them re-reads only what changed; to another, it all."""


def _text_arg(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value


def _reply_id(value: object) -> str:
    """A reply id to look up: a str of UTF-8 text (else TypeError / ValueError)."""
    check_text(_text_arg(value, "reply id"), "reply id")
    return cast(str, value)


class ContextReader:
    """A read-only view of one context, safe to use from other threads.

    It reads through the store (which serialises access), never through the window's
    mutable state, so it keeps following the same context after the window switches.
    """

    def __init__(self, store: Store, context_id: str, max_tokens: int) -> None:
        self._store = store
        self.context_id = context_id
        self.max_tokens = max_tokens

    def context(self) -> Context:
        """The context's row."""
        return self._store.get_context(self.context_id)

    def live_records(self) -> list[Record]:
        """Live records, oldest first."""
        return self._store.records(self.context_id, live_only=True)

    def records(self) -> list[Record]:
        """All records (live and dead), oldest first."""
        return self._store.records(self.context_id)

    def live_tokens(self) -> int:
        """Estimated tokens of the live records (kept by the store on every write)."""
        return self._store.live_tokens(self.context_id)

    def token_usage(self) -> TokenUsage:
        """Live tokens against ``max_tokens`` (0–100 percent), and the total used so far."""
        live = self.live_tokens()
        percent = 100.0 * live / self.max_tokens if self.max_tokens else 0.0
        total = self._store.context_stats(self.context_id).usage.total_tokens
        return TokenUsage(live, self.max_tokens, percent, total)

    def stats(self) -> ContextStats:
        """Aggregate numbers of the context."""
        return self._store.context_stats(self.context_id)

    def checkpoints(self) -> list[Checkpoint]:
        """Unresolved checkpoints, oldest first."""
        return self._store.checkpoints(self.context_id)

    def export(self) -> dict[str, Any]:
        """The context with its records and tools, JSON-ready."""
        return self._store.export_context(self.context_id)


_GERUNDS = {"resume": "resuming", "keep": "keeping"}
"""How a refusal names the settling it refuses."""


class ContextWindow:
    """A conversation kept in ``store`` under a name, extended by ``model``'s replies.

    ::

        store = rxcontext.open("chat.db")
        cw = ContextWindow(store, model, context="demo")
        cw.add_prompt("Hello")
        cw.stream().pipe(rxops.text()).subscribe(print)   # stored when it completes

    ``checkpoint_every`` (seconds) bounds what a killed process can lose of a streaming
    reply (a timer writes what was delivered, also while the stream pauses; on the
    ``scheduler``'s clock when that is virtual); ``max_tool_rounds`` ends a runaway tool
    loop; ``middleware`` hooks run inside every stream, before the persister. ``retry``
    sends a failed request again while none of its reply has been delivered (None: never);
    ``timeouts`` bound how long a stream may stay quiet. Their waits run on the
    subscription's scheduler, else on ``scheduler`` (a ``reactivex.testing.TestScheduler``
    makes them virtual), else on the real clock.
    """

    def __init__(
        self,
        store: Store,
        model: Model | None = None,
        context: str = "default",
        *,
        max_tokens: int | None = None,
        checkpoint_every: float | None = 1.0,
        max_tool_rounds: int = 8,
        middleware: Sequence[Middleware] = (),
        summarizer: Model | None = None,
        summary_prompt: str | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        timeouts: Timeouts | None = None,
        scheduler: abc.SchedulerBase | None = None,
        tool_approval: ToolApproval | None = None,
        budget: Budget | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        if not hasattr(store, "get_or_create_context"):
            raise TypeError("store must be an rxcontext store: use rxcontext.open(path)")
        _text_arg(context, "context name")
        hooks = list(middleware)
        self._hooks(hooks, "ContextWindow(middleware=...)")
        if max_tokens is None:
            reported = getattr(model, "context_window", None)
            max_tokens = (
                reported if isinstance(reported, int) and reported > 0 else (DEFAULT_MAX_TOKENS)
            )
        if max_tokens <= 0:
            raise ValueError("max_tokens must be positive")
        self._store = store
        self.model = model
        self.max_tokens = max_tokens
        self.checkpoint_every = checkpoint_every
        self.max_tool_rounds = max_tool_rounds
        self.middleware: list[Middleware] = hooks
        self.retry = retry
        self.timeouts = timeouts if timeouts is not None else Timeouts()
        self.scheduler = scheduler
        self.budget = budget
        self.tracing = tracing
        """Makes an OpenTelemetry span of every reply (:class:`~rxcontext.tracing.Tracing`,
        ``rxcontext[otel]``); None: no tracing."""
        """Limits on what this window's context may spend (:class:`~rxcontext.Budget`),
        checked before every request; None: none."""
        self.tool_approval = tool_approval
        """Sees each tool call, complete and parsed, before its tool runs, and may let it
        run (True/None), refuse it (False or ``tools.Veto(reason)``: the model is told) or
        answer it (``tools.Replace(output)``)."""
        self.summarizer = summarizer
        """Model for :meth:`summarize` (default: the window's model)."""
        self.summary_prompt = summary_prompt
        """Summariser instructions (default: the prompt shipped in ``rxcontext/data``)."""
        self._tools = ToolRegistry()
        self._context = store.get_or_create_context(context)
        self._histories: dict[str, HistoryCache] = {}  # in order of use, the latest last
        self._histories_lock = threading.Lock()  # replies may start on several threads
        _forks.on_fork(self)

    def _forked(self) -> None:
        # A forked child: a parent's reply may have held these locks (across a store call)
        # at the fork; they are made anew and the caches read the history again.
        self._histories_lock = threading.Lock()
        for cache in self._histories.values():
            cache._forked()

    def __repr__(self) -> str:
        return f"ContextWindow(context={self._context.name!r}, model={self._model_name()!r})"

    def _model_name(self) -> str | None:
        return self.model.name if self.model is not None else None

    # -- contexts -------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store this window reads and writes."""
        return self._store

    @property
    def context(self) -> Context:
        """The current context (fresh from the store)."""
        return self._store.get_context(self._context.id)

    @property
    def context_id(self) -> str:
        """Id of the current context."""
        return self._context.id

    @property
    def context_name(self) -> str:
        """Name of the current context."""
        return self._context.name

    def switch_context(self, name: str) -> Context:
        """Make ``name`` the current context, creating it if missing."""
        self._context = self._store.get_or_create_context(_text_arg(name, "context name"))
        for tool in self._tools.list():
            self._store.set_context_tool(self._context.id, tool.name, tool.to_dict())
        return self._context

    def list_contexts(self) -> list[Context]:
        """All contexts in the store, newest first."""
        return self._store.list_contexts()

    def delete_context(self, name: str) -> None:
        """Delete a context with its records, tools and checkpoints.

        Deleting the current context switches to the newest remaining one, or to a new
        ``"default"``.
        """
        ctx = self._store.get_context_by_name(_text_arg(name, "context name"))
        self._store.delete_context(ctx.id)
        with self._histories_lock:
            self._histories.pop(ctx.id, None)
        if ctx.id == self._context.id:
            remaining = self._store.list_contexts()
            self._context = (
                remaining[0] if remaining else self._store.get_or_create_context("default")
            )

    def clone(self, dest: str) -> Context:
        """Copy the current context's records (not its tools) into a new context ``dest``.

        The clone is an account of its own: what the current context's replies were billed
        stays the current context's, so the clone's token totals and cost start at 0 (its
        live records and tokens are copied)."""
        return self._store.clone_context(self._context.id, _text_arg(dest, "clone name"))

    def export(self) -> dict[str, Any]:
        """The current context with its records and tools, JSON-ready."""
        return self._store.export_context(self._context.id)

    def import_context(self, data: Mapping[str, Any], *, name: str | None = None) -> Context:
        """Create a context from an export — :meth:`export`'s, or superfly/contextwindow's
        ``ExportContextJSON`` — under its own name or ``name`` (the current context stays).

        Raises :class:`~rxcontext.InvalidExport` (writing nothing) for an export it cannot
        read, naming the record and field, and ``ValueError`` if the name is taken.
        """
        return import_context(self._store, data, name=name)

    def fork(self, dest: str, *, at: int) -> Context:
        """A new context ``dest`` with the current one's records up to and including record
        ``at`` (an id, as in :meth:`records`): the conversation as it was there, to go on
        differently. The current context is unchanged. As with :meth:`clone`, the fork's
        token totals and cost start at 0: the copied replies were billed to this context."""
        return fork_context(self._store, self._context.id, _text_arg(dest, "fork name"), at=at)

    def export_json(self, indent: int | None = 2) -> str:
        """:meth:`export` as JSON text."""
        return json.dumps(self.export(), indent=indent, ensure_ascii=False)

    def stats(self) -> ContextStats:
        """Aggregate numbers of the current context (one query)."""
        return self._store.context_stats(self._context.id)

    def set_server_side_threading(self, enabled: bool) -> None:
        """Send ``previous_response_id`` instead of the full history where the model allows."""
        self._store.set_threading(self._context.id, enabled)

    # -- records --------------------------------------------------------------------------

    def _add(self, draft: RecordDraft) -> Record:
        return self._store.add_record(self._context.id, draft)

    def add_prompt(self, text: str, attachments: Sequence[Attachment] = ()) -> Record:
        """Append a user prompt, with images or files (:class:`~rxcontext.Attachment`) sent
        alongside it in order. Attachments the window's model does not take raise
        :class:`~rxcontext.UnsupportedAttachment` here, before anything is stored."""
        if not _text_arg(text, "prompt").strip():
            raise ValueError("the prompt is empty; providers reject empty messages")
        if isinstance(attachments, Attachment):
            attachments = (attachments,)
        attached = tuple(attachments)
        for a in attached:
            if not isinstance(a, Attachment):
                raise TypeError(
                    f"attachments must be rxcontext.Attachment values, not {type(a).__name__}"
                )
        check = getattr(self.model, "check_attachments", None)
        if attached and callable(check):
            check(attached)
        return self._add(RecordDraft(RecordType.PROMPT, text, attachments=attached))

    def add_tool_call(
        self, name: str, arguments: str | dict[str, Any], id: str | None = None
    ) -> Record:
        """Append a tool call made outside a stream (``arguments`` as JSON text or a dict).

        Without ``id`` one is made up (providers other than Gemini require one)."""
        raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
        call_id = id if id is not None else f"call_{uuid.uuid4().hex[:24]}"
        return self._add(
            RecordDraft(
                RecordType.TOOL_CALL,
                raw,
                tool_call_id=call_id,
                tool_name=_text_arg(name, "tool name"),
            )
        )

    def add_tool_output(
        self, output: str, id: str | None = None, name: str | None = None
    ) -> Record:
        """Append a tool's output (``id`` of the call it answers).

        Without ``id`` it answers the earliest live call no output answers yet (of tool
        ``name``, if given); ``ValueError`` if there is none. Without ``name`` it takes the
        name of the call it answers (Gemini sends the name with the output)."""
        text = _text_arg(output, "tool output")
        if id is not None and name is None:
            name = next(
                (
                    r.tool_name
                    for r in reversed(self.live_records())
                    if r.type is RecordType.TOOL_CALL and r.tool_call_id == id
                ),
                None,
            )
        elif id is None:
            waiting = unanswered_calls(self.live_records())
            call = next((c for c in waiting if name is None or c.tool_name == name), None)
            if call is None:
                raise ValueError(
                    "no tool call waits for an output"
                    + (f" from {name!r}" if name is not None else "")
                    + "; pass the id of the call it answers"
                )
            id, name = call.tool_call_id, name if name is not None else call.tool_name
        return self._add(RecordDraft(RecordType.TOOL_OUTPUT, text, tool_call_id=id, tool_name=name))

    def set_system_prompt(self, text: str) -> Record:
        """Replace the system prompt (one transaction)."""
        return self._store.replace_system_prompt(self._context.id, _text_arg(text, "system prompt"))

    def live_records(self) -> list[Record]:
        """Live records of the current context, oldest first."""
        return self._store.records(self._context.id, live_only=True)

    def records(self) -> list[Record]:
        """All records of the current context, oldest first."""
        return self._store.records(self._context.id)

    def set_record_live_state(
        self, start: int, end: int, live: bool, *, among: str = "live"
    ) -> int:
        """Set ``live`` on records ``start``..``end`` (inclusive); returns the count.

        As contextwindow's ``SetRecordLiveStateByRange``, the indexes are positions in
        :meth:`live_records` (so ``set_record_live_state(2, 4, False)`` kills the third to
        fifth live records). ``among="all"`` indexes :meth:`records` instead, dead ones
        included — the way to bring a dead record back.
        """
        if among not in ("live", "all"):
            raise ValueError('among must be "live" or "all"')
        return self._store.set_live_range(
            self._context.id, start, end, live, live_only=among == "live"
        )

    # -- tokens ---------------------------------------------------------------------------

    def reader(self) -> ContextReader:
        """A read-only view of the current context, safe to use from other threads."""
        return ContextReader(self._store, self._context.id, self.max_tokens)

    def live_tokens(self) -> int:
        """Estimated tokens of the live records."""
        return self.reader().live_tokens()

    def token_usage(self) -> TokenUsage:
        """Live tokens against ``max_tokens``, with the percentage used."""
        return self.reader().token_usage()

    # -- summaries ------------------------------------------------------------------------

    def _summarizer(self) -> Model:
        model = self.summarizer or self.model
        if model is None:
            raise RxContextError("no model to summarize with: set ContextWindow.summarizer")
        return model

    def _context_id_of(self, context: str | None) -> str:
        if context is None:
            return self._context.id
        return self._store.get_context_by_name(_text_arg(context, "context name")).id

    def summarize(
        self,
        *,
        on_chunk: Callable[[Chunk], None] | None = None,
        prompt: str | None = None,
        context: str | None = None,
    ) -> SummaryProposal:
        """Propose a summary of the live records; nothing changes until :meth:`accept_summary`.

        The summariser streams; ``on_chunk`` sees each chunk as it arrives (an ``async def``
        one is refused with ``TypeError``: use :meth:`asummarize`). ``context``
        names another context to summarise (contextwindow's
        ``SummarizeLiveContextInContext``); the current one by default. What the request
        was billed is spent whether or not the summary is accepted: its usage joins the
        context's totals and its reply is stored as a dead MODEL_RESP (metadata
        ``summarizer: true``) that carries the usage and model its cost is priced from. So
        it is when the summary fails after its stream reported usage (an error in the
        stream, ``on_chunk`` raising, no text: ``ValueError``): that record keeps the usage
        and the text delivered, then the error is raised as it was. The window's
        ``timeouts`` and ``retry`` bound and retry the summariser's stream as a reply's
        (``FirstChunkTimeout``, ``IdleTimeout``, ``DeadlineExceeded`` raised as they are;
        each retry checked against the ``budget``).
        """
        context_id = self._context_id_of(context)
        summarizer = self._summarizer()
        if self.budget is not None:  # a request like any other (the largest one)
            self._check_budget(self.budget, summarizer, context_id)
        return summarize.propose(
            summarizer,
            context_id,
            self._settled(context_id),
            prompt or self.summary_prompt,
            on_chunk,
            spend=partial(self._spent, context_id, summarizer),
            limits=self._summary_limits(summarizer, context_id),
        )

    def _summary_limits(self, summarizer: Model, context_id: str) -> SummaryLimits:
        """The window's retry policy, timeouts and scheduler, for a summary's request, and
        its budget check before that request is sent again."""
        budget = self.budget
        return SummaryLimits(
            retry=self.retry,
            timeouts=self.timeouts,
            scheduler=self.scheduler,
            recheck=(
                partial(self._check_budget, budget, summarizer, context_id)
                if budget is not None
                else None
            ),
        )

    def _spent(self, context_id: str, model: Model, reply: Reply) -> None:
        """What the summariser was billed joins the context, accepted or not (and when the
        summary failed after it was billed): its usage the token totals, and its reply, as
        a dead record, the cost (budgets count both)."""
        self._store.import_records(
            context_id, [summarize.summarizer_draft(reply, model.name)], usage=reply.usage
        )

    async def asummarize(
        self,
        *,
        on_chunk: Callable[[Chunk], Awaitable[None] | None] | None = None,
        prompt: str | None = None,
        context: str | None = None,
    ) -> SummaryProposal:
        """The asyncio twin of :meth:`summarize` (``on_chunk`` may be ``async``: awaited)."""
        context_id = self._context_id_of(context)
        summarizer = self._summarizer()
        if self.budget is not None:  # its store reads stay off the event loop
            await off_loop(self._check_budget, self.budget, summarizer, context_id)
        return await summarize.apropose(
            summarizer,
            context_id,
            await off_loop(self._settled, context_id),
            prompt or self.summary_prompt,
            on_chunk,
            spend=partial(off_loop, self._spent, context_id, summarizer),
            limits=self._summary_limits(summarizer, context_id),
        )

    def _settled(self, context_id: str) -> list[Record]:
        """The live records a summary may replace: not those of replies still being
        generated (their rounds are not done; their calls would go dead under them)."""
        # Asked before the read and after it: a reply that ends in between is left out
        # whole, never taken half (its call without the output stored after the read).
        busy = busy_replies(self._store, context_id)
        records = self._store.records(context_id, live_only=True)
        if not any(r.reply_id is not None for r in records):
            return records
        busy |= busy_replies(self._store, context_id)
        return [r for r in records if r.reply_id is None or r.reply_id not in busy]

    def accept_summary(self, proposal: SummaryProposal) -> Record:
        """Apply ``proposal`` to the context it was made for: its records go dead and the
        summary goes live, in one transaction (contextwindow's ``AcceptSummaryInContext``
        for a proposal made with ``summarize(context=...)``).

        Raises ``ValueError`` (changing nothing) if its records changed since it was made.
        """
        return self._store.replace_records(
            proposal.context_id, proposal.replaced_ids, summarize.summary_draft(proposal)
        )

    def reject_summary(self, proposal: SummaryProposal) -> None:
        """Discard ``proposal``: the conversation stays as it was (proposing it only stored
        what the summariser was billed, as a dead record: see :meth:`summarize`)."""

    def auto_compact(self, threshold_percent: float) -> SummaryProposal | None:
        """Summarize and accept when the live tokens reach ``threshold_percent`` of max_tokens."""
        if isinstance(threshold_percent, bool) or not isinstance(threshold_percent, int | float):
            raise TypeError(f"threshold_percent must be a number, not {threshold_percent!r}")
        if not 0 <= threshold_percent < float("inf"):  # NaN too: it would always compact
            raise ValueError(f"threshold_percent must be 0 or more, not {threshold_percent!r}")
        if self.token_usage().percent < threshold_percent:
            return None
        proposal = self.summarize()
        self.accept_summary(proposal)
        return proposal

    # -- tools ----------------------------------------------------------------------------

    def add_tool(self, tool: Tool, runner: ToolRunner) -> None:
        """Offer ``tool`` to the model; ``runner`` (``dict -> str``, or async) answers its calls.

        ``ValueError`` if the model's provider refuses the tool's name or a parameter name
        (a tool loaded with ``Tool.from_dict`` keeps the names it was stored with)."""
        if isinstance(tool, Tool):
            check_for(provider_of(self.model), tool.name, tool.properties)
        self._tools.add(tool, runner)
        self._store.set_context_tool(self._context.id, tool.name, tool.to_dict())

    def tools(self) -> list[Tool]:
        """The tools this window offers."""
        return self._tools.list()

    def get_tool(self, name: str) -> Tool | None:
        """The tool called ``name``, if offered."""
        return self._tools.get(name)

    def has_tool(self, name: str) -> bool:
        """Whether a tool called ``name`` is offered."""
        return self._tools.has(name)

    def remove_tool(self, name: str) -> bool:
        """Stop offering a tool; whether it was offered."""
        self._store.remove_context_tool(self._context.id, name)
        return self._tools.remove(name)

    # -- streaming ------------------------------------------------------------------------

    def _require_model(self) -> Model:
        if self.model is None:
            raise RxContextError(
                "this ContextWindow has no model: pass one, "
                "e.g. ContextWindow(store, OpenAIModel(...))"
            )
        return self.model

    def _run(
        self,
        hooks: Sequence[Middleware],
        *,
        streaming: bool,
        disable_tools: bool,
        resume: int | None = None,
        reply_id: str | None = None,
        options: CallOptions = NO_OPTIONS,
        budget_checked: bool = False,
        budget_at_start: bool = False,
    ) -> Run:
        model = self._require_model()
        store = self._store
        context_id = self._context.id
        tools = () if disable_tools else tuple(self._tools.list())
        if options is not NO_OPTIONS:  # (none set: nothing to refuse, the common call)
            check_options(model, options, [t.name for t in tools])
        if not tools and options.tool_choice in ("auto", "none"):
            # Nothing to choose from: APIs refuse a tool_choice sent without tools.
            options = replace(options, tool_choice=None)
        # tool_choice asks for the first request only: forcing a tool on every round would
        # loop until max_tool_rounds.
        later = replace(options, tool_choice=None) if options.tool_choice else options
        timeouts = self.timeouts
        if options.deadline is not None:
            timeouts = replace(timeouts, deadline=options.deadline)
        budget = self.budget
        # Before the first request, each tool round's and each retry's (its earlier
        # attempts' billed usage given as ``billed``).
        check = (
            partial(self._check_budget, budget, model, context_id) if budget is not None else None
        )
        budget_check = None
        if check is not None and not budget_checked:
            if budget_at_start:  # the asyncio driver: off the loop, when iterated
                budget_check = check
            else:
                check()
        recheck = None
        if check is not None:
            checks = check

            def recheck(billed: Sequence[Part] | None = None) -> None:
                """Later requests of the reply: its own row is what ``billed`` counts."""
                checks(billed, own=persister.reply_id)

        threads = bool(getattr(model, "supports_previous_response_id", False))
        # A model that can resume natively notes where its streams stand in a cursor the
        # persister reads when it writes a checkpoint (see providers.base.ResumeCursor).
        native = callable(getattr(model, "resume_chunks", None))
        cursor = ResumeCursor() if native else None
        persister = ReplyPersister(
            store,
            context_id,
            reply_id=reply_id,
            checkpoint_every=self.checkpoint_every,
            claim=(lambda: self._claim(resume)) if resume is not None else None,
            streamed=streaming,
            cursor=cursor,
            model_name=model.name,
            fanout=fanout_for(store),
        )
        persister.output_schema = options.schema
        persister.optional_nulls = bool(getattr(model, "schema_optional_as_null", False))
        trace = (
            self.tracing.reply(
                model_name=model.name, context_id=context_id, context_name=self._context.name
            )
            if self.tracing is not None
            else None
        )
        persister.trace = trace

        history = self._history(context_id)
        request = RoundRequests(
            store,
            context_id,
            persister,
            history,
            check=recheck,
            threads=threads,
            options=options,
            later=later,
            tools=tools,
            trace=trace,
            cursor=cursor,
        )

        every = persister.every
        return (NativeResumeRun if resume is not None and native else Run)(
            model=model,
            persister=persister,
            request=request,
            # The caller's tuple itself when the window has no middleware of its own: one
            # object fewer alive per reply for the cyclic collector.
            hooks=(*self.middleware, *hooks) if self.middleware else tuple(hooks),
            tools=None if disable_tools else self._tools,
            max_tool_rounds=self.max_tool_rounds,
            streaming=streaming,
            retry=self.retry,
            timeouts=timeouts,
            scheduler=self.scheduler,
            checkpointer=checkpointer_for(store, every, self.scheduler) if every else None,
            tool_approval=self.tool_approval,
            trace=trace,
            heartbeat=heartbeat_for(store),
            budget_check=budget_check,
            budget_recheck=recheck,
        )

    def _check_budget(
        self,
        budget: Budget,
        model: Model,
        context_id: str,
        billed: Usage | Sequence[Part] | None = None,
        *,
        own: str | None = None,
    ) -> None:
        """Raise :class:`~rxcontext.BudgetExceeded` if the next request of context
        ``context_id`` (not necessarily the current one) would go over; ``billed``: what
        the reply sending it again was billed so far that the store does not count yet
        (by the models that billed it, or a usage ``model`` billed); ``own``: that reply's
        id, whose row ``billed`` stands for.

        Spent is the context's totals (its settled replies) and what its unsettled replies
        were billed (:func:`~rxcontext.budget.unsettled_parts`), read as of one moment: a
        reply interrupted (a retry the budget refused, say) was paid for before it is kept
        or discarded, and a resume's first request counts what its checkpoint carries."""
        store = self._store
        # Its totals, name, records and unsettled replies' usage as of one moment.
        spent, unsettled = spending(store, context_id, own, records=budget.max_usd is not None)
        check_budget(
            budget,
            context=spent.stats.name,
            spent=spent.stats.usage,
            records=spent.records,
            estimate=store.live_tokens(context_id),
            model_name=model.name,
            billed=billed,
            unsettled=unsettled,
        )

    def _history(self, context_id: str) -> HistoryCache:
        """The live-records cache of a context (requests re-read only what changed), kept
        for the :data:`HISTORY_CACHES` contexts used last: a window moved across many
        contexts would otherwise hold every one's whole history. A reply under way keeps
        its cache however many contexts the window moves on to."""
        with self._histories_lock:
            cache = self._histories.pop(context_id, None)
            if cache is None:
                cache = HistoryCache(self._store, context_id)
            self._histories[context_id] = cache
            while len(self._histories) > HISTORY_CACHES:
                del self._histories[next(iter(self._histories))]
        return cache

    def _options(self, disable_tools: bool, keywords: CallKeywords) -> CallOptions:
        """The call's options, checked against the model and the tools now (not when
        subscribed), so a bad one fails before anything is sent or stored."""
        model = self._require_model()
        if not keywords:  # none set: nothing to refuse (check_options passes NO_OPTIONS)
            return NO_OPTIONS
        options = CallOptions.make(**keywords)
        tools = [] if disable_tools else [t.name for t in self._tools.list()]
        check_options(model, options, tools)
        return options

    @staticmethod
    def _hooks(hooks: Sequence[Any], where: str) -> None:
        """Refuse anything but middleware where only hooks run (they run inside the driver)."""
        for hook in hooks:
            if not isinstance(hook, Middleware):
                raise TypeError(
                    f"{where} takes middleware hooks (rxcontext.operators.middleware(...)),"
                    f" not {hook!r}; Rx operators go to stream() or resume(), which apply"
                    " them to the reply's chunks"
                )

    @staticmethod
    def _split(operators: Sequence[Any]) -> tuple[list[Middleware], list[Any]]:
        hooks = [op for op in operators if isinstance(op, Middleware)]
        rest = [op for op in operators if not isinstance(op, Middleware)]
        return hooks, rest

    def stream(
        self,
        *operators: Any,
        reply_id: str | None = None,
        disable_tools: bool = False,
        stream: bool = True,
        **options: Unpack[CallKeywords],
    ) -> Observable[Chunk]:
        """A cold Observable of the model's reply to the live records.

        Each subscription is one reply: its lifecycle row (``STREAMING``) and its place in
        the conversation exist from the moment the request is sent, named ``reply_id``
        (unique; a UUID is made when not given — a second subscription with the same id
        fails with :class:`~rxcontext.ReplyExists`). It sends one request (or, with tools,
        one tool loop) built from the records before that place, and stores the reply
        before ``on_completed``. On error, cancel or dispose it saves a checkpoint of
        exactly what was delivered (errors arrive as :class:`~rxcontext.StreamInterrupted`).
        :func:`~rxcontext.operators.middleware` operators given here run inside, before the
        persister; any other operators are applied to the output with ``pipe``.
        ``stream=False`` uses the provider's non-streaming API (same chunks, one burst).

        Per-call options (keywords; the model's own settings stay the defaults):
        ``temperature``, ``max_output_tokens``, ``tool_choice`` (``"auto"``, ``"none"``,
        ``"required"`` or a tool's name; first request only), ``stop`` (a string or a
        list), ``extra`` (more SDK keyword arguments), ``deadline`` (seconds for the whole
        reply: :class:`~rxcontext.DeadlineExceeded` and a checkpoint when it passes) and
        ``schema`` (a pydantic model class or a JSON-schema dict: the provider's native
        structured output; the validated object is ``Reply.parsed``, a reply that does not
        validate is stored and raises :class:`~rxcontext.SchemaValidationError`). An option
        the provider has no parameter for raises :class:`~rxcontext.UnsupportedOption`
        before anything is sent.
        """
        opts = self._options(disable_tools, options)
        hooks, rest = self._split(operators)
        obs = run_observable(
            lambda: self._run(
                hooks,
                streaming=stream,
                disable_tools=disable_tools,
                reply_id=reply_id,
                options=opts,
            ),
            self.scheduler,
        )
        return obs.pipe(*rest) if rest else obs

    def call(
        self,
        *hooks: Middleware,
        reply_id: str | None = None,
        disable_tools: bool = False,
        stream: bool = True,
        **options: Unpack[CallKeywords],
    ) -> Reply:
        """Run one reply (with any tool rounds) to the end on this thread; return the final reply.

        Raises :class:`~rxcontext.StreamInterrupted` (checkpoint saved) if it fails. Takes
        the per-call options of :meth:`stream` (``cw.call(schema=Person).parsed``).
        """
        self._hooks(hooks, "call()")
        opts = self._options(disable_tools, options)
        run = self._run(
            hooks, streaming=stream, disable_tools=disable_tools, reply_id=reply_id, options=opts
        )
        return _call(run)

    def astream(
        self,
        *hooks: Middleware,
        reply_id: str | None = None,
        disable_tools: bool = False,
        stream: bool = True,
        **options: Unpack[CallKeywords],
    ) -> AsyncGenerator[Chunk, None]:
        """The asyncio twin of :meth:`stream`: ``async for chunk in cw.astream(): ...``.

        Uses the model's async client on the running loop, and never blocks the loop on
        the store; the reply begins when the iteration starts. Close it early with
        ``contextlib.aclosing`` (or cancel the task) and the checkpoint is saved (under
        ``aclosing``, before the cancellation reaches whoever awaits the task; else as the
        task ends, in a worker thread) and the provider stream closed.
        Takes the per-call options of :meth:`stream`.
        """
        self._hooks(hooks, "astream()")
        opts = self._options(disable_tools, options)
        return run_async(
            self._run(
                hooks,
                streaming=stream,
                disable_tools=disable_tools,
                reply_id=reply_id,
                options=opts,
                budget_at_start=True,
            )
        )

    async def acall(
        self,
        *hooks: Middleware,
        reply_id: str | None = None,
        disable_tools: bool = False,
        stream: bool = True,
        **options: Unpack[CallKeywords],
    ) -> Reply:
        """The asyncio twin of :meth:`call` (same per-call options)."""
        self._hooks(hooks, "acall()")
        opts = self._options(disable_tools, options)
        budget = self.budget
        if budget is not None:  # its store reads stay off the event loop
            await off_loop(self._check_budget, budget, self._require_model(), self._context.id)
        run = self._run(
            hooks,
            streaming=stream,
            disable_tools=disable_tools,
            reply_id=reply_id,
            options=opts,
            budget_checked=True,
        )
        async for _ in run_async(run):
            pass
        assert run.persister.final is not None
        return run.persister.final

    # -- replies and checkpoints ----------------------------------------------------------

    def checkpoints(self) -> list[Checkpoint]:
        """Interrupted replies of the current context (state ``INTERRUPTED``), in order.

        A reply whose process died while it streamed is listed too. Each one can be
        resumed (:meth:`resume`), kept (:meth:`keep`) or discarded (:meth:`discard`).
        """
        return self._store.checkpoints(self._context.id)

    def active_replies(self) -> list[Checkpoint]:
        """Replies being generated right now in the current context (``STREAMING``, or
        ``RESUMING``), by this process or any other; they cannot be resumed meanwhile."""
        return self._store.active_replies(self._context.id)

    def stop(self, reply_id: str) -> bool:
        """Stop reply ``reply_id`` wherever it is generated (this process or another one
        sharing the store): its owner ends the stream within about a second, stores the
        checkpoint of exactly what its subscriber received (``INTERRUPTED``: resume, keep
        or discard it) and gives its subscriber :class:`~rxcontext.StreamInterrupted` whose
        ``__cause__`` is :class:`~rxcontext.ReplyStopped`.

        Returns True once the request is stored; False, changing nothing, if the reply is
        not running (completed, already interrupted or settled, or its owner died — a
        stop that arrives as the reply completes finds it completed). Raises
        :class:`~rxcontext.ReplyNotFound` for a reply id this store never saw.
        """
        return request_stop(self._store, _reply_id(reply_id))

    async def astop(self, reply_id: str) -> bool:
        """The asyncio twin of :meth:`stop` (the store is written off the event loop)."""
        return await off_loop(request_stop, self._store, _reply_id(reply_id))

    def watch(
        self, reply_id: str, *, poll: float | None = None, wait: float = 1.0
    ) -> Observable[Chunk]:
        """A cold Observable of reply ``reply_id``, generated here or by any other worker:
        everything it delivered so far, then its chunks live, then ``on_completed`` once
        it is stored (its records can be read from then on); ``StreamInterrupted`` (with
        the checkpoint) if it was or gets interrupted; ``ReplyNotFound`` for an unknown id.

        Live chunks come from the store's fan-out (``rxcontext.open(..., fanout=...)``);
        without one, or where its live data is missing, from the store, polled every
        ``poll`` seconds (default: ``checkpoint_every``). A reply taken over by another
        worker may go back (a ``ChunkKind.REWIND`` chunk); the text a watcher ends with is
        the stored record's. Disposing stops watching (within ``wait`` seconds); it never
        touches the reply. ``poll`` and ``wait`` are positive, finite numbers of seconds
        (``ValueError``, or ``TypeError`` for what is not a number, when asked).
        """
        return watch_observable(
            self._store,
            fanout_for(self._store),
            _reply_id(reply_id),
            poll=self._poll(poll),
            wait=check_seconds(wait, "wait"),
        )

    def awatch(
        self, reply_id: str, *, poll: float | None = None, wait: float = 1.0
    ) -> AsyncIterator[Chunk]:
        """The asyncio twin of :meth:`watch`: ``async for chunk in cw.awatch(reply_id)``.

        Same chunks as :meth:`watch` (one watcher core). It runs on the event loop, its
        store reads in the default executor; over a Redis fan-out a live watch waits on the
        loop, not on a thread (one thread per process reads every watch's tail); with
        ``fanout="memory"`` each watch runs on a thread of its own."""
        return awatch_chunks(
            self._store,
            fanout_for(self._store),
            _reply_id(reply_id),
            poll=self._poll(poll),
            wait=check_seconds(wait, "wait"),
        )

    def _poll(self, poll: float | None) -> float:
        if poll is not None:
            return check_seconds(poll, "poll")
        every = self.checkpoint_every
        return every if every and every > 0 else 1.0

    def _own(self, checkpoint_id: int) -> Checkpoint:
        checkpoint = self._store.get_checkpoint(checkpoint_id)
        if checkpoint.context_id != self._context.id:
            raise CheckpointNotFound(
                f"checkpoint {checkpoint_id} belongs to another context; "
                "switch_context() to it first"
            )
        return checkpoint

    def _settleable(self, checkpoint_id: int, verb: str) -> Checkpoint:
        """The checkpoint, if it can be resumed or kept now; else the typed error saying why."""
        checkpoint = self._own(checkpoint_id)
        refusal = settle_refusal(checkpoint, verb)
        if refusal is not None:
            raise refusal
        later = answered_again(self._store, checkpoint)
        if later is not None:
            if isinstance(later, Record):
                which, unless = f"record {later.id}", ""
            else:  # a retry not settled yet: discarding it would free this one
                which = f"{later.state.value}, checkpoint {later.id}"
                unless = f", or discard checkpoint {later.id} first"
            raise ReplySuperseded(
                f"checkpoint {checkpoint_id}'s prompt was answered again by a later reply "
                f"({which}); {_GERUNDS.get(verb, verb)} it would put two answers "
                f"in a row: discard it{unless}"
            )
        return checkpoint

    def _resumable(self, checkpoint_id: int) -> Checkpoint:
        return self._settleable(checkpoint_id, "resume")

    def _claim(self, checkpoint_id: int) -> Checkpoint:
        self._resumable(checkpoint_id)
        return self._store.claim_checkpoint(checkpoint_id, owner=worker_id())

    def discard(self, checkpoint_id: int) -> Checkpoint:
        """Drop an interrupted reply: state ``DISCARDED`` (kept for audit), out of
        :meth:`checkpoints`; the conversation goes on without it.

        Raises :class:`~rxcontext.ReplyBusy` if it is being generated right now and
        :class:`~rxcontext.CheckpointResolved` if it was settled already.
        """
        self._own(checkpoint_id)
        return self._store.discard_checkpoint(checkpoint_id)

    def keep(self, checkpoint_id: int) -> Record:
        """Keep an interrupted reply as it is: its partial text is stored as the reply, in
        its own place in the conversation (a MODEL_RESP whose metadata has ``partial``).

        Raises ``ValueError`` if it holds no text (discard it instead),
        :class:`~rxcontext.ReplySuperseded` if its prompt was answered again by a later
        reply, and the errors of :meth:`discard`.
        """
        checkpoint = self._settleable(checkpoint_id, "keep")
        # Tool calls of its earlier rounds that never got outputs are answered first, so
        # the kept text follows them.
        request_history(
            self._store, self._context.id, upto=checkpoint.pos, reply_id=checkpoint.reply_id
        )
        (record,) = self._store.keep_checkpoint(checkpoint_id)
        return record

    def resume(
        self,
        checkpoint_id: int,
        *operators: Any,
        disable_tools: bool = False,
        **options: Unpack[CallKeywords],
    ) -> Observable[Chunk]:
        """Continue an interrupted reply: emits the continuation's chunks.

        The reply is claimed when subscribed (``RESUMING``; a reply that is streaming or
        being resumed elsewhere gives :class:`~rxcontext.ReplyBusy`). Its request carries
        the history up to the reply's own place, and on completion the stored reply is one
        MODEL_RESP record in that place, holding the partial text plus the continuation.
        Where the model can resume the checkpoint's own stream (OpenAI Responses with
        ``background=True``), the continuation is the rest of that stream, exactly;
        otherwise the history is sent with the partial reply as an assistant turn and an
        instruction to continue (no assistant prefill); a partial reply of no text, or of
        whitespace only, is not sent: the request is the one it answers. A resume that
        fails is interrupted again (its claim released at once), and can be resumed again.
        A reply whose prompt was answered again by a later reply (a retry) gives
        :class:`~rxcontext.ReplySuperseded`: discard it. Takes the per-call options of
        :meth:`stream` (with ``schema``, the joined text is what is validated).
        """
        opts = self._options(disable_tools, options)
        self._resumable(checkpoint_id)
        hooks, rest = self._split(operators)
        obs = run_observable(
            lambda: self._run(
                hooks,
                streaming=True,
                disable_tools=disable_tools,
                resume=checkpoint_id,
                options=opts,
            ),
            self.scheduler,
        )
        return obs.pipe(*rest) if rest else obs

    def resume_call(
        self,
        checkpoint_id: int,
        *hooks: Middleware,
        disable_tools: bool = False,
        **options: Unpack[CallKeywords],
    ) -> Reply:
        """:meth:`resume` to the end on this thread; returns the full (joined) reply."""
        self._hooks(hooks, "resume_call()")
        opts = self._options(disable_tools, options)
        self._resumable(checkpoint_id)
        return _call(
            self._run(
                hooks,
                streaming=True,
                disable_tools=disable_tools,
                resume=checkpoint_id,
                options=opts,
            )
        )

    def aresume(
        self,
        checkpoint_id: int,
        *hooks: Middleware,
        disable_tools: bool = False,
        **options: Unpack[CallKeywords],
    ) -> AsyncGenerator[Chunk, None]:
        """The asyncio twin of :meth:`resume`: checks the checkpoint now, claims it when
        the iteration starts (an iterator closed before that leaves it untouched)."""
        self._hooks(hooks, "aresume()")
        opts = self._options(disable_tools, options)
        self._resumable(checkpoint_id)
        return run_async(
            self._run(
                hooks,
                streaming=True,
                disable_tools=disable_tools,
                resume=checkpoint_id,
                options=opts,
                budget_at_start=True,
            )
        )


class _Collect(abc.ObserverBase[Chunk]):
    def __init__(self) -> None:
        self.error: Exception | None = None

    def on_next(self, value: Chunk) -> None:
        pass

    def on_error(self, error: Exception) -> None:
        self.error = error

    def on_completed(self) -> None:
        pass


def _call(run: Run) -> Reply:
    sink = _Collect()
    _drive(run, sink, _Flag())
    if sink.error is not None:
        raise sink.error
    assert run.persister.final is not None
    return run.persister.final
