"""``chat --attach FILE`` and attachments in ``contexts show``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cliutil import assert_user_error, chat_ok, records, run

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
PDF = b"%PDF-1.4\n" + b"x" * 3000


def test_chat_attach_stores_the_files_with_the_prompt_and_show_lists_them(
    env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "a.db"
    picture = tmp_path / "cat.png"
    picture.write_bytes(PNG)
    # A file name is data too: an ESC in it must not reach the terminal as a control.
    report = tmp_path / "re\x1b[2Jport.pdf"
    report.write_bytes(PDF)
    chat_ok(
        env,
        tmp_path,
        db,
        "A cat and a report.",
        "--attach",
        str(picture),
        "-a",
        str(report),
        "what?",
    )
    prompt = records(db)[0]
    assert prompt.content == "what?"
    assert [(a.name, a.media_type, a.data) for a in prompt.attachments] == [
        ("cat.png", "image/png", PNG),
        ("re\x1b[2Jport.pdf", "application/pdf", PDF),
    ]
    shown = run(env, "contexts", "show", "default", "--db", str(db))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    at = lines.index("attachments:")
    assert lines[at + 1] == f"  record {prompt.id}: cat.png (image/png, 208 B)"
    assert lines[at + 2] == f"  record {prompt.id}: re\u241b[2Jport.pdf (application/pdf, 2.9 KiB)"
    assert "\x1b" not in shown.stdout

    # The export carries the bytes once (base64), keyed by SHA-256.
    out = tmp_path / "export.json"
    assert (
        run(env, "contexts", "export", "default", "--db", str(db), "--out", str(out)).returncode
        == 0
    )
    assert hashlib.sha256(PNG).hexdigest() in out.read_text()


def test_a_missing_attachment_is_a_user_error_and_writes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "none.db"
    result = run(
        env, "chat", "--db", str(db), "--replay", "x.json", "-a", str(tmp_path / "nope.png"), "hi"
    )
    assert_user_error(result, "does not exist", "--attach")
    assert not db.exists()


def test_an_attachment_the_model_refuses_is_a_user_error(
    env: dict[str, str], tmp_path: Path
) -> None:
    sound = tmp_path / "hello.wav"
    sound.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(24))
    db = tmp_path / "refused.db"
    env = {**env, "ANTHROPIC_API_KEY": "sk-ant-test-0123456789"}
    result = run(
        env, "chat", "--db", str(db), "--model", "anthropic:claude-test", "-a", str(sound), "hi"
    )
    assert_user_error(result, "Anthropic does not take", "audio/wav")
    assert not db.exists()


def test_contexts_import_brings_the_attachments_back(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    picture = tmp_path / "cat.png"
    picture.write_bytes(PNG)
    chat_ok(env, tmp_path, db, "A cat.", "--attach", str(picture), "what?")
    out = tmp_path / "export.json"
    assert (
        run(env, "contexts", "export", "default", "--db", str(db), "-o", str(out)).returncode == 0
    )
    imported = run(env, "contexts", "import", str(out), "--name", "copy", "--db", str(db))
    assert imported.returncode == 0, imported.stderr
    assert records(db, "copy")[0].attachments == records(db)[0].attachments
