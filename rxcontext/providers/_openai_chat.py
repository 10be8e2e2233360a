"""OpenAI Chat Completions: records → ``messages``, stream chunks → :class:`Chunk`.

Two readers of the same wire format share one state: :meth:`ChatStream.sdk` reads the
SDK's ``ChatCompletionChunk`` objects, :meth:`ChatStream.fast` the raw JSON dicts of the
``wire="fast"`` path. Both feed :meth:`ChatStream._delta`, so they emit the same chunks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import openai

from ..chunks import Chunk, ChunkKind, Usage
from ..errors import ProviderError
from ..records import Record, RecordType
from ._attachments import chat_parts
from ._common import (
    READ_ERRORS,
    BadEvent,
    bad_field,
    incomplete_stream,
    int_field,
    malformed_event,
    provider_error,
    str_field,
)
from ._history import HistoryCache, compact_json

__all__ = [
    "REASONING_FIELD",
    "REFUSAL_KEY",
    "ChatHistory",
    "ChatStream",
    "chat_messages",
    "completion_chunks",
    "in_stream_error",
    "sent_arguments",
    "turns",
]

PROVIDER = "openai"
_TEXT = ChunkKind.TEXT
_THINKING = ChunkKind.THINKING
_TOOL_CALL = ChunkKind.TOOL_CALL
REASONING_FIELD = "openai_reasoning_field"
"""Reply/record metadata key: ``"reasoning_content"`` when the reply's reasoning came in that
field (DeepSeek, Kimi, vLLM). Such reasoning goes back in the same field on the reply's
assistant message; reasoning from elsewhere (``reasoning``: OpenRouter, Groq) does not, and
api.openai.com, which knows neither, never sends one."""
REFUSAL_KEY = "refusal"
"""Chunk, reply and record metadata key: ``True`` when the text is the model's refusal
(Chat's ``refusal`` field, a Responses ``refusal`` part). Such a reply ends with
``finish_reason`` ``"refusal"`` (as Anthropic names it) and goes back as a refusal."""
REFUSED = "refusal"
"""The finish reason of a refused reply (OpenAI's own is ``stop`` / ``completed``)."""


def refusal_chunk(text: str) -> Chunk:
    """A TEXT chunk of the model's refusal, flagged so (see :data:`REFUSAL_KEY`)."""
    return Chunk(_TEXT, text, metadata={REFUSAL_KEY: True})


RETRYABLE_ERRORS = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "rate_limit_error",
        "timeout",
        # What the Responses API's nested error event names a rate limit (openai-dotnet#881)
        # and a passing outage whose message says to retry (vercel/ai#20022).
        "too_many_requests",
        "service_unavailable_error",
        "overloaded",
    }
)
"""In-stream error types and codes worth sending again (the HTTP status, when given, decides
first). An error object may name one in its ``type`` or its ``code``: OpenAI's rate limit is
``type`` ``tokens`` / ``requests``, ``code`` ``rate_limit_exceeded``."""


def turns(records: Sequence[Record]) -> Iterator[tuple[Record | None, list[Record]]]:
    """Records with each MODEL_RESP grouped with the TOOL_CALLs that follow it.

    Yields ``(record, [])`` for other records, ``(model_resp, calls)`` for an assistant turn,
    and ``(None, calls)`` for tool calls with no reply record before them.
    """
    i, n = 0, len(records)
    while i < n:
        record = records[i]
        head: Record | None = record
        if record.type is RecordType.TOOL_CALL:
            head = None
        elif record.type is not RecordType.MODEL_RESP:
            yield record, []
            i += 1
            continue
        else:
            i += 1
        calls: list[Record] = []
        while i < n and records[i].type is RecordType.TOOL_CALL:
            calls.append(records[i])
            i += 1
        yield head, calls


def sent_arguments(raw: str) -> str:
    """A stored call's ``arguments`` as sent back: the model's own text if it is a JSON
    object, else ``"{}"``.

    A call cut by the token limit (``'{"city": "Par'``) stays in its record as written, but
    servers that parse the arguments of a history's calls (vLLM, SGLang) refuse it; as the
    Anthropic and Gemini requests do, it goes back empty.
    """
    try:
        parsed = json.loads(raw)
    except ValueError:
        return "{}"
    return raw if isinstance(parsed, dict) else "{}"


def _assistant(record: Record | None, calls: Sequence[Record]) -> dict[str, Any]:
    content = record.content if record is not None else ""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    refused = record is not None and record.metadata.get(REFUSAL_KEY) is True and content
    if record is not None and record.metadata.get(REASONING_FIELD) == "reasoning_content":
        # DeepSeek (thinking mode) refuses a request whose assistant messages of a turn
        # with tool calls lack their reasoning, in that turn's tool loop and every later
        # request; elsewhere it ignores it (api-docs.deepseek.com/guides/thinking_mode).
        thinking = record.metadata.get("thinking")
        if isinstance(thinking, str) and thinking:
            message["reasoning_content"] = thinking
    if calls:
        message["content"] = content or None
        message["tool_calls"] = [
            {
                "id": call.tool_call_id,
                "type": "function",
                "function": {"name": call.tool_name, "arguments": sent_arguments(call.content)},
            }
            for call in calls
        ]
    if refused:
        # A refusal goes back as one: a refusal part of the assistant's content (the SDK's
        # ChatCompletionContentPartRefusalParam), so the model sees it did not answer.
        message["content"] = [{"type": "refusal", "refusal": content}]
    return message


def _message(record: Record) -> dict[str, Any] | None:
    """The message of a record that is not part of an assistant turn (None: not sent)."""
    kind = record.type
    if kind is RecordType.SYSTEM_PROMPT:
        return {"role": "system", "content": record.content}
    if kind is RecordType.PROMPT:
        if record.attachments:
            text = {"type": "text", "text": record.content}
            return {"role": "user", "content": [text, *chat_parts(record.attachments)]}
        return {"role": "user", "content": record.content}
    if kind is RecordType.TOOL_OUTPUT:
        return {"role": "tool", "tool_call_id": record.tool_call_id, "content": record.content}
    return None


def chat_messages(records: Sequence[Record]) -> list[dict[str, Any]]:
    """The Chat Completions ``messages`` for ``records`` (oldest first)."""
    messages: list[dict[str, Any]] = []
    for record, calls in turns(records):
        if record is None or record.type is RecordType.MODEL_RESP:
            if calls or (record is not None and record.content):  # an empty reply: none
                messages.append(_assistant(record, calls))
        else:
            message = _message(record)
            if message is not None:
                messages.append(message)
    return messages


class _Entry:
    """A record's encoded message, and the last assistant turn it headed (:class:`ChatHistory`)."""

    __slots__ = ("json", "kind", "turn")

    def __init__(self, record: Record) -> None:
        self.kind = record.type
        if self.kind is RecordType.MODEL_RESP:  # an empty reply is no message
            message: dict[str, Any] | None = _assistant(record, ()) if record.content else None
        else:
            message = _message(record)
        self.json = compact_json(message) if message is not None else None
        self.turn: tuple[tuple[_Entry, ...], bytes] | None = None


class ChatHistory:
    """``messages`` as JSON bytes, from records encoded once (see :mod:`._history`).

    An assistant turn with tool calls is encoded once per set of calls: it is kept on the
    entry that heads it, with the entries of its calls (the same entry objects while their
    records are unchanged).
    """

    __slots__ = ("cache",)

    def __init__(self) -> None:
        self.cache: HistoryCache[_Entry] = HistoryCache(_Entry)

    def encode(self, records: Sequence[Record]) -> list[bytes]:
        """The encoded items of the array :func:`chat_messages` gives for ``records``."""
        lookup = self.cache.lookup(records)
        entries = lookup.entries
        # Resume where the previous request's last turn began, if its records are unchanged.
        resume = lookup.resume
        parts: list[bytes]
        if resume is not None and resume[0] < lookup.same:
            i, parts = resume[0], resume[1][: resume[2]]
        else:
            i, parts = 0, []
        append = parts.append
        tool_call, model_resp = RecordType.TOOL_CALL, RecordType.MODEL_RESP
        start, count = i, len(parts)
        n = len(entries)
        while i < n:
            start, count = i, len(parts)
            entry = entries[i]
            kind = entry.kind
            if kind is not tool_call and (
                kind is not model_resp or i + 1 == n or entries[i + 1].kind is not tool_call
            ):
                if entry.json is not None:
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
                turn = (calls, compact_json(_assistant(head, records[first:end])))
                entry.turn = turn
            append(turn[1])
            i = end
        self.cache.keep(lookup, (start, parts, count))
        return parts


def usage_of(usage: Any) -> Usage:
    """Normalise an SDK ``CompletionUsage`` (counts the SDK could not make ints are an error)."""
    sdk_model(usage, "usage")
    prompt = _model(getattr(usage, "prompt_tokens_details", None), "usage.prompt_tokens_details")
    completion = _model(
        getattr(usage, "completion_tokens_details", None), "usage.completion_tokens_details"
    )
    return Usage.of(
        int_field(getattr(usage, "prompt_tokens", None), "usage.prompt_tokens"),
        int_field(getattr(usage, "completion_tokens", None), "usage.completion_tokens"),
        int_field(getattr(usage, "total_tokens", None), "usage.total_tokens"),
        int_field(getattr(prompt, "cached_tokens", None), "usage.cached_tokens"),
        int_field(getattr(completion, "reasoning_tokens", None), "usage.reasoning_tokens"),
    )


def usage_of_dict(usage: Mapping[str, Any]) -> Usage:
    """Normalise a raw ``usage`` object; anything but int counts raises (the fast reader then
    reads the event the SDK's way, which may coerce them)."""
    prompt = _details(usage.get("prompt_tokens_details"))
    completion = _details(usage.get("completion_tokens_details"))
    counts = (
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        usage.get("total_tokens"),
        prompt.get("cached_tokens"),
        completion.get("reasoning_tokens"),
    )
    for count in counts:
        if count is not None and count.__class__ is not int:
            raise bad_field("a usage count", count)
    return Usage.of(*counts)


_NO_DETAILS: Mapping[str, Any] = {}


def _details(value: Any) -> Mapping[str, Any]:
    """A usage's ``*_tokens_details`` object (absent or null: none). Anything else (``false``,
    ``0``) the SDK keeps as it came, which its reader refuses: raising here has the fast
    reader read the event the SDK's way, so both wires end alike."""
    if value is None:
        return _NO_DETAILS
    if value.__class__ is not dict:
        raise bad_field("usage details", value)
    return value


_MODELS: set[type] = set()
"""Classes seen to be the SDK's models: a set lookup per event field instead of pydantic's
``isinstance`` (an ABC check, a few times an attribute read) on every event."""


def _model(value: Any, name: str) -> Any:
    """``value`` if it is one of the SDK's models (or None); the SDK keeps what it cannot build
    one from (a string, a number) as it came, and that is a malformed event."""
    if value is None or value.__class__ in _MODELS:
        return value
    return sdk_model(value, name)


def sdk_model(value: Any, name: str) -> Any:
    """``value`` if it is one of the SDK's models (not None), else :class:`BadEvent`."""
    cls = value.__class__
    if cls in _MODELS:
        return value
    if isinstance(value, openai.BaseModel):
        _MODELS.add(cls)
        return value
    raise bad_field(name, value)


def in_stream_error(
    message: str, body: object, secrets: tuple[str | None, ...] = ()
) -> ProviderError:
    """An error payload sent inside a 200 stream (``{"error": ...}``, Groq's ``event: error``)."""
    status: int | None = None
    error_type: str | None = None
    retryable = False
    if isinstance(body, Mapping):
        for key in ("status_code", "code", "status"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
                status = value
                break
        for key in ("type", "code"):
            value = body.get(key)
            if isinstance(value, str) and value:
                error_type = error_type or value
                retryable = retryable or value in RETRYABLE_ERRORS
    return provider_error(
        PROVIDER,
        f"error in the stream: {message}",
        status_code=status,
        error_type=error_type,
        retryable=None if status is not None else retryable,
        secrets=secrets,
    )


def _reasoning(extra: Mapping[str, Any] | None) -> tuple[str | None, bool]:
    """The reasoning text of a delta or message (None: none), and whether it came in
    ``reasoning_content`` (see :data:`REASONING_FIELD`)."""
    # OpenAI-compatible servers name it differently: DeepSeek/vLLM ``reasoning_content``,
    # OpenRouter/Groq ``reasoning``; some send both with the same text.
    if not extra:
        return None, False
    text = extra.get("reasoning_content")
    if isinstance(text, str) and text:
        return text, True
    text = extra.get("reasoning")
    return (text if isinstance(text, str) and text else None), False


def _done_metadata(reasoning_content: bool) -> dict[str, Any] | None:
    """The DONE chunk's metadata: where the reply's reasoning came from, if it goes back."""
    return {REASONING_FIELD: "reasoning_content"} if reasoning_content else None


class ChatStream:
    """Per-stream state: response id, finish reason, usage and which calls were announced.

    ``sdk_event`` turns a raw event into the SDK's own model of it, as the SDK's stream
    would (set by the ``wire="fast"`` path; see :meth:`fast`).
    """

    __slots__ = (
        "_ids",
        "_names",
        "finish_reason",
        "reasoning_content",
        "refused",
        "response_id",
        "sdk_event",
        "usage",
    )

    def __init__(self, sdk_event: Callable[[Any], Any] | None = None) -> None:
        self.response_id: str | None = None
        self.reasoning_content = False
        """Whether reasoning came in ``reasoning_content`` (see :data:`REASONING_FIELD`)."""
        self.finish_reason: str | None = None
        self.refused = False
        """Whether the reply is a refusal (``delta.refusal``): it then finishes ``"refusal"``."""
        self.usage: Usage | None = None
        self._ids: set[int] = set()
        self._names: set[int] = set()
        self.sdk_event = sdk_event

    def _call(self, out: list[Chunk], index: Any, call_id: Any, name: Any, arguments: Any) -> None:
        if index.__class__ is not int:
            raise bad_field("tool_calls[].index", index)
        if call_id is not None and call_id.__class__ is not str:
            raise bad_field("tool_calls[].id", call_id)
        if name is not None and name.__class__ is not str:
            raise bad_field("tool_calls[].function.name", name)
        if arguments is not None and arguments.__class__ is not str:
            raise bad_field("tool_calls[].function.arguments", arguments)
        # id/name go on the first fragment only, even from servers that repeat them.
        if call_id and index not in self._ids:
            self._ids.add(index)
        else:
            call_id = None
        if name and index not in self._names:
            self._names.add(index)
        else:
            name = None
        if call_id or name or arguments:
            out.append(Chunk(_TOOL_CALL, arguments or "", index, call_id, name))

    def sdk(self, chunk: Any) -> list[Chunk]:
        """Chunks for one SDK ``ChatCompletionChunk``; a malformed one raises ``ProviderError``."""
        try:
            return self._sdk(chunk)
        except READ_ERRORS as exc:
            raise malformed_event(PROVIDER, exc) from exc

    def _sdk(self, event: Any) -> list[Chunk]:
        chunk = sdk_model(event, "the event")
        out: list[Chunk] = []
        if chunk.id and self.response_id is None:
            self.response_id = str_field(chunk.id, "id")
        for choice in chunk.choices or ():
            sdk_model(choice, "choices[]")
            if choice.index:
                int_field(choice.index, "choices[].index")
                continue
            delta = choice.delta
            if delta:
                _model(delta, "choices[].delta")
                thinking, from_content = _reasoning(delta.model_extra)
                if thinking:
                    out.append(Chunk(_THINKING, thinking))
                    if from_content:
                        self.reasoning_content = True
                if delta.content:
                    out.append(Chunk(_TEXT, str_field(delta.content, "delta.content") or ""))
                if delta.refusal:
                    out.append(refusal_chunk(str_field(delta.refusal, "delta.refusal") or ""))
                    self.refused = True
                for position, call in enumerate(delta.tool_calls or ()):
                    sdk_model(call, "tool_calls[]")
                    index = call.index
                    function = _model(call.function, "tool_calls[].function")
                    self._call(
                        out,
                        position if index is None else index,
                        call.id,
                        function.name if function is not None else None,
                        function.arguments if function is not None else None,
                    )
            if choice.finish_reason is not None:
                self._finish(str_field(choice.finish_reason, "finish_reason"))
        if chunk.usage is not None:
            self.usage = usage_of(chunk.usage)
            out.append(Chunk(ChunkKind.USAGE, usage=self.usage))
        return out

    def _finish(self, finish_reason: str | None) -> None:
        # A refusal ends "stop" on the wire; any other end (a cut at "length") stays.
        refused = self.refused and finish_reason == "stop"
        self.finish_reason = REFUSED if refused else finish_reason

    def fast(self, data: Any) -> list[Chunk]:
        """Chunks for one raw chunk dict (the ``wire="fast"`` twin of :meth:`sdk`).

        Anything unusual in it (a value of the wrong type, a non-object) makes it read the
        event again the SDK's way (:attr:`sdk_event`, then :meth:`sdk`), so both wires give
        the same chunks, or the same error, for it.
        """
        saved: tuple[set[int], set[int]] | None = None
        try:
            out: list[Chunk] = []
            if self.response_id is None:
                response_id = data.get("id")
                if response_id:
                    if response_id.__class__ is not str:
                        raise BadEvent
                    self.response_id = response_id
            for choice in data.get("choices") or ():
                index = choice.get("index")
                if index:
                    if index.__class__ is not int:
                        raise BadEvent
                    continue
                delta = choice.get("delta")
                if delta:
                    if "reasoning_content" in delta or "reasoning" in delta:
                        thinking, from_content = _reasoning(delta)
                        if thinking:
                            out.append(Chunk(_THINKING, thinking))
                            if from_content:
                                self.reasoning_content = True
                    content = delta.get("content")
                    if content:
                        if content.__class__ is not str:
                            raise BadEvent
                        out.append(Chunk(_TEXT, content))
                    refusal = delta.get("refusal")
                    if refusal:
                        if refusal.__class__ is not str:
                            raise BadEvent
                        out.append(refusal_chunk(refusal))
                        self.refused = True
                    calls = delta.get("tool_calls")
                    if calls:
                        if saved is None:  # as before this event, for the SDK's re-read
                            saved = (set(self._ids), set(self._names))
                        if calls.__class__ is not list:
                            raise BadEvent
                        for position, call in enumerate(calls):
                            index = call.get("index")
                            function = call.get("function")
                            if function is not None and function.__class__ is not dict:
                                raise BadEvent
                            self._call(
                                out,
                                position if index is None else index,
                                call.get("id"),
                                function.get("name") if function is not None else None,
                                function.get("arguments") if function is not None else None,
                            )
                finish_reason = choice.get("finish_reason")
                if finish_reason is not None:
                    if finish_reason.__class__ is not str:
                        raise BadEvent
                    self._finish(finish_reason)
            usage = data.get("usage")
            if usage is not None:
                self.usage = usage_of_dict(usage)
                out.append(Chunk(ChunkKind.USAGE, usage=self.usage))
            return out
        except READ_ERRORS as exc:
            if saved is not None:
                self._ids, self._names = saved
            if self.sdk_event is None:
                raise malformed_event(PROVIDER, exc) from exc
            return self.sdk(self.sdk_event(data))

    def done(self) -> Chunk:
        """The final DONE chunk; a stream that never gave a finish_reason was cut.

        Without this a truncated body (no finish_reason, no ``[DONE]``) would be stored
        as a complete reply.
        """
        if self.finish_reason is None:
            raise incomplete_stream(PROVIDER, "a finish_reason")
        return Chunk(
            ChunkKind.DONE,
            finish_reason=self.finish_reason,
            response_id=self.response_id,
            usage=self.usage,
            metadata=_done_metadata(self.reasoning_content),
        )


def completion_chunks(completion: Any) -> list[Chunk]:
    """The chunks a non-streaming ``ChatCompletion`` amounts to (whole parts, one each)."""
    out: list[Chunk] = []
    finish_reason = None
    reasoning_content = False
    for choice in completion.choices or ():
        if choice.index:
            continue
        message = choice.message
        thinking, reasoning_content = _reasoning(message.model_extra)
        if thinking:
            out.append(Chunk(_THINKING, thinking))
        if message.content:
            out.append(Chunk(_TEXT, message.content))
        if message.refusal:
            out.append(refusal_chunk(message.refusal))
        for index, call in enumerate(message.tool_calls or ()):
            function = getattr(call, "function", None)
            if function is not None:
                out.append(
                    Chunk(_TOOL_CALL, function.arguments or "", index, call.id, function.name)
                )
        finish_reason = choice.finish_reason
        if message.refusal and finish_reason == "stop":
            finish_reason = REFUSED
    usage = usage_of(completion.usage) if completion.usage is not None else None
    if usage is not None:
        out.append(Chunk(ChunkKind.USAGE, usage=usage))
    out.append(
        Chunk(
            ChunkKind.DONE,
            finish_reason=finish_reason,
            response_id=completion.id or None,
            usage=usage,
            metadata=_done_metadata(reasoning_content),
        )
    )
    return out
