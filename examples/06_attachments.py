"""06 — attachments: images and files sent with a prompt.

A prompt carries a PNG (bytes), a PDF (a file) and an image URL; the real ``openai`` SDK
sends them as Chat Completions ``image_url`` and ``file`` parts (shown from the request it
sent); the database keeps each content once however often it is sent; the attachments come
back with the records, and travel with an export. An attachment the model cannot take is
refused before anything is stored or sent.

    python examples/06_attachments.py
"""

from __future__ import annotations

import json
import tempfile
import zlib
from pathlib import Path

import rxcontext
from rxcontext import Attachment, ContextWindow, UnsupportedAttachment
from rxcontext.providers.replay import ScriptedReply, replay_model


def tiny_png() -> bytes:
    """A 1x1 red PNG, made here so the example needs no files of its own."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    report = folder / "report.pdf"
    report.write_bytes(b"%PDF-1.4\n% a very small PDF\n%%EOF\n")

    model, transport = replay_model(
        [ScriptedReply("A red dot, a short report and a cat."), ScriptedReply("The same dot.")]
    )
    store = rxcontext.open(":memory:")
    cw = ContextWindow(store, model, context="pictures")

    dot = Attachment(data=tiny_png(), name="dot.png")  # media type recognised from the bytes
    cw.add_prompt(
        "What are these?",
        attachments=[
            dot,
            Attachment(path=report),
            Attachment(url="https://example.com/cat.jpg"),
        ],
    )
    print("reply:", cw.call().text)

    sent = transport.requests[0]["messages"][0]["content"]
    print("sent parts:", [part["type"] for part in sent])
    print("image sent as:", sent[1]["image_url"]["url"][:30] + "…")
    print("file sent as:", sent[2]["file"]["filename"], sent[2]["file"]["file_data"][:28] + "…")

    cw.add_prompt("And this one again?", attachments=[dot])
    cw.call()
    resent = transport.requests[1]["messages"]
    print("the next request sends the history's attachments again:", len(resent[0]["content"]) - 1)
    for record in cw.records():
        names = [f"{a.name} ({a.media_type}, {a.size or 'URL'})" for a in record.attachments]
        print(f"  {record.type.name:<10} {record.content!r:<24} {', '.join(names)}".rstrip())

    contents = {a.sha256 for r in cw.records() for a in r.attachments if a.sha256}
    count = sum(len(r.attachments) for r in cw.records())
    print(f"{count} attachments, {len(contents)} distinct contents (each stored once, by SHA-256)")

    exported = json.loads(cw.export_json())
    print("export carries the bytes once:", len(exported["blobs"]), "blobs (base64)")

    try:
        cw.add_prompt("Listen", attachments=[Attachment(data=b"fLaC" + bytes(20))])
    except UnsupportedAttachment as exc:
        print("refused before sending:", exc)
    print("records now:", len(cw.records()), "· requests sent:", len(transport.requests))


if __name__ == "__main__":
    main()
