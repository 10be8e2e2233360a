"""The incremental JSON parser (rxcontext.jsonstream) against json.loads, on hypothesis-made
documents split at random points, and on random character soup (valid or not)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rxcontext.jsonstream import JsonStream

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)


@st.composite
def documents(draw: st.DrawFn) -> str:
    value = draw(values)
    indent = draw(st.sampled_from([None, 0, 2, "\t"]))
    ascii_only = draw(st.booleans())
    pad = draw(st.sampled_from(["", " ", "\n", " \r\n\t "]))
    return pad + json.dumps(value, indent=indent, ensure_ascii=ascii_only) + pad


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    return pieces


@given(documents(), st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_parses_to_what_json_loads_gives(doc: str, cuts: list[int]) -> None:
    parser = JsonStream()
    for piece in split(doc, cuts):
        parser.feed(piece)  # a prefix of a valid document never raises
        parser.partial()
    assert parser.close() == json.loads(doc)


@given(documents())
def test_one_character_at_a_time(doc: str) -> None:
    parser = JsonStream()
    for c in doc:
        parser.feed(c)
    expected = json.loads(doc)
    assert parser.close() == expected
    if not isinstance(expected, int | float) or isinstance(expected, bool):
        assert parser.complete and parser.partial() == expected


@given(
    st.text(alphabet=' \t\n{}[]:,"\\/ubfnrtlsaex0123456789-+.EdD\u00e9\x01', max_size=40),
    st.lists(st.integers(min_value=0), max_size=6),
)
def test_soup_is_accepted_or_refused_exactly_as_json_loads_does(text: str, cuts: list[int]) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        expected = ValueError
    if expected is not ValueError:
        assume(not (isinstance(expected, float) and (math.isinf(expected))))
    parser = JsonStream()
    try:
        for piece in split(text, cuts):
            parser.feed(piece)
        got = parser.close()
    except ValueError:
        got = ValueError
    assert got == expected


def test_partial_values_grow_strings_and_wait_for_numbers() -> None:
    parser = JsonStream()
    seen = []
    for piece in ['{"na', 'me": "Ad', 'a", "age": 3', '6, "tags": ["x', '", tr', "ue]}"]:
        if parser.feed(piece):
            seen.append(parser.partial())
    assert seen == [
        {},
        {"name": "Ad"},
        {"name": "Ada"},
        {"name": "Ada", "age": 36, "tags": ["x"]},
        {"name": "Ada", "age": 36, "tags": ["x"]},
        {"name": "Ada", "age": 36, "tags": ["x", True]},
    ]
    assert parser.complete


def test_snapshots_are_not_changed_by_later_text() -> None:
    parser = JsonStream()
    parser.feed('{"a": [1, ')
    first = parser.partial()
    parser.feed('2], "b": "x"}')
    assert first == {"a": [1]} and parser.close() == {"a": [1, 2], "b": "x"}


def test_escapes_cut_anywhere_decode_as_json_loads_does() -> None:
    doc = '"a\\u00e9\\ud83d\\ude00\\ud800x\\n\\"\\\\"'
    for cut in range(len(doc) + 1):
        parser = JsonStream()
        parser.feed(doc[:cut])
        parser.feed(doc[cut:])
        assert parser.close() == json.loads(doc)


@pytest.mark.parametrize(
    "bad", ['{"a" 1}', "[1,]", '{"a":1,}', "tru", "01", "[1] 2", '"\x01"', "NaN"]
)
def test_malformed_json_is_refused(bad: str) -> None:
    parser = JsonStream()
    with pytest.raises(ValueError):
        parser.feed(bad)
        parser.close()


def test_each_character_is_read_once_whatever_the_chunking() -> None:
    """Incremental, not re-parsed: feeding a long string in 1-char pieces touches each
    character once (counted through the parser's position), and partial() of a closed
    container is the same object, not a copy."""
    doc = json.dumps({"text": "x" * 5000, "n": list(range(200))})
    parser = JsonStream()
    for c in doc:
        parser.feed(c)
    assert parser._pos == len(doc)
    value = parser.close()
    assert parser.partial() is value


def grows_into(partial: object, final: object) -> bool:
    """Whether ``partial`` is a state ``final`` can grow from: strings as prefixes, objects
    with some of the keys, arrays with the first elements (the last maybe still growing)."""
    if isinstance(final, dict):
        return isinstance(partial, dict) and all(
            k in final and grows_into(v, final[k]) for k, v in partial.items()
        )
    if isinstance(final, list):
        if not isinstance(partial, list) or len(partial) > len(final):
            return False
        done = all(p == f for p, f in zip(partial[:-1], final, strict=False))
        return done and (not partial or grows_into(partial[-1], final[len(partial) - 1]))
    if isinstance(final, str):
        return isinstance(partial, str) and final.startswith(partial)
    return partial == final and type(partial) is type(final)


@given(documents(), st.lists(st.integers(min_value=0), max_size=12))
def test_every_partial_value_grows_into_the_final_one(doc: str, cuts: list[int]) -> None:
    final = json.loads(doc)
    parser = JsonStream()
    for piece in split(doc, cuts):
        parser.feed(piece)
        partial = parser.partial()
        if partial is not None:
            assert grows_into(partial, final), (partial, final)
