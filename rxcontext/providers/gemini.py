"""Google Gemini (``google-genai`` SDK): records → ``generate_content`` requests, stream → chunks.

Two wire paths give the same chunks (tests/test_wire_gemini.py checks it): ``wire="sdk"``
iterates the SDK's ``models.generate_content_stream`` (one pydantic
``GenerateContentResponse`` per event); ``wire="fast"`` (the default, over 10× faster) lets
the SDK build, authenticate, send and status-check the request (its private
``_api_client`` machinery: the calls ``generate_content_stream`` makes, pinned to
google-genai 3.x) but decodes the SSE frames itself with ``json.loads`` and dict access.
The framing is the SDK's, not plain SSE (lines other than ``data: `` are raw JSON to it, so
an SSE comment, which Gemini does not send, fails both paths alike; see ``_sse.Like``). The
one difference: the SDK validates every field of every event (pydantic), the fast path only
the fields it reads, so a wrong-typed field that is not read (``modelVersion``, a second
candidate...) fails the SDK path only. A field it reads that
is not what it expects (a value of the wrong type, a non-object event) makes the fast path
read that event the SDK's way (its conversion and model), so both paths give the same
chunks or the same error for it, and coerce alike (``"5"`` for a count is 5 on both).
On both, the history goes into the SDK's body already encoded, each record once
(:mod:`._history`; the request side is :mod:`._gemini_request`).

Choices worth knowing:

- Only the first candidate is read. ``thought: true`` parts are THINKING (one block,
  index 0); other text parts are TEXT; each ``functionCall`` part is one whole TOOL_CALL
  fragment (``index`` = its position among the response's calls, ``text`` = its ``args``
  as JSON). A call without an ``id`` gets a stable one built from the response id and its
  position (``call_<responseId>_<n>``; a hash of name and arguments when the response has
  no id) and ``metadata["gemini_synthetic_id"] = True``, so the id is not sent back to the
  API as if Gemini had chosen it.
- ``thoughtSignature``: on a function call it goes to that call's metadata
  (``thought_signature``), on any other part (text, thought, code execution; often an empty
  text part) to the reply's metadata (``gemini_thought_signature``, the last one wins), as
  standard base64. Both go back unchanged on the next request (the SDK encodes them again).
- ``executableCode`` / ``codeExecutionResult`` parts (built-in code execution) and
  ``groundingMetadata`` (Google Search) are server-side tool activity: they make no chunks
  (the window must not run them; the answer's text is kept). Only their signature is kept.
- Usage: ``promptTokenCount`` + ``toolUsePromptTokenCount`` (what built-in tools, code
  execution or Google Search, fed back to the model: billed as input, as genai-prices
  counts it) → input, ``candidatesTokenCount`` → output, ``totalTokenCount`` (Gemini's own
  total: it counts thought and tool-use prompt tokens) → total,
  ``cachedContentTokenCount`` → cached, ``thoughtsTokenCount`` → reasoning. Every
  chunk carries the totals so far; a USAGE chunk is emitted when they change.
- Google Search grounding is billed on top of the tokens, by the model: Gemini 3 (and any
  model name without a 1.x / 2.x version) per distinct non-empty search query, Gemini 1.x
  and 2.x once per grounded prompt however many queries it ran. ``web_search_requests``
  is that count, from the ``groundingMetadata.webSearchQueries`` of the response's events
  (the queries of all of them, each once).
- The finish reason is Gemini's string (``"STOP"``, ``"SAFETY"``,
  ``"MALFORMED_FUNCTION_CALL"``...), a known one in upper case however it was sent (the
  SDK's enums ignore case; so does the fast path), as is a ``blockReason``.
  (``finishMessage`` is not kept: the SDK drops it.) A stream that ends without any finish
  reason was cut: a retryable ``ProviderError`` (``error_type="incomplete_stream"``), and
  so is one that ends partway through an event (a frame whose JSON object stops short).
- A chunk with no candidates and ``promptFeedback.blockReason`` is a blocked prompt:
  ``ProviderError(error_type="prompt_blocked:<REASON>")``, not retryable.
- An ``{"error": ...}`` payload inside a 200 stream: the SDK raises ``ClientError`` /
  ``ServerError`` by its ``code`` (so does the fast path, with the same arguments: the
  ``ProviderError``'s ``__cause__`` is the same on both); it is classified like an HTTP error
  of that status (one without a ``code`` makes the SDK fail with a TypeError:
  ``error_type="invalid_event"``).
- Malformed events end the stream with a ``ProviderError`` on both paths, after the same
  chunks: ``invalid_json``, ``invalid_event`` (an event of the wrong shape, and an event
  with nothing the API sends: ``[]``, ``"text"``, ``null``, ``{}``, which the SDK would
  otherwise pass as an empty response and the reply be stored as complete without it).
  Bytes that are not UTF-8 become U+FFFD on both, as the SDK decodes them (with aiohttp as
  its async transport the SDK decodes strictly instead; the fast path does not follow it).
- Cancellation: the SDK's async stream leaves its HTTP response open when closed early, so
  the sdk path finds that response and closes it (see ``_open_responses``).
- Requests: tool outputs go back as ``functionResponse.response = {"output": <text>}``,
  those of failed calls as ``{"error": <text>}`` (the keys the API documents). Automatic
  function calling and automatic continuation of the SDK are turned off: the window runs
  tools and resumes interrupted replies itself, and one call is one HTTP request on both
  wire paths. A history that opens with a reply
  (its first prompt killed) is sent from its first prompt on: Gemini refuses contents that
  open with the model's turn. The replies, calls and outputs before it are left out of the
  request only; system prompts among them still go to the system instruction.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import re
import types as pytypes
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from enum import Enum
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx2

from ._sdk import missing_sdk

try:
    from google import genai
    from google.genai import _api_client as genai_api
    from google.genai import _common as genai_common
    from google.genai import errors as genai_errors
    from google.genai import models as genai_models
    from google.genai import types
except ImportError as exc:  # an optional extra: name it
    raise missing_sdk("google-genai", "gemini", exc) from exc

from ..attachments import Attachment
from ..chunks import Chunk, ChunkKind, Reply, Usage, new_chunk, new_usage
from ..errors import ProviderError
from ..jsonstream import JsonStream
from ..records import RecordType
from ._abort import note, scope
from ._attachments import check as check_attachments
from ._common import (
    READ_ERRORS,
    BadEvent,
    Lazy,
    Wire,
    bad_field,
    check_wire,
    incomplete_stream,
    is_retryable_status,
    malformed_event,
    mask_chain,
    provider_error,
    scrub,
    sent_secrets,
    transport_error,
)
from ._extra import refuse_keys, refused, refused_system, with_tools
from ._gemini_request import (
    PLACEHOLDER,
    REPLY_SIGNATURE,
    SIGNATURE,
    SYNTHETIC,
    GeminiHistory,
    build_contents,
    spliced_client,
    splicing,
)
from ._options import gemini_options
from ._sse import SSEDecoder
from .base import Request, reply_from_chunks

__all__ = ["GeminiModel", "build_contents"]

PROVIDER = "gemini"


# google.rpc status names that may succeed when the same request is sent again.
_RETRYABLE_STATUS = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})

_SIGNATURE = SIGNATURE
_REPLY_SIGNATURE = REPLY_SIGNATURE
_SYNTHETIC = SYNTHETIC

_TEXT = ChunkKind.TEXT
_THINKING = ChunkKind.THINKING
_TOOL_CALL = ChunkKind.TOOL_CALL
_USAGE = ChunkKind.USAGE
_C = TypeVar("_C", genai.Client, genai.client.AsyncClient)


_EXTRA_REFUSED = {"system_instruction": refused_system("system_instruction")}
"""Keys of a call's ``extra`` refused (a constructor ``system_instruction`` is the default
of a window without a system prompt)."""


def _check_config(fields: Mapping[str, Any], model: str, *, per_call: bool) -> None:
    """Build a ``GenerateContentConfig`` of ``fields`` (a call's ``extra``, or a model's
    settings), so a field or value the SDK refuses fails now, not once the reply has begun.

    The error names the fields and says why, as pydantic does, without their values.
    """
    try:
        types.GenerateContentConfig(**fields)
    except ValueError as exc:  # pydantic's ValidationError (it wraps its validators' errors)
        found = exc.errors(include_input=False, include_url=False)  # type: ignore[attr-defined]
        details = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in found
        )
        key = str(found[0]["loc"][0])
        why = f"GenerateContentConfig refuses it ({scrub(details)})"
        raise refused(model, key, why, per_call=per_call) from None


class GeminiModel:
    """Gemini through the official ``google-genai`` SDK (sync and async).

    ::

        GeminiModel("gemini-2.5-flash", client=genai.Client(...), temperature=0.2)

    ``params`` are ``GenerateContentConfig`` fields that go into every request
    (``temperature``, ``max_output_tokens`` — ``max_tokens`` is accepted as an alias —,
    ``thinking_config``, extra server ``tools``...); ``Request.max_output_tokens`` and
    ``Request.options`` override them. ``client`` serves both paths (its ``.aio`` for
    asyncio); ``async_client`` (a ``genai.Client`` or its ``.aio``) only the async one.
    Without them a client is built from ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY`` on first
    use of that path. ``wire="sdk"`` parses the stream with the SDK's own models instead of
    the default fast decoder (same chunks; see the module docstring).
    """

    call_options = frozenset(
        {"temperature", "max_output_tokens", "tool_choice", "stop", "extra", "schema"}
    )
    """Per-call options this model sends (see :data:`rxcontext.options.PROVIDER_PARAMETERS`)."""

    def __init__(
        self,
        model_name: str,
        *,
        client: genai.Client | None = None,
        async_client: genai.Client | genai.client.AsyncClient | None = None,
        wire: Wire = "fast",
        context_window: int | None = None,
        **params: Any,
    ) -> None:
        self.model_name = model_name
        self.wire: Wire = check_wire(wire)
        self.context_window = context_window
        """The model's context size in tokens, if given: a window's default ``max_tokens``."""
        self.params = dict(params)
        _check_config(_config_fields(self.params), self.name, per_call=False)
        self._history = GeminiHistory()
        self._client: Lazy[genai.Client] = Lazy(_env_client, client)
        aio: genai.client.AsyncClient | None = None
        if isinstance(async_client, genai.Client):
            aio = async_client.aio
        elif async_client is not None:
            aio = async_client
        elif client is not None:
            aio = client.aio
        self._async_client: Lazy[genai.client.AsyncClient] = Lazy(lambda: _env_client().aio, aio)

    @property
    def name(self) -> str:
        """``"gemini:<model>"``."""
        return f"{PROVIDER}:{self.model_name}"

    def check_attachments(self, attachments: Sequence[Attachment]) -> None:
        """Raise :class:`~rxcontext.UnsupportedAttachment` for an attachment this model's
        API does not take (``ContextWindow.add_prompt`` asks before storing the prompt)."""
        check_attachments(PROVIDER, attachments)

    def check_extra(self, extra: Mapping[str, Any], tools: bool) -> None:
        """Raise :class:`~rxcontext.UnsupportedOption` for a key of a call's ``extra`` that
        this model sets itself (``tools``: whether the call offers the window's tools) or
        that ``GenerateContentConfig`` refuses (a field it lacks, a value of the wrong type)."""
        refuse_keys(extra, with_tools(_EXTRA_REFUSED, tools), model=self.name, per_call=True)
        _check_config(extra, self.name, per_call=True)

    def request_config(self, request: Request) -> types.GenerateContentConfig:
        """The ``GenerateContentConfig`` for ``request``."""
        system = [r.content for r in request.records if r.type is RecordType.SYSTEM_PROMPT]
        return self._config(request, system)

    def _config(self, request: Request, system: list[str]) -> types.GenerateContentConfig:
        config = _config_fields(self.params)  # read per request: params may be changed
        if request.max_output_tokens is not None:
            config["max_output_tokens"] = request.max_output_tokens
        if any(system):
            config["system_instruction"] = "\n\n".join(s for s in system if s)
        if request.tools:
            declarations = [t.to_gemini() for t in request.tools]
            config["tools"] = [*config.get("tools", ()), {"function_declarations": declarations}]
        config.update(request.options)
        config.update(gemini_options(request.call))
        config.setdefault("automatic_function_calling", {"disable": True})
        config.setdefault("automatic_continuation", False)
        return types.GenerateContentConfig(**config)

    def _prepared(
        self, client: _C, request: Request
    ) -> tuple[_C, list[types.Content], types.GenerateContentConfig]:
        """The client to call, the ``contents`` and the config for ``request``.

        A Gemini API client gets the history already encoded: a stand-in sends it in place
        of :data:`PLACEHOLDER` (see :mod:`._history`); Vertex AI clients get SDK types.
        """
        if splicing(client):
            system, history = self._history.encode(request.records)
            if history:  # (no contents: the SDK's own call says they are required)
                config = self._config(request, system)
                return spliced_client(client, history), PLACEHOLDER, config
        return client, build_contents(request.records), self.request_config(request)

    # -- streaming ---------------------------------------------------------------------

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        """Stream ``request`` with the sync client; closing the generator closes the stream."""
        client, contents, config = self._prepared(self._client.get(), request)
        if self.wire == "fast":
            chunks = _fast_chunks(client, self.model_name, contents, config)
            return _guard(chunks, _secrets(client))
        return _sdk_chunks(client, self.model_name, contents, config, _secrets(client))

    def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        """The asyncio twin of :meth:`iter_chunks` (``aclose()`` closes the stream)."""
        client, contents, config = self._prepared(self._async_client.get(), request)
        if self.wire == "fast":
            chunks = _afast_chunks(client, self.model_name, contents, config)
        else:
            chunks = _asdk_chunks(client, self.model_name, contents, config)
        return _aguard(chunks, _secrets(client))

    # -- non-streaming -----------------------------------------------------------------

    def complete(self, request: Request) -> Reply:
        """One non-streaming ``generate_content`` call, reduced like a stream."""
        client, contents, config = self._prepared(self._client.get(), request)
        try:
            response = client.models.generate_content(
                model=self.model_name, contents=contents, config=config
            )
        except Exception as exc:
            raise _classified(exc, _secrets(client)) from exc
        return reply_from_chunks(_response_chunks(response, self.model_name))

    async def acomplete(self, request: Request) -> Reply:
        """The asyncio twin of :meth:`complete`."""
        client, contents, config = self._prepared(self._async_client.get(), request)
        try:
            response = await client.models.generate_content(
                model=self.model_name, contents=contents, config=config
            )
        except Exception as exc:
            raise _classified(exc, _secrets(client)) from exc
        return reply_from_chunks(_response_chunks(response, self.model_name))


def _config_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """A model's settings as ``GenerateContentConfig`` fields: ``max_tokens`` is taken as
    ``max_output_tokens``."""
    fields = dict(params)
    if "max_tokens" in fields:
        fields["max_output_tokens"] = fields.pop("max_tokens")
    return fields


def _env_client() -> genai.Client:
    try:
        return genai.Client()
    except ValueError as exc:
        raise ProviderError(
            f"{PROVIDER}: no API key: set GEMINI_API_KEY (or GOOGLE_API_KEY), or pass "
            "client=genai.Client(api_key=...) to GeminiModel",
            provider=PROVIDER,
            error_type="configuration",
        ) from exc


# -- errors -------------------------------------------------------------------------------


def _secrets(client: genai.Client | genai.client.AsyncClient) -> tuple[str | None, ...]:
    api = getattr(client, "_api_client", None)
    key = getattr(api, "api_key", None)
    return (key if isinstance(key, str) else None,)


def _api_error(
    code: int | None,
    status: str | None,
    detail: str,
    headers: Mapping[str, str] | None,
    secrets: tuple[str | None, ...],
) -> ProviderError:
    """Classify an HTTP error status, or an ``{"error": ...}`` payload in a 200 stream."""
    retryable = (code is not None and is_retryable_status(code)) or status in _RETRYABLE_STATUS
    message = f"HTTP {code} {status or 'error'}: {detail}"
    if retryable:
        message += " (retryable: send the request again later)"
    elif code in (401, 403):
        message += " (check GEMINI_API_KEY / GOOGLE_API_KEY or the client's api_key)"
    return provider_error(
        PROVIDER,
        message,
        status_code=code,
        error_type=status or None,
        retryable=retryable,
        headers=headers,
        secrets=secrets,
    )


def _classify(exc: BaseException, secrets: tuple[str | None, ...]) -> BaseException:
    """The :class:`ProviderError` for ``exc``, or ``exc`` itself if it is not a provider
    failure (``secrets``: :func:`sent_secrets`'s for ``exc``)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        headers = getattr(exc.response, "headers", None)
        detail = str(exc.message or exc.details)
        code = exc.code if isinstance(exc.code, int) else None
        status = exc.status if isinstance(exc.status, str) else None
        return _api_error(code, status, detail, headers, secrets)
    err = transport_error(exc, PROVIDER, secrets)
    if err is not None:
        return err
    if isinstance(exc, genai_errors.UnknownApiResponseError):  # a frame that is not JSON
        if _cut_short(exc.__cause__):
            return _incomplete()
        return malformed_event(PROVIDER, exc, error_type="invalid_json", secrets=secrets)
    if isinstance(exc, READ_ERRORS):
        # The SDK fails this way on an event of the wrong shape (a pydantic ValidationError,
        # a TypeError for a non-object or an error payload without a code, ...).
        return malformed_event(PROVIDER, exc, secrets=secrets)
    return exc


def _cut_short(cause: BaseException | None) -> bool:
    """Whether the frame that is not JSON is an object cut short: the body ended partway
    through its last event (google-genai reads an event with no blank line after it, and
    the raw JSON lines of an error body, at the end). Told by the text alone, the same on
    both paths: the SDK's error does not say where in the body the frame was."""
    if not isinstance(cause, json.JSONDecodeError):
        return False
    text = cause.doc.strip()
    if not text.startswith("{"):
        return False
    try:
        JsonStream().feed(text)  # raises at the first character no JSON text can go on with
    except ValueError:
        return False
    return True


def _classified(exc: Exception, secrets: tuple[str | None, ...]) -> BaseException:
    """``exc`` as a :class:`ProviderError` (to raise ``from exc``); ``exc`` re-raised if not one."""
    secrets = sent_secrets(exc, secrets)
    err = _classify(exc, secrets)
    if err is exc:
        raise exc
    mask_chain(exc, secrets)  # it becomes the ProviderError's __cause__
    return err


def _blocked(reason: str, message: str | None) -> ProviderError:
    detail = f": {message}" if message else ""
    return provider_error(
        PROVIDER,
        f"the prompt was blocked ({reason}){detail}; sent again it will be blocked again, "
        "change the prompt",
        error_type=f"prompt_blocked:{reason}",
        retryable=False,
    )


def _incomplete() -> ProviderError:
    return incomplete_stream(PROVIDER, "a finishReason")


def _guard(chunks: Iterator[Chunk], secrets: tuple[str | None, ...]) -> Iterator[Chunk]:
    try:
        yield from chunks
    except Exception as exc:
        raise _classified(exc, secrets) from exc


async def _aguard(
    chunks: AsyncGenerator[Chunk, None], secrets: tuple[str | None, ...]
) -> AsyncIterator[Chunk]:
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:
        raise _classified(exc, secrets) from exc
    finally:
        await chunks.aclose()


# -- stream state shared by both wire paths ----------------------------------------------


class _Turn:
    """What one streamed response has said so far besides its deltas."""

    __slots__ = (
        "_counts",
        "_per_prompt",
        "_queries",
        "_searched",
        "calls",
        "finish_reason",
        "response_id",
        "searches",
        "signature",
        "usage",
    )

    def __init__(self, model: str = "") -> None:
        self.calls = 0
        self.response_id: str | None = None
        self.finish_reason: str | None = None
        self.signature: str | None = None
        self.usage: Usage | None = None
        self._counts: tuple[int | None, ...] = ()
        self._per_prompt = _per_prompt(model)
        self._queries: set[str] = set()
        self.searches = 0  # billed Google Search grounding (see the module docstring)
        self._searched = 0  # the count in self.usage

    def ground(self, queries: list[str] | None) -> None:
        """Take the ``webSearchQueries`` of an event's ``groundingMetadata``."""
        if queries:
            self._queries.update(q for q in queries if q)  # empty ones are not billed
            self.searches = min(len(self._queries), 1) if self._per_prompt else len(self._queries)

    def recount(self) -> Chunk | None:
        """A USAGE chunk when searches came in an event without usage, after usage."""
        if self.searches == self._searched or not self._counts:
            return None
        return self.count(*self._counts)

    def call(self, name: str, args: object, call_id: str | None, signature: str | None) -> Chunk:
        """A whole function call as one TOOL_CALL fragment."""
        index = self.calls
        self.calls += 1
        raw = json.dumps(args if args is not None else {})
        metadata: dict[str, Any] = {}
        if signature:
            metadata[_SIGNATURE] = signature
        if not call_id:
            call_id = self._call_id(index, name, raw)
            metadata[_SYNTHETIC] = True
        return Chunk(_TOOL_CALL, raw, index, call_id, name, metadata=metadata)

    def _call_id(self, index: int, name: str, raw: str) -> str:
        # Deterministic: the same response read again (or by the other wire path, or
        # without streaming) gives the same ids.
        if self.response_id:
            return f"call_{self.response_id}_{index}"
        digest = hashlib.sha256(f"{name}\0{raw}".encode()).hexdigest()[:16]
        return f"call_{digest}_{index}"

    def count(
        self,
        prompt: int | None,
        candidates: int | None,
        total: int | None,
        cached: int | None,
        thoughts: int | None,
        tool_use: int | None,
    ) -> Chunk | None:
        """Take a chunk's usage (totals so far); a USAGE chunk if they changed.

        The tool-use prompt (what built-in tools fed back to the model) is input, billed
        as such. A count that is not an int raises before anything is taken.
        """
        counts = (prompt, candidates, total, cached, thoughts, tool_use)
        searches = self.searches
        if counts == self._counts and searches == self._searched:  # unchanged (and checked)
            return None
        if not (
            (prompt.__class__ is int or prompt is None)
            and (candidates.__class__ is int or candidates is None)
            and (total.__class__ is int or total is None)
            and (cached.__class__ is int or cached is None)
            and (thoughts.__class__ is int or thoughts is None)
            and (tool_use.__class__ is int or tool_use is None)
        ):
            raise bad_field("a usageMetadata count", counts)
        self._counts = counts
        self._searched = searches
        if tool_use:
            prompt = (prompt or 0) + tool_use
        # Usage.of's normalisation (every count is an int or None here, searches an int),
        # made the cheap way: one Usage an event.
        inp = prompt or 0
        out = candidates or 0
        usage = new_usage(inp, out, total or inp + out, cached or 0, thoughts or 0, 0, searches)
        old = self.usage
        # Most events count more output: unequal without Usage's __eq__ (a Python call).
        if old is not None and old.output_tokens == usage.output_tokens and usage == old:
            return None
        self.usage = usage
        return new_chunk(_USAGE, usage=usage)

    def done(self) -> Chunk:
        """The final DONE chunk; raises if the response never finished."""
        if self.finish_reason is None:
            raise _incomplete()
        metadata: dict[str, Any] = {}
        if self.signature:
            metadata[_REPLY_SIGNATURE] = self.signature
        return Chunk(
            ChunkKind.DONE,
            finish_reason=self.finish_reason,
            response_id=self.response_id,
            usage=self.usage,
            metadata=metadata,
        )


# -- wire="sdk": the SDK's response models -----------------------------------------------


def _enum_str(value: object) -> str:
    return str(getattr(value, "value", value))


def _sdk_signature(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode("ascii") if value else None


def _sdk_response(
    turn: _Turn, response: types.GenerateContentResponse, *, event: bool = True
) -> list[Chunk]:
    """The chunks of one ``GenerateContentResponse`` (a stream ``event`` or a whole response).

    An event with none of the fields the API sends is malformed: the SDK makes one of
    ``[]``, ``"text"``, ``null`` or ``{}``, and passing it over would store the reply as
    complete without whatever it should have said.
    """
    # Fields are read from the models' __dict__, where pydantic keeps them: an attribute
    # read on a model class with __getattr__ goes through a slow slot (~20 reads an event
    # cost ~40,000 instructions). A value that is no model (the SDK keeps what it cannot
    # build one from) has no __dict__ or not the field: an AttributeError or KeyError, a
    # malformed event as before.
    fields = response.__dict__
    candidates = fields["candidates"]
    if event and candidates is None and _empty(fields):
        raise BadEvent(
            "the event has none of the fields the API sends (candidates, usageMetadata, "
            "responseId, modelVersion, promptFeedback)"
        )
    out: list[Chunk] = []
    response_id = fields["response_id"]
    if response_id:
        turn.response_id = response_id
    if candidates:
        candidate = candidates[0].__dict__
        content = candidate["content"]
        for part in (content.__dict__["parts"] if content else None) or ():
            got = part.__dict__
            signature = got["thought_signature"]  # most parts have none: no call then
            signature = _sdk_signature(signature) if signature else None
            call = got["function_call"]
            if call is not None:
                out.append(turn.call(call.name or "", call.args, call.id, signature))
                continue
            if signature:
                turn.signature = signature
            text = got["text"]
            if text:
                out.append(new_chunk(_THINKING if got["thought"] else _TEXT, text))
        finish_reason = candidate["finish_reason"]
        if finish_reason is not None:
            turn.finish_reason = _enum_str(finish_reason)
        grounding = candidate["grounding_metadata"]
        if grounding is not None:
            turn.ground(grounding.__dict__["web_search_queries"])
    else:
        feedback = fields["prompt_feedback"]
        if feedback is not None and feedback.block_reason is not None:
            raise _blocked(_enum_str(feedback.block_reason), feedback.block_reason_message)
    meta = fields["usage_metadata"]
    if meta is not None:
        counts = meta.__dict__
        usage = turn.count(
            counts["prompt_token_count"],
            counts["candidates_token_count"],
            counts["total_token_count"],
            counts["cached_content_token_count"],
            counts["thoughts_token_count"],
            counts["tool_use_prompt_token_count"],
        )
        if usage is not None:
            out.append(usage)
    else:
        usage = turn.recount()
        if usage is not None:
            out.append(usage)
    return out


def _empty(fields: dict[str, Any]) -> bool:
    """Whether a ``GenerateContentResponse`` without candidates (its ``__dict__``) has none
    of the other fields either."""
    return (
        fields["usage_metadata"] is None
        and fields["response_id"] is None
        and fields["model_version"] is None
        and fields["prompt_feedback"] is None
        and fields["create_time"] is None
        and fields["model_status"] is None
    )


def _per_prompt(model: str) -> bool:
    """Whether ``model`` bills Google Search grounding per grounded prompt (Gemini 1.x and
    2.x) rather than per search query (Gemini 3, and names without a version)."""
    version = _VERSION.search(model)
    return version is not None and int(version.group(1)) < 3


_VERSION = re.compile(r"(?:^|/)gemini-(\d+)(?:[.-]|$)")


def _response_chunks(response: types.GenerateContentResponse, model: str) -> list[Chunk]:
    turn = _Turn(model)
    chunks = _sdk_response(turn, response, event=False)
    chunks.append(turn.done())
    return chunks


def _sdk_chunks(
    client: genai.Client,
    model: str,
    contents: list[types.Content],
    config: types.GenerateContentConfig,
    secrets: tuple[str | None, ...],
) -> Iterator[Chunk]:
    # Guarded as _guard guards the fast wire's chunks, but in this generator's own frame:
    # one generator level less for every chunk on this path.
    try:
        stream = client.models.generate_content_stream(
            model=model, contents=contents, config=config
        )
        try:
            turn = _Turn(model)
            with scope():  # the stand-in of a spliced client notes the SDK's response
                for response in stream:
                    yield from _sdk_response(turn, response)
            yield turn.done()
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
    except Exception as exc:
        raise _classified(exc, secrets) from exc


async def _asdk_chunks(
    client: genai.client.AsyncClient,
    model: str,
    contents: list[types.Content],
    config: types.GenerateContentConfig,
) -> AsyncGenerator[Chunk, None]:
    stream = await client.models.generate_content_stream(
        model=model, contents=contents, config=config
    )
    finished = False
    try:
        turn = _Turn(model)
        async for response in stream:
            for chunk in _sdk_response(turn, response):
                yield chunk
        finished = True
        yield turn.done()
    finally:
        # The SDK's async stream does not close its HTTP response when it is closed early
        # (its nested async generators are left suspended), so find and close it here.
        responses = () if finished else _open_responses(stream)
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
        for http_response in responses:
            await http_response.aclose()


def _open_responses(stream: object) -> list[httpx2.Response]:
    """The httpx2 responses held by a suspended async generator and the ones it iterates."""
    found: list[httpx2.Response] = []
    seen: set[int] = set()
    todo: list[object] = [stream]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, httpx2.Response):
            if not obj.is_closed:
                found.append(obj)
        elif isinstance(obj, pytypes.AsyncGeneratorType | pytypes.FrameType | pytypes.CellType):
            todo.extend(gc.get_referents(obj))
        elif isinstance(obj, genai_api.HttpResponse):
            todo.append(obj.response_stream)
    return found


# -- wire="fast": SSE frames → json.loads → chunks ---------------------------------------


def _sdk_names(enum: type[Enum]) -> dict[str, str]:
    """The values of the SDK's ``enum``, by value and by member name."""
    names = {str(member.value): str(member.value) for member in enum}
    for name, member in enum.__members__.items():
        names.setdefault(name, str(member.value))
    return names


_FINISH = _sdk_names(types.FinishReason)
_BLOCK = _sdk_names(types.BlockedReason)


def _sdk_case(names: Mapping[str, str], sent: str) -> str:
    """``sent`` as the SDK's case-insensitive enum reads it: a value, else a member's name in
    upper or lower case (a Gemini-compatible gateway's ``"max_tokens"`` is ``MAX_TOKENS``),
    else ``sent`` itself, as the SDK keeps a value it does not know."""
    return names.get(sent) or names.get(sent.upper()) or names.get(sent.lower()) or sent


def _wire_signature(value: object) -> str | None:
    if not value:
        return None
    # Decoded as the SDK decodes it, so both paths keep the same (standard base64) text.
    part = types.Part.model_validate({"thought_signature": value})
    return _sdk_signature(part.thought_signature)


class _FastReader:
    """``wire="fast"``: one ``data:`` frame → chunks, as :func:`_sdk_response` gives for the
    SDK's model of it.

    A frame that is not JSON, or an error payload, raises what the SDK raises for it (the
    same exception, built with the same arguments). A frame that is not what :meth:`read`
    expects is read again the SDK's way (:meth:`_sdk_model`), so both paths agree on it.
    """

    __slots__ = ("api", "params", "sent", "turn")

    def __init__(self, api: Any, params: Any, sent: Any, model: str = "") -> None:
        self.api = api
        self.params = params
        self.sent = sent  # the SDK's HttpResponse, which its in-stream errors carry
        self.turn = _Turn(model)

    def read(self, data: str) -> list[Chunk]:
        """The chunks of one ``data:`` frame."""
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise genai_errors.UnknownApiResponseError(
                f"Failed to parse response as JSON. Raw response: {data}"
            ) from exc
        if event.__class__ is dict and "error" in event and next(iter(event)) == "error":
            # As the SDK does: a payload whose first key is "error" is raised by its code.
            genai_errors.APIError.raise_error(event.get("error", {}).get("code"), event, self.sent)
        turn = self.turn
        calls = turn.calls
        try:
            out: list[Chunk] = []
            response_id = event.get("responseId")
            candidates = event.get("candidates")
            meta = event.get("usageMetadata")
            if response_id is None and candidates is None and meta is None:
                raise BadEvent  # the SDK's reader decides (another field, or an empty event)
            if response_id.__class__ is str:
                if response_id:
                    turn.response_id = response_id
            elif response_id is not None:
                raise BadEvent
            if candidates:
                # Not a list, or not dicts: [0] or .get fails, and the except below reads it.
                candidate = candidates[0]
                content = candidate.get("content")
                parts = content.get("parts") if content is not None else None
                if parts.__class__ is not list and parts is not None:
                    raise BadEvent
                for part in parts or ():
                    signature = part.get("thoughtSignature")
                    if signature is not None:
                        if signature.__class__ is not str:
                            raise BadEvent
                        signature = _wire_signature(signature)
                    call = part.get("functionCall")
                    if call is not None:
                        name, args, call_id = call.get("name"), call.get("args"), call.get("id")
                        if (
                            (name is not None and name.__class__ is not str)
                            or (args is not None and args.__class__ is not dict)
                            or (call_id is not None and call_id.__class__ is not str)
                        ):
                            raise BadEvent
                        out.append(turn.call(name or "", args, call_id, signature))
                        continue
                    if signature:
                        turn.signature = signature
                    text = part.get("text")
                    thought = part.get("thought")
                    if (text.__class__ is not str and text is not None) or (
                        thought is not None and thought.__class__ is not bool
                    ):
                        raise BadEvent
                    if text:
                        out.append(Chunk(_THINKING if thought else _TEXT, text))
                reason = candidate.get("finishReason")
                if reason is not None:
                    if reason.__class__ is not str:
                        raise BadEvent
                    turn.finish_reason = _sdk_case(_FINISH, reason)
                grounding = candidate.get("groundingMetadata")
                if grounding is not None:
                    queries = grounding.get("webSearchQueries")
                    if queries is not None and (
                        queries.__class__ is not list
                        or any(q.__class__ is not str for q in queries)
                    ):
                        raise BadEvent
                    turn.ground(queries)
            elif candidates is not None and candidates.__class__ is not list:
                raise BadEvent
            else:
                feedback = event.get("promptFeedback")
                if feedback is not None:
                    reason = feedback.get("blockReason")
                    message = feedback.get("blockReasonMessage")
                    if (reason is not None and reason.__class__ is not str) or (
                        message is not None and message.__class__ is not str
                    ):
                        raise BadEvent
                    if reason is not None:
                        raise _blocked(_sdk_case(_BLOCK, reason), message)
            if meta is not None:
                usage = turn.count(
                    meta.get("promptTokenCount"),
                    meta.get("candidatesTokenCount"),
                    meta.get("totalTokenCount"),
                    meta.get("cachedContentTokenCount"),
                    meta.get("thoughtsTokenCount"),
                    meta.get("toolUsePromptTokenCount"),
                )
                if usage is not None:
                    out.append(usage)
            else:
                usage = turn.recount()
                if usage is not None:
                    out.append(usage)
            return out
        except READ_ERRORS:
            turn.calls = calls  # the calls of this event are numbered again
            return _sdk_response(turn, self._sdk_model(event))

    def _sdk_model(self, event: Any) -> types.GenerateContentResponse:
        """The SDK's model of one event, built as ``Models._generate_content_stream`` does."""
        api, params = self.api, self.params
        response = json.loads(json.dumps(event))
        if api.vertexai:
            response = genai_models._GenerateContentResponse_from_vertex(response, None, params)
        else:
            response = genai_models._GenerateContentResponse_from_mldev(response, None, params)
        config = params.config
        kwargs: dict[str, Any] = {}
        if config is not None:
            kwargs["config"] = {
                "response_schema": getattr(config, "response_schema", None),
                "response_json_schema": getattr(config, "response_json_schema", None),
                "include_all_fields": getattr(config, "include_all_fields", None),
            }
        return types.GenerateContentResponse._from_response(response=response, kwargs=kwargs)


def _flush(decoder: SSEDecoder) -> list[str]:
    """The data of the events left at the end of the stream.

    Unlike the OpenAI and Anthropic SDKs, google-genai also reads a last event that has no
    blank line after it: ``flush(dispatch_pending=True)``.
    """
    return [data for _, data in decoder.flush(dispatch_pending=True)]


def _stream_request(
    models: genai_models.Models | genai_models.AsyncModels,
    model: str,
    contents: list[types.Content],
    config: types.GenerateContentConfig,
) -> tuple[Any, types.HttpOptions | None, Any]:
    """The SDK's own HTTP request for ``streamGenerateContent`` (as its stream methods build
    it), its HTTP options, and the SDK's parameter model (which reads the response too)."""
    api = models._api_client
    params = types._GenerateContentParameters(model=model, contents=contents, config=config)
    if api.vertexai:
        body = genai_models._GenerateContentParameters_to_vertex(api, params, None, params)
    else:
        body = genai_models._GenerateContentParameters_to_mldev(api, params, None, params)
    url = body.get("_url")
    path = "{model}:streamGenerateContent?alt=sse"
    path = path.format_map(url) if url else path
    query = body.get("_query")
    if query:
        path = f"{path}?{urlencode(query)}"
    body.pop("config", None)
    http_options = params.config.http_options if params.config is not None else None
    body = genai_common.encode_unserializable_types(genai_common.convert_to_dict(body))
    return api._build_request("post", path, body, http_options), http_options, params


def _fast_chunks(
    client: genai.Client,
    model: str,
    contents: list[types.Content],
    config: types.GenerateContentConfig,
) -> Iterator[Chunk]:
    api = client.models._api_client
    http_request, http_options, params = _stream_request(client.models, model, contents, config)
    with scope():  # a read stuck in the response can be broken (._abort)
        sent = api._request(http_request, http_options, stream=True)
        response: Any = sent.response_stream
        note(response)  # (a spliced client's stand-in noted it already)
        try:
            reader = _FastReader(api, params, sent, model)
            read = reader.read
            decoder = SSEDecoder("google-genai")
            if isinstance(response, httpx2.Response):
                pieces = response.iter_bytes()
            else:  # requests, which the SDK uses with google-auth credentials
                pieces = response.iter_content(chunk_size=None)
            for piece in pieces:
                for _, data in decoder.feed(piece):
                    yield from read(data)
            for data in _flush(decoder):
                yield from read(data)
            yield reader.turn.done()
        finally:
            response.close()


async def _afast_chunks(
    client: genai.client.AsyncClient,
    model: str,
    contents: list[types.Content],
    config: types.GenerateContentConfig,
) -> AsyncGenerator[Chunk, None]:
    api = client.models._api_client
    http_request, http_options, params = _stream_request(client.models, model, contents, config)
    sent = await api._async_request(http_request, http_options, stream=True)
    response: Any = sent.response_stream
    pieces: Any = None
    try:
        reader = _FastReader(api, params, sent, model)
        read = reader.read
        decoder = SSEDecoder("google-genai")
        if isinstance(response, httpx2.Response):
            pieces = response.aiter_bytes()
        else:  # aiohttp, which the SDK prefers when it is installed and no client is given
            pieces = response.content.iter_any()
        async for piece in pieces:
            for _, data in decoder.feed(piece):
                for chunk in read(data):
                    yield chunk
        for data in _flush(decoder):
            for chunk in read(data):
                yield chunk
        yield reader.turn.done()
    finally:
        if isinstance(response, httpx2.Response):
            if pieces is not None:  # closed here, not left for the loop's finalizer
                await pieces.aclose()
            await response.aclose()
        else:
            response.release()
