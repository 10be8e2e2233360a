"""Gemini: records → ``contents``, as SDK types or as the JSON the SDK would send.

:func:`build_contents` gives the SDK's ``types.Content`` objects (for Vertex AI clients,
whose converters differ); :class:`GeminiHistory` gives the JSON that the SDK's Gemini API
converters and encoder make of them, from records encoded once, and :func:`spliced_client`
a stand-in client through which the SDK's own calls send that JSON (see :mod:`._history`):
the SDK's pydantic models and converters cost about 0.5 ms a message.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

from google import genai
from google.genai import models as genai_models
from google.genai import types

from ..records import Record, RecordType, tool_failed
from ._abort import note
from ._attachments import gemini_parts
from ._history import MARKER, HistoryCache, json_array, spaced_json, splice

__all__ = ["PLACEHOLDER", "GeminiHistory", "build_contents", "spliced_client"]

SIGNATURE = "thought_signature"
"""Tool-call record metadata key: the call's thought signature (standard base64)."""
REPLY_SIGNATURE = "gemini_thought_signature"
"""Reply record metadata key: the thought signature of the reply's other parts."""
SYNTHETIC = "gemini_synthetic_id"
"""Tool-call record metadata key: its id was made by rxcontext, not by Gemini."""

PLACEHOLDER = [types.Content(role="user", parts=[types.Part(text=MARKER)])]
"""The ``contents`` given to the SDK's calls in place of the history (:func:`spliced_client`)."""

_TOKEN = spaced_json([MARKER])


def _from_first_prompt(records: Sequence[Record]) -> Sequence[Record]:
    """``records`` without the turns before the first prompt (system prompts stay).

    Gemini refuses contents that open with the model's turn ("Please ensure that function
    call turn comes immediately after a user turn or after a function response turn"; "...
    multiturn requests alternate between user and model"), as a history whose first prompt
    was killed would: its replies, calls and the outputs answering them are not sent (the
    records themselves are untouched). A history with no prompt is left as it is.
    """
    system = RecordType.SYSTEM_PROMPT
    turns = False  # whether a turn comes before the first prompt
    for i, record in enumerate(records):
        kind = record.type
        if kind is RecordType.PROMPT:
            if not turns:
                return records
            return [*(r for r in records[:i] if r.type is system), *records[i:]]
        turns = turns or kind is not system
    return records


def build_contents(records: Iterable[Record]) -> list[types.Content]:
    """The ``contents`` for ``records`` (system prompts go to the config, not here).

    Turns before the first prompt (a history whose first prompt was killed) are left out:
    Gemini refuses contents that open with the model's turn.

    A MODEL_RESP and the TOOL_CALLs after it make one ``model`` content: its text part
    (carrying the reply's thought signature, if any), then one ``function_call`` part per
    call with the call's thought signature. Consecutive TOOL_OUTPUTs make one ``user``
    content of ``function_response`` parts. Adjacent contents of one role are merged:
    Gemini wants user and model turns to alternate ("Please ensure that multiturn requests
    alternate between user and model"), and a prompt after an interrupted reply, or after
    tool outputs, would otherwise follow another user turn. Other providers' metadata is
    ignored.
    """
    records = _from_first_prompt(list(records))
    contents: list[types.Content] = []
    # The model turn being built: a MODEL_RESP is followed by its TOOL_CALLs.
    model_parts: list[types.Part] | None = None
    outputs: list[types.Part] | None = None
    # Ids we generated are not sent: Gemini did not choose them (see _Turn.call).
    synthetic_ids: set[str | None] = set()

    def flush() -> None:
        nonlocal model_parts, outputs
        if model_parts:
            contents.append(types.Content(role="model", parts=model_parts))
        if outputs:
            contents.append(types.Content(role="user", parts=outputs))
        model_parts = outputs = None

    for record in records:
        kind = record.type
        if kind is RecordType.MODEL_RESP:
            flush()
            model_parts = []
            signature = _signature_bytes(record.metadata.get(REPLY_SIGNATURE))
            if record.content or signature is not None:
                model_parts.append(types.Part(text=record.content, thought_signature=signature))
        elif kind is RecordType.TOOL_CALL:
            if model_parts is None:
                flush()
                model_parts = []
            synthetic = bool(record.metadata.get(SYNTHETIC))
            if synthetic:
                synthetic_ids.add(record.tool_call_id)
            call = types.FunctionCall(
                id=None if synthetic else record.tool_call_id,
                name=record.tool_name,
                args=_arguments(record.content),
            )
            signature = _signature_bytes(record.metadata.get(SIGNATURE))
            model_parts.append(types.Part(function_call=call, thought_signature=signature))
        elif kind is RecordType.TOOL_OUTPUT:
            if outputs is None:
                flush()
                outputs = []
            call_id = record.tool_call_id
            response = types.FunctionResponse(
                id=None if call_id in synthetic_ids else call_id,
                name=record.tool_name,
                response=_response(record),
            )
            outputs.append(types.Part(function_response=response))
        elif kind is RecordType.PROMPT:
            flush()
            parts = [types.Part(text=record.content), *_sdk_attachment_parts(record)]
            contents.append(types.Content(role="user", parts=parts))
    flush()
    merged: list[types.Content] = []
    for content in contents:
        if merged and merged[-1].role == content.role:
            parts = [*(merged[-1].parts or []), *(content.parts or [])]
            merged[-1] = types.Content(role=content.role, parts=parts)
        else:
            merged.append(content)
    return merged


def _sdk_attachment_parts(record: Record) -> list[types.Part]:
    if not record.attachments:
        return []
    gemini_parts(record.attachments)  # refuses what Gemini does not take, as the JSON path
    return [
        types.Part(inline_data=types.Blob(mime_type=a.media_type, data=a.data))
        if a.data is not None
        else types.Part(file_data=types.FileData(file_uri=a.url, mime_type=a.media_type))
        for a in record.attachments
    ]


def _arguments(raw: str) -> dict[str, Any]:
    # Arguments that do not parse (a cut stream) cannot go back as written; the API needs
    # an object, so they go back empty.
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _signature_bytes(value: object) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


# -- the same contents as the JSON the SDK sends (Gemini API) ------------------------------


def _with_signature(part: dict[str, Any], value: object) -> dict[str, Any]:
    # The SDK sends a signature's bytes URL-safe base64 encoded (encode_unserializable_types).
    signature = _signature_bytes(value)
    if signature is not None:
        part["thoughtSignature"] = base64.urlsafe_b64encode(signature).decode("ascii")
    return part


def _call_part(record: Record, synthetic: bool) -> dict[str, Any]:
    call: dict[str, Any] = {}
    if not synthetic and record.tool_call_id is not None:
        call["id"] = record.tool_call_id
    call["args"] = _arguments(record.content)
    if record.tool_name is not None:
        call["name"] = record.tool_name
    return _with_signature({"functionCall": call}, record.metadata.get(SIGNATURE))


def _response_part(record: Record, with_id: bool) -> dict[str, Any]:
    response: dict[str, Any] = {}
    if with_id and record.tool_call_id is not None:
        response["id"] = record.tool_call_id
    if record.tool_name is not None:
        response["name"] = record.tool_name
    response["response"] = _response(record)
    return {"functionResponse": response}


def _response(record: Record) -> dict[str, Any]:
    # The API's documented keys: "output" for a result, "error" for a call that failed
    # (else the model reads the error as the tool's result).
    return {"error" if tool_failed(record) else "output": record.content}


class _Entry:
    """A record's encoded part (a prompt: its parts and its whole content), as the SDK would
    send it, and for a reply the ``model`` content its part makes alone."""

    __slots__ = (
        "alone",
        "call_id",
        "json",
        "json_without_id",
        "kind",
        "parts",
        "synthetic",
        "system",
    )

    def __init__(self, record: Record) -> None:
        kind = self.kind = record.type
        self.call_id = record.tool_call_id
        self.synthetic = False
        self.system = record.content if kind is RecordType.SYSTEM_PROMPT else None
        self.json = self.json_without_id = self.alone = b""
        self.parts: list[bytes] = []
        if kind is RecordType.PROMPT:
            self.parts = [spaced_json({"text": record.content})]
            if record.attachments:
                self.parts.extend(spaced_json(p) for p in gemini_parts(record.attachments))
            self.json = _content(self.parts, b"user")
        elif kind is RecordType.MODEL_RESP:
            signature = record.metadata.get(REPLY_SIGNATURE)
            if record.content or _signature_bytes(signature) is not None:
                self.json = spaced_json(_with_signature({"text": record.content}, signature))
                self.alone = _content([self.json], b"model")
        elif kind is RecordType.TOOL_CALL:
            self.synthetic = bool(record.metadata.get(SYNTHETIC))
            self.json = spaced_json(_call_part(record, self.synthetic))
        elif kind is RecordType.TOOL_OUTPUT:
            self.json = spaced_json(_response_part(record, True))
            self.json_without_id = spaced_json(_response_part(record, False))


def _content(parts: list[bytes], role: bytes) -> bytes:
    return b"".join((b'{"parts": [', b", ".join(parts), b'], "role": "', role, b'"}'))


class GeminiHistory:
    """What :func:`build_contents` gives, as the encoded items of the JSON array the SDK sends."""

    __slots__ = ("cache",)

    def __init__(self) -> None:
        self.cache: HistoryCache[_Entry] = HistoryCache(_Entry)

    def encode(self, records: Sequence[Record]) -> tuple[list[str], list[bytes]]:
        """The system prompts and the encoded ``contents`` of ``records`` (the grouping and
        the merging of :func:`build_contents`)."""
        lookup = self.cache.lookup(_from_first_prompt(records))
        entries = lookup.entries
        # Resume where the previous request's last content began, if its records are unchanged.
        resume = lookup.resume
        contents: list[bytes]
        system: list[str]
        # Per content: its role, its parts and the mark where it began (a later group of the
        # same role is merged into it, so a resume must go back to where it began).
        roles: list[bytes]
        parts_of: list[list[bytes]]
        marks: list[tuple[int, int, int, int]]
        if resume is not None and resume[0] < lookup.same:
            start, n = resume[0], resume[2]
            contents, made = resume[1][:n], resume[3][: resume[4]]
            system = resume[5][: resume[6]]
            roles, parts_of, marks = resume[7][:n], resume[8][:n], resume[9][:n]
        else:
            start, contents, made, system = 0, [], [], []
            roles, parts_of, marks = [], [], []
        # The open model content (a reply and the calls after it; ``head`` is the reply) or
        # user content of tool outputs, as in build_contents; ``made``: the calls whose ids
        # rxcontext made, in order (``synthetic`` as a set).
        head: _Entry | None = None
        model: list[bytes] | None = None
        outputs: list[bytes] | None = None
        synthetic = set(made)
        mark = (start, len(contents), len(made), len(system))

        def emit(role: bytes, items: list[bytes], whole: bytes) -> None:
            if roles and roles[-1] == role:  # merged into the content before
                parts_of[-1] = parts_of[-1] + items
                contents[-1] = _content(parts_of[-1], role)
                return
            contents.append(whole or _content(items, role))
            roles.append(role)
            parts_of.append(items)
            marks.append(mark)

        def flush() -> None:
            nonlocal head, model, outputs
            if model:
                # A reply alone: its content is kept whole.
                alone = head.alone if head is not None and len(model) == 1 else b""
                emit(b"model", model, alone)
            if outputs:
                emit(b"user", outputs, b"")
            head = model = outputs = None

        model_resp, tool_call = RecordType.MODEL_RESP, RecordType.TOOL_CALL
        tool_output, prompt = RecordType.TOOL_OUTPUT, RecordType.PROMPT
        for i in range(start, len(entries)):
            entry = entries[i]
            kind = entry.kind
            if kind is prompt:
                if model is not None or outputs is not None:
                    flush()
                mark = (i, len(contents), len(made), len(system))
                emit(b"user", entry.parts, entry.json)
            elif kind is model_resp:
                if model is not None or outputs is not None:
                    flush()
                mark = (i, len(contents), len(made), len(system))
                head = entry
                model = [entry.json] if entry.json else []
            elif kind is tool_call:
                if model is None:
                    flush()
                    mark = (i, len(contents), len(made), len(system))
                    model = []
                if entry.synthetic and entry.call_id not in synthetic:
                    synthetic.add(entry.call_id)
                    made.append(entry.call_id)
                model.append(entry.json)
            elif kind is tool_output:
                if outputs is None:
                    flush()
                    mark = (i, len(contents), len(made), len(system))
                    outputs = []
                outputs.append(entry.json_without_id if entry.call_id in synthetic else entry.json)
            elif entry.system is not None:
                system.append(entry.system)
        flush()
        last = marks[-1] if marks else mark
        self.cache.keep(
            lookup,
            (last[0], contents, last[1], made, last[2], system, last[3], roles, parts_of, marks),
        )
        return system, contents


# -- sending it through the SDK's own calls ------------------------------------------------


class _SplicingApiClient:
    """Stands in for a ``BaseApiClient``: requests it builds carry ``history`` as ``contents``.

    The SDK's calls (``models.generate_content_stream`` and the rest) build their body with
    :data:`PLACEHOLDER` as ``contents`` and hand it to ``request`` / ``request_streamed`` (or,
    on the fast wire, rxcontext calls ``_build_request``): those run the real client's own
    code with this stand-in as ``self``, so they build the request here, where ``contents``
    is replaced by the encoded history, and send it with the real client's ``_request``.
    """

    def __init__(self, api: Any, history: list[bytes]) -> None:
        self._api = api
        self._history = history
        # What the SDK's stream reads on every event (models.py, _generate_content_stream:
        # ``vertexai`` twice, ``_verify_response``), taken here once. A read __getattr__
        # answers first fails (an AttributeError is made and dropped): those three reads
        # cost ~19,000 instructions an event (callgrind), 1.3 % of the SDK's own work on
        # it. The stand-in lives for one request; ``vertexai`` is what :func:`splicing`
        # decided on, and ``_verify_response`` is the real client's own bound method.
        self.vertexai = api.vertexai
        self._verify_response = api._verify_response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def _build_request(
        self, http_method: str, path: str, request_dict: dict[str, Any], http_options: Any = None
    ) -> Any:
        if "contents" in request_dict:
            request_dict["contents"] = [MARKER]
        request = self._api._build_request(http_method, path, request_dict, http_options)
        data = request.data
        if isinstance(data, dict):
            raw = splice(spaced_json(data), self._history, _TOKEN, b", ")
            if raw is not None:
                request.data = raw
            elif data.get("contents") == [MARKER]:
                data["contents"] = json.loads(json_array(self._history, b", "))
        return request

    def request(self, *args: Any, **kwargs: Any) -> Any:
        return type(self._api).request(self, *args, **kwargs)

    def request_streamed(self, *args: Any, **kwargs: Any) -> Any:
        return type(self._api).request_streamed(self, *args, **kwargs)

    def _request(self, *args: Any, **kwargs: Any) -> Any:
        # What request_streamed sends with: the response is noted so that a read stuck in
        # it can be broken (see ._abort; the SDK keeps it out of sight otherwise).
        sent = self._api._request(*args, **kwargs)
        if kwargs.get("stream"):
            note(getattr(sent, "response_stream", None))
        return sent

    async def async_request(self, *args: Any, **kwargs: Any) -> Any:
        return await type(self._api).async_request(self, *args, **kwargs)

    async def async_request_streamed(self, *args: Any, **kwargs: Any) -> Any:
        return await type(self._api).async_request_streamed(self, *args, **kwargs)


def splicing(client: genai.Client | genai.client.AsyncClient) -> bool:
    """Whether ``client`` may be sent a spliced body: the Gemini API, not Vertex AI (whose
    converters differ and whose credentials path encodes the body itself)."""
    return not client._api_client.vertexai


def spliced_client(client: genai.Client | genai.client.AsyncClient, history: list[bytes]) -> Any:
    """A stand-in for ``client`` (its ``models`` and ``_api_client``) whose calls given
    :data:`PLACEHOLDER` as ``contents`` send ``history`` (from :class:`GeminiHistory`)."""
    api: Any = _SplicingApiClient(client._api_client, history)
    if isinstance(client, genai.Client):
        return SimpleNamespace(models=genai_models.Models(api), _api_client=api)
    return SimpleNamespace(models=genai_models.AsyncModels(api), _api_client=api)
