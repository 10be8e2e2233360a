"""The fan-out's Redis clients pack every command into the bytes redis-py would send."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redistest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("hiredis")

import redis
from redis.connection import Connection

from rxcontext.fanout.packing import Packer, client_options

plain = Connection()  # redis-py's own serializer (hiredis or not); never connected
ours = Connection(**client_options())

arguments = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary().map(memoryview),
)
names = st.sampled_from(["XADD", "XREAD", "PEXPIRE", "CLIENT UNBLOCK", "PUBLISH", "xrange"])


def packed(connection: Connection, args: tuple[Any, ...]) -> bytes | type[BaseException]:
    try:
        return b"".join(bytes(part) for part in connection.pack_command(*args))
    except Exception as error:  # the same error type is what must match
        return type(error)


@given(names, st.lists(arguments, max_size=12))
def test_a_command_is_packed_into_the_bytes_redis_py_sends(name: str, rest: list[Any]) -> None:
    args = (name, *rest)
    assert packed(ours, args) == packed(plain, args)


@pytest.mark.parametrize(
    "args",
    [
        ("XADD", "k", True),  # redis-py refuses a bool
        ("XADD", "k", None),
        ("CLIENT UNBLOCK", 7, "ERROR"),  # two words, split by redis-py
        ("XADD", "k", "\ud800"),  # not encodable: the same UnicodeEncodeError
        (b"PING",),  # a bytes command name
    ],
)
def test_what_hiredis_does_not_take_is_left_to_redis_py(args: tuple[Any, ...]) -> None:
    assert packed(ours, args) == packed(plain, args)


def test_a_hundreds_of_streams_xread_is_packed_by_hiredis_alone() -> None:
    calls: list[tuple[Any, ...]] = []

    def fallback(*args: Any) -> list[bytes]:
        calls.append(args)
        return []

    keys = [f"rx:{{r{n}}}:s" for n in range(200)]
    out = Packer(fallback).pack("XREAD", "BLOCK", 1000, "STREAMS", *keys, *["0-0"] * 200)
    assert calls == []
    assert out[0].startswith(b"*404\r\n$5\r\nXREAD\r\n")


@pytest.fixture
def redis_prefix() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


def test_the_fan_outs_clients_pack_with_it_and_redis_answers_them(
    redis_prefix: tuple[str, str],
) -> None:
    from rxcontext.fanout.redis import RedisFanout

    url, prefix = redis_prefix
    fanout = RedisFanout(url, prefix=prefix)
    try:
        clients = [fanout._writer, fanout._reader, fanout._tail._client]
        for client in clients:
            connection = client.connection_pool.get_connection()
            try:
                assert isinstance(connection._command_packer, Packer)
            finally:
                client.connection_pool.release(connection)
        key = f"{prefix}:packing"
        writer: redis.Redis = fanout._writer
        pipe = writer.pipeline(transaction=False)
        pipe.xadd(key, {"k": "c", "f": 1, "d": '["é", 2.5]'}, id="3-1", maxlen=10)
        pipe.pexpire(key, 60_000)
        assert pipe.execute() == [b"3-1", True]
        assert fanout._reader.xrange(key) == [
            (b"3-1", {b"k": b"c", b"f": b"1", b"d": '["é", 2.5]'.encode()})
        ]
        with pytest.raises(redis.DataError):
            writer.set(key + ":b", True)  # type: ignore[arg-type]
    finally:
        fanout.close()


def test_without_hiredis_the_clients_keep_redis_pys_packer(monkeypatch: pytest.MonkeyPatch) -> None:
    from rxcontext.fanout import packing

    monkeypatch.setattr(packing, "HIREDIS", False)
    assert packing.client_options() == {}
