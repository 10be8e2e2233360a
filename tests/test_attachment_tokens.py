"""A prompt's attachments count in its token estimate: on both stores (its record's
``est_tokens``, the context's live total), and so in a window's ``live_tokens()``,
``token_usage()``, ``auto_compact`` and ``Budget(max_tokens=...)``, which refuses a request
whose attachments would go over before anything is sent."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import anthropic
import pytest
from replay import Replay, real_fixture
from stores import open_store

from rxcontext import Attachment, Budget, BudgetExceeded, ContextWindow, RecordType
from rxcontext.providers import AnthropicModel
from rxcontext.store import RecordDraft
from rxcontext.tokens import (
    IMAGE_TOKENS_MAX,
    IMAGE_TOKENS_MIN,
    PDF_PAGE_TOKENS,
    URL_TOKENS,
    estimate_attachment_tokens,
    estimate_record_tokens,
    estimate_tokens,
)

# About 378 KB of CSV: ~94k tokens of plain text once Anthropic has it as a document.
CSV = ("name,amount,comment\n" + 'alice,12,"a fairly ordinary comment line"\n' * 9000).encode()


def png(width: int, height: int) -> bytes:
    """The start of a PNG of that size (its IHDR chunk is all the estimate reads)."""
    ihdr = struct.pack(">II5B", width, height, 8, 6, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc + b"\0" * 64


def jpeg(width: int, height: int) -> bytes:
    """A JPEG's markers up to its frame header: an APP0 and an EXIF-sized APP1 first."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 3000) + b"Exif\0\0" + b"\x11" * 2994
    sof = b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + app1 + sof + b"\xff\xda" + b"\0" * 32


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\0" * 32


def webp(width: int, height: int) -> bytes:
    """A lossy (VP8) WebP's header."""
    frame = b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    chunk = b"VP8 " + struct.pack("<I", 64) + b"\0\0\0" + frame + b"\0" * 57
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def pdf(pages: int, *, compressed: bool = False) -> bytes:
    """A PDF of ``pages`` page objects, written plainly or inside an object stream."""
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
    ]
    objs += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"] * pages
    if not compressed:
        body = b"".join(b"%d 0 obj\n%s\nendobj\n" % (i + 1, o) for i, o in enumerate(objs))
        return b"%PDF-1.4\n" + body + b"trailer << /Root 1 0 R >>\n%%EOF\n"
    packed = zlib.compress(b"\n".join(objs))
    head = b"<< /Type /ObjStm /N %d /First 0 /Filter /FlateDecode /Length %d >>" % (
        len(objs),
        len(packed),
    )
    body = b"1 0 obj\n" + head + b"\nstream\n" + packed + b"\nendstream\nendobj\n"
    return b"%PDF-1.7\n" + body + b"%%EOF\n"


# -- the rule ----------------------------------------------------------------------------


def test_text_attachments_count_as_the_text_they_are() -> None:
    text = "name,ville\nJosé,Zürich\n" * 100
    for media_type in ("text/csv", "text/plain", "application/json", "application/xml"):
        a = Attachment(data=text.encode(), media_type=media_type)
        assert estimate_attachment_tokens(a) == estimate_tokens(text)
    a = Attachment(data=CSV, media_type="text/csv")
    assert estimate_attachment_tokens(a) == estimate_tokens(CSV.decode()) > 90_000


@pytest.mark.parametrize("make", [png, jpeg, gif, webp])
def test_an_image_counts_its_pixels_as_anthropic_does_within_the_documented_bounds(
    make: Callable[[int, int], bytes],
) -> None:
    assert estimate_attachment_tokens(Attachment(data=make(1000, 750))) == 1000
    # Small: never under Gemini's 258 a small image; large: Anthropic's ~1,600 at most.
    assert estimate_attachment_tokens(Attachment(data=make(64, 64))) == IMAGE_TOKENS_MIN == 258
    assert estimate_attachment_tokens(Attachment(data=make(4000, 3000))) == IMAGE_TOKENS_MAX


def test_an_image_whose_size_cannot_be_read_counts_the_most_an_image_can() -> None:
    broken = Attachment(data=b"\x89PNG\r\n\x1a\n" + b"\0" * 8)
    heic = Attachment(data=b"\0\0\0\x18ftypheic" + b"\0" * 64, media_type="image/heic")
    assert estimate_attachment_tokens(broken) == estimate_attachment_tokens(heic) == 1_600


def test_a_pdf_counts_its_pages_plain_or_in_object_streams() -> None:
    assert estimate_attachment_tokens(Attachment(data=pdf(1))) == PDF_PAGE_TOKENS == 3_000
    assert estimate_attachment_tokens(Attachment(data=pdf(7))) == 7 * PDF_PAGE_TOKENS
    assert estimate_attachment_tokens(Attachment(data=pdf(5, compressed=True))) == 15_000
    # No page objects to be found (encrypted, say): one page per 50 KB, at least one.
    opaque = b"%PDF-1.7\n" + b"\x80" * 120_000
    assert estimate_attachment_tokens(Attachment(data=opaque)) == 3 * PDF_PAGE_TOKENS


def test_audio_and_video_count_by_their_size_and_urls_a_constant() -> None:
    assert estimate_attachment_tokens(Attachment(data=b"ID3" + b"\0" * 49_997)) == 100
    clip = Attachment(data=b"\0\0\0\x18ftypmp42" + b"\0" * 99_988)
    assert estimate_attachment_tokens(clip) == 200
    image = Attachment(url="https://example.com/cat.png")
    assert estimate_attachment_tokens(image) == IMAGE_TOKENS_MAX
    assert estimate_attachment_tokens(Attachment(url="https://example.com/a.pdf")) == URL_TOKENS
    assert URL_TOKENS == PDF_PAGE_TOKENS


def test_a_records_estimate_is_its_text_and_its_attachments() -> None:
    a = [Attachment(data=CSV, media_type="text/csv"), Attachment(data=png(1000, 750))]
    assert estimate_record_tokens("Summarise", a) == 3 + len(CSV) // 4 + 1000
    assert estimate_record_tokens("Summarise", ()) == estimate_tokens("Summarise")


# -- the stores --------------------------------------------------------------------------


def _attached() -> tuple[Attachment, ...]:
    return (
        Attachment(data=CSV, media_type="text/csv", name="big.csv"),
        Attachment(data=png(1000, 750)),
        Attachment(data=pdf(2)),
        Attachment(url="https://example.com/cat.jpg"),
    )


EXPECTED = estimate_tokens("Summarise this") + len(CSV) // 4 + 1000 + 2 * 3_000 + 1_600


def _live_sum(store: Any, context_id: str) -> int:
    return sum(r.est_tokens for r in store.records(context_id) if r.live)


def test_a_stored_prompt_counts_its_attachments_and_the_live_total_stays_their_sum(
    make_store: Callable[..., Any],
) -> None:
    store = make_store()
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, RecordDraft(RecordType.SYSTEM_PROMPT, "Be brief."))
    added = store.add_record(
        ctx.id, RecordDraft(RecordType.PROMPT, "Summarise this", attachments=_attached())
    )
    assert added.est_tokens == EXPECTED
    (read,) = [r for r in store.records(ctx.id) if r.id == added.id]
    assert read.est_tokens == EXPECTED
    assert store.live_tokens(ctx.id) == _live_sum(store, ctx.id) == EXPECTED + 3
    assert store.context_stats(ctx.id).live_tokens == EXPECTED + 3
    store.set_live_range(ctx.id, 1, 1, False)  # the prompt hidden: its tokens leave
    assert store.live_tokens(ctx.id) == _live_sum(store, ctx.id) == 3
    store.set_live_range(ctx.id, 1, 1, True)
    assert store.live_tokens(ctx.id) == _live_sum(store, ctx.id) == EXPECTED + 3


def test_imported_prompts_count_their_attachments_too(make_store: Callable[..., Any]) -> None:
    store = make_store()
    ctx = store.get_or_create_context("c")
    drafts = [
        RecordDraft(RecordType.PROMPT, "Summarise this", attachments=_attached()),
        RecordDraft(RecordType.MODEL_RESP, "A list of names."),
        RecordDraft(RecordType.PROMPT, "Summarise this", attachments=_attached(), live=False),
    ]
    imported = store.import_records(ctx.id, drafts)
    assert [r.est_tokens for r in imported] == [EXPECTED, 4, EXPECTED]
    assert store.live_tokens(ctx.id) == _live_sum(store, ctx.id) == EXPECTED + 4
    copy = store.clone_context(ctx.id, "copy")
    assert store.live_tokens(copy.id) == _live_sum(store, copy.id) == EXPECTED + 4


# -- a window ----------------------------------------------------------------------------


@pytest.mark.usefixtures("both_stores")
def test_a_budget_refuses_a_prompt_whose_attachment_goes_over_before_sending_it() -> None:
    body = real_fixture("anthropic/text_basic_sonnet45.sse").read_bytes()
    replay = Replay(body)
    model = AnthropicModel(
        "claude-sonnet-4-5",
        client=anthropic.Anthropic(api_key="sk-ant-x", max_retries=0, http_client=replay.client()),
    )
    cw = ContextWindow(
        open_store(), model, "c", retry=None, max_tokens=200_000, budget=Budget(max_tokens=20_000)
    )
    cw.add_prompt("Summarise this CSV", attachments=[Attachment(data=CSV, media_type="text/csv")])
    tokens = estimate_tokens("Summarise this CSV") + len(CSV) // 4
    assert cw.live_tokens() == tokens
    assert cw.token_usage().percent == pytest.approx(100 * tokens / 200_000)
    with pytest.raises(BudgetExceeded) as refused:
        cw.call()
    assert refused.value.estimate == tokens
    assert replay.requests == []  # refused unsent
    cw.budget = None
    cw.call()  # the same prompt, sent: the document the estimate counted
    (document,) = [
        block
        for message in replay.bodies[0]["messages"]
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "document"
    ]
    assert len(document["source"]["data"]) == len(CSV)
