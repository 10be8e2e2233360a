"""The contract between the window and a provider model.

A model turns a :class:`Request` (the live records, the tools, options) into a stream of
:class:`~rxcontext.chunks.Chunk`. It offers a blocking iterator for the sync path and an
async iterator for asyncio; the window wraps them in Observables, adds the persister and
the tool loop. Closing an iterator (``close()`` / ``aclose()``) must close the HTTP stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..chunks import Chunk, Reply, ReplyBuilder
from ..records import Record
from ..tools import Tool

__all__ = ["Model", "Request", "reply_from_chunks"]


@dataclass(frozen=True, slots=True)
class Request:
    """What one model call sends: the records (oldest first) plus tools and options.

    ``previous_response_id`` is set when server-side threading is on and the chain is valid;
    the records are then only the new input since that response, and ``fallback`` is the
    full-history request the window sends instead if the provider rejects the threaded one.
    Models that can thread say so with a ``supports_previous_response_id = True`` attribute.
    """

    records: Sequence[Record]
    tools: Sequence[Tool] = ()
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    fallback: Request | None = None


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
