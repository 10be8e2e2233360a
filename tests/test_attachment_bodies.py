"""Attachments in request bodies, through the real SDKs (httpx2 transport that records).

Each provider sends a prompt's attachments in its own form (OpenAI Chat ``image_url`` /
``file`` / ``input_audio``, Responses ``input_image`` / ``input_file``, Anthropic ``image`` /
``document``, Gemini ``inlineData`` / ``fileData``); the bytes sent with the spliced history
are the bytes the SDK itself sends for the same messages (for Gemini: for the SDK's own
``types.Part`` objects); an attachment a provider refuses fails with
:class:`UnsupportedAttachment` before any request is sent, and before ``add_prompt`` stores it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from test_request_bodies import (
    MODES,
    PROVIDERS,
    WIRES,
    Recorder,
    compare,
    make_model,
    request_for,
    run,
)
from test_request_bodies import history as random_history

import rxcontext
from rxcontext import Attachment, ContextWindow, UnsupportedAttachment
from rxcontext.providers.base import Request
from rxcontext.records import Record, RecordType

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(40))
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(24)

URLSAFE_PNG = base64.urlsafe_b64encode(PNG).decode()  # as google-genai encodes bytes
B64 = {k: base64.b64encode(v).decode() for k, v in {"png": PNG, "pdf": PDF, "wav": WAV}.items()}

# What each provider takes (the generated histories attach a few of these to prompts).
TAKES: dict[str, list[Attachment]] = {
    "openai_chat": [
        Attachment(data=PNG, name="p.png"),
        Attachment(data=JPEG),
        Attachment(url="https://example.com/cat.webp"),
        Attachment(data=PDF, name="report.pdf"),
        Attachment(data=PDF),
        Attachment(data=WAV, name="hello.wav"),
    ],
    "openai_responses": [
        Attachment(data=PNG),
        Attachment(url="https://example.com/cat.gif"),
        Attachment(data=PDF, name="report.pdf"),
        Attachment(url="https://example.com/paper.pdf"),
    ],
    "anthropic": [
        Attachment(data=PNG),
        Attachment(data=JPEG),
        Attachment(url="https://example.com/cat.png"),
        Attachment(data=PDF),
        Attachment(url="https://example.com/paper.pdf"),
        Attachment(data="naïve notes 🎉\n".encode(), media_type="text/plain"),
    ],
    "gemini": [
        Attachment(data=PNG),
        Attachment(data=PDF),
        Attachment(data=WAV),
        Attachment(url="gs://bucket/video.mp4"),
        Attachment(
            url="https://generativelanguage.googleapis.com/v1beta/files/abc",
            media_type="application/pdf",
        ),
    ],
}
REFUSES: dict[str, tuple[Attachment, str]] = {
    "openai_chat": (Attachment(url="https://example.com/paper.pdf"), "needs the bytes"),
    "openai_responses": (Attachment(data=WAV), "audio/wav"),
    "anthropic": (Attachment(data=WAV), "audio/wav"),
    "gemini": (Attachment(data=b"PK\x03\x04zip", media_type="application/zip"), "zip"),
}


def with_attachments(provider: str, records: list[Record], seed: int) -> list[Record]:
    rng = random.Random(seed)
    takes = TAKES[provider]
    return [
        replace(r, attachments=tuple(rng.sample(takes, rng.randrange(1, 3))))
        if r.type is RecordType.PROMPT and rng.random() < 0.6
        else r
        for r in records
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_histories_with_attachments_send_the_sdks_bytes(
    provider: str, wire: str, mode: str
) -> None:
    for seed in range(3):  # the attachment-free histories are covered by test_request_bodies
        records = with_attachments(provider, random_history(seed), seed)
        cuts = sorted({len(records), *random.Random(seed).choices(range(len(records) + 1), k=2)})
        requests = [request_for(provider, records[:cut], seed + cut) for cut in cuts if cut]
        compare(provider, wire, mode, requests)


def _prompt(*attachments: Attachment, text: str = "What are these?") -> Request:
    from datetime import UTC, datetime

    record = Record(
        1, "c", RecordType.PROMPT, text, True, 1, datetime.now(UTC), attachments=attachments
    )
    return Request([record])


def _body(provider: str, wire: str, *attachments: Attachment) -> dict[str, Any]:
    recorder = Recorder()
    model = make_model(provider, wire, recorder, plain=False)
    run(model, _prompt(*attachments), "sync", "stream")
    assert len(recorder.sent) == 1
    return json.loads(recorder.sent[0].body)  # type: ignore[no-any-return]


@pytest.mark.parametrize("wire", WIRES)
def test_openai_chat_sends_image_url_file_and_input_audio_parts(wire: str) -> None:
    body = _body(
        "openai_chat",
        wire,
        Attachment(data=PNG),
        Attachment(url="https://example.com/cat.jpg"),
        Attachment(data=PDF, name="report.pdf"),
        Attachment(data=WAV),
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What are these?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64['png']}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {
                    "type": "file",
                    "file": {
                        "filename": "report.pdf",
                        "file_data": f"data:application/pdf;base64,{B64['pdf']}",
                    },
                },
                {"type": "input_audio", "input_audio": {"data": B64["wav"], "format": "wav"}},
            ],
        }
    ]


@pytest.mark.parametrize("wire", WIRES)
def test_openai_responses_sends_input_image_and_input_file_parts(wire: str) -> None:
    body = _body(
        "openai_responses",
        wire,
        Attachment(data=PNG),
        Attachment(data=PDF),
        Attachment(url="https://example.com/paper.pdf"),
    )
    assert body["input"] == [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What are these?"},
                {
                    "type": "input_image",
                    "image_url": f"data:image/png;base64,{B64['png']}",
                    "detail": "auto",
                },
                {
                    "type": "input_file",
                    "filename": "document.pdf",
                    "file_data": f"data:application/pdf;base64,{B64['pdf']}",
                },
                {"type": "input_file", "file_url": "https://example.com/paper.pdf"},
            ],
        }
    ]


@pytest.mark.parametrize("wire", WIRES)
def test_anthropic_sends_image_and_document_blocks_before_the_text(wire: str) -> None:
    body = _body(
        "anthropic",
        wire,
        Attachment(data=PNG),
        Attachment(url="https://example.com/paper.pdf"),
        Attachment(data=b"notes", media_type="text/plain"),
        Attachment(data=b"a,b\n1,2\n", media_type="text/csv"),
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": B64["png"]},
                },
                {
                    "type": "document",
                    "source": {"type": "url", "url": "https://example.com/paper.pdf"},
                },
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                },
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "a,b\n1,2\n"},
                },
                # The prompt caching breakpoint marks the history's last block, after them.
                {
                    "type": "text",
                    "text": "What are these?",
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        }
    ]


@pytest.mark.parametrize("wire", WIRES)
def test_gemini_sends_inline_data_and_file_data_parts(wire: str) -> None:
    body = _body("gemini", wire, Attachment(data=PNG), Attachment(url="gs://bucket/clip.mp4"))
    assert body["contents"] == [
        {
            "parts": [
                {"text": "What are these?"},
                {"inlineData": {"data": URLSAFE_PNG, "mime_type": "image/png"}},
                {"fileData": {"file_uri": "gs://bucket/clip.mp4", "mime_type": "video/mp4"}},
            ],
            "role": "user",
        }
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refused_attachment_fails_before_the_request_is_sent(
    provider: str, wire: str, mode: str
) -> None:
    refused, why = REFUSES[provider]
    recorder = Recorder()
    model = make_model(provider, wire, recorder, plain=False)
    error = run(model, _prompt(TAKES[provider][0], refused), mode, "stream")
    assert isinstance(error, UnsupportedAttachment), error
    assert why in str(error)
    assert recorder.sent == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_add_prompt_refuses_what_the_model_cannot_send_and_stores_nothing(provider: str) -> None:
    refused, _ = REFUSES[provider]
    model = make_model(provider, "sdk", Recorder(), plain=False)
    with rxcontext.open() as store:
        cw = ContextWindow(store, model)
        with pytest.raises(UnsupportedAttachment) as caught:
            cw.add_prompt("look", attachments=[TAKES[provider][0], refused])
        assert caught.value.media_type == refused.media_type
        assert cw.live_records() == []
        cw.add_prompt("look", attachments=TAKES[provider])
        assert cw.live_records()[0].attachments == tuple(a.stored() for a in TAKES[provider])


@pytest.mark.parametrize("provider", ["openai_chat", "openai_responses", "anthropic"])
def test_a_gs_url_is_refused_where_only_gemini_reads_it(provider: str) -> None:
    """Only Gemini on Vertex AI fetches gs:// URLs: another provider refuses one before the
    prompt is stored (it would be sent and fail on every later request)."""
    model = make_model(provider, "sdk", Recorder(), plain=False)
    with rxcontext.open() as store:
        cw = ContextWindow(store, model)
        with pytest.raises(UnsupportedAttachment, match="gs://"):
            cw.add_prompt("look", attachments=[Attachment(url="gs://bucket/cat.png")])
        assert cw.live_records() == []


def test_a_stored_prompt_a_new_model_refuses_reaches_the_subscriber_unsent() -> None:
    recorder = Recorder()
    with rxcontext.open() as store:
        ContextWindow(store).add_prompt("hear this", attachments=[Attachment(data=WAV)])
        cw = ContextWindow(store, make_model("anthropic", "sdk", recorder, plain=False))
        errors: list[BaseException] = []
        cw.stream().subscribe(on_error=errors.append)
        assert len(errors) == 1
        assert isinstance(errors[0], rxcontext.StreamInterrupted)
        assert isinstance(errors[0].__cause__, UnsupportedAttachment)
        assert errors[0].checkpoint.text == ""
        assert recorder.sent == []


@pytest.mark.parametrize(
    ("provider", "attachment", "why"),
    [
        ("openai", Attachment(url="https://example.com/paper.pdf"), "needs the bytes"),
        ("openai", Attachment(data=b"a,b", media_type="text/csv"), "text/csv"),
        ("openai", Attachment(url="https://example.com/a.wav"), "needs the bytes"),
        ("openai-responses", Attachment(data=WAV), "audio/wav"),
        ("anthropic", Attachment(data=b"\xff\xfe", media_type="text/plain"), "UTF-8"),
        ("anthropic", Attachment(url="https://example.com/notes.txt"), "needs the bytes"),
        ("anthropic", Attachment(url="https://example.com/clip.mp4"), "video/mp4"),
        ("gemini", Attachment(data=b"PK\x03\x04", media_type="application/zip"), "zip"),
    ],
)
def test_each_provider_names_what_it_refuses(
    provider: str, attachment: Attachment, why: str
) -> None:
    from rxcontext.providers._attachments import check

    with pytest.raises(UnsupportedAttachment, match=why) as caught:
        check(provider, [attachment])
    assert (caught.value.provider, caught.value.media_type) == (provider, attachment.media_type)


# -- size and type limits ---------------------------------------------------------------------

# Anthropic's limits count the base64 text sent: 5 MB (5,242,880 characters) per image, and
# 32 MB for the whole request, so no PDF whose base64 is longer can be sent.
ANTHROPIC_IMAGE_BYTES = 5 * 1024 * 1024 // 4 * 3  # the largest image: exactly 5 MB as base64
ANTHROPIC_REQUEST_BYTES = 32 * 1024 * 1024 // 4 * 3
HEIC = b"\x00\x00\x00\x18ftypheic" + bytes(16)
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'
GIF = b"GIF89a" + bytes(32)


def _sized(head: bytes, size: int) -> bytes:
    return head + bytes(size - len(head))


def test_anthropic_refuses_an_image_over_5_mb_of_base64_and_stores_nothing() -> None:
    recorder = Recorder()
    with rxcontext.open() as store:
        cw = ContextWindow(store, make_model("anthropic", "sdk", recorder, plain=False))
        big = Attachment(data=_sized(PNG, ANTHROPIC_IMAGE_BYTES + 1), name="big.png")
        with pytest.raises(UnsupportedAttachment) as caught:
            cw.add_prompt("look", attachments=[Attachment(data=PNG), big])
        message = str(caught.value)
        assert message.startswith("Anthropic does not take attachment 'big.png' (image/png)")
        assert "5 MB" in message
        assert (caught.value.provider, caught.value.media_type) == ("anthropic", "image/png")
        assert cw.live_records() == []
        at_limit = Attachment(data=_sized(PNG, ANTHROPIC_IMAGE_BYTES), name="ok.png")
        cw.add_prompt("look", attachments=[at_limit])  # exactly 5 MB of base64: taken
        assert cw.live_records()[0].attachments == (at_limit,)
    assert recorder.sent == []


def test_anthropic_refuses_a_pdf_larger_than_a_request_may_be() -> None:
    with rxcontext.open() as store:
        cw = ContextWindow(store, make_model("anthropic", "sdk", Recorder(), plain=False))
        huge = Attachment(data=_sized(PDF, ANTHROPIC_REQUEST_BYTES + 1), name="huge.pdf")
        with pytest.raises(UnsupportedAttachment, match=r"'huge.pdf'.*32 MB") as caught:
            cw.add_prompt("read", attachments=[huge])
        assert caught.value.media_type == "application/pdf"
        assert cw.live_records() == []


@pytest.mark.parametrize(
    "attachment",
    [
        Attachment(data=SVG, media_type="image/svg+xml", name="logo.svg"),
        Attachment(url="gs://bucket/logo.svg"),
        Attachment(data=GIF, name="wave.gif"),
        Attachment(url="https://example.com/scan.tiff"),
    ],
    ids=["svg", "svg-url", "gif", "tiff-url"],
)
def test_gemini_refuses_an_image_type_it_does_not_read_and_stores_nothing(
    attachment: Attachment,
) -> None:
    with rxcontext.open() as store:
        cw = ContextWindow(store, make_model("gemini", "sdk", Recorder(), plain=False))
        with pytest.raises(UnsupportedAttachment) as caught:
            cw.add_prompt("look", attachments=[Attachment(data=PNG), attachment])
        assert str(caught.value).startswith(f"Gemini does not take attachment '{attachment.name}'")
        assert "PNG, JPEG, WebP, HEIC and HEIF" in str(caught.value)
        assert (caught.value.provider, caught.value.media_type) == ("gemini", attachment.media)
        assert cw.live_records() == []


def test_gemini_takes_heic_and_heif_images() -> None:
    body = _body(
        "gemini",
        "sdk",
        Attachment(data=HEIC, media_type="image/heic"),
        Attachment(url="gs://bucket/photo.heif"),
    )
    parts = body["contents"][0]["parts"]
    assert parts[1]["inlineData"]["mime_type"] == "image/heic"
    assert parts[2]["fileData"] == {"file_uri": "gs://bucket/photo.heif", "mime_type": "image/heif"}


OVER_THE_LIMIT: list[tuple[str, Callable[[], Attachment], str]] = [
    (
        "anthropic",
        lambda: Attachment(data=_sized(JPEG, ANTHROPIC_IMAGE_BYTES + 1), name="photo.jpg"),
        "5 MB",
    ),
    ("gemini", lambda: Attachment(data=SVG, media_type="image/svg+xml"), "image/svg+xml"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("provider", "make", "why"), OVER_THE_LIMIT, ids=[p for p, _, _ in OVER_THE_LIMIT]
)
def test_a_stored_attachment_the_provider_refuses_fails_the_call_unsent(
    provider: str, make: Callable[[], Attachment], why: str, mode: str
) -> None:
    """A prompt stored without a model (or under another) is refused when the request is
    built: ``call()`` / ``acall()`` end with StreamInterrupted, and nothing is sent."""
    recorder = Recorder()
    with rxcontext.open() as store:
        ContextWindow(store).add_prompt("look", attachments=[make()])
        cw = ContextWindow(store, make_model(provider, "sdk", recorder, plain=False))
        with pytest.raises(rxcontext.StreamInterrupted) as caught:
            if mode == "sync":
                cw.call()
            else:
                asyncio.run(cw.acall())
        assert isinstance(caught.value.__cause__, UnsupportedAttachment)
        assert why in str(caught.value.__cause__)
        assert caught.value.checkpoint.text == ""
    assert recorder.sent == []
