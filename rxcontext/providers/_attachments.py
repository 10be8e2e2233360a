"""Attachments in each provider's own form, and what each provider refuses.

Each function takes a prompt record's attachments and gives the parts its provider sends
with the prompt's text; a media type the provider does not take, a URL where it needs the
bytes, or bytes over the provider's size limit raise :class:`~rxcontext.UnsupportedAttachment`
before any request is built. The models call the checks again from ``check_attachments``
(``ContextWindow.add_prompt`` uses it), so nothing that cannot be sent is stored.

=================  ==============================  ======================  ==================
provider           images                          PDF                     other
=================  ==============================  ======================  ==================
OpenAI Chat        png, jpeg, gif, webp:           ``file`` (bytes only)   wav/mp3 bytes:
                   ``image_url`` (data URL / URL)                          ``input_audio``
OpenAI Responses   png, jpeg, gif, webp:           ``input_file``          —
                   ``input_image``
Anthropic          png, jpeg, gif, webp:           ``document``            text/* bytes:
                   ``image`` (base64 / url);       (base64 / url); bytes   text ``document``
                   bytes at most 5 MB as base64    at most 32 MB as base64
Gemini             ``inline_data`` / ``file_data``: png, jpeg, webp, heic and heif images,
                   any audio, video or text, PDF
=================  ==============================  ======================  ==================
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from ..attachments import Attachment
from ..errors import UnsupportedAttachment

__all__ = [
    "anthropic_blocks",
    "chat_parts",
    "check",
    "gemini_parts",
    "responses_parts",
]

# The image types each API reads:
# - OpenAI (Chat and Responses): PNG, JPEG, WebP, non-animated GIF
#   https://platform.openai.com/docs/guides/images-vision ("Image input requirements");
# - Anthropic: JPEG, PNG, GIF, WebP
#   https://platform.claude.com/docs/en/build-with-claude/vision;
# - Gemini: PNG, JPEG, WebP, HEIC, HEIF (no GIF, no SVG)
#   https://ai.google.dev/gemini-api/docs/image-understanding ("Supported image formats"),
#   https://cloud.google.com/vertex-ai/generative-ai/docs/multimodal/image-understanding.
_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_GEMINI_IMAGES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
_PDF = "application/pdf"
# Anthropic's size limits, counted on the base64 text sent (the API measures an image's
# base64 data: its 400 reads "image exceeds 5 MB maximum: N bytes > 5242880 bytes"):
# - 5 MB per image: https://platform.claude.com/docs/en/build-with-claude/vision (FAQ);
# - 32 MB per request: https://platform.claude.com/docs/en/build-with-claude/pdf-support
#   ("Maximum request size"; also the API's request size limit), so no PDF whose base64 is
#   longer can ever be sent. Its 100-page limit is not checked (that needs a PDF parser).
# A URL source is fetched by Anthropic and cannot be measured here.
_MB = 1024 * 1024
_ANTHROPIC_IMAGE_LIMIT = 5 * _MB
_ANTHROPIC_REQUEST_LIMIT = 32 * _MB
_CHAT_AUDIO = {"audio/wav": "wav", "audio/mpeg": "mp3"}
_GEMINI_TOPS = frozenset({"image", "audio", "video", "text"})

_NAMES = {
    "openai": "OpenAI Chat Completions",
    "openai-responses": "the OpenAI Responses API",
    "anthropic": "Anthropic",
    "gemini": "Gemini",
}


def _refuse(provider: str, a: Attachment, why: str) -> UnsupportedAttachment:
    label = a.name or (a.url if a.url is not None else f"{a.size} bytes")
    return UnsupportedAttachment(
        f"{_NAMES[provider]} does not take attachment {label!r} ({a.media_type}): {why}",
        provider=provider,
        media_type=a.media,
    )


def _needs_bytes(provider: str, a: Attachment) -> UnsupportedAttachment:
    return _refuse(provider, a, "it needs the bytes, not a URL; give data= or path=")


def _base64_size(a: Attachment) -> int:
    """The length of ``a``'s bytes as base64 text (what Anthropic counts), without encoding."""
    assert a.data is not None
    return (len(a.data) + 2) // 3 * 4


def _check_anthropic_size(a: Attachment) -> None:
    sent = _base64_size(a)
    if a.media == _PDF:
        if sent > _ANTHROPIC_REQUEST_LIMIT:
            raise _refuse(
                "anthropic",
                a,
                f"a request may be at most 32 MB ({_ANTHROPIC_REQUEST_LIMIT:,} bytes) and this "
                f"PDF is {sent:,} bytes as base64; split it or give an https:// URL",
            )
    elif sent > _ANTHROPIC_IMAGE_LIMIT:
        raise _refuse(
            "anthropic",
            a,
            f"an image may be at most 5 MB ({_ANTHROPIC_IMAGE_LIMIT:,} bytes) as base64 and this "
            f"one is {sent:,}; resize or compress it",
        )


def chat_parts(attachments: Sequence[Attachment]) -> list[dict[str, Any]]:
    """OpenAI Chat Completions content parts: ``image_url``, ``file``, ``input_audio``."""
    parts: list[dict[str, Any]] = []
    for a in attachments:
        media = a.media
        if media in _IMAGES:
            parts.append({"type": "image_url", "image_url": {"url": a.data_url()}})
        elif media == _PDF:
            if a.data is None:
                raise _needs_bytes("openai", a)
            parts.append(
                {
                    "type": "file",
                    "file": {"filename": a.name or "document.pdf", "file_data": a.data_url()},
                }
            )
        elif media in _CHAT_AUDIO:
            if a.data is None:
                raise _needs_bytes("openai", a)
            parts.append(
                {
                    "type": "input_audio",
                    "input_audio": {"data": a.base64(), "format": _CHAT_AUDIO[media]},
                }
            )
        else:
            raise _refuse("openai", a, "it takes PNG, JPEG, GIF and WebP images, PDFs, WAV and MP3")
    return parts


def responses_parts(attachments: Sequence[Attachment]) -> list[dict[str, Any]]:
    """OpenAI Responses content parts: ``input_image``, ``input_file``."""
    parts: list[dict[str, Any]] = []
    for a in attachments:
        media = a.media
        if media in _IMAGES:
            parts.append({"type": "input_image", "image_url": a.data_url(), "detail": "auto"})
        elif media == _PDF:
            if a.data is None:
                parts.append({"type": "input_file", "file_url": a.url})
            else:
                parts.append(
                    {
                        "type": "input_file",
                        "filename": a.name or "document.pdf",
                        "file_data": a.data_url(),
                    }
                )
        else:
            raise _refuse("openai-responses", a, "it takes PNG, JPEG, GIF and WebP images and PDFs")
    return parts


def anthropic_blocks(attachments: Sequence[Attachment]) -> list[dict[str, Any]]:
    """Anthropic content blocks: ``image`` and ``document`` (base64 or url source)."""
    blocks: list[dict[str, Any]] = []
    for a in attachments:
        media = a.media
        if media in _IMAGES or media == _PDF:
            kind = "image" if media in _IMAGES else "document"
            if a.data is not None:
                _check_anthropic_size(a)
            source: dict[str, Any] = (
                {"type": "url", "url": a.url}
                if a.data is None
                else {"type": "base64", "media_type": media, "data": a.base64()}
            )
            blocks.append({"type": kind, "source": source})
        elif media.startswith("text/"):  # CSV, Markdown...: sent as the plain text they are
            if a.data is None:
                raise _needs_bytes("anthropic", a)
            try:
                text = a.data.decode("utf-8")
            except UnicodeDecodeError:
                raise _refuse("anthropic", a, "a text document must be UTF-8") from None
            source = {"type": "text", "media_type": "text/plain", "data": text}
            blocks.append({"type": "document", "source": source})
        else:
            raise _refuse(
                "anthropic", a, "it takes PNG, JPEG, GIF and WebP images, PDFs and text files"
            )
    return blocks


def gemini_parts(attachments: Sequence[Attachment]) -> list[dict[str, Any]]:
    """Gemini parts as the SDK sends them: ``inlineData`` (bytes) or ``fileData`` (a URL)."""
    parts: list[dict[str, Any]] = []
    for a in attachments:
        media = a.media
        top = media.split("/", 1)[0]
        if media != _PDF and top not in _GEMINI_TOPS:
            raise _refuse("gemini", a, "it takes images, audio, video, PDFs and text")
        if top == "image" and media not in _GEMINI_IMAGES:
            raise _refuse("gemini", a, "it takes PNG, JPEG, WebP, HEIC and HEIF images")
        if a.data is None:
            parts.append({"fileData": {"file_uri": a.url, "mime_type": media}})
        else:
            # URL-safe base64, as the SDK's pydantic models encode bytes (the API takes both).
            data = base64.urlsafe_b64encode(a.data).decode("ascii")
            parts.append({"inlineData": {"data": data, "mime_type": media}})
    return parts


_BUILDERS = {
    "openai": chat_parts,
    "openai-responses": responses_parts,
    "anthropic": anthropic_blocks,
    "gemini": gemini_parts,
}


def check(provider: str, attachments: Sequence[Attachment]) -> None:
    """Raise :class:`~rxcontext.UnsupportedAttachment` for the first attachment ``provider``
    (``"openai"``, ``"openai-responses"``, ``"anthropic"``, ``"gemini"``) does not take."""
    if provider != "gemini":
        for a in attachments:
            if a.url is not None and a.url[:5].lower() == "gs://":
                raise _refuse(
                    provider,
                    a,
                    "only Gemini (on Vertex AI) fetches gs:// URLs; give data=, path= or an "
                    "https:// URL",
                )
    _BUILDERS[provider](attachments)
