"""Offline token estimates.

A real tokenizer needs its vocabulary: tiktoken downloads encodings at run time, which this
library cannot rely on. The estimate here (about four UTF-8 bytes a token, the rule of thumb
the providers publish for English text) is cheap, deterministic and never under-counts empty
text. Real counts come from the providers' usage, kept per context by the store.
"""

from __future__ import annotations

__all__ = ["estimate_tokens", "utf8_size"]


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: ``ceil(utf8_bytes / 4)``; 0 for empty text."""
    if not text:
        return 0
    # ASCII text is one byte a character: no need to encode (a copy of a long reply).
    size = len(text) if text.isascii() else utf8_size(text)
    return (size + 3) // 4


_SLICE = 1 << 16


def utf8_size(text: str) -> int:
    """The UTF-8 size of ``text`` in bytes (lone surrogates as 3 bytes), encoded a slice at a
    time: a long reply is never copied whole for it."""
    if len(text) <= _SLICE:
        return len(text.encode("utf-8", "surrogatepass"))
    return sum(
        len(text[i : i + _SLICE].encode("utf-8", "surrogatepass"))
        for i in range(0, len(text), _SLICE)
    )
