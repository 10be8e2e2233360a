"""An error body in place of an event stream: ``200 application/json {"error": ...}``.

Some gateways answer a streaming request that they refuse (a wrong key, an unknown model)
with status 200 and a JSON error body instead of an event stream. The SDKs' SSE decoders find
no event in it, so the stream seems to end before its first event, as a cut connection does:
the error would be reported as a retryable ``incomplete_stream`` and the server's message
lost. :func:`tap` keeps the first bytes of a response whose ``content-type`` is not
``text/event-stream`` as its body is read (by the SDK's stream or by the fast wire's decoder:
both read it through ``iter_bytes`` / ``aiter_bytes``); at the end of a stream,
:meth:`BodyTap.raise_error` raises that body if it was one JSON object holding an ``error``,
built as the provider builds an in-stream error event. An event stream, the usual case, is
not tapped at all.

Nothing here imports an SDK: responses are httpx2's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import Any

import httpx2

__all__ = ["LIMIT", "BodyTap", "tap"]

LIMIT = 64 * 1024
"""The most bytes of a body kept: an error body is far smaller; a longer one is not read."""


class BodyTap:
    """The first :data:`LIMIT` bytes of a response's body, as read."""

    __slots__ = ("_over", "_pieces", "_size")

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0
        self._over = False

    def keep(self, piece: bytes) -> None:
        """Keep ``piece``, unless the body has grown past :data:`LIMIT`."""
        if self._over:
            return
        self._size += len(piece)
        if self._size > LIMIT:
            self._over = True
            self._pieces = []
        else:
            self._pieces.append(piece)

    def error(self) -> tuple[str, Any] | None:
        """``(text, body)`` if the whole body was one JSON object with an ``error``; else None."""
        if self._over or not self._pieces:
            return None
        text = b"".join(self._pieces).decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            return None
        if not isinstance(body, dict) or not body.get("error"):
            return None
        return text, body

    def raise_error(self, build: Callable[[Any], BaseException]) -> None:
        """At the end of a stream: raise ``build(body)`` if the body was a JSON error body
        sent in place of the stream (see :meth:`error`), as the provider raises an error
        event in the stream, instead of the stream being taken for cut."""
        found = self.error()
        if found is not None:
            raise build(found[1])


def tap(response: httpx2.Response) -> BodyTap:
    """A :class:`BodyTap` on ``response``; one that keeps nothing for an event stream.

    Its ``iter_bytes`` / ``aiter_bytes`` (what the SDKs' streams and the fast wires read the
    body with) are wrapped on this one response object to keep what they give.
    """
    kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    kept = BodyTap()
    if kind == "text/event-stream":
        return kept
    iter_bytes = response.iter_bytes
    aiter_bytes = response.aiter_bytes

    def tapped(chunk_size: int | None = None) -> Iterator[bytes]:
        for piece in iter_bytes(chunk_size):
            kept.keep(piece)
            yield piece

    async def atapped(chunk_size: int | None = None) -> AsyncIterator[bytes]:
        async with aclosing(aiter_bytes(chunk_size)) as pieces:
            async for piece in pieces:
                kept.keep(piece)
                yield piece

    # On the instance: the SDK reads the body itself, and only this response is tapped.
    setattr(response, "iter_bytes", tapped)  # noqa: B010
    setattr(response, "aiter_bytes", atapped)  # noqa: B010
    return kept
