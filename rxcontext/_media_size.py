"""How big an image or a PDF is, read from its bytes without decoding it: an image's width
and height from its header (PNG, GIF, JPEG, WebP), a PDF's page count from its page
objects. For token estimates (:mod:`rxcontext.tokens`); None where the bytes do not say.
"""

from __future__ import annotations

import re
import struct
import zlib

__all__ = ["image_size", "pdf_pages"]


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a PNG, GIF, JPEG or WebP image from its header, or None."""
    size: tuple[int, int] | None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        size = _pair(">II", data[16:24])
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        size = _pair("<HH", data[6:10])
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        size = _webp(data)
    elif data[:3] == b"\xff\xd8\xff":
        size = _jpeg(data)
    else:
        return None
    if size is None or not (size[0] and size[1]):
        return None
    return size


def _pair(layout: str, data: bytes) -> tuple[int, int]:
    first, second = struct.unpack(layout, data)
    return int(first), int(second)


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a" and len(data) >= 30:
        w, h = _pair("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f" and len(data) >= 25:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    return None


# Start-of-frame markers (C0-CF but DHT C4, JPG C8 and DAC CC): they carry the size.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """The frame header's size: the segments before it are skipped by their lengths."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            if i + 9 > n:
                return None
            h, w = _pair(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
_OBJECT_STREAM = re.compile(rb"/Type\s*/ObjStm(?![A-Za-z])")
_STREAM = re.compile(rb"(?<!end)stream\r?\n")
_UNPACKED_MAX = 16 << 20  # what one object stream may inflate to here (a bomb stops there)


def pdf_pages(data: bytes) -> int | None:
    """The number of page objects of a PDF (written plainly or in Flate-compressed object
    streams, as PDF 1.5 allows), or None when none can be found (an encrypted PDF, say)."""
    pages = len(_PAGE.findall(data))
    if pages:
        return pages
    view = memoryview(data)  # each stream inflated from where it starts, nothing copied
    for found in _OBJECT_STREAM.finditer(data):
        start = _STREAM.search(data, found.end())
        if start is None:
            break
        try:
            objects = zlib.decompressobj().decompress(view[start.end() :], _UNPACKED_MAX)
        except zlib.error:
            continue
        pages += len(_PAGE.findall(objects))
    return pages or None
