"""OpenAI Responses API: records → ``input`` items, stream events → :class:`Chunk`.

Output items a later request must send back (reasoning items with ``encrypted_content``,
message items with their id and ``phase``, function-call item ids) are kept, in output
order, in the DONE chunk's metadata under :data:`OUTPUT_KEY`, and so in the MODEL_RESP
record's metadata. A reasoning item goes back only followed by the item it produced, sent
with its id (the API refuses it otherwise): one that produced an item not kept (a built-in
tool's call) is not kept; where that cannot be (a resumed reply's text is no message the
server made), the turn goes back as plain text and calls, with no item ids.
:meth:`ResponsesStream.sdk` reads the SDK's event objects, :meth:`ResponsesStream.fast` the
raw JSON dicts; both go through the same handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import httpx2
import openai

from ..chunks import Chunk, ChunkKind, Usage
from ..errors import ProviderError
from ..records import Checkpoint, Record, RecordType
from ._attachments import responses_parts
from ._common import (
    READ_ERRORS,
    BadEvent,
    bad_field,
    incomplete_stream,
    int_field,
    malformed_event,
    provider_error,
    request_secrets,
    scrub,
    str_field,
)
from ._history import HistoryCache, compact_json
from ._openai_chat import (
    PROVIDER,
    REFUSAL_KEY,
    REFUSED,
    RETRYABLE_ERRORS,
    refusal_chunk,
    sdk_model,
    sent_arguments,
    turns,
)
from .base import NATIVE_RESUME_KEY, ResumeCursor

__all__ = [
    "BACKGROUND",
    "OUTPUT_KEY",
    "ResponsesHistory",
    "ResponsesStream",
    "background_point",
    "response_chunks",
    "responses_input",
]

OUTPUT_KEY = "openai_responses_output"
"""Reply/record metadata key: the response's output items needed for a stateless round trip."""

BACKGROUND = "openai-responses"
"""``provider`` of the native-resume points this module writes and reads."""

_STARTS = frozenset({"response.created", "response.queued"})

_RETRYABLE_CODES = RETRYABLE_ERRORS | {"vector_store_timeout"}
_THINKING_DELTAS = frozenset(
    {"response.reasoning_summary_text.delta", "response.reasoning_text.delta"}
)


def _texts(parts: Any, kind: str | None, name: str) -> list[str]:
    """The ``text`` of each part (of type ``kind``, if given) of a raw item's part list."""
    texts: list[str] = []
    for part in parts or ():
        if kind is None or part.get("type") == kind:
            texts.append(str_field(part.get("text", ""), name) or "")
    return texts


def kept_item(item: Mapping[str, Any]) -> dict[str, Any] | None:
    """The round-trip form of one output item (raw dict), or ``None`` if none is needed.

    A kept value of the wrong type raises :class:`BadEvent`: it would go back to the API.
    """
    kind = item.get("type")
    if kind == "reasoning":
        kept: dict[str, Any] = {"type": "reasoning", "id": str_field(item.get("id"), "item.id")}
        kept["summary"] = [
            {"type": "summary_text", "text": text}
            for text in _texts(item.get("summary"), None, "summary[].text")
        ]
        if item.get("encrypted_content") is not None:
            kept["encrypted_content"] = str_field(
                item["encrypted_content"], "item.encrypted_content"
            )
        content = [
            {"type": "reasoning_text", "text": text}
            for text in _texts(item.get("content"), "reasoning_text", "content[].text")
        ]
        if content:
            kept["content"] = content
        return kept
    if kind == "message":
        text = "".join(_texts(item.get("content"), "output_text", "content[].text"))
        kept = {"type": "message", "id": str_field(item.get("id"), "item.id"), "text": text}
        refusal = "".join(
            str_field(part.get("refusal", ""), "content[].refusal") or ""
            for part in item.get("content") or ()
            if part.get("type") == "refusal"
        )
        if refusal:
            kept["refusal"] = refusal
        if item.get("phase") is not None:
            kept["phase"] = str_field(item["phase"], "item.phase")
        return kept
    if kind == "function_call":
        return {
            "type": "function_call",
            "id": str_field(item.get("id"), "item.id"),
            "call_id": str_field(item.get("call_id"), "item.call_id"),
        }
    return None


def _function_call(call: Record, item_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "function_call",
        "call_id": call.tool_call_id,
        "name": call.tool_name,
        "arguments": sent_arguments(call.content),
    }
    if item_id:
        out["id"] = item_id
    return out


def _plain_items(record: Record | None, calls: list[Record]) -> list[dict[str, Any]]:
    """An assistant turn as plain input: its text, then its calls, with no item ids."""
    items: list[dict[str, Any]] = []
    if record is not None and record.content:
        items.append({"role": "assistant", "content": record.content})
    return items + [_function_call(call) for call in calls]


def _assistant_items(record: Record | None, calls: list[Record]) -> list[dict[str, Any]]:
    kept = record.metadata.get(OUTPUT_KEY) if record is not None else None
    if record is None or not isinstance(kept, list):
        return _plain_items(record, calls)
    # The stored message texts are used only while they still add up to the record's text.
    texts = [
        item.get("text", "") + item.get("refusal", "")
        for item in kept
        if item.get("type") == "message"
    ]
    exact = "".join(texts) == record.content
    by_call_id = {call.tool_call_id: call for call in calls}
    # A call's item id pairs it with the reasoning item before it; without one, leave it out
    # (a stateless request may not name items the server never stored).
    paired = any(item.get("type") == "reasoning" for item in kept)
    items = []
    origins: list[int | None] = []  # the kept item each sent item is, by its id
    replaced = False
    for index, item in enumerate(kept):
        kind = item.get("type")
        if kind == "reasoning":
            items.append(dict(item))
            origins.append(index)
        elif kind == "message" and exact:
            message: dict[str, Any] = {
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": _message_parts(item),
            }
            for key in ("id", "phase"):
                if item.get(key) is not None:
                    message[key] = item[key]
            items.append(message)
            origins.append(index if "id" in message else None)
        elif kind == "message" and not replaced:
            replaced = True
            if record.content:
                items.append({"role": "assistant", "content": record.content})
                origins.append(None)
        elif kind == "function_call":
            call = by_call_id.pop(item.get("call_id"), None)
            if call is not None:
                sent = _function_call(call, item.get("id") if paired else None)
                items.append(sent)
                origins.append(index if "id" in sent else None)
    if not _followed(kept, origins):
        # The API refuses a reasoning item not followed by the item it produced, sent with
        # its id (a resumed reply's joined text is no message the server made; a call whose
        # record is gone), and that item's id without its reasoning: send neither.
        return _plain_items(record, calls)
    if not texts and record.content:
        items.append({"role": "assistant", "content": record.content})
    return items + [_function_call(call) for call in calls if call.tool_call_id in by_call_id]


def _message_parts(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The content of a kept message item as sent back: its text, then its refusal as the
    ``refusal`` part it came in (the SDK's ResponseOutputRefusalParam)."""
    text, refusal = item.get("text", ""), item.get("refusal")
    parts: list[dict[str, Any]] = []
    if text or not refusal:
        parts.append({"type": "output_text", "text": text, "annotations": []})
    if refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    return parts


def _followed(kept: list[Any], origins: list[int | None]) -> bool:
    """Whether each reasoning item sent is followed by the kept item after it, sent by id."""
    for n, index in enumerate(origins):
        if index is not None and kept[index].get("type") == "reasoning":
            following = origins[n + 1] if n + 1 < len(origins) else None
            if following != index + 1:
                return False
    return True


def _item(record: Record) -> dict[str, Any] | None:
    """The input item of a prompt, tool output or (not leading) system prompt."""
    kind = record.type
    if kind is RecordType.SYSTEM_PROMPT:
        return {"role": "system", "content": record.content}
    if kind is RecordType.PROMPT:
        if record.attachments:
            text = {"type": "input_text", "text": record.content}
            return {"role": "user", "content": [text, *responses_parts(record.attachments)]}
        return {"role": "user", "content": record.content}
    if kind is RecordType.TOOL_OUTPUT:
        return {
            "type": "function_call_output",
            "call_id": record.tool_call_id,
            "output": record.content,
        }
    return None


def responses_input(records: Sequence[Record]) -> tuple[str | None, list[dict[str, Any]]]:
    """``(instructions, input)`` for ``records``.

    System prompts before the first other record become ``instructions``; later ones are
    sent in place as ``system`` messages.
    """
    instructions: list[str] = []
    items: list[dict[str, Any]] = []
    for record, calls in turns(records):
        if record is None or record.type is RecordType.MODEL_RESP:
            items.extend(_assistant_items(record, calls))
        elif record.type is RecordType.SYSTEM_PROMPT and not items:
            instructions.append(record.content)
        else:
            item = _item(record)
            if item is not None:
                items.append(item)
    return ("\n\n".join(instructions) if instructions else None), items


def _items_json(items: list[dict[str, Any]]) -> bytes:
    return b",".join(compact_json(item) for item in items)


class _Entry:
    """A record's encoded item(s), and the last assistant turn it headed."""

    __slots__ = ("json", "kind", "turn")

    def __init__(self, record: Record) -> None:
        self.kind = record.type
        if self.kind is RecordType.MODEL_RESP:
            self.json = _items_json(_assistant_items(record, []))
        else:
            item = _item(record)
            self.json = compact_json(item) if item is not None else b""
        self.turn: tuple[tuple[_Entry, ...], bytes] | None = None


class ResponsesHistory:
    """``(instructions, input)`` with ``input`` as JSON bytes, from records encoded once.

    As :class:`._openai_chat.ChatHistory`: an assistant turn with tool calls is encoded once
    per set of calls and kept on the entry that heads it.
    """

    __slots__ = ("cache",)

    def __init__(self) -> None:
        self.cache: HistoryCache[_Entry] = HistoryCache(_Entry)

    def encode(self, records: Sequence[Record]) -> tuple[str | None, list[bytes]]:
        """What :func:`responses_input` gives for ``records``, the input as the SDK encodes it."""
        lookup = self.cache.lookup(records)
        entries = lookup.entries
        # Resume where the previous request's last turn began, if its records are unchanged.
        resume = lookup.resume
        parts: list[bytes]
        instructions: list[str]
        if resume is not None and resume[0] < lookup.same:
            i, parts, instructions = resume[0], resume[1][: resume[2]], resume[3][: resume[4]]
        else:
            i, parts, instructions = 0, [], []
        append = parts.append
        tool_call, model_resp = RecordType.TOOL_CALL, RecordType.MODEL_RESP
        system = RecordType.SYSTEM_PROMPT
        start, count, texts = i, len(parts), len(instructions)
        n = len(entries)
        while i < n:
            start, count, texts = i, len(parts), len(instructions)
            entry = entries[i]
            kind = entry.kind
            if kind is not tool_call and (
                kind is not model_resp or i + 1 == n or entries[i + 1].kind is not tool_call
            ):
                if kind is system and not parts:
                    instructions.append(records[i].content)
                elif entry.json:
                    append(entry.json)
                i += 1
                continue
            first = i + 1 if kind is model_resp else i
            end = first
            while end < n and entries[end].kind is tool_call:
                end += 1
            calls = tuple(entries[first:end]) if kind is model_resp else tuple(entries[i + 1 : end])
            turn = entry.turn
            if turn is None or turn[0] != calls:
                head = records[i] if kind is model_resp else None
                turn = (calls, _items_json(_assistant_items(head, list(records[first:end]))))
                entry.turn = turn
            if turn[1]:
                append(turn[1])
            i = end
        self.cache.keep(lookup, (start, parts, count, instructions, texts))
        return ("\n\n".join(instructions) if instructions else None), parts


def responses_usage(usage: Mapping[str, Any], web_searches: int = 0) -> Usage:
    """Normalise a Responses ``usage`` object (raw dict); counts must be ints.

    ``web_searches``: the response's ``web_search_call`` items, each billed as one call on
    top of the tokens (the usage object does not count them).
    """
    inp = usage.get("input_tokens_details") or {}
    out = usage.get("output_tokens_details") or {}
    return Usage.of(
        int_field(usage.get("input_tokens"), "usage.input_tokens"),
        int_field(usage.get("output_tokens"), "usage.output_tokens"),
        int_field(usage.get("total_tokens"), "usage.total_tokens"),
        int_field(inp.get("cached_tokens"), "usage.cached_tokens"),
        int_field(out.get("reasoning_tokens"), "usage.reasoning_tokens"),
        web_search_requests=web_searches,
    )


def failed_error(
    response: Mapping[str, Any], secrets: tuple[str | None, ...] = ()
) -> ProviderError:
    """The error for a ``response.failed`` / ``response.incomplete`` response (raw dict)."""
    if response.get("status") == "incomplete":
        details = response.get("incomplete_details") or {}
        reason = str_field(details.get("reason"), "incomplete_details.reason") or "unknown"
        return provider_error(
            PROVIDER,
            f"response incomplete ({reason}); raise max_output_tokens or shorten the input",
            error_type=reason,
            retryable=False,
            secrets=secrets,
        )
    error = response.get("error") or {}
    return error_event(
        str_field(error.get("message"), "error.message") or "response failed",
        str_field(error.get("code"), "error.code"),
        secrets,
    )


def error_event(
    message: str, code: str | None, secrets: tuple[str | None, ...] = ()
) -> ProviderError:
    """The error for a bare ``error`` event (or a failed response's ``error``)."""
    return provider_error(
        PROVIDER,
        f"response failed: {message}",
        error_type=code,
        retryable=code in _RETRYABLE_CODES,
        secrets=secrets,
    )


def background_point(checkpoint: Checkpoint) -> tuple[str, int] | None:
    """``(response_id, starting_after)`` to resume ``checkpoint``'s background stream, if any."""
    point = checkpoint.metadata.get(NATIVE_RESUME_KEY)
    if not isinstance(point, Mapping) or point.get("provider") != BACKGROUND:
        return None
    response_id, after = point.get("stream_id"), point.get("after")
    if not isinstance(response_id, str) or not response_id:
        return None
    if not isinstance(after, int) or isinstance(after, bool):
        return None
    return response_id, after


def _index(value: Any) -> int:
    """An ``output_index``: an int, or 0 when absent."""
    if value is None:
        return 0
    if value.__class__ is not int:
        raise bad_field("output_index", value)
    return int(value)


def _dict_of(value: Any, name: str) -> dict[str, Any]:
    """The raw dict of an SDK model field (``{}`` when absent)."""
    if value is None:
        return {}
    return dict(sdk_model(value, name).to_dict(warnings=False))


class ResponsesStream:
    """Per-stream state: tool-call indexes by item id and the output items to keep.

    With a ``cursor`` (background mode) the ``*_at`` twins of :meth:`sdk` / :meth:`fast` also
    note the stream's response id (at ``response.created`` / ``response.queued``) and, per
    event that yields chunks, its ``sequence_number``: a method call with two attribute
    stores, no per-chunk dict work. Without one, nothing is noted.

    ``resumed`` marks a stream continued with ``retrieve(starting_after=...)``: the events
    before the cut are not seen again, so output items the reply must keep are taken from the
    final response, and calls whose arguments were already (partly) delivered are not sent
    whole again.

    ``sdk_event`` turns a raw event into the SDK's model of it (the fast path reads an
    unusual event again that way); ``request`` is the stream's HTTP request, for the SDK
    exception an ``error`` or ``response.failed`` event is reported with.
    """

    __slots__ = (
        "_args",
        "_indexes",
        "_kept",
        "_searches",
        "_secrets",
        "chunks",
        "cursor",
        "failure",
        "finished",
        "refused",
        "request",
        "resumed",
        "sdk_event",
    )

    def __init__(
        self,
        secrets: tuple[str | None, ...] = (),
        cursor: ResumeCursor | None = None,
        *,
        resumed: Checkpoint | None = None,
    ) -> None:
        self._indexes: dict[str, int] = {}
        self._args: set[int] = set()
        self._kept: dict[int, dict[str, Any]] = {}
        self._searches: set[int] = set()  # output indexes of web_search_call items
        self.finished = False
        self.refused = False  # a refusal's text was read: the response ends "refusal"
        self.failure: ProviderError | None = None  # what ended the stream, raised by end()
        self._secrets = secrets
        self.cursor = cursor
        self.chunks = 0  # chunks yielded so far (counted only with a cursor)
        self.resumed = resumed is not None
        self.sdk_event: Callable[[Any], Any] | None = None
        self.request: httpx2.Request | None = None
        if resumed is not None:
            self._args = {
                int(call.get("index") or 0) for call in resumed.tool_calls if call.get("arguments")
            }

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """What to mask in this stream's errors: the client's key as given, and the keys the
        stream's request was sent with (a key provider's, which the client did not hold)."""
        return (*self._secrets, *request_secrets(self.request))

    def sdk_at(self, event: Any) -> list[Chunk]:
        """:meth:`sdk`, noting the stream's position in the cursor."""
        out = self.sdk(event)
        cursor = self.cursor
        assert cursor is not None
        if out:
            self.chunks += len(out)
            cursor.at(self.chunks, getattr(event, "sequence_number", None))
        elif event.type in _STARTS:
            response = event.response
            response_id = getattr(response, "id", None) if response is not None else None
            cursor.started(response_id, getattr(event, "sequence_number", None))
        return out

    def fast_at(self, data: Mapping[str, Any]) -> list[Chunk]:
        """:meth:`fast`, noting the stream's position in the cursor."""
        out = self.fast(data)  # data is a dict once this returns
        cursor = self.cursor
        assert cursor is not None
        if out:
            self.chunks += len(out)
            cursor.at(self.chunks, data.get("sequence_number"))
        elif data.get("type") in _STARTS:
            response = data.get("response")
            response_id = response.get("id") if isinstance(response, dict) else None
            cursor.started(response_id, data.get("sequence_number"))
        return out

    def sdk(self, event: Any) -> list[Chunk]:
        """Chunks for one SDK event object; a malformed one raises ``ProviderError``."""
        try:
            return self._sdk(event)
        except READ_ERRORS as exc:
            raise malformed_event(PROVIDER, exc, secrets=self.secrets) from exc

    def _sdk(self, raw: Any) -> list[Chunk]:
        event = sdk_model(raw, "the event")
        kind = event.type
        if kind == "response.output_text.delta":
            delta = event.delta
            return [Chunk(ChunkKind.TEXT, str_field(delta, "delta") or "")] if delta else []
        if kind in _THINKING_DELTAS:
            delta = event.delta
            if not delta:
                return []
            text = str_field(delta, "delta") or ""
            return [Chunk(ChunkKind.THINKING, text, _index(event.output_index))]
        if kind == "response.refusal.delta":
            delta = event.delta
            if not delta:
                return []
            self.refused = True
            return [refusal_chunk(str_field(delta, "delta") or "")]
        if kind == "response.function_call_arguments.delta":
            return self._arguments(event.item_id, event.output_index, event.delta)
        if kind in ("response.output_item.added", "response.output_item.done"):
            return self._item(kind, _index(event.output_index), _dict_of(event.item, "item"))
        if kind in ("response.completed", "response.failed", "response.incomplete"):
            return self._end(kind, _dict_of(event.response, "response"))
        if kind == "error":
            self._error_event(event.message, event.code, event.to_dict(warnings=False))
        return []

    def fast(self, data: Any) -> list[Chunk]:
        """Chunks for one raw event dict (the ``wire="fast"`` twin of :meth:`sdk`).

        Anything unusual in it makes it read the event again the SDK's way
        (:attr:`sdk_event`, then :meth:`sdk`), so both wires agree on it.
        """
        try:
            kind = data.get("type")
            if kind == "response.output_text.delta":
                delta = data.get("delta")
                if not delta:
                    return []
                if delta.__class__ is not str:
                    raise BadEvent
                return [Chunk(ChunkKind.TEXT, delta)]
            if kind in _THINKING_DELTAS:
                delta = data.get("delta")
                if not delta:
                    return []
                if delta.__class__ is not str:
                    raise BadEvent
                return [Chunk(ChunkKind.THINKING, delta, _index(data.get("output_index")))]
            if kind == "response.refusal.delta":
                delta = data.get("delta")
                if not delta:
                    return []
                if delta.__class__ is not str:
                    raise BadEvent
                self.refused = True
                return [refusal_chunk(delta)]
            if kind == "response.function_call_arguments.delta":
                return self._arguments(
                    data.get("item_id"), data.get("output_index"), data.get("delta")
                )
            if kind in ("response.output_item.added", "response.output_item.done"):
                item = data.get("item")
                if item is None:
                    item = {}
                elif item.__class__ is not dict:
                    raise BadEvent
                return self._item(kind, _index(data.get("output_index")), item)
            if kind in ("response.completed", "response.failed", "response.incomplete"):
                response = data.get("response")
                if response is None:
                    response = {}
                elif response.__class__ is not dict:
                    raise BadEvent
                return self._end(kind, response)
            if kind == "error":
                message, code = data.get("message"), data.get("code")
                if message is not None and message.__class__ is not str:
                    raise BadEvent
                if code is not None and code.__class__ is not str:
                    raise BadEvent
                self._error_event(message, code, data)
            return []
        except READ_ERRORS as exc:
            if self.sdk_event is None:
                raise malformed_event(PROVIDER, exc, secrets=self.secrets) from exc
            return self.sdk(self.sdk_event(data))

    def _error_event(self, message: Any, code: Any, body: object) -> NoReturn:
        text = str_field(message, "message") or "error"
        error = error_event(text, str_field(code, "code"), self.secrets)
        self._raise(error, text, body)

    def _raise(self, error: ProviderError, message: str, body: object) -> NoReturn:
        """Raise ``error`` from the SDK's ``APIError`` for the event, as the SDK raises an
        ``{"error": ...}`` payload: a caller catching ``openai.APIError`` in the cause chain
        sees every in-stream error, on both wires."""
        raise self._caused(error, message, body)

    def _caused(self, error: ProviderError, message: str, body: object) -> ProviderError:
        """``error`` with the SDK's ``APIError`` for the event as its cause (see :meth:`_raise`)."""
        if self.request is not None:
            cause = openai.APIError(scrub(message, *self.secrets), self.request, body=body)
            error.__cause__ = cause
            error.__suppress_context__ = True
        return error

    def end(self) -> None:
        """Raise what the stream ended with, once its chunks are delivered: the error of a
        ``response.failed`` / ``response.incomplete`` event that reported usage (the USAGE
        chunk goes first), or ``incomplete_stream`` when no final event came."""
        if self.failure is not None:
            raise self.failure
        if not self.finished:
            raise incomplete_stream(PROVIDER, "response.completed")

    def _failed(self, error: ProviderError, response: Mapping[str, Any]) -> list[Chunk]:
        """A response that ended failed or incomplete: ``error`` raised now, or, when the
        response reports its usage (billed all the same), that usage as a chunk, ``error``
        kept for :meth:`end` to raise once the chunk is delivered."""
        try:
            usage = self._usage(response)
        except READ_ERRORS:
            usage = None  # the failure is the news, not a malformed count beside it
        if usage is None:
            raise error
        self.failure = error
        self.finished = True
        return [Chunk(ChunkKind.USAGE, usage=usage)]

    def _arguments(self, item_id: Any, output_index: Any, delta: Any) -> list[Chunk]:
        str_field(item_id, "item_id")
        index = (
            self._indexes.get(item_id, _index(output_index)) if item_id else _index(output_index)
        )
        if not delta:
            return []
        text = str_field(delta, "delta") or ""
        self._args.add(index)
        return [Chunk(ChunkKind.TOOL_CALL, text, index)]

    def _usage(self, response: Mapping[str, Any]) -> Usage | None:
        """The final response's usage, with its web searches: the web_search_call items
        seen in the stream or listed in its output (a resumed stream saw only some)."""
        if not response.get("usage"):
            return None
        searches = self._searches
        output = response.get("output")
        if output.__class__ is list:
            searches = searches | {
                i
                for i, item in enumerate(output)
                if item.__class__ is dict and item.get("type") == "web_search_call"
            }
        return responses_usage(response["usage"], len(searches))

    def _item(self, kind: str, index: int, item: Mapping[str, Any]) -> list[Chunk]:
        is_call = item.get("type") == "function_call"
        if item.get("type") == "web_search_call":
            self._searches.add(index)  # billed per call, on top of the tokens
        if kind == "response.output_item.added":
            if not is_call:
                return []
            item_id = str_field(item.get("id"), "item.id")
            call_id = str_field(item.get("call_id"), "item.call_id")
            name = str_field(item.get("name"), "item.name")
            arguments = str_field(item.get("arguments"), "item.arguments") or ""
            if item_id:
                self._indexes[item_id] = index
            if arguments:
                self._args.add(index)
            return [Chunk(ChunkKind.TOOL_CALL, arguments, index, call_id, name)]
        kept = kept_item(item)
        whole = str_field(item.get("arguments"), "item.arguments") if is_call else None
        if kept is not None:
            self._kept[index] = kept
        # Servers that send a call's arguments only whole, in the finished item.
        if whole and index not in self._args:
            self._args.add(index)
            return [Chunk(ChunkKind.TOOL_CALL, whole, index)]
        return []

    def _end(self, kind: str, response: Mapping[str, Any]) -> list[Chunk]:
        status = str_field(response.get("status"), "response.status")
        if kind == "response.incomplete" or status == "incomplete":
            return self._failed(
                failed_error({**response, "status": "incomplete"}, self.secrets), response
            )
        if kind == "response.failed" or status == "failed":
            error = failed_error({**response, "status": "failed"}, self.secrets)
            message = (response.get("error") or {}).get("message") or "response failed"
            return self._failed(self._caused(error, message, response.get("error")), response)
        response_id = str_field(response.get("id"), "response.id")
        usage = self._usage(response)
        kept: dict[int, dict[str, Any]] = {}
        if self.resumed:
            for index, item in enumerate(response.get("output") or ()):
                if index not in self._kept:
                    found = kept_item(item)
                    if found is not None:
                        kept[index] = found
        self._kept.update(kept)
        self.finished = True
        out: list[Chunk] = []
        if usage is not None:
            out.append(Chunk(ChunkKind.USAGE, usage=usage))
        items = _sendable(self._kept)
        metadata: dict[str, Any] = {OUTPUT_KEY: items} if items else {}
        # A resumed stream may have seen none of the refusal's deltas: its items say so.
        if self.refused or any("refusal" in item for item in self._kept.values()):
            metadata[REFUSAL_KEY] = True
            if status == "completed":
                status = REFUSED
        out.append(
            Chunk(
                ChunkKind.DONE,
                finish_reason=status,
                response_id=response_id,
                usage=usage,
                metadata=metadata,
            )
        )
        return out


def _sendable(kept: Mapping[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept items, in output order, less each reasoning item whose follower is not kept
    (and the ids of the items after such a one, until the next reasoning item).

    The API refuses a reasoning item not followed by the output item it produced; a built-in
    tool's item (``code_interpreter_call``, ``web_search_call``) is not sent back, so the
    reasoning before it may not be either. Only here are the items' output positions known:
    records stored before this keep [reasoning, message] for such a reply and cannot be
    repaired by the conversion, which sees the two as a pair.
    """
    items: list[dict[str, Any]] = []
    orphaned = False  # after a reasoning item left out, until the next one sent
    for index, item in sorted(kept.items()):
        if item.get("type") == "reasoning":
            orphaned = index + 1 not in kept
            if orphaned:
                continue
        elif orphaned and "id" in item:
            # An item's id is tied to the reasoning item before it in its response ("Item
            # 'msg_…' of type 'message' was provided without its required 'reasoning'
            # item"): with that one left out, the item goes back without its id.
            item = {key: value for key, value in item.items() if key != "id"}
        items.append(item)
    return items


def response_chunks(
    response: Mapping[str, Any], secrets: tuple[str | None, ...] = ()
) -> list[Chunk]:
    """The chunks a non-streaming ``Response`` (raw dict) amounts to."""
    stream = ResponsesStream(secrets)
    out: list[Chunk] = []
    for index, item in enumerate(response.get("output") or ()):
        kind = item.get("type")
        if kind == "reasoning":
            for part in [*(item.get("summary") or ()), *(item.get("content") or ())]:
                if part.get("text"):
                    out.append(Chunk(ChunkKind.THINKING, part["text"], index))
        elif kind == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text" and part.get("text"):
                    out.append(Chunk(ChunkKind.TEXT, part["text"]))
                elif part.get("type") == "refusal" and part.get("refusal"):
                    out.append(refusal_chunk(part["refusal"]))
        out.extend(stream._item("response.output_item.added", index, item))
        out.extend(stream._item("response.output_item.done", index, item))
    out.extend(stream._end("response.completed", response))
    if stream.failure is not None:
        raise stream.failure
    return out
