"""``rxcontext chat --temperature / --stop / --deadline``: the per-call options reach the
model's request, and an option the provider lacks is a two-line error, nothing stored."""

from __future__ import annotations

from pathlib import Path

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, RecordType, ReplyState
from rxcontext.cli import chat as chat_cmd
from rxcontext.cli.app import main
from rxcontext.providers import OpenAIResponsesModel, ScriptedModel


def test_chat_options_reach_the_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "Tagus")]])
    monkeypatch.setattr(chat_cmd, "build_model", lambda args: model)
    db = tmp_path / "c.db"
    argv = ["chat", "--db", str(db), "--temperature", "0", "--stop", "\n", "--stop", "END"]
    status = main([*argv, "--deadline", "30", "Longest river?"])
    assert status == 0 and "Tagus" in capsys.readouterr().out
    call = model.requests[0].call
    assert (call.temperature, call.stop, call.deadline) == (0, ("\n", "END"), 30.0)


def test_an_option_the_provider_lacks_is_refused_and_nothing_is_sent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = OpenAIResponsesModel("gpt-test", client=object())  # type: ignore[arg-type]
    monkeypatch.setattr(chat_cmd, "build_model", lambda args: model)
    db = tmp_path / "c.db"
    status = main(["chat", "--db", str(db), "--stop", "END", "hi"])
    err = capsys.readouterr().err
    assert status != 0 and "no request parameter for 'stop'" in err
    # Refused before anything is stored: not even the database file or its context is made
    # (docs/cli.md), so no prompt is kept to be sent twice by a corrected run.
    assert not db.exists()


def test_a_refused_option_stores_no_system_prompt_and_the_same_one_is_stored_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--system`` is stored only once the options are known good: retrying a refused
    command leaves nothing behind, and giving the same system prompt again adds no record."""
    refusing = OpenAIResponsesModel("gpt-test", client=object())  # type: ignore[arg-type]
    monkeypatch.setattr(chat_cmd, "build_model", lambda args: refusing)
    db = tmp_path / "c.db"
    argv = ["chat", "--db", str(db), "-c", "notes", "-s", "Be terse.", "hi"]
    for _ in range(2):
        assert main([*argv[:-1], "--stop", "END", "hi"]) != 0
        assert "no request parameter for 'stop'" in capsys.readouterr().err
    assert not db.exists()

    model = ScriptedModel([[Chunk(ChunkKind.TEXT, w)] for w in ("Yes.", "No.", "Maybe.")])
    monkeypatch.setattr(chat_cmd, "build_model", lambda args: model)
    for _ in range(2):
        assert main(argv) == 0
    assert main([*argv[:-3], "-s", "Be brief.", "hi"]) == 0  # another one replaces it
    with rxcontext.open(db) as store:
        stored = store.records(store.get_context_by_name("notes").id)
    systems = [
        (r.content, r.live)
        for r in sorted(stored, key=lambda r: r.id)
        if r.type is RecordType.SYSTEM_PROMPT
    ]
    assert systems == [("Be terse.", False), ("Be brief.", True)]


def test_a_request_the_budget_refuses_leaves_no_prompt_to_send_twice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rxcontext import Budget, ContextWindow

    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "never")]])
    monkeypatch.setattr(chat_cmd, "build_model", lambda args: model)
    original = ContextWindow.__init__

    def tight(self: ContextWindow, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        self.budget = Budget(max_tokens=1)

    monkeypatch.setattr(ContextWindow, "__init__", tight)
    db = tmp_path / "c.db"
    assert main(["chat", "--db", str(db), "a prompt longer than one token"]) != 0
    assert "budget" in capsys.readouterr().err.lower() and model.requests == []
    with rxcontext.open(db) as store:
        ctx = store.get_context_by_name("default")
        assert [r.content for r in store.records(ctx.id) if r.live] == []


def test_a_deadline_passed_before_anything_arrived_promises_no_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing arrived, so the CLI drops the empty checkpoint (and retires the prompt): the
    error must not say a checkpoint was saved to resume, nor blame a silence it did not see.
    The model's first chunk comes no sooner than 0.5 s in, past the 0.1 s deadline."""
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "late")]], delay=0.5)
    monkeypatch.setattr(chat_cmd, "build_model", lambda args: model)
    db = tmp_path / "d.db"
    assert main(["chat", "--db", str(db), "--deadline", "0.1", "hi"]) == 1
    err = capsys.readouterr().err
    assert "deadline of 0.1 s" in err and "--deadline" in err.splitlines()[-1], err
    assert "checkpoint" not in err and "resume" not in err and "sent nothing" not in err, err
    with rxcontext.open(db) as store:
        ctx = store.get_context_by_name("default")
        assert [cp.state for cp in store.checkpoints(ctx.id, include_resolved=True)] == [
            ReplyState.DISCARDED
        ]


@pytest.mark.parametrize("bad", [["--temperature", "-1"], ["--deadline", "0"]])
def test_bad_values_are_usage_errors(
    bad: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", "--db", str(tmp_path / "c.db"), *bad, "hi"]) == 2
    assert f"argument {bad[0]}: expected a number" in capsys.readouterr().err
    assert not (tmp_path / "c.db").exists()
