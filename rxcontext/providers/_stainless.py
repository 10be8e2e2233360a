"""Send a body with a pre-encoded history through an OpenAI or Anthropic SDK client.

Both SDKs are generated the same way: a resource (``Completions``, ``Responses``,
``Messages``) takes its client in its constructor, and its ``create`` checks and transforms the
parameters, then calls ``client.post(path, body=..., options=..., cast_to=..., stream=...,
stream_cls=...)``. :class:`SplicingClient` stands in for the client in such a resource:
``create`` runs as always with the history replaced by ``[MARKER]`` (so the SDK transforms
only the small rest), and its ``post`` encodes that small body as the SDK would, puts the
history's bytes in place of the marker (:func:`._history.splice`) and hands the result to the
real client's ``post(content=...)``. The real client then authenticates, sends, applies its
retry policy, and returns or raises exactly what ``create`` would (its ``Stream``, its raw
response for ``with_streaming_response``, its ``APIStatusError`` subclasses).

Everything else the stand-in forwards to the real client. Nothing here imports an SDK: each
provider module passes its SDK's way of encoding a body (``encode_body``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ._history import MARKER, compact_json, json_array, splice

__all__ = ["HISTORY", "AsyncSplicingClient", "EncodeBody", "SplicingClient"]

HISTORY: list[Any] = [MARKER]
"""What the history parameter (``messages``, ``input``) is given in ``create``."""

_TOKEN = compact_json(HISTORY)

EncodeBody = Callable[[Mapping[str, Any], Mapping[str, Any] | None], bytes]
"""``(body, extra_json) -> bytes``: what the SDK sends for ``body`` merged with ``extra_body``."""


class SplicingClient:
    """A stand-in client whose ``post`` sends ``history`` (the encoded items of a JSON array)
    as ``body[key]``."""

    def __init__(
        self, client: Any, key: str, history: list[bytes], encode_body: EncodeBody
    ) -> None:
        self._client = client
        self._key = key
        self._history = history
        self._encode_body = encode_body

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _arguments(self, body: Any, options: Mapping[str, Any]) -> dict[str, Any]:
        raw = splice(self._encode_body(body, options.get("extra_json")), self._history, _TOKEN)
        if raw is None:
            # The marker is not there once (extra_body replaced the history, say): the SDK
            # encodes the real history itself, as it would have.
            if body.get(self._key) == HISTORY:
                body = {**body, self._key: json.loads(json_array(self._history))}
            return {"body": body, "options": options}
        return {"content": raw, "options": {k: v for k, v in options.items() if k != "extra_json"}}

    def post(
        self, path: str, *, body: Any = None, options: Mapping[str, Any] | None = None, **kw: Any
    ) -> Any:
        """The real client's ``post`` with the history spliced into ``body``."""
        return self._client.post(path, **self._arguments(body, options or {}), **kw)


class AsyncSplicingClient(SplicingClient):
    """The asyncio twin of :class:`SplicingClient` (for ``AsyncOpenAI`` / ``AsyncAnthropic``)."""

    async def post(
        self, path: str, *, body: Any = None, options: Mapping[str, Any] | None = None, **kw: Any
    ) -> Any:
        """The real client's ``post`` with the history spliced into ``body``."""
        return await self._client.post(path, **self._arguments(body, options or {}), **kw)
