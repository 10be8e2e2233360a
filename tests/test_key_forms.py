"""An API key of no recognisable shape never reaches the database, a log line, a span or an
exception, whatever form the failure quotes it in and however the client got it.

Two ways keys leaked through the real SDKs:

- A key read from a file keeps its trailing newline (a Docker or Kubernetes secret file).
  The OpenAI and Anthropic SDKs send it as given (google-genai strips its key, not a
  gateway's header); the HTTP client refuses the header before sending anything and quotes
  it as bytes, ``b'<key>\\n'``: the escaped form of a key that masking looked for with its
  real newline. Such a request can never be sent: a configuration error, not retried.
- A key provider (``openai.OpenAI(api_key=callable)``, Anthropic's ``credentials=``) is
  asked per request: the client holds no key (or an old one) before the request, and a
  server that echoes the key it got (a 401, an error event) names the one actually sent.

Each case runs a real window on a SQLite file, with rxcontext's loggers at DEBUG and a span
exporter when the otel extra is installed, and looks for the key (and any 10 characters of
it) in the file's bytes, every log line, every span and the whole formatted exception chain.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import socket
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import types
from replay import sse

import rxcontext
from rxcontext import ContextWindow, ProviderError, RetryPolicy
from rxcontext.providers import AnthropicModel, GeminiModel, OpenAIModel, OpenAIResponsesModel

try:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from rxcontext.tracing import Tracing
except ImportError:  # the otel extra is not installed: spans are not looked at
    TracerProvider = None  # type: ignore[assignment,misc]

AZURE_KEY = "3f9a1c7e5b2d4f6081a9c3e5d7f9b1a2"  # Azure OpenAI's shape: 32 hex, sent as api-key
TOKEN = "ya29Zk3+Qm/9xVt2LpR8sWn4Jd6Hc1Bf0Ge7Ai5Ku=="  # a gateway's base64 bearer token
ROTATING = (
    "gw_9f3c1a7e5b2d4f60Zx81QaPL",
    "gw_Q7m2Rk5Vt8Yw1Zb4Nc6Pd9Jh",
    "gw_Lx3Hs6Tf1Ub8Ig5Ko2Ej7Dn",
)
FRAGMENT = 10


def fragments(key: str) -> set[str]:
    """Every run of ``FRAGMENT`` characters of ``key``: a key cut short is still a leak."""
    key = key.strip()
    return {key[i : i + FRAGMENT] for i in range(len(key) - FRAGMENT + 1)}


@pytest.fixture
def rx_log() -> Iterator[io.StringIO]:
    """What rxcontext's loggers write at DEBUG, with tracebacks."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("rxcontext")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def closed_port() -> Iterator[str]:
    """The URL of a local socket that listens: the HTTP client connects, then refuses to
    send a request with an illegal header (nothing is ever read from it)."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or during (both links)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        at = todo.pop()
        if id(at) in seen:
            continue
        seen.add(id(at))
        yield at
        todo.extend(e for e in (at.__cause__, at.__context__) if e is not None)
        todo.extend(a for a in at.args if isinstance(a, BaseException))


def run(
    model: Any, tmp_path: Path, log: io.StringIO, mode: str, retry: RetryPolicy | None = None
) -> tuple[BaseException, list[str]]:
    """The error a window on a SQLite file raised for one reply, and every text it left."""
    path = tmp_path / "chat.db"
    store = rxcontext.open(str(path))
    spans = None
    kwargs: dict[str, Any] = {} if retry is None else {"retry": retry}
    if TracerProvider is not None:
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        kwargs["tracing"] = Tracing(provider)
    cw = ContextWindow(store, model, context="c", **kwargs)
    cw.add_prompt("hi")
    error: BaseException | None = None
    try:
        cw.call() if mode == "sync" else asyncio.run(cw.acall())
    except Exception as exc:
        error = exc
    finally:
        store.close()
    assert error is not None, "the reply did not fail"
    texts = [log.getvalue(), "".join(traceback.format_exception(error))]
    for at in chain(error):
        texts += [str(at), repr(at), repr(at.args), repr(getattr(at, "__notes__", ""))]
    texts += [
        p.read_bytes().decode("latin-1") for p in tmp_path.iterdir() if p.name.startswith("chat")
    ]
    for span in spans.get_finished_spans() if spans is not None else ():
        texts.append(str(span.status.description))
        texts.append(json.dumps(dict(span.attributes or {}), default=str))
        for event in span.events:
            texts.append(json.dumps(dict(event.attributes or {}), default=str))
    return error, texts


def leaks(keys: tuple[str, ...], texts: list[str]) -> list[str]:
    """Where any of ``keys`` (or a fragment of one) shows, as short excerpts."""
    found = []
    for key in keys:
        for piece in sorted(fragments(key)):
            for text in texts:
                at = text.find(piece)
                if at >= 0:
                    found.append(f"{piece!r} in ...{text[max(0, at - 60) : at + 40]!r}")
                    break
    return found


def provider_error(exc: BaseException) -> ProviderError:
    found = [e for e in chain(exc) if isinstance(e, ProviderError)]
    assert found, repr(exc)
    return found[0]


# -- a key with its file's newline ------------------------------------------------------


def newline_model(kind: str, url: str) -> tuple[Any, str]:
    """A model of ``kind`` whose client got a key ending in a newline, and that key."""
    if kind == "azure":
        key = AZURE_KEY + "\n"
        common: dict[str, Any] = {
            "api_key": key,
            "azure_endpoint": url,
            "api_version": "2024-10-21",
            "max_retries": 0,
        }
        client = openai.AzureOpenAI(**common)
        aclient = openai.AsyncAzureOpenAI(**common)
        return OpenAIModel("gpt-4o-mini", client=client, async_client=aclient), key
    key = TOKEN + "\n"
    if kind == "gemini":  # genai strips its key; a gateway's header is sent as given
        headers = {"x-gateway-token": key}
        options = types.HttpOptions(base_url=url, headers=headers)
        return GeminiModel("g", client=genai.Client(api_key="k", http_options=options)), key
    if kind in ("chat", "responses"):
        cls = OpenAIModel if kind == "chat" else OpenAIResponsesModel
        client = openai.OpenAI(api_key=key, base_url=url, max_retries=0)
        aclient = openai.AsyncOpenAI(api_key=key, base_url=url, max_retries=0)
        return cls("m", client=client, async_client=aclient), key
    return AnthropicModel(
        "claude-test",
        client=anthropic.Anthropic(api_key=key, base_url=url, max_retries=0),
        async_client=anthropic.AsyncAnthropic(api_key=key, base_url=url, max_retries=0),
    ), key


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("kind", ["chat", "azure", "responses", "anthropic", "gemini"])
def test_a_key_with_a_trailing_newline_is_refused_once_and_masked_everywhere(
    kind: str, mode: str, closed_port: str, tmp_path: Path, rx_log: io.StringIO
) -> None:
    model, key = newline_model(kind, closed_port)
    error, texts = run(model, tmp_path, rx_log, mode)
    assert leaks((key,), texts) == []
    failed = provider_error(error)
    # The request can never be sent as it is: said once, not sent again three times.
    assert failed.error_type == "configuration", str(failed)
    assert not failed.retryable
    assert "sending again" not in rx_log.getvalue()
    assert "newline" in str(failed)


# -- a key provider: the key sent is the one echoed ---------------------------------------


def sent_key(request: httpx2.Request) -> str:
    for name in ("authorization", "api-key", "x-api-key", "x-goog-api-key"):
        value = request.headers.get(name)
        if value:
            return value.removeprefix("Bearer ")
    raise AssertionError(f"no key was sent: {dict(request.headers)}")


def echo(kind: str, case: str) -> Callable[[httpx2.Request], httpx2.Response]:
    """A server that names the key it was sent: in a 401, or in an error event."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        key = sent_key(request)
        if case == "http":
            if kind == "anthropic":
                body: Any = {"type": "error", "error": {"type": "authentication_error"}}
                body["error"]["message"] = f"invalid x-api-key {key}"
            else:
                body = {"error": {"message": f"Incorrect API key provided: {key}", "type": "x"}}
            return httpx2.Response(401, json=body)
        if kind == "chat" or kind == "azure":
            stream = sse({"error": {"message": f"bad {key}", "type": "invalid_request_error"}})
        elif kind == "responses":
            event = {"type": "error", "code": "invalid_api_key", "message": f"bad {key}"}
            stream = sse(event, event_names=["error"])
        else:
            event = {"type": "error", "error": {"type": "invalid_request_error"}}
            event["error"]["message"] = f"bad {key}"
            stream = sse(event, event_names=["error"])
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, headers=headers, content=stream)

    return handle


def rotating() -> Callable[[], str]:
    """A key provider (a vault, rotation): another key each time it is asked."""
    keys = itertools.cycle(ROTATING)
    return lambda: next(keys)


def arotating() -> Callable[[], Any]:
    keys = rotating()

    async def key() -> str:
        return keys()

    return key


def provider_model(kind: str, case: str, wire: str) -> Any:
    transport = httpx2.MockTransport(echo(kind, case))
    sync, aio = httpx2.Client(transport=transport), httpx2.AsyncClient(transport=transport)
    if kind == "anthropic":
        from anthropic.lib.credentials import AccessToken

        def token() -> Callable[..., AccessToken]:
            keys = rotating()
            return lambda **_: AccessToken(token=keys(), expires_at=None)

        return AnthropicModel(
            "claude-test",
            client=anthropic.Anthropic(credentials=token(), max_retries=0, http_client=sync),
            async_client=anthropic.AsyncAnthropic(
                credentials=token(), max_retries=0, http_client=aio
            ),
            wire=wire,
        )
    if kind == "azure":
        common: dict[str, Any] = {
            "azure_endpoint": "http://azure.example",
            "api_version": "2024-10-21",
            "max_retries": 0,
        }
        client: Any = openai.AzureOpenAI(api_key=rotating(), http_client=sync, **common)
        aclient: Any = openai.AsyncAzureOpenAI(api_key=arotating(), http_client=aio, **common)
    else:
        url = "http://gw.example/v1"
        client = openai.OpenAI(api_key=rotating(), base_url=url, max_retries=0, http_client=sync)
        aclient = openai.AsyncOpenAI(
            api_key=arotating(), base_url=url, max_retries=0, http_client=aio
        )
    cls = OpenAIResponsesModel if kind == "responses" else OpenAIModel
    return cls("m", client=client, async_client=aclient, wire=wire)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("wire", ["sdk", "fast"])
@pytest.mark.parametrize("kind", ["chat", "azure", "responses", "anthropic"])
@pytest.mark.parametrize("case", ["http", "in_stream"])
def test_a_key_a_provider_returned_is_masked_where_the_server_echoes_it(
    case: str, kind: str, wire: str, mode: str, tmp_path: Path, rx_log: io.StringIO
) -> None:
    model = provider_model(kind, case, wire)
    error, texts = run(model, tmp_path, rx_log, mode, retry=RetryPolicy(max_attempts=1))
    provider_error(error)
    assert leaks(ROTATING, texts) == []


def test_masking_covers_the_forms_a_message_quotes_a_key_in() -> None:
    from rxcontext.providers._common import scrub

    key = "k3y+with/odd\\chars'and\"quotes"
    for form in (
        key,
        repr(key),
        repr(key.encode()),
        json.dumps(key),
        repr(repr(key.encode())),
        f"Bearer {key}",
    ):
        shown = scrub(f"refused: {form}!", key + "\n")
        assert leaks((key,), [shown]) == [], (form, shown)
