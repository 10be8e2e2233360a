"""Malformed stream events for the differential wire tests (tests/test_wire_*.py).

Each provider's test draws a well-formed stream, then breaks one event of it with
:func:`broken` (or the body with :func:`truncated`): a non-object JSON value, a field removed
or given a value of the wrong type (at any depth), text that is not JSON, bytes that are not
UTF-8. Both wires must then end the same way: the same chunks, then the same
``ProviderError`` (type, flags, message, cause chain), never a raw Python exception; and
whatever chunks they give are well-typed (:func:`assert_well_typed`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import strategies as st

from rxcontext.chunks import Chunk, ChunkKind, Usage
from rxcontext.errors import ProviderError

Path = tuple[Any, ...]

EXAMPLES = int(os.environ.get("RXCONTEXT_WIRE_EXAMPLES", "50"))
"""Examples per generated-stream test, well-formed or broken, on both wires; raise it (e.g.
5000) for a longer hunt. The default keeps the suite under three minutes on two cores."""

# Values of every JSON kind, some of which a lax validator coerces ("5" → 5, 5.0 → 5,
# True → 1): where the SDK coerces a value, both wires must agree on the coerced one.
WRONG_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    7,
    -1,
    1.5,
    5.0,
    "",
    "x",
    "5",
    "5.0",
    "true",
    [],
    ["x"],
    [{}],
    {},
    {"x": 1},
]
NON_OBJECTS = ["[]", "[{}]", '["x", 1]', '"x"', '""', "5", "1.5", "null", "true", "false"]
BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82", b"\xf0\x9f\x98", b"\x80abc"]


def paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every path (keys and list indexes) to a value nested in ``value``."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, inner in items:
        yield (*prefix, key)
        yield from paths(inner, (*prefix, key))


def _parent(root: Any, path: Path) -> Any:
    for key in path[:-1]:
        root = root[key]
    return root


def replaced(value: Any, path: Path, new: Any) -> Any:
    out = copy.deepcopy(value)
    _parent(out, path)[path[-1]] = new
    return out


def removed(value: Any, path: Path) -> Any:
    out = copy.deepcopy(value)
    del _parent(out, path)[path[-1]]
    return out


@st.composite
def broken(
    draw: st.DrawFn, event: Any, keep: Callable[[Path], bool] = lambda path: True
) -> tuple[str, bytes]:
    """``(how, data)``: ``event`` (a JSON object) broken one way, as the bytes of a ``data:``
    line. ``keep`` limits the paths whose values are replaced or removed."""
    text = json.dumps(event)
    choices = ["non_object", "bad_json", "bad_utf8"]
    where = [p for p in paths(event) if keep(p)] if isinstance(event, dict) else []
    if where:
        choices += ["wrong_type"] * 4 + ["missing"] * 2
    how = draw(st.sampled_from(choices))
    if how == "non_object":
        return how, draw(st.sampled_from(NON_OBJECTS)).encode()
    if how == "bad_json":
        cut = draw(st.integers(1, max(len(text) - 1, 1)))
        bad = draw(st.sampled_from([text[:cut], text + "x", text.replace(":", "", 1)]))
        return how, bad.encode()
    if how == "bad_utf8":
        raw = json.dumps(event, ensure_ascii=False).encode()
        at = draw(st.integers(0, len(raw)))
        return how, raw[:at] + draw(st.sampled_from(BAD_UTF8)) + raw[at:]
    path = draw(st.sampled_from(where))
    if how == "missing":
        return how, json.dumps(removed(event, path)).encode()
    return how, json.dumps(replaced(event, path, draw(st.sampled_from(WRONG_VALUES)))).encode()


def truncated(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` cut at any byte (inside a frame, a line, a UTF-8 sequence)."""
    return body[: draw(st.integers(0, len(body)))]


# -- what both wires must give ---------------------------------------------------------------


def assert_well_typed(chunks: list[Chunk]) -> None:
    """Every field of every chunk has its declared type (no wire value leaked through)."""
    for chunk in chunks:
        assert type(chunk.kind) is ChunkKind, chunk
        assert type(chunk.text) is str, chunk
        assert type(chunk.index) is int, chunk
        for value in (chunk.id, chunk.name, chunk.finish_reason, chunk.response_id):
            assert value is None or type(value) is str, chunk
        if chunk.usage is not None:
            assert type(chunk.usage) is Usage
            assert all(type(v) is int for v in chunk.usage.to_dict().values()), chunk
        json.dumps(dict(chunk.metadata))
        for key, value in chunk.metadata.items():
            if key in ("signature", "redacted", "thought_signature", "gemini_thought_signature"):
                assert type(value) is str, chunk


def cause_chain(exc: BaseException) -> tuple[type[BaseException], ...]:
    """The types along ``exc.__cause__`` (the chain a user's ``except`` walks)."""
    out: list[type[BaseException]] = []
    seen = exc.__cause__
    while seen is not None and len(out) < 8:
        out.append(type(seen))
        seen = seen.__cause__
    return tuple(out)


def sdk_cause(exc: BaseException, base: type[BaseException]) -> BaseException | None:
    """The first exception of type ``base`` in ``exc``'s cause chain."""
    seen = exc.__cause__
    while seen is not None:
        if isinstance(seen, base):
            return seen
        seen = seen.__cause__
    return None


def is_provider_error(exc: BaseException | None) -> bool:
    return exc is None or isinstance(exc, ProviderError)
