"""Resume runs that a model can continue natively (OpenAI Responses background mode).

The window uses :class:`NativeResumeRun` for a resume when the model offers
``resume_chunks`` / ``aresume_chunks``; other resumes use the continuation prompt.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from .chunks import Chunk
from .errors import ProviderError
from .providers.base import Request
from .streaming import Run, abefore_first_chunk, before_first_chunk

__all__ = ["NativeResumeRun"]

_log = logging.getLogger("rxcontext.resume")


@dataclass
class NativeResumeRun(Run):
    """A resume run whose first round the model may continue natively.

    The model's ``resume_chunks`` decides per checkpoint (None: it cannot, and the round is
    the continuation-prompt request the window built). Retries of the round ask again.
    """

    def _native(self, name: str, request: Request) -> Any:
        checkpoint = self.persister.resuming
        if checkpoint is None:  # a later round (after tools): a request as usual
            return None
        chunks = getattr(self.model, name)(checkpoint, request.cursor)
        if chunks is not None:
            self.persister.continue_natively()
        return chunks

    def chunks(self, request: Request) -> Iterator[Chunk]:
        native: Iterator[Chunk] | None = self._native("resume_chunks", request)
        if native is None:
            return super().chunks(request)
        return self._or_prompt(native, request)

    def achunks(self, request: Request) -> AsyncIterator[Chunk]:
        native: AsyncIterator[Chunk] | None = self._native("aresume_chunks", request)
        if native is None:
            return super().achunks(request)
        return self._aor_prompt(native, request)

    def _gave_up(self, error: ProviderError) -> bool:
        # A retryable failure (connection, 5xx) is left to the retry policy, which asks for
        # the native stream again; any other (the response expired: 404) falls back now.
        if error.retryable:
            return False
        _log.info(
            "%s could not resume natively (%s); continuing with a prompt", self.model.name, error
        )
        self.persister.continue_with_prompt()
        return True

    def _or_prompt(self, native: Iterator[Chunk], request: Request) -> Iterator[Chunk]:
        """The native stream; if it fails before its first chunk, the continuation request."""
        return before_first_chunk(lambda: native, lambda: Run.chunks(self, request), self._gave_up)

    def _aor_prompt(self, native: AsyncIterator[Chunk], request: Request) -> AsyncIterator[Chunk]:
        """The asyncio twin of :meth:`_or_prompt`."""
        return abefore_first_chunk(
            lambda: native, lambda: Run.achunks(self, request), self._gave_up
        )
