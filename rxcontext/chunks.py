"""Streaming values: the normalised chunk every provider emits, and the reply they reduce to.

Everything here is a plain frozen value. Identity (ids, rows) is a storage concern and lives
in :mod:`rxcontext.store`; I/O lives in :mod:`rxcontext.providers`.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import accumulate, count
from typing import Any

from .errors import RewindRefused

__all__ = ["Chunk", "ChunkKind", "Reply", "ReplyBuilder", "ToolCall", "Usage"]


class ChunkKind(StrEnum):
    """What a :class:`Chunk` carries."""

    TEXT = "text"
    """A text delta of the reply."""
    THINKING = "thinking"
    """A reasoning delta (or, with ``metadata``, a thinking signature / redacted block)."""
    TOOL_CALL = "tool_call"
    """A tool-call start or argument fragment; ``index`` keys the call."""
    TOOL_RESULT = "tool_result"
    """The output of a tool the window ran during a tool loop (``id``/``name`` of the call)."""
    USAGE = "usage"
    """Token totals so far: replace, never add."""
    DONE = "done"
    """End of one model response: ``finish_reason`` and ``response_id``."""
    REWIND = "rewind"
    """Watchers only (``cw.watch``): the reply's text goes back to its first ``index``
    characters (and its thinking to ``metadata["thinking"]`` characters, when given), as
    when another worker took the reply over and resumed it from its last checkpoint.
    :class:`ReplyBuilder` (so ``accumulate()`` and
    ``reduce_reply()``) applies it, as ``partial_objects()`` does; ``text()`` skips it."""


@dataclass(frozen=True, slots=True, init=False)
class Usage:
    """Token counts of one model response (or, summed with ``+``, of several).

    ``total_tokens`` is the provider's own total where it gives one (Gemini counts thought
    tokens in it), otherwise ``input_tokens + output_tokens``. ``input_tokens`` is all
    input, cached or not: ``cached_tokens`` (read from a prompt cache) and
    ``cache_write_tokens`` (written to one, Anthropic's ``cache_creation_input_tokens``)
    are parts of it, kept apart because they are priced apart. ``web_search_requests``
    counts the provider's server-side web searches as it bills them, on top of the tokens:
    Anthropic's ``usage.server_tool_use.web_search_requests``, OpenAI Responses'
    ``web_search_call`` items, Gemini's Google Search grounding (distinct queries on
    Gemini 3, one per grounded prompt on Gemini 1.x / 2.x).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    web_search_requests: int = 0

    # Gemini sends usage on every event, so a Usage is made per event there: written
    # through the slots' descriptors (as Chunk's) its constructor takes ~40 % less time
    # than the one dataclass generates (object.__setattr__ per field). Same signature.
    def __init__(
        self,
        input_tokens: int = 0,
        output_tokens: int = 0,
        total_tokens: int = 0,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        cache_write_tokens: int = 0,
        web_search_requests: int = 0,
    ) -> None:
        _set_input(self, input_tokens)
        _set_output(self, output_tokens)
        _set_total(self, total_tokens)
        _set_cached(self, cached_tokens)
        _set_reasoning(self, reasoning_tokens)
        _set_cache_write(self, cache_write_tokens)
        _set_web_searches(self, web_search_requests)

    @classmethod
    def of(
        cls,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        total_tokens: int | None = None,
        cached_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        web_search_requests: int | None = None,
    ) -> Usage:
        """Normalise provider counts, any of which may be missing, into a ``Usage``."""
        inp = int(input_tokens or 0)
        out = int(output_tokens or 0)
        total = int(total_tokens) if total_tokens else inp + out
        return cls(
            inp,
            out,
            total,
            int(cached_tokens or 0),
            int(reasoning_tokens or 0),
            int(cache_write_tokens or 0),
            int(web_search_requests or 0),
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.total_tokens + other.total_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.web_search_requests + other.web_search_requests,
        )

    def to_dict(self) -> dict[str, int]:
        """A JSON-ready dict of the counts."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "web_search_requests": self.web_search_requests,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return cls(**{k: int(data.get(k, 0) or 0) for k in cls.__dataclass_fields__})

    @classmethod
    def problem(cls, data: object) -> str | None:
        """Why ``data`` is not a usage :meth:`from_dict` can read exactly (an object whose
        counts are whole numbers a database column holds: 0 to 2**63 - 1); None if it is."""
        if not isinstance(data, Mapping):
            return f"usage must be an object, not {type(data).__name__}"
        for key in cls.__dataclass_fields__:
            count = data.get(key)
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**63
            ):
                what = "searches" if key == "web_search_requests" else "tokens"
                return f"usage.{key} must be a count of {what}, not {count!r}"
        return None


_set_input = Usage.__dict__["input_tokens"].__set__
_set_output = Usage.__dict__["output_tokens"].__set__
_set_total = Usage.__dict__["total_tokens"].__set__
_set_cached = Usage.__dict__["cached_tokens"].__set__
_set_reasoning = Usage.__dict__["reasoning_tokens"].__set__
_set_cache_write = Usage.__dict__["cache_write_tokens"].__set__
_set_web_searches = Usage.__dict__["web_search_requests"].__set__


class _ChunkFields:
    # Chunk's slots, held by a base it shares with _ChunkSlots (see there): a shell's
    # ``__class__`` switch then finds both classes' layouts are this one class's, without
    # comparing the two classes' slot names one by one (~220 instructions a chunk).
    __slots__ = (
        "finish_reason",
        "id",
        "index",
        "kind",
        "metadata",
        "name",
        "response_id",
        "text",
        "usage",
    )


@dataclass(frozen=True, slots=True, init=False)
class Chunk(_ChunkFields):
    """One normalised streaming event.

    ``metadata`` carries provider extras that must survive a round trip: thinking
    signatures (``signature``), redacted thinking (``redacted``), Gemini thought signatures
    (``thought_signature``), Responses item ids (``item_id``).
    """

    kind: ChunkKind
    text: str = ""
    index: int = 0
    id: str | None = None
    name: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    response_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    # One Chunk is built per provider event, so its constructor is on every stream's hot
    # path. The one dataclass generates for a frozen class calls object.__setattr__ per
    # field (about 2 us a chunk, a fifth of a fast-path event); writing the slots through
    # their descriptors takes half that. Same signature, same values.
    def __init__(
        self,
        kind: ChunkKind,
        text: str = "",
        index: int = 0,
        id: str | None = None,
        name: str | None = None,
        usage: Usage | None = None,
        finish_reason: str | None = None,
        response_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        _set_kind(self, kind)
        _set_text(self, text)
        _set_index(self, index)
        _set_id(self, id)
        _set_name(self, name)
        _set_usage(self, usage)
        _set_finish_reason(self, finish_reason)
        _set_response_id(self, response_id)
        _set_metadata(self, {} if metadata is None else metadata)


def _slot_setter(name: str) -> Any:
    return _ChunkFields.__dict__[name].__set__


_set_kind = _slot_setter("kind")
_set_text = _slot_setter("text")
_set_index = _slot_setter("index")
_set_id = _slot_setter("id")
_set_name = _slot_setter("name")
_set_usage = _slot_setter("usage")
_set_finish_reason = _slot_setter("finish_reason")
_set_response_id = _slot_setter("response_id")
_set_metadata = _slot_setter("metadata")


# The readers' per-event path: ``Chunk(...)`` costs ~8,100 instructions (callgrind), most of
# them in the nine descriptor calls (a method-wrapper call builds an argument tuple each
# time) and in calling a Python __init__ from C. A plain class with the same slots is
# written with the interpreter's own slot stores, and the object then becomes a Chunk:
# CPython lets ``__class__`` change between classes of the same layout (same slots, same
# base). The result is an ordinary Chunk, equal to the one ``Chunk(...)`` makes; ~2,900.
class _ChunkSlots(_ChunkFields):
    """A shell of :class:`Chunk`'s layout: a reader on its hottest path fills all nine
    slots itself and sets ``__class__ = Chunk`` (as :func:`new_chunk` does, without the
    call: ~600 instructions less a chunk)."""

    __slots__ = ()
    kind: ChunkKind
    text: str
    index: int
    id: str | None
    name: str | None
    usage: Usage | None
    finish_reason: str | None
    response_id: str | None
    metadata: Mapping[str, Any]


ChunkShell = _ChunkSlots
"""For a reader that makes a chunk per event (see :class:`_ChunkSlots`)."""


class _UsageSlots:
    __slots__ = Usage.__slots__
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int
    web_search_requests: int


def new_chunk(
    kind: ChunkKind,
    text: str = "",
    index: int = 0,
    id: str | None = None,
    name: str | None = None,
    usage: Usage | None = None,
    finish_reason: str | None = None,
    response_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Chunk:
    """``Chunk(kind, text, ...)`` (the same arguments, the same value), made cheaper."""
    c = _ChunkSlots()
    c.kind = kind
    c.text = text
    c.index = index
    c.id = id
    c.name = name
    c.usage = usage
    c.finish_reason = finish_reason
    c.response_id = response_id
    c.metadata = {} if metadata is None else metadata
    c.__class__ = Chunk  # type: ignore[assignment]
    return c  # type: ignore[return-value]


def new_usage(
    input_tokens: int = 0,
    output_tokens: int = 0,
    total_tokens: int = 0,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    cache_write_tokens: int = 0,
    web_search_requests: int = 0,
) -> Usage:
    """``Usage(...)`` (the same arguments, the same value), made as :func:`new_chunk` is
    (Gemini sends usage on every event)."""
    u = _UsageSlots()
    u.input_tokens = input_tokens
    u.output_tokens = output_tokens
    u.total_tokens = total_tokens
    u.cached_tokens = cached_tokens
    u.reasoning_tokens = reasoning_tokens
    u.cache_write_tokens = cache_write_tokens
    u.web_search_requests = web_search_requests
    u.__class__ = Usage  # type: ignore[assignment]
    return u  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call: ``arguments`` parsed, ``raw`` exactly as the model sent it.

    ``arguments`` is ``{}`` for an empty ``raw``; ``error`` says why ``raw`` did not parse
    to a JSON object (a cut stream, a model that wrote bad JSON).
    """

    id: str
    name: str
    arguments: Mapping[str, Any]
    raw: str = ""
    index: int = 0
    error: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(
        cls,
        id: str,
        name: str,
        raw: str,
        index: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> ToolCall:
        """Build a call from its raw argument string, recording (not raising) a parse error."""
        arguments: Mapping[str, Any] = {}
        error = None
        if raw.strip():
            try:
                parsed = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                # RecursionError: nesting deeper than the decoder's limit ("[[[[...").
                error = f"invalid JSON arguments: {exc}"
            else:
                if isinstance(parsed, dict):
                    arguments = parsed
                else:
                    error = f"arguments must be a JSON object, got {type(parsed).__name__}"
        return cls(id, name, arguments, raw, index, error, dict(metadata or {}))


@dataclass(frozen=True, slots=True)
class Reply:
    """The reduction of a chunk stream: what one model response said.

    ``parsed`` is the validated object of a structured-output call (``cw.call(schema=...)``:
    a pydantic model instance, or the JSON value for a dict schema); None otherwise.
    """

    text: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None
    finish_reason: str | None = None
    response_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    parsed: Any = None


class _CallParts:
    __slots__ = ("fresh", "id", "metadata", "name", "parts")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.parts: list[str] = []
        self.fresh = 0
        self.metadata: dict[str, Any] = {}


class _ThinkingBlock:
    __slots__ = ("redacted", "signature", "spans")

    def __init__(self) -> None:
        # Where the block's text is in the reply's thinking: flat (start, end) character
        # pairs, one pair for each run of its deltas (nearly always one); the open block's
        # last pair has no end yet (the thinking's end). The text itself is the builder's
        # thinking: held apart, a long reasoning was held twice while it streamed.
        self.spans: list[int] = []
        self.signature: str | None = None
        self.redacted: str | None = None


_SHAPES = count(1)
"""Each new shape of a builder's parts (:meth:`ReplyBuilder._reshape`): ``next`` is one
atomic step, so two threads never make the same one."""
_NOT_KNOWN = (0, 0, 0)
"""A read that knows nothing of the parts (shape 0 is no builder's)."""

_COALESCE = 256
"""Deltas kept as separate strings before they are joined into one block.

A str object costs about 50 bytes beyond its characters, so a long reply held as
token-sized deltas would take several times its own size (about 9x for 10-character
deltas, measured by benchmarks/bench_memory.py). Joining every run of deltas once keeps
the builder O(n) and near 1x the text.
"""

_TEXT = ChunkKind.TEXT


def _coalesce(parts: list[str]) -> None:
    # The last _COALESCE entries are fresh deltas; earlier ones are blocks already joined.
    block = "".join(parts[-_COALESCE:])
    del parts[-_COALESCE:]
    parts.append(block)


def _joined(parts: Sequence[str]) -> str:
    """The text of ``parts``, which then become that one string.

    Keeping the result in place frees the pieces now and makes the next join (a running
    snapshot, the next checkpoint) one copy instead of a walk over every delta. Only the
    parts present at the start are replaced, so a delta appended meanwhile is kept.
    """
    n = len(parts)
    if n > 1:
        joined = "".join(parts[:n])
        if isinstance(parts, list):  # (a builder's empty parts are a tuple)
            parts[:n] = [joined]
        return joined
    return parts[0] if n else ""


def _block_text(block: _ThinkingBlock, thinking: str) -> str:
    spans = block.spans
    if len(spans) % 2:
        spans = [*spans, len(thinking)]  # the open block: to the end
    if spans == [0, len(thinking)]:
        return thinking  # every delta is in this block: the same text, not a copy
    return "".join([thinking[spans[i] : spans[i + 1]] for i in range(0, len(spans), 2)])


def _drop(parts: list[str], drop: int) -> bool:
    """Drop the first ``drop`` characters of ``parts``; False if there were none to drop."""
    if drop <= 0:
        return False
    i = n = 0
    while i < len(parts) and n + len(parts[i]) <= drop:
        n += len(parts[i])
        i += 1
    if n < drop:  # the cut falls inside a block: keep its rest (at most a block)
        parts[i] = parts[i][drop - n :]
    del parts[:i]
    return True


def _tail(parts: Sequence[str], start: int, limit: int | None = None) -> tuple[str, int]:
    """The text of ``parts`` from character ``start`` on, at most ``limit`` characters of
    it (None: all), and the text's whole length.

    O(the text taken + the number of parts): a checkpoint takes only what is new, joined
    from the blocks it is in only. ``parts`` is copied first (one atomic step), so a join in
    place (:func:`_joined`) running meanwhile on another thread changes nothing here. One C
    pass over the parts' running lengths and two bisections find where the text taken
    starts and stops: every periodic write of every streaming reply comes here, where a
    Python walk over the deltas since the last write was ~430 bytecodes a reply a tick
    (docs/benchmarks.md, "a tick's per-reply work").
    """
    if len(parts) <= 1:
        whole = parts[0] if parts else ""
        if limit is not None:
            return whole[start : start + limit], len(whole)
        return (whole[start:] if start else whole), len(whole)
    parts = list(parts)
    ends = list(accumulate(map(len, parts)))
    end = ends[-1]
    stop = end if limit is None or end - start <= limit else start + limit
    if start >= stop:
        return "", end
    i = bisect_right(ends, start)  # the part the text taken starts in
    j = bisect_left(ends, stop, i)  # the part it stops in
    pos = ends[i - 1] if i else 0
    if i == j:
        return parts[i][start - pos : stop - pos], end
    last = parts[j][: stop - ends[j - 1]]  # (the part itself, not a copy, when it is whole)
    return "".join([parts[i][start - pos :], *parts[i + 1 : j], last]), end


class ReplyBuilder:
    """Folds chunks into a :class:`Reply` in O(n): deltas are kept as lists, joined on build.

    This is the one tool-call-fragment assembler every provider and operator shares: calls
    are keyed by ``Chunk.index``; the first fragment (or any, for providers that repeat it)
    brings ``id``/``name``, every fragment's ``text`` is an argument piece.

    A stream of several rounds (a tool loop: ``DONE`` ends each round) is folded as one
    reply: providers number each round's calls and thinking blocks from 0 again, so a
    round's indices go on after the previous round's (a round's calls stay calls of their
    own), and the usage is every round's summed, as the store counts it.
    """

    __slots__ = (
        "_alarm",
        "_alarm_at",
        "_base",
        "_calls",
        "_done_at",
        "_earlier_blocks",
        "_earlier_calls",
        "_earlier_usage",
        "_finish_reason",
        "_metadata",
        "_response_id",
        "_shape",
        "_text",
        "_text_fresh",
        "_text_gone",
        "_text_known",
        "_thinking",
        "_thinking_blocks",
        "_thinking_fresh",
        "_thinking_gone",
        "_thinking_known",
        "_thinking_open",
        "_unwritten",
        "_usage",
        "chunks",
    )

    def __init__(self) -> None:
        self._text: list[str] = []
        self._text_fresh = 0  # deltas at the end of _text not yet coalesced
        # What a checkpoint's read of the text (thinking) last found, (shape, parts,
        # length): the first ``parts`` of it hold ``length`` characters while the parts
        # are only appended to, which :meth:`_reshape` (a join, a let-go, a rewind) ends.
        self._shape = 0
        self._text_known = self._thinking_known = _NOT_KNOWN
        self._text_gone = 0  # characters let go from the front of the text (let_go_text)
        # Empty tuples until a reply has reasoning (a tool round before): most replies
        # never do, and three lists made for each were three more objects the cyclic
        # collector tracks while it streams (docs/benchmarks.md, many streams).
        self._thinking: list[str] | tuple[()] = ()
        self._thinking_fresh = 0
        self._thinking_gone = 0  # characters let go from the front (let_go_thinking)
        self._thinking_open: _ThinkingBlock | None = None  # the block deltas go to now
        self._thinking_blocks: dict[int, _ThinkingBlock] = {}
        self._calls: dict[int, _CallParts] = {}  # this round's, by the provider's index
        # The rounds before (a tool loop), by their index in the reply; the current round's
        # indices start at _base, past theirs.
        self._earlier_calls: Sequence[tuple[int, _CallParts]] = ()
        self._earlier_blocks: Sequence[tuple[int, _ThinkingBlock]] = ()
        self._base = 0
        self._usage: Usage | None = None  # the current round's latest
        self._earlier_usage: Usage | None = None  # the rounds before, summed
        self._finish_reason: str | None = None
        self._response_id: str | None = None
        self._metadata: dict[str, Any] = {}
        self.chunks = 0
        """How many chunks have been added."""
        self._done_at = -1  # self.chunks when the last DONE was added
        # Called once every _alarm_at characters of text and thinking (counted as deltas
        # are joined into blocks, off the per-delta path): the persister writes a long
        # reply as it grows (set_alarm).
        self._alarm: Callable[[], None] | None = None
        self._alarm_at = 0
        self._unwritten = 0

    def set_alarm(self, alarm: Callable[[], None] | None, every: int) -> None:
        """Call ``alarm`` each time another ``every`` characters of text and thinking were
        added (seen as deltas are joined into blocks: late by at most a block)."""
        self._alarm = alarm
        self._alarm_at = every
        self._unwritten = 0

    def _sound(self, block: str) -> None:
        self._unwritten += len(block)
        if self._unwritten >= self._alarm_at and self._alarm is not None:
            self._unwritten = 0
            self._alarm()

    def ends_at_done(self) -> bool:
        """Whether the last chunk added was a round's ``DONE``."""
        return self._done_at == self.chunks

    def has_calls(self) -> bool:
        """Whether any tool call was added (this round's or an earlier one's)."""
        return bool(self._calls or self._earlier_calls)

    def shows_anything(self) -> bool:
        """Whether it holds anything but usage: text, reasoning, a tool call, an end."""
        return bool(
            self._text
            or self._text_gone
            or self._thinking
            or self._thinking_gone
            or self._thinking_blocks
            or self._calls
            or self._earlier_calls
            or self._earlier_blocks
            or self._finish_reason is not None
        )

    def take_usage(self) -> Usage | None:
        """The usage folded in so far, taken out (the builder holds none after): an attempt
        sent again reports its own, which a later USAGE chunk would otherwise replace."""
        usage = self.usage
        self._usage = self._earlier_usage = None
        return usage

    def add(self, chunk: Chunk) -> None:
        """Fold one chunk in.

        The sync driver's untimed loop (``streaming._SyncDriver._advance``) holds a copy of
        the TEXT branch short of a block's join, for a chunk without metadata: change both."""
        self.chunks += 1
        kind = chunk.kind
        if kind is _TEXT:  # a module global: an attribute of the enum class is slower
            text = chunk.text
            if text:
                self._text.append(text)
                self._text_fresh += 1
                if self._text_fresh == _COALESCE:
                    self._reshape()
                    _coalesce(self._text)
                    self._reshape()
                    self._text_fresh = 0
                    if self._alarm is not None:
                        self._sound(self._text[-1])
            if chunk.metadata:
                self._metadata.update(chunk.metadata)
        elif kind is ChunkKind.THINKING:
            block = self._thinking_blocks.get(chunk.index)
            if block is None:
                block = self._thinking_blocks[chunk.index] = _ThinkingBlock()
            if chunk.text:
                if block is not self._thinking_open:
                    self._open_span(block)
                parts = self._thinking
                if not parts:
                    parts = self._thinking = []
                parts.append(chunk.text)
                self._thinking_fresh += 1
                if self._thinking_fresh == _COALESCE:
                    self._reshape()
                    _coalesce(parts)
                    self._reshape()
                    self._thinking_fresh = 0
                    if self._alarm is not None:
                        self._sound(parts[-1])
            meta = chunk.metadata
            if meta:
                if "signature" in meta:
                    block.signature = (block.signature or "") + str(meta["signature"])
                if "redacted" in meta:
                    block.redacted = str(meta["redacted"])
        elif kind is ChunkKind.TOOL_CALL:
            call = self._calls.get(chunk.index)
            if call is None:
                call = self._calls[chunk.index] = _CallParts()
            if chunk.id and call.id is None:
                call.id = chunk.id
            if chunk.name and call.name is None:
                call.name = chunk.name
            if chunk.text:
                call.parts.append(chunk.text)
                call.fresh += 1
                if call.fresh == _COALESCE:
                    _coalesce(call.parts)
                    call.fresh = 0
            if chunk.metadata:
                call.metadata.update(chunk.metadata)
        elif kind is ChunkKind.USAGE:
            if chunk.usage is not None:
                self._usage = chunk.usage
        elif kind is ChunkKind.DONE:
            if chunk.finish_reason is not None:
                self._finish_reason = chunk.finish_reason
            if chunk.response_id is not None:
                self._response_id = chunk.response_id
            if chunk.usage is not None:
                self._usage = chunk.usage
            if chunk.metadata:
                self._metadata.update(chunk.metadata)
            self._end_round()
            self._done_at = self.chunks
        elif kind is ChunkKind.REWIND:
            self._rewind(chunk)

    def _end_round(self) -> None:
        """A round ended (once per round, off the per-delta path): its calls and thinking
        blocks are set aside at their index in the reply, the next round's start past them,
        and its usage is added to the rounds' before."""
        calls, blocks = self._calls, self._thinking_blocks
        if calls or blocks:
            for index, call in calls.items():
                if call.id is None:  # the id the store gives it: its index in its round
                    call.id = f"call_{index}"
            self._earlier_calls = self._all_calls()
            self._earlier_blocks = self._all_blocks()
            self._base += max(max(calls, default=-1), max(blocks, default=-1)) + 1
            self._calls = {}
            self._thinking_blocks = {}
        if self._usage is not None:
            self._earlier_usage = (
                self._usage if self._earlier_usage is None else self._earlier_usage + self._usage
            )
            self._usage = None

    def _all_calls(self) -> list[tuple[int, _CallParts]]:
        """Every call so far in order, with its index in the reply."""
        base = self._base
        current = [(base + index, call) for index, call in sorted(self._calls.items())]
        return [*self._earlier_calls, *current] if self._earlier_calls else current

    def _all_blocks(self) -> list[tuple[int, _ThinkingBlock]]:
        """Every thinking block so far in order, with its index in the reply."""
        base = self._base
        current = [(base + index, b) for index, b in sorted(self._thinking_blocks.items())]
        return [*self._earlier_blocks, *current] if self._earlier_blocks else current

    def _open_span(self, block: _ThinkingBlock) -> None:
        """Deltas now go to ``block``: close the open span at the thinking's length, open
        ``block``'s there (once per change of block, not per delta)."""
        at = self._thinking_gone + sum(map(len, self._thinking))
        if self._thinking_open is not None:
            self._thinking_open.spans.append(at)
        block.spans.append(at)
        self._thinking_open = block

    def _rewind(self, chunk: Chunk) -> None:
        """Cut the text back to ``chunk.index`` characters of the reply (thinking to its
        metadata's), counted from its start, what was let go of included
        (:meth:`let_go_text`). Back past what was let go of it raises
        :class:`~rxcontext.RewindRefused`, changing nothing (the chunk not counted)."""
        keep = max(0, chunk.index)
        cut_text = keep < self.text_length()
        asked = chunk.metadata.get("thinking")
        thinking_keep = max(0, asked) if isinstance(asked, int) else self.thinking_length()
        cut_thinking = thinking_keep < self.thinking_length()
        if (cut_text and keep < self._text_gone) or (
            cut_thinking and thinking_keep < self._thinking_gone
        ):
            self.chunks -= 1
            raise RewindRefused(
                f"a REWIND to text {chunk.index}"
                + (f", thinking {asked}" if cut_thinking else "")
                + f" goes back past what the builder let go of (text {self._text_gone},"
                f" thinking {self._thinking_gone} characters)"
            )
        if cut_text:
            text = self.text
            held = keep - self._text_gone
            self._reshape()
            self._text[:] = [text[:held]] if held else []
            self._reshape()
        if cut_thinking:
            thinking = self.thinking
            held = thinking_keep - self._thinking_gone
            self._reshape()
            self._thinking = [thinking[:held]] if held else ()
            self._reshape()
            self._thinking_blocks.clear()
            self._earlier_blocks = []
            self._thinking_open = None

    def _reshape(self) -> None:
        """The text's or thinking's parts change other than by an append: what a read of
        them knew (:meth:`_from`) no longer holds. Called before the change and after it,
        so a read on another thread meanwhile neither uses nor keeps what it knew."""
        self._shape = next(_SHAPES)

    @property
    def text(self) -> str:
        """The text so far."""
        self._text_fresh = 0
        return self._read_parts(self._text)

    @property
    def thinking(self) -> str:
        """The reasoning text so far."""
        self._thinking_fresh = 0
        return self._read_parts(self._thinking)

    def _read_parts(self, parts: Sequence[str]) -> str:
        """``parts`` joined in place (:func:`_joined`), its shape change noted around the
        join when there is one to make."""
        if len(parts) < 2:
            return _joined(parts)
        self._reshape()
        joined = _joined(parts)
        self._reshape()
        return joined

    def text_from(self, start: int, limit: int | None = None) -> tuple[str, int]:
        """The text from character ``start`` on, and the whole text's length (for a
        checkpoint that holds the first ``start`` characters already); ``limit``: at most
        that many characters of it (joined from the blocks they are in only), for a
        checkpoint written a bounded part at a time."""
        gone = self._text_gone
        text, end = self._from(False, start - gone, limit)
        return text, end + gone

    def text_slice(self, start: int, limit: int) -> str:
        """At most ``limit`` characters of the text from character ``start`` on
        (:meth:`text_from`)."""
        return self.text_from(start, limit)[0]

    def text_length(self) -> int:
        """The text's length so far (let go of or not)."""
        return self._text_gone + sum(map(len, self._text))

    def let_go_text(self, upto: int) -> None:
        """Let go of the text's first ``upto`` characters (a checkpoint holds them: the
        persister commits a long reply from there, :mod:`rxcontext.persist`). Afterwards
        :attr:`text` and :meth:`build` hold only the rest, :attr:`text_gone` says how much
        went; :meth:`text_from` keeps counting from the reply's start."""
        self._reshape()
        dropped = _drop(self._text, upto - self._text_gone)
        self._reshape()
        if dropped:
            self._text_fresh = min(self._text_fresh, len(self._text))
            self._text_gone = upto

    @property
    def text_gone(self) -> int:
        """Characters of text let go (:meth:`let_go_text`): :attr:`text` starts after them."""
        return self._text_gone

    def held(self) -> int:
        """Characters of text and reasoning the builder holds."""
        return sum(map(len, self._text)) + sum(map(len, self._thinking))

    def thinking_from(self, start: int, limit: int | None = None) -> tuple[str, int]:
        """As :meth:`text_from`, for the reasoning text."""
        gone = self._thinking_gone
        if not self._thinking:  # (most replies: no reasoning)
            return "", gone
        thinking, end = self._from(True, start - gone, limit)
        return thinking, end + gone

    def _from(self, thinking: bool, start: int, limit: int | None) -> tuple[str, int]:
        """:func:`_tail` of the text's (the thinking's) parts; where the read before
        ended where this one starts and the parts were only appended to since (nearly
        every periodic write), only the parts appended since are measured and joined:
        a checkpoint's cost follows the new text, not every part the builder holds."""
        shape = self._shape
        parts = list(self._thinking if thinking else self._text)  # one atomic step
        known = self._thinking_known if thinking else self._text_known
        if not parts:
            return "", 0
        if self._shape != shape:  # reshaped while copied: the copy is whole, no more
            return _tail(parts, start, limit)
        at, counted, length = known
        text: str | None = None
        if at == shape and counted <= len(parts) and start == length:
            new = parts[counted:]
            end = length + sum(map(len, new))
            if limit is None or end - start <= limit:
                text = "".join(new)
        if text is None:
            text, end = _tail(parts, start, limit)
        if thinking:
            self._thinking_known = (shape, len(parts), end)
        else:
            self._text_known = (shape, len(parts), end)
        return text, end

    def thinking_slice(self, start: int, limit: int) -> str:
        """As :meth:`text_slice`, for the reasoning text."""
        return self.thinking_from(start, limit)[0]

    def thinking_length(self) -> int:
        """The reasoning's length so far (let go of or not)."""
        return self._thinking_gone + sum(map(len, self._thinking))

    def let_go_thinking(self, upto: int) -> None:
        """As :meth:`let_go_text`, for the reasoning text: afterwards :attr:`thinking` and
        :meth:`build` hold only the rest (thinking blocks keep where their text was)."""
        parts = self._thinking
        self._reshape()
        dropped = _drop(parts if parts else [], upto - self._thinking_gone)
        self._reshape()
        if dropped:
            self._thinking_fresh = min(self._thinking_fresh, len(self._thinking))
            self._thinking_gone = upto

    @property
    def thinking_gone(self) -> int:
        """Characters of reasoning let go (:meth:`let_go_thinking`)."""
        return self._thinking_gone

    def blocks_of(self, thinking: str, at: Callable[[int], int] = int) -> list[dict[str, Any]]:
        """The thinking blocks with their text, from ``thinking``: the whole reasoning as
        it was stored, where the builder's position ``p`` is ``at(p)`` (split surrogate
        pairs are one character there)."""
        out: list[dict[str, Any]] = []
        for _, block in self._all_blocks():
            if block.redacted is not None:
                out.append({"type": "redacted_thinking", "data": block.redacted})
            elif block.signature is not None:
                spans = block.spans
                if len(spans) % 2:
                    spans = [*spans, self.thinking_length()]
                text = "".join(
                    [thinking[at(spans[i]) : at(spans[i + 1])] for i in range(0, len(spans), 2)]
                )
                out.append({"type": "thinking", "thinking": text, "signature": block.signature})
        return out

    def spanned_blocks(self, at: Callable[[int], int] = int) -> list[dict[str, Any]] | None:
        """The thinking blocks as the store keeps them (``thinking_span`` for the text,
        :mod:`rxcontext.store._thinking`), worked out from where each block's deltas are
        rather than by finding its text: for a reasoning let go of. None when the store's
        own packing could give other spans (a block in several runs, or not starting where
        the block before it ended: its text might be found earlier), so the caller needs
        the whole reasoning for it. ``at``: as for :meth:`blocks_of`."""
        length = self.thinking_length()
        out: list[dict[str, Any]] = []
        end = 0
        for _, block in self._all_blocks():
            if block.redacted is not None:
                out.append({"type": "redacted_thinking", "data": block.redacted})
                continue
            if block.signature is None:
                continue
            spans = block.spans
            if len(spans) > 2:
                return None
            start, stop = (
                (at(spans[0]), at(spans[1] if len(spans) == 2 else length)) if spans else (end, end)
            )
            if start != end:
                return None
            end = stop
            out.append(
                {"type": "thinking", "thinking_span": [start, stop], "signature": block.signature}
            )
        return out

    @property
    def usage(self) -> Usage | None:
        """The usage so far: every ended round's, plus the current round's latest totals."""
        usage, earlier = self._usage, self._earlier_usage
        if earlier is None:
            return usage
        return earlier if usage is None else earlier + usage

    @property
    def response_id(self) -> str | None:
        """The provider's response id, once known."""
        return self._response_id

    @property
    def metadata(self) -> dict[str, Any]:
        """Provider extras so far (a copy)."""
        return dict(self._metadata)

    @property
    def has_metadata(self) -> bool:
        """Whether any provider extras were folded in (no copy made)."""
        return bool(self._metadata)

    def tool_fragments(self) -> list[dict[str, Any]]:
        """Tool calls so far as plain dicts (possibly incomplete arguments), for checkpoints."""
        if not self._calls and not self._earlier_calls:
            return []
        return [
            {
                "index": index,
                "id": call.id,
                "name": call.name,
                "arguments": "".join(call.parts),
                "metadata": dict(call.metadata),
            }
            for index, call in self._all_calls()
        ]

    def build(self, *, text: bool = True, thinking: bool = True) -> Reply:
        """The :class:`Reply` of everything added so far (``text=False``: its text left
        out, and not joined; ``thinking=False``: its reasoning and thinking blocks)."""
        base = self._base  # a call with no id: the store's id, its index in its round
        calls = tuple(
            ToolCall.parse(
                call.id or f"call_{index - base}",
                call.name or "",
                _joined(call.parts),
                index,
                call.metadata,
            )
            for index, call in self._all_calls()
        )
        metadata = dict(self._metadata)
        reasoning = self.thinking if thinking else ""
        blocks = self._blocks(reasoning) if thinking else []
        if blocks:
            metadata["thinking_blocks"] = blocks
        return Reply(
            text=self.text if text else "",
            thinking=reasoning,
            tool_calls=calls,
            usage=self.usage,
            finish_reason=self._finish_reason,
            response_id=self._response_id,
            metadata=metadata,
        )

    def thinking_blocks(self) -> list[dict[str, Any]]:
        """Thinking blocks in order, with the signatures a provider needs back unchanged.

        Only blocks that carry a signature or redacted data are listed: plain reasoning
        text (OpenAI-compatible ``reasoning_content``) is kept in ``Reply.thinking`` alone.
        """
        return self._blocks(self.thinking) if self._thinking_blocks or self._earlier_blocks else []

    def _blocks(self, thinking: str) -> list[dict[str, Any]]:
        # A block holding every thinking delta shares the joined thinking text (one copy
        # of a long reasoning, not two).
        out: list[dict[str, Any]] = []
        for _, block in self._all_blocks():
            if block.redacted is not None:
                out.append({"type": "redacted_thinking", "data": block.redacted})
            elif block.signature is not None:
                out.append(
                    {
                        "type": "thinking",
                        "thinking": _block_text(block, thinking),
                        "signature": block.signature,
                    }
                )
        return out
