"""Attachments: what they cost in the database and on the request path (one run's clock).

- **storage**: a file-backed SQLite store, 200 prompts each attaching the same 1 MiB image,
  against 200 prompts without: the database files' size difference (bytes kept once per
  content, by SHA-256, so about 1 MiB whatever the count).
- **history read**: ``store.records(context, live_only=True)`` of a 2,000-record
  conversation in which every 10th prompt carries a 100 KiB image (10 distinct contents),
  against the same conversation without attachments; medians of alternating samples (CPU
  time, ``time.process_time``); the ratio is the result.
- **request, encoded once**: ``OpenAIModel.iter_chunks(Request(records))`` to the first
  chunk with that history (MockTransport; benchmarks/_harness.py), the model's second
  request against its first: each record's part of the request (the base64 of its images
  included) is encoded once and kept, so the second request is the cheap one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import _harness as h
from _wire import make_stream
from conftest import record

import rxcontext
from rxcontext import Attachment
from rxcontext.providers.base import Request
from rxcontext.records import RecordType
from rxcontext.store import RecordDraft

MIB = 1024 * 1024
SAMPLES = 9


def _image(seed: int, size: int) -> bytes:
    body = bytes((seed * 31 + i) % 251 for i in range(256)) * (size // 256)
    return b"\x89PNG\r\n\x1a\n" + body


def _conversation(store: rxcontext.SQLiteStore, name: str, with_images: bool) -> str:
    ctx = store.get_or_create_context(name)
    images = [Attachment(data=_image(k, 100 * 1024)) for k in range(10)]
    drafts = []
    for turn in range(1000):
        attached = (images[turn // 10 % 10],) if with_images and turn % 10 == 0 else ()
        drafts.append(RecordDraft(RecordType.PROMPT, f"prompt {turn} " * 8, attachments=attached))
        drafts.append(RecordDraft(RecordType.MODEL_RESP, f"reply {turn} " * 30))
    store.import_records(ctx.id, drafts)
    return ctx.id


def _cpu(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def _first_chunk(model: Any, records: list[Any]) -> None:
    chunks = model.iter_chunks(Request(records))
    next(chunks)
    chunks.close()


def bench_attachment_storage(tmp_path: Path) -> None:
    sizes = {}
    image = Attachment(data=_image(1, MIB))
    for label, attached in (("plain", ()), ("attached", (image,))):
        path = tmp_path / f"{label}.db"
        with rxcontext.open(path) as store:
            ctx = store.get_or_create_context("c")
            for i in range(200):
                store.add_record(
                    ctx.id, RecordDraft(RecordType.PROMPT, f"p{i}", attachments=attached)
                )
            store._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes[label] = path.stat().st_size
    extra = sizes["attached"] - sizes["plain"]
    record(
        "attachments",
        "200 prompts × the same 1 MiB image: database growth",
        f"{extra / MIB:.2f} MiB",
    )
    assert extra < 2 * MIB


def bench_attachment_history_read(tmp_path: Path) -> None:
    with rxcontext.open(tmp_path / "read.db") as store:
        plain = _conversation(store, "plain", False)
        images = _conversation(store, "images", True)
        a, b = [], []
        for _ in range(SAMPLES):
            a.append(_cpu(lambda: store.records(plain, live_only=True)))
            b.append(_cpu(lambda: store.records(images, live_only=True)))
        base, with_images = statistics.median(a), statistics.median(b)
        record(
            "attachments",
            "history read, 2,000 records (100 with a 100 KiB image) vs none",
            f"{with_images * 1e3:.2f} ms vs {base * 1e3:.2f} ms = {with_images / base:.2f}×",
        )

        records = store.records(images, live_only=True)
        firsts, seconds = [], []
        for _ in range(SAMPLES):
            model = h.openai_chat(make_stream("openai_chat", 20)).model("fast")
            once = partial(_first_chunk, model, records)
            firsts.append(_cpu(once))
            seconds.append(_cpu(once))
        first, second = statistics.median(firsts), statistics.median(seconds)
        record(
            "attachments",
            "request with that history: 2nd (parts kept) vs 1st (all encoded)",
            f"{second * 1e3:.2f} ms vs {first * 1e3:.2f} ms = {second / first:.3f}×",
        )
        assert second < first
