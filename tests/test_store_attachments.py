"""Attachments in both stores: stored once per content, linked in order, read back with their
records (history, records, reply records, the history cache), cloned, exported, imported,
forked; and the Attachment value's checks."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rxcontext
from rxcontext import Attachment, AttachmentError, ContextWindow, InvalidExport, RecordType
from rxcontext.history import HistoryCache
from rxcontext.store import RecordDraft, ReplyTicket
from rxcontext.store.owner import worker_id

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\x01" * 64


def _open(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Any:
    if kind == "postgres":
        return rxcontext.open(request.getfixturevalue("pg_url"))
    return rxcontext.open(tmp_path / "a.db" if kind == "file" else ":memory:")


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    s = _open(request, request.param, tmp_path)
    yield s
    s.close()


def rows(store: Any, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(store, rxcontext.SQLiteStore):
        return [tuple(r) for r in store._db().execute(sql).fetchall()]
    with store._runner.pool().connection() as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def prompt(text: str, *attachments: Attachment) -> RecordDraft:
    return RecordDraft(RecordType.PROMPT, text, attachments=attachments)


# -- the value ----------------------------------------------------------------------------


def test_media_type_is_recognised_from_bytes_and_names(tmp_path: Path) -> None:
    assert Attachment(data=PNG).media_type == "image/png"
    assert Attachment(data=JPEG).media_type == "image/jpeg"
    assert Attachment(data=PDF).media_type == "application/pdf"
    assert Attachment(data=b"RIFF\0\0\0\0WEBPVP8 ").media_type == "image/webp"
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    a = Attachment(path=notes)  # a Path works too
    assert (a.media_type, a.name, a.data, a.path) == (
        "text/plain",
        "notes.txt",
        b"hello",
        str(notes),
    )
    assert Attachment(url="https://example.com/x/cat.JPG").media_type == "image/jpeg"
    assert Attachment(url="https://example.com/x/cat.JPG").name == "cat.JPG"
    explicit = Attachment(data=b"a,b\n", media_type="Text/CSV")
    assert explicit.media_type == "text/csv"
    assert explicit.sha256 == hashlib.sha256(b"a,b\n").hexdigest()


def test_a_data_url_becomes_bytes() -> None:
    a = Attachment(url="data:image/png;base64," + base64.b64encode(PNG).decode())
    assert (a.data, a.url, a.media_type) == (PNG, None, "image/png")
    assert a.data_url().startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of data=, path= or url= (got none)"),
        ({"data": PNG, "url": "https://x.org/a.png"}, "got data and url"),
        ({"path": "/no/such/file.png"}, "does not exist"),
        ({"data": b"\x00\x01\x02"}, "pass media_type="),
        ({"data": b""}, "empty"),
        ({"data": "text"}, "data must be bytes"),
        ({"url": "ftp://x.org/a.png"}, "not an http(s)://"),
        ({"url": "https://x.org/download"}, "pass media_type="),
        ({"data": PNG, "media_type": "png"}, "not a media type"),
        ({"url": "data:image/png;base64,!!!"}, "base64"),
        ({"path": "/tmp/a\x00b.png"}, "cannot read attachment file"),
        ({"data": PNG, "media_type": "image/jpeg"}, "do not match|does not match"),
    ],
)
def test_bad_attachments_are_refused_with_a_clear_error(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(AttachmentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Attachment(**kwargs)


def test_a_files_name_that_says_another_image_type_than_its_bytes_yields_to_them(
    tmp_path: Path,
) -> None:
    """``photo.png`` holding JPEG data is sent as image/jpeg (Anthropic refuses an image
    whose bytes are not its stated type)."""
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 16
    (tmp_path / "photo.png").write_bytes(jpeg)
    assert Attachment(path=str(tmp_path / "photo.png")).media_type == "image/jpeg"


def test_a_url_is_kept_as_checked_without_surrounding_space() -> None:
    assert Attachment(url="  https://example.com/cat.png\n").url == "https://example.com/cat.png"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AttachmentError, match="is a directory"):
        Attachment(path=str(tmp_path))


# -- the stores ---------------------------------------------------------------------------


def test_records_read_back_with_their_attachments_in_order(store: Any) -> None:
    ctx = store.get_or_create_context("c")
    url = Attachment(url="https://example.com/report.pdf")
    written = store.add_record(
        ctx.id, prompt("look", Attachment(data=PNG), url, Attachment(data=PDF, name="a.pdf"))
    )
    store.add_record(ctx.id, RecordDraft(RecordType.MODEL_RESP, "ok"))
    assert [a.media_type for a in written.attachments] == [
        "image/png",
        "application/pdf",
        "application/pdf",
    ]
    read = store.records(ctx.id)
    assert read[0] == written
    assert read[0].attachments[0].data == PNG
    assert read[0].attachments[1].url == "https://example.com/report.pdf"
    assert read[0].attachments[1].data is None
    assert read[0].attachments[2].name == "a.pdf"
    assert read[1].attachments == ()
    _, history = store.history(ctx.id)
    assert history == read


def test_the_same_bytes_are_stored_once(store: Any) -> None:
    a, b = store.get_or_create_context("a"), store.get_or_create_context("b")
    store.add_record(a.id, prompt("one", Attachment(data=PNG), Attachment(data=PNG)))
    store.add_record(a.id, prompt("two", Attachment(data=PNG, name="again.png")))
    store.add_record(b.id, prompt("three", Attachment(data=PNG), Attachment(data=PDF)))
    store.clone_context(a.id, "a2")
    assert rows(store, "SELECT COUNT(*) FROM blobs") == [(2,)]
    assert rows(store, "SELECT COUNT(*) FROM record_attachments") == [(8,)]


def test_url_attachments_store_no_bytes(store: Any) -> None:
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, prompt("see", Attachment(url="https://example.com/cat.png")))
    assert rows(store, "SELECT COUNT(*) FROM blobs") == [(0,)]
    assert rows(store, "SELECT url FROM record_attachments") == [("https://example.com/cat.png",)]


def test_deleting_a_context_keeps_bytes_another_context_refers_to(store: Any) -> None:
    a, b = store.get_or_create_context("a"), store.get_or_create_context("b")
    store.add_record(a.id, prompt("one", Attachment(data=PNG)))
    store.add_record(b.id, prompt("two", Attachment(data=PNG)))
    store.delete_context(a.id)
    assert store.records(b.id)[0].attachments[0].data == PNG


def test_deleting_a_context_frees_bytes_no_record_refers_to(store: Any) -> None:
    a, b = store.get_or_create_context("a"), store.get_or_create_context("b")
    store.add_record(a.id, prompt("one", Attachment(data=PNG), Attachment(data=PDF)))
    store.add_record(b.id, prompt("two", Attachment(data=PNG)))
    store.delete_context(a.id)
    assert rows(store, "SELECT COUNT(*) FROM blobs") == [(1,)]
    store.delete_context(b.id)
    assert rows(store, "SELECT COUNT(*) FROM blobs") == [(0,)]


def test_postgres_freeing_bytes_skips_a_content_a_write_is_linking(
    request: pytest.FixtureRequest,
) -> None:
    """A write that has stored (or found) a content but not yet linked it holds the blob's
    row: a delete's freeing of unused bytes, meanwhile, skips it, and the write commits."""
    import psycopg

    from rxcontext.store import _pg_blobs

    url = request.getfixturevalue("pg_url")
    with rxcontext.open(url) as store:
        ctx = store.get_or_create_context("c")
        first = store.add_record(ctx.id, prompt("one", Attachment(data=PNG)))
        with psycopg.connect(url) as writer, psycopg.connect(url, autocommit=True) as freer:
            # The write: its content held (already stored), its link not inserted yet.
            image = Attachment(data=PNG)
            _pg_blobs.hold(writer, [image])
            # Meanwhile the only record that used the content goes, and unused bytes are freed.
            freer.execute("DELETE FROM records WHERE id = %s", (first.id,))
            with freer.transaction():
                _pg_blobs.free_unused(freer)
            assert freer.execute("SELECT COUNT(*) FROM blobs").fetchone() == (1,)
            record = writer.execute(
                "INSERT INTO records (context_id, pos, source, content, live, est_tokens,"
                " attachments) VALUES (%s, 9, 0, 'two', true, 1, 1) RETURNING id",
                (ctx.id,),
            ).fetchone()
            assert record is not None
            _pg_blobs.link(writer, [(record[0], [image])])
            writer.commit()
        assert store.records(ctx.id)[-1].attachments[0].data == PNG
        # With nobody linking it any more, the next delete frees it.
        store.delete_context(ctx.id)
        assert rows(store, "SELECT COUNT(*) FROM blobs") == [(0,)]


def test_a_clone_carries_the_attachments(store: Any) -> None:
    ctx = store.get_or_create_context("src")
    store.add_record(ctx.id, prompt("plain"))
    store.add_record(ctx.id, prompt("pic", Attachment(data=PNG), Attachment(data=JPEG)))
    store.add_record(ctx.id, RecordDraft(RecordType.MODEL_RESP, "a cat"))
    store.add_record(ctx.id, prompt("doc", Attachment(url="https://example.com/r.pdf")))
    clone = store.clone_context(ctx.id, "dst")
    src = store.records(ctx.id)
    dst = store.records(clone.id)
    assert [r.attachments for r in dst] == [r.attachments for r in src]
    assert dst[1].attachments[1].data == JPEG


def test_commit_reply_and_import_store_attachments(store: Any) -> None:
    ctx = store.get_or_create_context("c")
    begun = store.begin_reply(ctx.id, "r-1", owner=worker_id())
    out = store.commit_reply(
        ctx.id,
        [prompt("continued", Attachment(data=PNG))],
        reply=ReplyTicket(begun.id, begun.epoch),
        end="reply",
    )
    assert out[0].attachments[0].data == PNG
    assert store.reply_records("r-1")[0].attachments == out[0].attachments
    imported = store.import_records(ctx.id, [prompt("x"), prompt("y", Attachment(data=PDF))])
    assert imported[1].attachments[0].media_type == "application/pdf"
    assert store.records(ctx.id)[-1].attachments == imported[1].attachments


def test_the_history_cache_keeps_attachments(store: Any) -> None:
    ctx = store.get_or_create_context("c")
    cache = HistoryCache(store, ctx.id)
    store.add_record(ctx.id, prompt("one", Attachment(data=PNG)))
    assert cache.live()[0].attachments[0].data == PNG
    store.add_record(ctx.id, RecordDraft(RecordType.MODEL_RESP, "reply"))
    store.add_record(ctx.id, prompt("two", Attachment(data=PDF)))
    store.set_live_range(ctx.id, 1, 1, False)
    live = cache.live()
    assert [r.content for r in live] == ["one", "two"]
    assert [r.attachments[0].data for r in live] == [PNG, PDF]
    store.set_live_range(ctx.id, 0, 2, True)
    assert cache.live() == store.records(ctx.id, live_only=True)


def test_export_import_and_fork_carry_attachments_with_bytes_once(store: Any) -> None:
    cw = ContextWindow(store, context="src")
    cw.add_prompt("what is this?", attachments=[Attachment(data=PNG, name="p.png")])
    cw.add_prompt(
        "and this?", attachments=[Attachment(data=PNG), Attachment(url="https://e.org/a.pdf")]
    )
    data = json.loads(json.dumps(store.export_context(cw.context.id)))  # as JSON goes
    assert list(data["blobs"]) == [hashlib.sha256(PNG).hexdigest()]
    assert data["records"][1]["attachments"][1] == {
        "url": "https://e.org/a.pdf",
        "media_type": "application/pdf",
        "name": "a.pdf",
    }
    copy = rxcontext.interop.import_context(store, data, name="copy")
    assert [r.attachments for r in store.records(copy.id)] == [
        r.attachments for r in store.records(cw.context.id)
    ]
    first = store.records(cw.context.id)[0]
    forked = cw.fork("forked", at=first.id)
    assert [r.attachments[0].data for r in store.records(forked.id)] == [PNG]


def test_an_export_with_bad_attachment_bytes_is_refused_whole(store: Any) -> None:
    ctx = store.get_or_create_context("src")
    store.add_record(ctx.id, prompt("pic", Attachment(data=PNG)))
    data = store.export_context(ctx.id)
    digest = hashlib.sha256(PNG).hexdigest()
    tampered = {**data, "blobs": {digest: base64.b64encode(PNG + b"x").decode()}}
    with pytest.raises(InvalidExport, match="does not match its SHA-256"):
        rxcontext.interop.import_context(store, tampered, name="bad")
    with pytest.raises(InvalidExport, match="not in the export's blobs"):
        rxcontext.interop.import_context(store, {**data, "blobs": {}}, name="bad")
    assert [c.name for c in store.list_contexts()] == ["src"]


def test_add_prompt_refuses_what_is_not_an_attachment() -> None:
    with rxcontext.open() as store:
        cw = ContextWindow(store)
        with pytest.raises(TypeError, match=r"rxcontext\.Attachment"):
            cw.add_prompt("x", attachments=[PNG])  # type: ignore[list-item]
        assert cw.live_records() == []
        one = cw.add_prompt("x", attachments=Attachment(data=PNG))  # type: ignore[arg-type]
        assert one.attachments[0].data == PNG


def test_hostile_attachment_names_round_trip(store: Any) -> None:
    ctx = store.get_or_create_context("c")
    names = ["nul\x00byte.png", "emoji 🦀.png", "x'); DROP TABLE blobs;--", "\uffff esc"]
    written = store.add_record(ctx.id, prompt("p", *(Attachment(data=PNG, name=n) for n in names)))
    assert [a.name for a in store.records(ctx.id)[0].attachments] == names
    assert store.records(ctx.id)[0] == written
    with pytest.raises(AttachmentError, match="not valid Unicode"):
        Attachment(data=PNG, name="lone \ud800")


def test_the_summariser_reads_what_was_attached() -> None:
    from rxcontext.summarize import transcript

    with rxcontext.open() as store:
        cw = ContextWindow(store)
        cw.add_prompt(
            "look",
            attachments=[
                Attachment(data=PNG, name="cat.png"),
                Attachment(url="https://e.org/a.pdf"),
            ],
        )
        text = transcript(cw.live_records())
    assert text.endswith(
        "look\n[attached: cat.png (image/png)]\n[attached: a.pdf (application/pdf)]"
    )
