"""The request of each round of one reply, built from the context's records at that time."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .chain import new_input, validate_chain
from .history import HistoryCache, request_history
from .providers.base import Request
from .records import Record, RecordType

if TYPE_CHECKING:
    from .options import CallOptions
    from .persist import ReplyPersister
    from .providers.base import ResumeCursor
    from .store.base import Store
    from .tools import Tool
    from .tracing import ReplyTrace

__all__ = ["CONTINUE_PROMPT", "RoundRequests"]

CONTINUE_PROMPT = (
    "Your previous reply was cut off. Continue it exactly where it stopped: do not repeat "
    "anything already written and do not comment on the interruption."
)


class RoundRequests:
    """``Run.request``: called with a round's number (0 first), its request.

    One slotted object a reply, not a closure: a closure over these eleven names was
    thirteen objects the cyclic collector tracks (its function, its cells and their tuple),
    alive as long as the reply; thousands of replies in flight at once hold them all
    across every pass that promotes what is alive (docs/benchmarks.md, many streams).
    """

    __slots__ = (
        "check",
        "context_id",
        "cursor",
        "history",
        "later",
        "options",
        "persister",
        "store",
        "threads",
        "tools",
        "trace",
    )

    def __init__(
        self,
        store: Store,
        context_id: str,
        persister: ReplyPersister,
        history: HistoryCache,
        *,
        check: Callable[[], None] | None,
        threads: bool,
        options: CallOptions,
        later: CallOptions,
        tools: tuple[Tool, ...],
        trace: ReplyTrace | None,
        cursor: ResumeCursor | None,
    ) -> None:
        self.store = store
        self.context_id = context_id
        self.persister = persister
        self.history = history
        self.check = check
        self.threads = threads
        self.options = options
        self.later = later
        self.tools = tools
        self.trace = trace
        self.cursor = cursor

    def __call__(self, round_: int) -> Request:
        if self.check is not None and round_ > 0:  # a tool loop's next request
            self.check()
        persister = self.persister
        context_id = self.context_id
        tools = self.tools
        cursor = self.cursor
        history = self.history
        records = request_history(
            self.store,
            context_id,
            upto=persister.pos,
            reply_id=persister.reply_id,
            cache=history,
        )
        if self.threads:  # what the request's server-side thread holds
            persister.thread_version = history.version
        call = self.options if round_ == 0 else self.later
        resume = persister.resuming
        if resume is not None and resume.text and not resume.text.isspace():
            # The partial reply goes back as an assistant turn plus a continuation
            # prompt. With nothing delivered yet, or only whitespace, the original
            # request is sent as it was (providers reject an empty assistant turn, and
            # Anthropic one of whitespace only).
            records = [
                *records,
                Record.unsaved(context_id, RecordType.MODEL_RESP, resume.text),
                Record.unsaved(context_id, RecordType.PROMPT, CONTINUE_PROMPT),
            ]
            return Request(records=records, tools=tools, cursor=cursor, call=call)
        if self.trace is not None:
            self.trace.request(records)
        full = Request(records=records, tools=tools, cursor=cursor, call=call)
        if self.threads:
            ctx = self.store.get_context(context_id)
            if ctx.use_server_side_threading and validate_chain(ctx, records)[0]:
                return Request(
                    records=new_input(records),
                    tools=tools,
                    previous_response_id=ctx.last_response_id,
                    fallback=full,
                    cursor=cursor,
                    call=call,
                )
        return full
