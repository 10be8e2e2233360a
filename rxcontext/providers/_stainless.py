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

A stand-in holds no request of its own, so one is built per real client and kept
(:class:`StandIns`): the history it splices is the one its caller set around the SDK call
(:class:`Splice`, :class:`Posting`), in a context variable, so threads and asyncio tasks
sending through one stand-in at once each send their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any

from ._history import MARKER, compact_json, json_array, splice

__all__ = [
    "HISTORY",
    "AsyncSplicingClient",
    "EncodeBody",
    "Posting",
    "Splice",
    "SplicingClient",
    "StandIns",
    "given",
]

HISTORY: list[Any] = [MARKER]
"""What the history parameter (``messages``, ``input``) is given in ``create``."""

_TOKEN = compact_json(HISTORY)

EncodeBody = Callable[[Mapping[str, Any], Mapping[str, Any] | None], bytes]
"""``(body, extra_json) -> bytes``: what the SDK sends for ``body`` merged with ``extra_body``."""


def given(extra_json: Mapping[str, Any], not_given: type) -> Mapping[str, Any]:
    """``extra_json`` (``extra_body``) without its top-level values of the SDK's
    ``not_given`` type: the SDKs strip those before they merge it into the body (a
    ``NOT_GIVEN`` over a body key leaves the body's value)."""
    if any(isinstance(v, not_given) for v in extra_json.values()):
        return {k: v for k, v in extra_json.items() if not isinstance(v, not_given)}
    return extra_json


_SPLICED: ContextVar[list[bytes] | None] = ContextVar("rxcontext_spliced", default=None)
"""The history a stand-in's ``post`` splices in this thread or task (set by :class:`Splice`)."""


class Splice:
    """``with Splice(history):`` a stand-in's ``post`` made inside splices ``history`` (None:
    the call goes to a real client, which never asks)."""

    __slots__ = ("_history", "_token")

    def __init__(self, history: list[bytes] | None) -> None:
        self._history = history

    def __enter__(self) -> None:
        self._token: Token[list[bytes] | None] = _SPLICED.set(self._history)

    def __exit__(self, *exc: object) -> None:
        _SPLICED.reset(self._token)


class Posting:
    """A ``with_streaming_response`` context manager whose entry (where the SDK posts) is
    made inside :class:`Splice` for ``history``; its exit is the SDK's own."""

    __slots__ = ("_history", "_manager")

    def __init__(self, manager: Any, history: list[bytes] | None) -> None:
        self._manager = manager
        self._history = history

    def __enter__(self) -> Any:
        with Splice(self._history):
            return self._manager.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._manager.__exit__(*exc)

    async def __aenter__(self) -> Any:
        with Splice(self._history):
            return await self._manager.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._manager.__aexit__(*exc)


class StandIns:
    """The stand-in of the last client asked for, built by ``build`` once per client.

    Keyed by the client object itself (never shared with another client, even an equal
    one); what a request needs of the client (key, URL, headers) the stand-in reads from
    it at each call. Safe across threads: two threads missing at once each build one, and
    either may stay.
    """

    __slots__ = ("_build", "_last")

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self._build = build
        self._last: tuple[Any, Any] | None = None

    def get(self, client: Any) -> Any:
        """The stand-in for ``client``."""
        last = self._last
        if last is not None and last[0] is client:
            return last[1]
        stand_in = self._build(client)
        self._last = (client, stand_in)
        return stand_in


class SplicingClient:
    """A stand-in client whose ``post`` sends ``history`` (the encoded items of a JSON
    array), or without one the history set by :class:`Splice`, as ``body[key]``."""

    def __init__(
        self, client: Any, key: str, encode_body: EncodeBody, history: list[bytes] | None = None
    ) -> None:
        self._client = client
        self._key = key
        self._encode_body = encode_body
        self._history = history

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    # The credentials, read per request (the secrets an error message must not quote):
    # forwarded directly, not after the failed lookup (an AttributeError made and dropped,
    # ~0.4 µs) that precedes __getattr__. A client without one raises as it would.
    @property
    def api_key(self) -> Any:
        """The real client's ``api_key``."""
        return self._client.api_key

    @property
    def auth_token(self) -> Any:
        """The real client's ``auth_token``."""
        return self._client.auth_token

    def _arguments(self, body: Any, options: Mapping[str, Any]) -> dict[str, Any]:
        history = self._history
        if history is None:
            history = _SPLICED.get()
        if history is None:
            raise RuntimeError("rxcontext: a splicing client was called outside a Splice")
        raw = splice(self._encode_body(body, options.get("extra_json")), history, _TOKEN)
        if raw is None:
            # The marker is not there once (extra_body replaced the history, say): the SDK
            # encodes the real history itself, as it would have.
            if body.get(self._key) == HISTORY:
                body = {**body, self._key: json.loads(json_array(history))}
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
