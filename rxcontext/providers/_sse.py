"""A small, fast server-sent-events decoder for the ``wire="fast"`` paths.

It follows the WHATWG event-stream rules the SDKs' own decoders follow (lines end in
``\\r\\n``, ``\\n`` or ``\\r``; ``:`` starts a comment; one leading space after the colon is
dropped; an unknown field name such as `` data`` is ignored; a blank line dispatches), but
yields plain ``(event, data)`` tuples instead of objects, and splits whole network chunks
at once rather than byte by byte.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

__all__ = ["SSEDecoder", "aiter_sse", "iter_sse"]

Event = tuple[str | None, str]


class SSEDecoder:
    """Incremental decoder: :meth:`feed` bytes, get the events completed so far."""

    __slots__ = ("_buf", "_data", "_event", "_pending")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._pending = False

    def feed(self, chunk: bytes) -> list[Event]:
        """Decode ``chunk``; a line cut at the end of it waits for the next one."""
        if self._buf:
            chunk = self._buf + chunk
        lines = chunk.splitlines(keepends=True)
        if not lines:
            self._buf = b""
            return []
        # An unterminated last line waits; so does one ending in a lone "\r", which may be
        # the first half of a "\r\n" split across network chunks.
        self._buf = b"" if lines[-1][-1:] == b"\n" else lines.pop()
        return self._lines(lines)

    def flush(self, *, dispatch_pending: bool = False) -> list[Event]:
        """End of stream: decode a last unterminated line.

        An event with no blank line after it is not dispatched, as in the OpenAI and
        Anthropic SDKs' decoders, unless ``dispatch_pending`` (google-genai reads it).
        """
        buf, self._buf = self._buf, b""
        out = self._lines([buf]) if buf else []
        if dispatch_pending and self._data:
            out.append(self._dispatch())
        return out

    def _dispatch(self) -> Event:
        data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
        event = (self._event, data)
        self._event = None
        self._data = []
        self._pending = False
        return event

    def _lines(self, lines: list[bytes]) -> list[Event]:
        out: list[Event] = []
        data = self._data
        for raw in lines:
            if raw[:6] == b"data: ":
                data.append(raw[6:].rstrip(b"\r\n").decode())
                self._pending = True
                continue
            line = raw.rstrip(b"\r\n")
            if not line:
                if self._pending:
                    out.append(self._dispatch())
                    data = self._data
                continue
            if line[:1] == b":":
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value.decode())
                self._pending = True
            elif name == b"event":
                self._event = value.decode()
                self._pending = True
            elif name in (b"id", b"retry"):
                self._pending = True
        return out


def iter_sse(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Events of a byte stream, in order."""
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.flush()


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[Event]:
    """Events of an async byte stream, in order."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.flush():
        yield event
