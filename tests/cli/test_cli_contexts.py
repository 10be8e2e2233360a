"""``contexts``, ``checkpoints``, ``resume`` and ``summarize``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cliutil import (
    assert_user_error,
    chat_ok,
    checkpoints,
    pexpect,
    records,
    replay,
    run,
    run_process,
)

import rxcontext
from rxcontext import ContextWindow, StreamInterrupted
from rxcontext.providers import ScriptedModel

pytestmark = pytest.mark.e2e  # a program built on the library: run with -m e2e (setup.cfg)

# -- a cut reply, checkpoints, resume -----------------------------------------------------------


def test_cut_reply_then_checkpoints_and_resume(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "cut.db"
    full = "one two three four five six seven eight nine ten"
    cut = replay(tmp_path, "cut", [{"text": full, "cut_after": 3}])
    result = run(env, "chat", "--db", str(db), "--replay", cut, "count")
    assert_user_error(result, "the reply was cut off", "rxcontext resume 1")
    assert result.stdout == "one two three four \n"

    listed = run(env, "checkpoints", "--db", str(db))
    assert listed.returncode == 0
    header, row = listed.stdout.strip().splitlines()
    assert header.split("\t")[:2] == ["id", "context"]
    cells = row.split("\t")
    assert (cells[0], cells[1], cells[3], cells[4]) == ("1", "default", "interrupted", "19")
    as_json = json.loads(run(env, "checkpoints", "--json", "--db", str(db)).stdout)
    assert as_json[0]["text"] == "one two three four "
    assert as_json[0]["state"] == "interrupted" and as_json[0]["reply_id"]

    rest = replay(tmp_path, "rest", [{"text": "five six seven eight nine ten"}])
    resumed = run(env, "resume", "1", "--db", str(db), "--replay", rest)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == full + "\n"
    assert records(db)[-1].content == full
    assert "no open checkpoints" in run(env, "checkpoints", "--db", str(db)).stdout
    again = run(env, "resume", "1", "--db", str(db), "--replay", rest)
    assert_user_error(again, "already resumed")


def test_checkpoints_keep_and_discard(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "settle.db"
    for name, prompt in (("a", "first?"), ("b", "second?")):
        cut = replay(tmp_path, name, [{"text": f"{name}1 {name}2 {name}3 {name}4", "cut_after": 2}])
        assert run(env, "chat", "--db", str(db), "--replay", cut, prompt).returncode == 1
    first, second = checkpoints(db)
    assert first.text == "a1 a2 " and second.text == "b1 b2 "

    kept = run(env, "checkpoints", "keep", str(first.id), "--db", str(db))
    assert kept.returncode == 0, kept.stderr
    assert f"checkpoint {first.id} kept" in kept.stdout + kept.stderr
    dropped = run(env, "checkpoints", "--db", str(db), "discard", str(second.id))
    assert dropped.returncode == 0, dropped.stderr
    assert [(r.type.name, r.content, dict(r.metadata)) for r in records(db) if r.live] == [
        ("PROMPT", "first?", {}),
        (
            "MODEL_RESP",
            "a1 a2 ",
            {"partial": True, "model": "gpt-4o-mini-replay", "provider": "openai"},
        ),
        ("PROMPT", "second?", {}),
    ]
    assert "no open checkpoints" in run(env, "checkpoints", "--db", str(db)).stdout
    every = run(env, "checkpoints", "--all", "--db", str(db)).stdout
    assert "\tcompleted\t" in every and "\tdiscarded\t" in every

    again = run(env, "checkpoints", "keep", str(second.id), "--db", str(db))
    assert_user_error(again, "already discarded")
    assert_user_error(run(env, "checkpoints", "discard", "99", "--db", str(db)), "no checkpoint")
    assert_user_error(run(env, "resume", str(first.id), "--db", str(db)), "already resumed")


def test_keeping_a_checkpoint_without_text_is_refused_not_called_damage(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A reply that failed before any text (as a refused connection leaves it) has nothing
    to keep: the error says so and how to settle it, not that the database is damaged."""
    db = tmp_path / "empty.db"
    with rxcontext.open(db) as store:
        cw = ContextWindow(store, ScriptedModel([[ConnectionError("refused")]]), retry=None)
        cw.add_prompt("hi")
        with pytest.raises(StreamInterrupted) as cut:
            cw.call()
    cp_id = cut.value.checkpoint.id
    result = run(env, "checkpoints", "keep", str(cp_id), "--db", str(db))
    assert_user_error(
        result, f"checkpoint {cp_id} holds no text to keep", f"checkpoints discard {cp_id}"
    )
    assert "cannot read" not in result.stderr and "backup" not in result.stderr
    (cp,) = checkpoints(db)
    assert not cp.resolved  # nothing changed
    assert run(env, "checkpoints", "discard", str(cp_id), "--db", str(db)).returncode == 0


# -- contexts ---------------------------------------------------------------------------------


def test_contexts_list_show_export_clone_delete(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "ctx.db"
    chat_ok(env, tmp_path, db, "Lisbon.", "-c", "trip", "Capital?")

    listed = run(env, "contexts", "--db", str(db))
    assert listed.returncode == 0 and "\x1b[" not in listed.stdout
    assert listed.stdout.splitlines()[1].startswith("trip\t2\t")
    (entry,) = json.loads(run(env, "contexts", "list", "--json", "--db", str(db)).stdout)
    assert entry["name"] == "trip" and entry["replies"] == 1

    shown = run(env, "contexts", "show", "trip", "--db", str(db))
    assert "MODEL_RESP" in shown.stdout and "Lisbon." in shown.stdout

    exported = json.loads(run(env, "contexts", "export", "trip", "--db", str(db)).stdout)
    assert [r["content"] for r in exported["records"]] == ["Capital?", "Lisbon."]
    out = tmp_path / "trip.json"
    assert (
        run(env, "contexts", "export", "trip", "--out", str(out), "--db", str(db)).returncode == 0
    )
    assert json.loads(out.read_text()) == exported

    assert run(env, "contexts", "clone", "trip", "trip2", "--db", str(db)).returncode == 0
    assert [r.content for r in records(db, "trip2")] == ["Capital?", "Lisbon."]
    assert_user_error(
        run(env, "contexts", "clone", "trip", "trip2", "--db", str(db)), "already exists"
    )

    refused = run(env, "contexts", "delete", "trip2", "--db", str(db))
    assert_user_error(refused, "--yes")
    assert run(env, "contexts", "delete", "trip2", "--yes", "--db", str(db)).returncode == 0
    names = [c["name"] for c in json.loads(run(env, "contexts", "--json", "--db", str(db)).stdout)]
    assert names == ["trip"]


def test_contexts_delete_asks_in_a_terminal(
    spawn: Any, env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "d.db"
    chat_ok(env, tmp_path, db, "x", "hi")
    child = spawn("contexts", "delete", "default", "--db", str(db))
    child.expect(r"Delete context 'default' and its 2 records\? \[y/N\]")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1 and len(records(db)) == 2
    child = spawn("contexts", "delete", "default", "--db", str(db))
    child.expect(r"\[y/N\]")
    child.sendeof()  # Ctrl-D answers no
    child.expect("kept")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1 and len(records(db)) == 2
    child = spawn("contexts", "delete", "default", "--db", str(db))
    child.expect(r"\[y/N\]")
    child.sendline("y")
    child.expect("deleted context 'default'")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    with rxcontext.open(db) as store:
        assert store.list_contexts() == []


# -- summarize --------------------------------------------------------------------------------


def _conversation(env: dict[str, str], tmp_path: Path, db: Path) -> None:
    # Each process replays its file from the start: one file per exchange.
    chat_ok(env, tmp_path, db, "Paris.", "Capital of France?")
    chat_ok(env, tmp_path, db, "About 2.1 million.", "Population?")


def test_summarize_in_a_script_needs_yes(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _conversation(env, tmp_path, db)
    summary = replay(tmp_path, "sum", [{"text": "The user asked about Paris."}] * 2)
    refused = run(env, "summarize", "--db", str(db), "--replay", summary)
    assert_user_error(refused, "nothing was sent to the model", "pass --yes")
    assert refused.stdout == ""
    assert all(r.live for r in records(db))

    accepted = run(env, "summarize", "--yes", "--db", str(db), "--replay", summary)
    assert accepted.returncode == 0, accepted.stderr
    live = [r for r in records(db) if r.live]
    assert len(live) == 1 and live[0].content.endswith("The user asked about Paris.")
    assert live[0].metadata.get("summary") is True
    dead = [r for r in records(db) if not r.live]
    assert len(dead) == 5  # the 4 summarised, and the summariser's reply (what it was billed)
    assert [r.metadata.get("summarizer") for r in dead].count(True) == 1


def test_summarize_asks_in_a_terminal(spawn: Any, env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _conversation(env, tmp_path, db)
    summary = replay(tmp_path, "sum", [{"text": "Paris, 2.1 million."}])
    child = spawn("summarize", "--db", str(db), "--replay", summary)
    child.expect("Paris, 2.1 million.")
    child.expect(r"Accept this summary\? \[y/N\]")
    child.sendline("y")
    child.expect(r"summary accepted as record (\d+)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert next(r.content for r in records(db) if r.live).endswith("Paris, 2.1 million.")


def test_accepting_a_summary_made_stale_meanwhile_is_refused_not_called_damage(
    spawn: Any, env: dict[str, str], tmp_path: Path
) -> None:
    """Another process summarised the context while this one waited for the answer: the
    proposal is stale, and the error says to summarise again, not that the database is
    damaged."""
    db = tmp_path / "s.db"
    _conversation(env, tmp_path, db)
    summary = replay(tmp_path, "sum", [{"text": "Paris, 2.1 million."}])
    child = spawn("summarize", "--db", str(db), "--replay", summary)
    child.expect(r"Accept this summary\? \[y/N\]")
    other = run_process(env, "summarize", "--yes", "--db", str(db), "--replay", summary)
    assert other.returncode == 0, other.stderr
    before = records(db)
    child.sendline("y")
    child.expect(pexpect.EOF)
    child.close()
    said = (child.before or "").replace("\r", "")
    assert child.exitstatus == 1, said
    assert "no longer live" in said and "nothing was changed" in said
    assert "hint: " in said and "rxcontext summarize" in said.split("hint: ", 1)[1]
    assert "cannot read" not in said and "backup" not in said
    assert records(db) == before


def test_summarize_empty_context(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with rxcontext.open(db) as store:
        store.get_or_create_context("default")
    result = run(
        env, "summarize", "--db", str(db), "--replay", replay(tmp_path, "s", [{"text": "x"}])
    )
    assert_user_error(result, "nothing to summarize")


def test_contexts_import_is_the_inverse_of_export_and_fork_cuts_at_a_record(
    env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "io.db"
    chat_ok(env, tmp_path, db, "Lisbon.", "-c", "trip", "Capital?")
    out = tmp_path / "trip.json"
    assert (
        run(env, "contexts", "export", "trip", "--out", str(out), "--db", str(db)).returncode == 0
    )
    imported = run(env, "contexts", "import", str(out), "--name", "trip2", "--db", str(db))
    assert imported.returncode == 0, imported.stderr
    assert "imported context 'trip2' (2 records)" in imported.stdout
    assert [r.content for r in records(db, "trip2")] == [r.content for r in records(db, "trip")]
    taken = run(env, "contexts", "import", str(out), "--db", str(db))
    assert_user_error(taken, "already exists", "--name")
    out.write_text('{"context": {"name": "x"}, "records": [{"content": "no source"}]}')
    assert_user_error(
        run(env, "contexts", "import", str(out), "--db", str(db)), "record 0: no 'source'"
    )
    first = records(db, "trip")[0]
    forked = run(env, "contexts", "fork", "trip", "early", "--at", str(first.id), "--db", str(db))
    assert forked.returncode == 0, forked.stderr
    assert [r.content for r in records(db, "early")] == ["Capital?"]
    assert_user_error(run(env, "contexts", "fork", "trip", "x", "--db", str(db)), "--at")
    # A name in use: said as a fork's problem, with a hint that helps (not "import it").
    again = run(env, "contexts", "fork", "trip", "early", "--at", str(first.id), "--db", str(db))
    assert_user_error(again, "'early' already exists", "another name")
    assert "import" not in again.stderr
