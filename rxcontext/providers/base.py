"""The contract between the window and a provider model.

A model turns a :class:`Request` (the live records, the tools, options) into a stream of
:class:`~rxcontext.chunks.Chunk`. It offers a blocking iterator for the sync path and an
async iterator for asyncio; the window wraps them in Observables, adds the persister and
the tool loop. Closing an iterator (``close()`` / ``aclose()``) must close the HTTP stream.

Optional attribute: ``context_window`` (int tokens, or None) is the model's context size; a
:class:`~rxcontext.ContextWindow` made without ``max_tokens`` takes it as its own.

Optional capability, native resume (found with ``getattr``; no other model needs it): a model
whose provider can continue an interrupted stream itself (OpenAI Responses background mode)
notes in :attr:`Request.cursor` where each of its streams stands and offers

    def resume_chunks(self, checkpoint, cursor=None) -> Iterator[Chunk] | None
    def aresume_chunks(self, checkpoint, cursor=None) -> AsyncIterator[Chunk] | None

which return the chunks that follow a checkpoint's text exactly (``cursor`` to note the
resumed stream's own progress), or None when native resume does not apply to it; the window
then sends the history with a continuation prompt instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..chunks import Chunk, Reply, ReplyBuilder
from ..options import NO_OPTIONS, CallOptions
from ..records import FRESH, Record
from ..tools import Tool

__all__ = ["NATIVE_RESUME_KEY", "Model", "Request", "ResumeCursor", "reply_from_chunks"]

NATIVE_RESUME_KEY = "native_resume"
"""Checkpoint metadata key: where a natively resumable stream stopped (:class:`ResumeCursor`)."""


class ResumeCursor:
    """Where a natively resumable stream stands, noted by the model, read at checkpoint time.

    The window gives one to each run of a model that offers ``resume_chunks`` (in
    :attr:`Request.cursor`); the model calls :meth:`begin` when a stream starts,
    :meth:`started` once it knows the stream's id, and :meth:`at` before it yields the chunks
    of each provider event. The persister asks :meth:`point` only when it writes a checkpoint,
    so the hot path costs one small method call per chunk-bearing event and no dict work.

    The resume point is the position of the last event whose chunks were *all* delivered:
    the stream continues after it, so no delivered chunk repeats and none is skipped.
    """

    __slots__ = ("_chunks", "_position", "_prev_chunks", "_prev_position", "provider", "stream_id")

    def __init__(self) -> None:
        self.begin()

    def begin(self, provider: str | None = None) -> None:
        """Forget the previous stream (a new round, a retry, a fallback request)."""
        self.provider = provider
        self.stream_id: str | None = None
        self._chunks = 0
        self._position: int | None = None
        self._prev_chunks = 0
        self._prev_position: int | None = None

    def started(self, stream_id: str | None, position: int | None) -> None:
        """The stream's id is known; ``position`` is its opening event (nothing yielded yet)."""
        self.stream_id = stream_id
        if self._chunks:  # a late opening event: keep the point of what was yielded
            return
        self._chunks = self._prev_chunks = 0
        self._position = self._prev_position = position

    def at(self, chunks: int, position: int | None) -> None:
        """``chunks`` chunks in all are about to have been yielded, through event ``position``."""
        self._prev_chunks = self._chunks
        self._prev_position = self._position
        self._chunks = chunks
        self._position = position

    def point(self, delivered: int) -> dict[str, Any] | None:
        """What a checkpoint keeps when ``delivered`` chunks of this stream reached subscribers.

        None when the stream cannot be resumed natively from there (no id yet, no position).
        """
        if self.stream_id is None:
            return None
        if delivered >= self._chunks:
            position = self._position
        elif delivered >= self._prev_chunks:
            # The last event's chunks were pulled but not (all) delivered: replay that event.
            position = self._prev_position
        else:
            return None
        if position is None:
            return None
        return {"provider": self.provider, "stream_id": self.stream_id, "after": position}


@dataclass(frozen=True, slots=True)
class Request:
    """What one model call sends: the records (oldest first) plus tools and options.

    ``previous_response_id`` is set when server-side threading is on and the chain is valid;
    the records are then only the new input since that response, and ``fallback`` is the
    full-history request the window sends instead if the provider rejects the threaded one.
    Models that can thread say so with a ``supports_previous_response_id = True`` attribute.
    ``cursor`` is set by the window for models that offer native resume (see the module
    docstring); they note there where the stream stands. ``call`` holds the per-call
    options (:class:`~rxcontext.options.CallOptions`): a model maps those it lists in its
    ``call_options`` attribute to its provider's parameters, over its own settings.
    """

    records: Sequence[Record]
    tools: Sequence[Tool] = ()
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    fallback: Request | None = None
    call: CallOptions = NO_OPTIONS
    cursor: ResumeCursor | None = field(default=None, compare=False, repr=False)

    # One per request, on every reply's way to its first chunk: the slots written through
    # their descriptors, not object.__setattr__ per field as dataclass's constructor for a
    # frozen class does (as Chunk's and Record's). Same signature, same values.
    def __init__(
        self,
        records: Sequence[Record],
        tools: Sequence[Tool] = (),
        previous_response_id: str | None = None,
        max_output_tokens: int | None = None,
        options: Mapping[str, Any] = FRESH,
        fallback: Request | None = None,
        call: CallOptions = NO_OPTIONS,
        cursor: ResumeCursor | None = None,
    ) -> None:
        _q_records(self, records)
        _q_tools(self, tools)
        _q_previous_response_id(self, previous_response_id)
        _q_max_output_tokens(self, max_output_tokens)
        _q_options(self, {} if options is FRESH else options)
        _q_fallback(self, fallback)
        _q_call(self, call)
        _q_cursor(self, cursor)


(
    _q_records,
    _q_tools,
    _q_previous_response_id,
    _q_max_output_tokens,
    _q_options,
    _q_fallback,
    _q_call,
    _q_cursor,
) = (Request.__dict__[f].__set__ for f in Request.__dataclass_fields__)


@runtime_checkable
class Model(Protocol):
    """What :class:`~rxcontext.ContextWindow` needs from a model."""

    @property
    def name(self) -> str:
        """A label for logs and the CLI, e.g. ``"openai:gpt-4o-mini"``."""
        ...

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        """Send ``request`` and yield its chunks on the calling thread.

        The returned iterator is a generator (or has ``close()``): closing it early closes
        the provider's HTTP stream. Failures raise :class:`~rxcontext.errors.ProviderError`
        with the SDK's exception as ``__cause__``.
        """
        ...

    def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        """The asyncio twin of :meth:`iter_chunks` (an async generator; ``aclose()`` closes)."""
        ...

    def complete(self, request: Request) -> Reply:
        """One non-streaming call; the same :class:`Reply` streaming would reduce to."""
        ...

    async def acomplete(self, request: Request) -> Reply:
        """The asyncio twin of :meth:`complete`."""
        ...


def reply_from_chunks(chunks: Iterator[Chunk] | Sequence[Chunk]) -> Reply:
    """Reduce chunks to a :class:`Reply` with the shared assembler."""
    builder = ReplyBuilder()
    for chunk in chunks:
        builder.add(chunk)
    return builder.build()
