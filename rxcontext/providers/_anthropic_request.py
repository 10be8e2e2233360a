"""Anthropic Messages API: records → the ``messages.create`` request.

:func:`build_messages` gives ``system`` and ``messages`` as dicts (for clients whose requests
others may rewrite: Bedrock, Vertex, middleware, tracing); :class:`AnthropicHistory` gives
the same ``messages`` as the JSON the SDK would send, from records encoded once, and
:func:`splicing` says whether a client can take it (see :mod:`._history`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anthropic

from ..records import Record, RecordType, tool_failed
from ._attachments import anthropic_blocks
from ._history import HistoryCache, compact_json
from ._stainless import given

try:  # the SDK's own body preparation and encoder, so spliced bodies match it exactly
    from anthropic._utils._json import openapi_dumps
    from anthropic._utils._prepare import prepare_request_data
except ImportError:  # pragma: no cover - another SDK layout: requests use dicts
    openapi_dumps = prepare_request_data = None  # type: ignore[assignment]

__all__ = [
    "MAX_BREAKPOINTS",
    "AnthropicHistory",
    "build_messages",
    "encode_body",
    "history_tools",
    "last_block_cacheable",
    "mark_cache",
    "mark_last_message",
    "mark_last_message_json",
    "sdk_kwargs",
    "splicing",
]

_USER = "user"
_ASSISTANT = "assistant"


def _thinking_blocks(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks = metadata.get("thinking_blocks") or ()
    return [
        dict(b)
        for b in blocks
        if isinstance(b, Mapping) and b.get("type") in ("thinking", "redacted_thinking")
    ]


def _tool_input(raw: str) -> Any:
    # A call whose arguments were cut (max_tokens) cannot be sent back as written; the
    # API needs an object, so it goes back empty.
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _blocks(record: Record) -> tuple[str | None, list[dict[str, Any]]]:
    """The role and content blocks a record adds (role None: a system prompt, or not sent)."""
    kind = record.type
    if kind is RecordType.PROMPT:
        # Images and documents before the text, as Anthropic advises.
        blocks = anthropic_blocks(record.attachments) if record.attachments else []
        if record.content:
            blocks.append({"type": "text", "text": record.content})
        return _USER, blocks
    if kind is RecordType.MODEL_RESP:
        blocks = _thinking_blocks(record.metadata)
        # Anthropic refuses a text block of whitespace only ("text content blocks must
        # contain non-whitespace text"); some models open a reply with one ("\n\n").
        if record.content and not record.content.isspace():
            blocks.append({"type": "text", "text": record.content})
        return _ASSISTANT, blocks
    if kind is RecordType.TOOL_CALL:
        block = {
            "type": "tool_use",
            "id": record.tool_call_id,
            "name": record.tool_name,
            "input": _tool_input(record.content),
        }
        return _ASSISTANT, [block]
    if kind is RecordType.TOOL_OUTPUT:
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": record.tool_call_id,
            "content": record.content,
        }
        if tool_failed(record):  # else the model reads the error as the tool's result
            result["is_error"] = True
        return _USER, [result]
    return None, []


def build_messages(records: Iterable[Record]) -> tuple[str, list[dict[str, Any]]]:
    """The ``system`` text and ``messages`` for ``records``.

    A MODEL_RESP becomes its thinking blocks (from ``metadata["thinking_blocks"]``,
    unchanged and in order), then its text (unless empty or whitespace only, which the API
    refuses: such a reply with no thinking adds nothing, as an empty one); the TOOL_CALLs
    after it add ``tool_use`` blocks to the same assistant turn. TOOL_OUTPUTs become ``tool_result``
    blocks of a user turn. Consecutive turns of one role are merged, as the API requires.
    """
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for record in records:
        if record.type is RecordType.SYSTEM_PROMPT:
            if record.content:
                system.append(record.content)
            continue
        role, blocks = _blocks(record)
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return "\n\n".join(system), messages


def history_tools(records: Iterable[Record]) -> list[dict[str, Any]]:
    """``tools`` for a request that offers none over ``records``: one entry per tool the
    history's calls and outputs name (first seen first, with an empty object schema), or
    none if the history has no tool round.

    Anthropic refuses a request whose messages hold ``tool_use`` or ``tool_result`` blocks
    and that defines no tools (anthropic-sdk-python#494); the request declaring these sends
    ``tool_choice`` none with them, so the model calls none of them.
    """
    names: dict[str, None] = {}
    rounds = False
    for record in records:
        if record.type in (RecordType.TOOL_CALL, RecordType.TOOL_OUTPUT):
            rounds = True
            if record.tool_name:
                names[record.tool_name] = None
    if not rounds:
        return []
    return [
        {"name": name, "input_schema": {"type": "object", "properties": {}}}
        for name in names or ("tool",)
    ]


_OPEN = {role: compact_json({"role": role, "content": []})[:-2] for role in (_USER, _ASSISTANT)}
_CLOSE = b"]}"


class _Entry:
    """A record's role and encoded blocks (``json``: the blocks joined by commas, or empty),
    and ``message``: the message these blocks make alone."""

    __slots__ = ("json", "message", "role", "system")

    def __init__(self, record: Record) -> None:
        self.system = record.content if record.type is RecordType.SYSTEM_PROMPT else None
        role, blocks = _blocks(record)
        self.role = role
        self.json = b",".join(compact_json(block) for block in blocks)
        self.message = b"".join((_OPEN[role], self.json, _CLOSE)) if role and blocks else b""


class AnthropicHistory:
    """``(system, messages)`` with ``messages`` as JSON bytes, from records encoded once."""

    __slots__ = ("cache",)

    def __init__(self) -> None:
        self.cache: HistoryCache[_Entry] = HistoryCache(_Entry)

    def encode(self, records: Sequence[Record]) -> tuple[str, list[bytes]]:
        """What :func:`build_messages` gives, the messages as the SDK encodes them."""
        lookup = self.cache.lookup(records)
        entries = lookup.entries
        # Resume where the previous request's last message began, if its records are unchanged.
        resume = lookup.resume
        messages: list[bytes]
        system: list[str]
        if resume is not None and resume[0] < lookup.same:
            start, messages, system = resume[0], resume[1][: resume[2]], resume[3][: resume[4]]
        else:
            start, messages, system = 0, [], []
        append = messages.append
        mark = (start, len(messages), len(system))
        # The message being built: ``alone`` while it is one record's, ``merged`` once
        # records of the same role follow.
        alone: _Entry | None = None
        merged: list[bytes] | None = None
        for i in range(start, len(entries)):
            entry = entries[i]
            if entry.system:
                system.append(entry.system)
            if not entry.message:
                continue
            if alone is not None and entry.role is alone.role:
                if merged is None:
                    merged = [alone.json]
                merged.append(entry.json)
                continue
            if merged is not None:
                append(b"".join((_OPEN[alone.role], b",".join(merged), _CLOSE)))  # type: ignore[union-attr,index]
                merged = None
            elif alone is not None:
                append(alone.message)
            alone = entry
            mark = (i, len(messages), len(system))
        if merged is not None:
            append(b"".join((_OPEN[alone.role], b",".join(merged), _CLOSE)))  # type: ignore[union-attr,index]
        elif alone is not None:
            append(alone.message)
        self.cache.keep(lookup, (mark[0], messages, mark[1], system, mark[2]))
        return "\n\n".join(system), messages


# -- prompt caching ------------------------------------------------------------------------

MAX_BREAKPOINTS = 4
"""The most ``cache_control`` breakpoints Anthropic accepts in one request."""

_EPHEMERAL = {"type": "ephemeral"}
_MARK = b',"cache_control":' + compact_json(_EPHEMERAL)
_UNCACHEABLE = frozenset({"thinking", "redacted_thinking"})  # the API refuses a mark on them


def _breakpoints(value: Any) -> int:
    """How many ``cache_control`` marks ``value`` (a body part the user gave) holds already."""
    if isinstance(value, Mapping):
        own = 1 if value.get("cache_control") is not None else 0
        return own + sum(_breakpoints(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_breakpoints(v) for v in value)
    return 0


def mark_cache(body: dict[str, Any]) -> int:
    """Put ``cache_control`` breakpoints on ``body``'s tools (the last one) and system prompt
    (the last block; a string becomes one text block), and return how many breakpoints are
    left for the history (see :func:`mark_last_message`).

    Anthropic caches the request's prefix up to each breakpoint, in the order tools, system,
    messages, and takes at most :data:`MAX_BREAKPOINTS`: breakpoints the caller already put
    in ``params`` / ``options`` count, and a part that has one is not marked again.
    ``body["messages"]`` is not looked at (it may be the spliced history's stand-in).
    """
    left = MAX_BREAKPOINTS - sum(_breakpoints(v) for k, v in body.items() if k != "messages")
    tools = body.get("tools")
    if left > 0 and isinstance(tools, list) and tools and not _breakpoints(tools):
        last = tools[-1]
        if isinstance(last, Mapping):
            body["tools"] = [*tools[:-1], {**last, "cache_control": dict(_EPHEMERAL)}]
            left -= 1
    system = body.get("system")
    if left > 0 and system and not _breakpoints(system):
        if isinstance(system, str):
            body["system"] = [{"type": "text", "text": system, "cache_control": dict(_EPHEMERAL)}]
            left -= 1
        elif isinstance(system, list) and isinstance(system[-1], Mapping):
            body["system"] = [*system[:-1], {**system[-1], "cache_control": dict(_EPHEMERAL)}]
            left -= 1
    return max(left, 0)


def last_block_cacheable(records: Sequence[Record]) -> bool:
    """Whether the last block of the messages ``records`` make can take a breakpoint: there
    is one, and it is not a thinking block (the API refuses those)."""
    for record in reversed(records):
        if record.type is RecordType.SYSTEM_PROMPT:
            continue
        _, blocks = _blocks(record)
        if blocks:
            return blocks[-1]["type"] not in _UNCACHEABLE
    return False


def mark_last_message(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with a breakpoint on the last block of the last message (copies; the
    caller checked :func:`last_block_cacheable`): the whole history so far is the prefix
    the next request of the conversation reads from the cache."""
    last = messages[-1]
    content = last["content"]
    marked = {
        **last,
        "content": [*content[:-1], {**content[-1], "cache_control": dict(_EPHEMERAL)}],
    }
    return [*messages[:-1], marked]


def mark_last_message_json(messages: list[bytes]) -> list[bytes]:
    """:func:`mark_last_message` on the encoded messages of :class:`AnthropicHistory`: the
    bytes the SDK would encode for the marked dicts (the mark is the block's last key)."""
    last = messages[-1]
    assert last.endswith(b"}]}"), last[-16:]
    return [*messages[:-1], b"".join((last[:-3], _MARK, b"}]}"))]


def sdk_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """Move what ``messages.create`` has no keyword for (``temperature``, ``top_p``... in
    this SDK) into ``extra_body``, which the SDK merges into the JSON it sends."""
    global _CREATE_KEYWORDS
    if _CREATE_KEYWORDS is None:
        _CREATE_KEYWORDS = frozenset(
            inspect.signature(anthropic.resources.messages.Messages.create).parameters
        ) - {"self"}
    extra = {k: body.pop(k) for k in [k for k in body if k not in _CREATE_KEYWORDS]}
    if extra:
        body["extra_body"] = {**extra, **(body.get("extra_body") or {})}
    return body


_CREATE_KEYWORDS: frozenset[str] | None = None


def encode_body(body: Mapping[str, Any], extra_json: Mapping[str, Any] | None) -> bytes:
    """What the SDK sends for ``body`` and ``extra_body``: merged, prepared, encoded."""
    # The SDK strips NOT_GIVEN from extra_body's top level before it merges it (a NOT_GIVEN
    # over a body key leaves the body's value), and omit from the merged body.
    merged = {**body, **given(extra_json, anthropic.NotGiven)} if extra_json else body
    # The SDK's create passes every keyword not given as ``omit``: dropped here by their
    # exact type (cheaper than prepare_request_data's per-value isinstance, which still
    # drops any other Omit or NotGiven the same way).
    omitted = _OMIT
    merged = {k: v for k, v in merged.items() if type(v) is not omitted}
    return openapi_dumps(prepare_request_data(merged, location="body"))


_OMIT = anthropic.Omit


def splicing(client: anthropic.Anthropic | anthropic.AsyncAnthropic) -> bool:
    """Whether ``client`` may be sent a spliced body.

    Not subclasses (Bedrock, Vertex and AWS clients rewrite the body), nor clients with
    middleware (which may read or rewrite it), nor while OpenTelemetry may record the SDK's
    spans (which read the body): a client has a tracer whenever OpenTelemetry is installed,
    but its spans record only once a real tracer provider is set.
    """
    return (
        openapi_dumps is not None
        and type(client) in (anthropic.Anthropic, anthropic.AsyncAnthropic)
        and not client.middleware
        and (client._tracer is None or not _recording(client))
    )


def _recording(client: anthropic.Anthropic | anthropic.AsyncAnthropic) -> bool:
    # Asked per request (a tracer provider may be set at any time); OpenTelemetry's
    # provider getter and its two idle provider types are looked up once: an import
    # statement and a union type per request were ~2-4 µs of every Anthropic request.
    global _OTEL
    if _OTEL is None:
        try:
            from opentelemetry import trace
        except ImportError:  # pragma: no cover - a tracer implies OpenTelemetry
            return False
        _OTEL = (trace.get_tracer_provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    current, idle = _OTEL
    provider = client._open_telemetry.get("tracer_provider") or current()
    return not isinstance(provider, idle)


_OTEL: tuple[Any, tuple[type, ...]] | None = None
