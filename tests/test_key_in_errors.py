"""An API key the server echoes in an error reaches no message, no repr and no ``args`` of
any exception in the chain a caller gets: not our ``ProviderError``, nor the SDK's exception
chained as its cause (which the caller may log with its traceback). Every provider, both
wires, sync and async, for an HTTP error and for an error sent in the stream."""

from __future__ import annotations

import json
from typing import Any

import pytest
from provider_rules import KEY, model_for
from replay import Replay, Reply, collect_async, collect_sync, record, sse

from rxcontext.errors import ProviderError
from rxcontext.providers.base import Request
from rxcontext.records import RecordType

JSON = {"content-type": "application/json"}
HI = Request([record(RecordType.PROMPT, "hi")])

HTTP_401 = {
    "chat": {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid"}},
    "responses": {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid"}},
    "anthropic": {
        "type": "error",
        "error": {"type": "authentication_error", "message": f"invalid x-api-key {KEY}"},
    },
    "gemini": {"error": {"code": 401, "message": f"API key not valid: {KEY}", "status": "X"}},
}

IN_STREAM = {
    "chat": sse({"error": {"message": f"bad {KEY}", "type": "server_error"}}),
    "responses": sse(
        {"type": "error", "code": "server_error", "message": f"bad {KEY}"}, event_names=["error"]
    ),
    "anthropic": sse(
        {"type": "error", "error": {"type": "api_error", "message": f"bad {KEY}"}},
        event_names=["error"],
    ),
    "gemini": sse({"error": {"code": 500, "message": f"bad {KEY}", "status": "INTERNAL"}}),
}


def where_the_key_is(exc: BaseException) -> list[str]:
    found, seen, at = [], set(), exc
    while at is not None and id(at) not in seen:
        seen.add(id(at))
        for shown in (str(at), repr(at), repr(at.args)):
            if KEY in shown:
                found.append(f"{type(at).__name__}: {shown[:160]}")
        at = at.__cause__ or at.__context__
    return found


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("wire", ["sdk", "fast"])
@pytest.mark.parametrize("kind", sorted(HTTP_401))
@pytest.mark.parametrize("case", ["http", "in_stream"])
def test_a_key_echoed_in_an_error_is_masked_in_the_whole_chain(
    case: str, kind: str, wire: str, path: str
) -> None:
    served: Any = (
        Reply(json.dumps(HTTP_401[kind]).encode(), status=401, headers=JSON)
        if case == "http"
        else IN_STREAM[kind]
    )
    model = model_for(kind, Replay(served), wire)
    _, error = (collect_sync if path == "sync" else collect_async)(model, HI)
    assert isinstance(error, ProviderError), repr(error)
    assert where_the_key_is(error) == []
