"""Pieces every provider module shares: error classification, key scrubbing, lazy clients."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Generic, Literal, TypeVar
from urllib.parse import quote

import httpx2

from ..errors import ProviderError

__all__ = [
    "PLACEHOLDER_KEY",
    "READ_ERRORS",
    "BadEvent",
    "Lazy",
    "Wire",
    "check_wire",
    "incomplete_stream",
    "is_retryable_status",
    "malformed_event",
    "mask_chain",
    "provider_error",
    "refused_request",
    "request_secrets",
    "retry_after_seconds",
    "scrub",
    "sent_secrets",
    "transport_error",
]

PLACEHOLDER_KEY = "not-needed"
"""The key an OpenAI client gets for a server that takes none (``OPENAI_BASE_URL`` or
``base_url=`` without a key): OpenAI-compatible local servers (llama.cpp, Ollama, vLLM)
accept any key, but the SDK refuses to be built without one."""

T = TypeVar("T")

Wire = Literal["sdk", "fast"]
"""How a model reads the provider's stream: the SDK's event models, or SSE frames directly."""


def check_wire(wire: str) -> Wire:
    """``wire`` if it is ``"sdk"`` or ``"fast"``; otherwise a ``ValueError`` saying so."""
    if wire == "sdk":
        return "sdk"
    if wire == "fast":
        return "fast"
    raise ValueError(f"wire must be 'sdk' or 'fast', not {wire!r}")


# Shapes of the providers' API keys; anything that looks like one is masked in messages.
# A bearer token runs to the end of RFC 6750's token68 (base64 keys hold + / and end in =).
_KEY = re.compile(
    r"(sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|"
    r"(?i:bearer)\s+[A-Za-z0-9_\-.~+/]{8,}=*|key=[A-Za-z0-9_\-]{8,})"
)

_CREDENTIAL_HEADERS = (
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
)
"""Request headers that carry a key (OpenAI and Anthropic bearer tokens, Azure OpenAI's
``api-key``, Anthropic's ``x-api-key``, Gemini's ``x-goog-api-key``)."""

_ILLEGAL = re.compile(r"[\r\n\0]|^\s|\s$")
"""What makes a header value one the HTTP client refuses to send, quoting it in its error."""


def _forms(secret: str) -> set[str]:
    """The ways a message may quote ``secret``: as it is, stripped (a key read from a file
    keeps its newline), escaped as a ``str`` or ``bytes`` repr shows it (an HTTP client that
    refuses a header quotes it as bytes: ``b'<key>\\n'``), escaped again (a repr of such a
    message), as JSON and URL-encoded. Cheap: this runs on error paths only."""
    forms: set[str] = set()
    for plain in {secret, secret.strip()}:
        if len(plain) < 4:
            continue
        once = {
            plain,
            repr(plain)[1:-1],
            repr(plain.encode("utf-8", "backslashreplace"))[2:-1],
            json.dumps(plain)[1:-1],
            quote(plain, safe=""),
        }
        forms |= once
        forms |= {repr(form)[1:-1] for form in once}
    return forms


def scrub(message: str, *secrets: str | None) -> str:
    """Mask API keys in ``message``: known shapes, and each of ``secrets`` in every form a
    message may quote it in (stripped, escaped, encoded: see ``_forms``)."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= _forms(secret)
    for form in sorted(forms, key=len, reverse=True):  # the longest first: "k\n" before "k"
        message = message.replace(form, "***")
    return _KEY.sub("***", message)


def request_secrets(request: object) -> tuple[str, ...]:
    """The keys ``request`` (an ``httpx2.Request``) was sent with: its credential headers'
    values, the token after an ``Authorization`` scheme (and a Basic pair's password), and a
    ``key`` query parameter. The key a client sends is the one a server echoes back; with a
    key provider (a callable, a vault) the client holds no key of its own to mask."""
    if not isinstance(request, httpx2.Request):
        return ()
    found: list[str] = []
    for name in _CREDENTIAL_HEADERS:
        for value in request.headers.get_list(name):
            found.append(value)
            scheme, _, token = value.partition(" ")
            if not token:
                continue
            found.append(token)
            if scheme.lower() == "basic":
                with contextlib.suppress(ValueError):
                    pair = base64.b64decode(token.strip(), validate=True).decode()
                    found += [pair, pair.partition(":")[2]]
    found += request.url.params.get_list("key")
    # A value the HTTP client refuses (a newline, a NUL, edge whitespace) is quoted in its
    # error whatever the header: a gateway token in default_headers read from a file, say.
    found += [v for _, v in request.headers.multi_items() if _ILLEGAL.search(v)]
    return tuple(found)


def _links(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during, or holds in its ``args``
    (httpcore2 wraps h11's error that way), each once."""
    seen: set[int] = set()
    found: list[BaseException] = []
    todo = [exc]
    while todo:
        at = todo.pop()
        if id(at) in seen:
            continue
        seen.add(id(at))
        found.append(at)
        todo += [e for e in (at.__cause__, at.__context__) if e is not None]
        todo += [a for a in at.args if isinstance(a, BaseException)]
    return found


def sent_secrets(exc: BaseException, secrets: tuple[str | None, ...]) -> tuple[str | None, ...]:
    """``secrets`` and the keys the requests of ``exc``'s chain were sent with (see
    :func:`request_secrets`): what a message about ``exc`` may quote."""
    found: list[str] = []
    for at in _links(exc):
        for holder in (at, getattr(at, "response", None)):
            try:  # httpx2's exceptions raise RuntimeError for a request never set
                request = getattr(holder, "request", None)
            except RuntimeError:
                continue
            found += request_secrets(request)
    return (*secrets, *found) if found else secrets


def mask_chain(exc: BaseException, secrets: tuple[str | None, ...]) -> None:
    """Mask API keys in the message, ``args`` and notes of ``exc`` and of every exception it
    was raised from or during: an SDK exception chained as a :class:`ProviderError`'s cause
    is shown in its traceback, and may quote a key the server echoed back (a 401, an error
    event) or the HTTP client refused to send (a header with a newline).

    ``secrets`` are :func:`sent_secrets`'s for ``exc``: a classifier finds them once and
    passes them here and to :func:`refused_request` and :func:`transport_error`."""
    for at in _links(exc):
        message = getattr(at, "message", None)
        if isinstance(message, str):
            with contextlib.suppress(AttributeError):
                at.message = scrub(message, *secrets)  # type: ignore[attr-defined]
        at.args = tuple(scrub(a, *secrets) if isinstance(a, str) else a for a in at.args)
        notes = getattr(at, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [scrub(n, *secrets) if isinstance(n, str) else n for n in notes]


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status may succeed on a retry: 408, 409, 429 and 5xx."""
    return status in (408, 409, 429) or status >= 500


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The ``retry-after`` (or ``retry-after-ms``) header in seconds, if given and sane."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def provider_error(
    provider: str,
    message: str,
    *,
    status_code: int | None = None,
    error_type: str | None = None,
    retryable: bool | None = None,
    headers: Mapping[str, str] | None = None,
    secrets: tuple[str | None, ...] = (),
) -> ProviderError:
    """Build a :class:`ProviderError`; ``retryable`` defaults from the status code."""
    if retryable is None:
        retryable = status_code is not None and is_retryable_status(status_code)
    return ProviderError(
        scrub(f"{provider}: {message}", *secrets),
        provider=provider,
        retryable=retryable,
        status_code=status_code,
        error_type=error_type,
        retry_after=retry_after_seconds(headers),
    )


def incomplete_stream(provider: str, missing: str) -> ProviderError:
    """A stream that ended before the provider said it was finished (``missing`` never came).

    Retryable: the body was cut, not refused. Raising it keeps a cut reply from being
    stored as a complete one.
    """
    return provider_error(
        provider,
        f"the stream ended before {missing}: the connection was cut; send the request again",
        error_type="incomplete_stream",
        retryable=True,
    )


# -- malformed streams ----------------------------------------------------------------------
#
# One mechanism for every provider and both wires. A stream event that cannot be read (bytes
# that are not UTF-8, text that is not JSON, JSON that is not the API's shape) ends the stream
# with ``malformed_event(...)`` raised ``from`` what failed, never with that exception itself.
#
# Each provider's ``wire="sdk"`` reader checks the fields it reads on the SDK's event object
# (the SDKs build them without validation, so a wrong-typed value arrives as it was sent) and
# turns any failure into this error. Each ``wire="fast"`` reader checks the same fields on the
# raw dict; when a check fails it reads that one event again the SDK's way (the SDK's model
# of the dict, then the sdk reader), so a malformed event ends both wires with the same error
# after the same chunks, and a value the SDK coerces (``"5"`` for a count) is coerced alike.

READ_ERRORS = (ValueError, TypeError, LookupError, AttributeError)
"""What reading a malformed event raises (json and UTF-8 errors are ValueErrors)."""


class BadEvent(ValueError):
    """An event field our reader needs is missing or of the wrong type."""


def bad_field(name: str, value: object) -> BadEvent:
    """The :class:`BadEvent` for field ``name`` holding ``value``."""
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return BadEvent(f"{name} is {type(value).__name__} {shown}")


def str_field(value: object, name: str) -> str | None:
    """``value`` if it is a string or None, else :class:`BadEvent` (for the sdk readers)."""
    if value is None or type(value) is str:
        return value
    raise bad_field(name, value)


def int_field(value: object, name: str) -> int | None:
    """``value`` if it is an int (not a bool) or None, else :class:`BadEvent`."""
    if value is None or type(value) is int:
        return value
    raise bad_field(name, value)


_WHAT = {
    "invalid_utf8": "a stream event is not valid UTF-8",
    "invalid_json": "a stream event is not valid JSON",
    "invalid_event": "a stream event is not in the API's format",
}


def malformed_event(
    provider: str,
    exc: BaseException,
    *,
    error_type: str | None = None,
    secrets: tuple[str | None, ...] = (),
) -> ProviderError:
    """The :class:`ProviderError` for a stream event that could not be read (raise it ``from exc``).

    ``error_type`` is ``invalid_utf8``, ``invalid_json`` or ``invalid_event`` (found from
    ``exc`` unless given). Not retryable: a server that sends it will send it again; a proxy
    that corrupts streams is worth looking at before sending more.
    """
    if error_type is None:
        if isinstance(exc, UnicodeDecodeError):
            error_type = "invalid_utf8"
        elif isinstance(exc, json.JSONDecodeError):
            error_type = "invalid_json"
        else:
            error_type = "invalid_event"
    # Masked before it is cut: a key cut short would no longer be found.
    detail = scrub(f"{type(exc).__name__}: {exc}", *secrets)
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return provider_error(
        provider,
        f"{_WHAT.get(error_type, _WHAT['invalid_event'])} ({detail}); the stream was cut "
        "there. The server (or a proxy between) does not speak this API: check the "
        "client's base_url",
        error_type=error_type,
        retryable=False,
        secrets=secrets,
    )


def refused_request(
    exc: BaseException, provider: str, secrets: tuple[str | None, ...] = ()
) -> ProviderError | None:
    """The error for a request the HTTP client refused to send (an ``httpx2.LocalProtocolError``
    in ``exc``'s chain: a header value with a newline, most often a key read from a file);
    else ``None``. Not retryable: the same request is refused again. ``secrets``: as for
    :func:`mask_chain`."""
    refused = next((e for e in _links(exc) if isinstance(e, httpx2.LocalProtocolError)), None)
    if refused is None:
        return None
    return provider_error(
        provider,
        f"configuration: the HTTP client refused to send the request ({refused}), and will "
        "refuse it again. A header with a newline is the usual cause: an API key read from a "
        "file keeps its trailing newline, strip it",
        error_type="configuration",
        retryable=False,
        secrets=secrets,
    )


def transport_error(
    exc: BaseException, provider: str, secrets: tuple[str | None, ...] = ()
) -> ProviderError | None:
    """Classify a raw httpx2 transport error (connection, read, timeout, a body that
    could not be decoded: a corrupt gzip stream); else ``None``.

    Transport errors are retryable: the request may well succeed on a new connection. A
    request the client refused to send is not (see :func:`refused_request`). ``secrets``: as
    for :func:`mask_chain`.
    """
    if isinstance(exc, httpx2.TimeoutException):
        kind = "timeout"
    elif isinstance(exc, (httpx2.TransportError, httpx2.DecodingError)):
        refused = refused_request(exc, provider, secrets)
        if refused is not None:
            return refused
        kind = "connection_error"
    else:
        return None
    detail = str(exc) or type(exc).__name__
    return provider_error(
        provider,
        f"{kind}: {detail}",
        error_type=kind,
        retryable=True,
        secrets=secrets,
    )


class Lazy(Generic[T]):
    """A value built on first use, once, even when first used from several threads."""

    __slots__ = ("_factory", "_lock", "_value")

    def __init__(self, factory: Callable[[], T], value: T | None = None) -> None:
        self._factory = factory
        self._value = value
        self._lock = threading.Lock()

    def get(self) -> T:
        """The value, building it now if needed."""
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._factory()
                value = self._value
        return value
