"""A small, fast server-sent-events decoder for the ``wire="fast"`` paths.

It follows the WHATWG event-stream rules the SDKs' own decoders follow (lines end in
``\\r\\n``, ``\\n`` or ``\\r``; ``:`` starts a comment; one leading space after the colon is
dropped; an unknown field name such as `` data`` is ignored; a blank line dispatches), but
yields plain ``(event, data)`` tuples instead of objects, and splits whole network chunks
at once rather than byte by byte.

Where the SDKs' decoders differ from each other, it does what the SDK of the stream's
provider does (:data:`Like`), so both wires deliver the same events before a cut or an
invalid byte: bytes that are not UTF-8, and a line whose ``\r\n`` is split between two
network reads.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator
from typing import Literal

__all__ = ["Like", "SSEDecoder", "aiter_sse", "iter_sse"]

Event = tuple[str | None, str]

Like = Literal["openai", "anthropic", "google-genai"]
"""Whose SDK decoder to behave like where they differ.

Invalid UTF-8: ``openai`` raises ``UnicodeDecodeError`` as soon as the line is complete;
``anthropic`` when the event holding the line ends (its blank line) or the body does (a cut
before that is a transport error); ``google-genai`` decodes it as U+FFFD and goes on.
A line ending in ``\r`` at the end of a read: ``openai`` takes it at once (and drops a
``\n`` that starts the next read); the others wait for the next read.
Lines other than ``data: `` and blank ones: ``google-genai`` reads them as raw JSON (an
error body sent line by line), buffered until their braces balance and then passed on as an
event's data at once, a comment or ``event:`` line included; the others follow the SSE rules.
"""


class SSEDecoder:
    """Incremental decoder: :meth:`feed` bytes, get the events completed so far.

    An invalid UTF-8 line (``utf8`` not ``"replace"``) raises the ``UnicodeDecodeError``
    the SDK's own decoder raises for it, after the events that came before it.
    """

    __slots__ = (
        "_buf",
        "_data",
        "_eager_cr",
        "_event",
        "_kept_id",
        "_openai",
        "_pending",
        "_per_event",
        "_raw",
        "_replace",
        "_skip_lf",
    )

    def __init__(self, like: Like = "openai") -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._pending = False
        self._openai = like == "openai"
        self._kept_id = False  # like="openai": a last event id, which every blank line sends
        self._replace = like == "google-genai"
        self._per_event = like == "anthropic"
        self._eager_cr = like == "openai"
        self._skip_lf = False
        self._raw = _RawJson() if like == "google-genai" else None

    def feed(self, chunk: bytes) -> Iterable[Event]:
        """Decode ``chunk``; a line cut at the end of it waits for the next one."""
        if self._buf:
            chunk = self._buf + chunk
        elif self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":  # the second half of a "\r\n" taken with the last read
                chunk = chunk[1:]
        lines = chunk.splitlines(keepends=True)
        if not lines:
            self._buf = b""
            return ()
        # An unterminated last line waits. One ending in a lone "\r" may be the first half
        # of a "\r\n" split across reads: it waits too, unless like="openai", or
        # like="anthropic" and the read ends in "\r\r" (that SDK's decoder takes an event
        # ending so at once, as it does "\n\n").
        end = lines[-1][-1:]
        if end == b"\n":
            self._buf = b""
        elif end == b"\r" and (self._eager_cr or (self._per_event and chunk[-2:] == b"\r\r")):
            self._buf = b""
            self._skip_lf = True
        else:
            self._buf = lines.pop()
        return self._lines(lines)

    def flush(self, *, dispatch_pending: bool = False) -> list[Event]:
        """End of stream: decode a last unterminated line.

        An event with no blank line after it is not dispatched, as in the OpenAI and
        Anthropic SDKs' decoders, unless ``dispatch_pending`` (google-genai reads it).
        """
        buf, self._buf = self._buf, b""
        out = list(self._lines(buf.splitlines(keepends=True), final=True)) if buf else []
        if self._raw is not None:
            rest = self._raw.flush()
            if rest:
                out.append((None, rest))
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

    def _lines(self, lines: list[bytes], final: bool = False) -> Iterable[Event]:
        out: list[Event] = []
        data = self._data
        raw = b""
        try:
            for raw in lines:
                if raw[:6] == b"data: ":
                    data.append(raw[6:].rstrip(b"\r\n").decode())
                    self._pending = True
                    continue
                line = raw.rstrip(b"\r\n")
                if not line:
                    if self._pending or self._kept_id:
                        out.append(self._dispatch())
                        data = self._data
                    continue
                if self._raw is not None:
                    chunk = self._raw.add(line.decode())
                    if chunk is not None:
                        out.append((None, chunk))
                    continue
                # The SDKs decode every line whole: one with invalid UTF-8 fails there even
                # where its text does not matter (a comment, an unknown field).
                if line[:1] == b":":
                    line.decode()
                    continue
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data.append(value.decode())
                    self._pending = True
                elif name == b"event":
                    self._event = value.decode()
                    if value or not self._openai:  # openai's: an empty name is none
                        self._pending = True
                else:
                    line.decode()
                    if not self._openai:
                        if name in (b"id", b"retry"):
                            self._pending = True
                    elif name == b"id":  # kept for every later event, as the SSE spec says
                        if b"\x00" not in value:
                            self._kept_id = bool(value)
                    elif name == b"retry" and _is_int(value):  # openai's ignores others
                        self._pending = True
        except UnicodeDecodeError:
            return self._invalid(out, lines, raw, final)
        return out

    def _invalid(
        self, out: list[Event], lines: list[bytes], bad: bytes, final: bool
    ) -> Iterable[Event]:
        """The events before an invalid line, then its error (now, or when its event ends);
        or, like google-genai, the events of the lines with invalid bytes as U+FFFD."""
        at = next(i for i, line in enumerate(lines) if line is bad)
        if self._replace:
            # Decoded strictly first (the common case costs nothing extra); the rest of the
            # lines again, with U+FFFD for what is not UTF-8, as valid UTF-8.
            rest = [line.decode("utf-8", "replace").encode() for line in lines[at:]]
            return out + list(self._lines(rest, final))
        if self._per_event and not final:
            rest = lines[at + 1 :]
            if not any(not line.rstrip(b"\r\n") for line in rest):
                # The event is not over: read its lines again with the next bytes.
                self._buf = b"".join(lines[at:]) + self._buf
                return out
        try:  # the error exactly as the SDK's decoder raises it: for the line, unterminated
            bad.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError as exc:
            return _raising(out, exc)
        raise AssertionError("unreachable: the line decoded")  # pragma: no cover


class _RawJson:
    """google-genai's ``_RawJsonLineBuffer``: lines until their braces balance outside strings."""

    __slots__ = ("_depth", "_escaped", "_in_string", "_lines")

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def add(self, line: str) -> str | None:
        """Add a line; the buffered text once its braces balance."""
        for c in line:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c == "{":
                self._depth += 1
            elif c == "}":
                self._depth -= 1
        self._lines.append(line)
        return self.flush() if self._depth == 0 else None

    def flush(self) -> str:
        """All buffered lines, joined; the buffer starts again."""
        text = "".join(self._lines)
        self._lines = []
        self._depth = 0
        self._in_string = False
        self._escaped = False
        return text


def _is_int(value: bytes) -> bool:
    """Whether ``int()`` takes ``value`` (as the OpenAI SDK's decoder tries a ``retry``)."""
    try:
        int(value.decode())
    except ValueError:
        return False
    return True


def _raising(events: list[Event], error: BaseException) -> Iterator[Event]:
    yield from events
    raise error


def iter_sse(chunks: Iterable[bytes], like: Like = "openai") -> Iterator[Event]:
    """Events of a byte stream, in order."""
    decoder = SSEDecoder(like)
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.flush()


async def aiter_sse(
    chunks: AsyncIterable[bytes], like: Like = "openai"
) -> AsyncGenerator[Event, None]:
    """Events of an async byte stream, in order."""
    decoder = SSEDecoder(like)
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.flush():
        yield event
