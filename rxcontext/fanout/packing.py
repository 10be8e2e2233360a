"""Packing the fan-out's Redis commands in one C call each.

redis-py hands every command to its serializer, which, even with hiredis installed, first
takes a Python pass over the arguments (an encoder call per argument) before hiredis packs
them. For the fan-out's commands that pass is most of the cost: the tail's ``XREAD BLOCK``
over 200 streams (hundreds of them a second) took ~290 µs to pack against ~40 µs for
hiredis alone, and each of the writer's ``XADD``\\ s ~10 µs against ~1 µs
(``benchmarks/fanoutsend.py``). :class:`Packer` gives the arguments to
``hiredis.pack_command`` directly and leaves anything it does not take to redis-py's own
serializer, so the bytes sent are the same (``tests/test_fanout_packing.py`` checks that
against redis-py's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["client_options"]

try:
    from hiredis import pack_command as _pack_command
    from redis._parsers.encoders import Encoder
    from redis.connection import PythonRespSerializer

    HIREDIS = True
except ImportError:  # pragma: no cover - hiredis is part of the extra; redis-py alone works
    HIREDIS = False


class Packer:
    """A redis-py ``command_packer`` for connections with the default encoding (UTF-8,
    strict): ``hiredis.pack_command`` of the arguments when it takes them (str, bytes,
    int and float; a command name with no space in it), redis-py's serializer otherwise
    (a ``bool`` is its ``DataError``, ``"CLIENT UNBLOCK"`` is split into two words)."""

    __slots__ = ("_fallback",)

    def __init__(self, fallback: Callable[..., list[bytes]]) -> None:
        self._fallback = fallback

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        if type(name) is str and " " not in name:
            try:
                return [_pack_command(args)]
            except TypeError:  # a bool, None…: redis-py decides
                pass
        return self._fallback(*args)


def client_options() -> dict[str, Any]:
    """Keyword arguments for ``redis.Redis.from_url`` that make its connections pack with
    :class:`Packer` (nothing when hiredis is not installed)."""
    if not HIREDIS:
        return {}
    encoder = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]
    fallback = PythonRespSerializer(6000, encoder.encode).pack
    return {"command_packer": Packer(fallback)}
