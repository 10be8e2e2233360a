"""Offline token estimates.

A real tokenizer needs its vocabulary: tiktoken downloads encodings at run time, which this
library cannot rely on. The estimate here (about four UTF-8 bytes a token, the rule of thumb
the providers publish for English text) is cheap, deterministic and never under-counts empty
text. Real counts come from the providers' usage, kept per context by the store.

A record's estimate (:func:`estimate_record_tokens`, its ``est_tokens``, what
``live_tokens()``, ``token_usage()``, ``auto_compact`` and ``Budget(max_tokens=...)`` add up)
is its text's plus its attachments' (:func:`estimate_attachment_tokens`), by what the
providers document:

- text (``text/*``, JSON, XML, CSV... and any other file): the text rule on its bytes, as
  the providers are sent it (Anthropic a plain-text document, Gemini the bytes);
- an image: Anthropic's ``width * height / 750`` tokens, at most 1,600 (what it resizes a
  larger image to), at least 258 (Gemini's count for an image up to 384 px; OpenAI's high
  detail counts 255 for one tile); its size read from its header (PNG, GIF, JPEG, WebP),
  else 1,600;
- a PDF: 3,000 tokens a page (Anthropic: 1,500-3,000 a page of text, each page also seen as
  an image), its pages counted from its page objects, else one page per 50 KB;
- audio and video: one token per 500 bytes (Gemini counts 32 tokens a second of audio, 263
  of video: about that at 128 kbit/s and 1 Mbit/s);
- a URL the provider fetches (not downloaded here): 1,600 for an image, 3,000 otherwise.

Records stored before attachments were counted keep their estimates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ._media_size import image_size, pdf_pages
from .attachments import Attachment

__all__ = [
    "IMAGE_TOKENS_MAX",
    "IMAGE_TOKENS_MIN",
    "PDF_PAGE_TOKENS",
    "URL_TOKENS",
    "estimate_attachment_tokens",
    "estimate_record_tokens",
    "estimate_tokens",
    "sized_record_tokens",
    "tokens_of_size",
    "utf8_size",
]

IMAGE_TOKENS_MAX = 1_600
"""The most an image is counted: Anthropic resizes larger ones to about that."""
IMAGE_TOKENS_MIN = 258
"""The least an image is counted: Gemini's count for a small one."""
PDF_PAGE_TOKENS = 3_000
"""A PDF page: the top of Anthropic's 1,500-3,000 tokens a page."""
URL_TOKENS = 3_000
"""An attachment given by a URL other than an image's (its size is not known here)."""
_PIXELS_PER_TOKEN = 750
_PDF_BYTES_PER_PAGE = 50_000
_MEDIA_BYTES_PER_TOKEN = 500


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: ``ceil(utf8_bytes / 4)``; 0 for empty text."""
    if not text:
        return 0
    # ASCII text is one byte a character: no need to encode (a copy of a long reply).
    size = len(text) if text.isascii() else utf8_size(text)
    return tokens_of_size(size)


def tokens_of_size(size: int) -> int:
    """Estimated tokens of a text of ``size`` UTF-8 bytes (what :func:`estimate_tokens`
    counts of it), for a caller that has the size already."""
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


def estimate_attachment_tokens(attachment: Attachment) -> int:
    """Estimated tokens of one attachment, by the rule in this module's description."""
    data, kind = attachment.data, attachment.kind
    if data is None:
        return IMAGE_TOKENS_MAX if kind == "image" else URL_TOKENS
    if kind == "image":
        size = image_size(data)
        if size is None:
            return IMAGE_TOKENS_MAX
        tokens = math.ceil(size[0] * size[1] / _PIXELS_PER_TOKEN)
        return max(IMAGE_TOKENS_MIN, min(IMAGE_TOKENS_MAX, tokens))
    if kind == "pdf":
        pages = pdf_pages(data) or -(-len(data) // _PDF_BYTES_PER_PAGE)
        return pages * PDF_PAGE_TOKENS
    if kind in ("audio", "video"):
        return -(-len(data) // _MEDIA_BYTES_PER_TOKEN)
    # Text: UTF-8 bytes are what estimate_tokens counts of the decoded text (not decoded:
    # a long file is not copied for it).
    return tokens_of_size(len(data))


def estimate_record_tokens(content: str, attachments: Iterable[Attachment] = ()) -> int:
    """Estimated tokens of a record: its text and its attachments (what a store keeps as
    the record's ``est_tokens``)."""
    return estimate_tokens(content) + _attachments_tokens(attachments)


def sized_record_tokens(size: int, attachments: Iterable[Attachment] = ()) -> int:
    """:func:`estimate_record_tokens` of a record whose text has ``size`` UTF-8 bytes, for
    a store that has the size from its own encode of the text (not encoded again)."""
    return tokens_of_size(size) + _attachments_tokens(attachments)


def _attachments_tokens(attachments: Iterable[Attachment]) -> int:
    return sum(estimate_attachment_tokens(a) for a in attachments)
