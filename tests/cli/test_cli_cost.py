"""Costs in ``contexts`` and ``contexts show``: in terminals 60, 80 and 120 wide, and piped.

The database is written by the library with a scripted model named as a real one (so its
replies carry usage a price table knows) beside one genai-prices does not know.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cliutil import WIDTHS, run, run_pty
from rich.cells import cell_len

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, Usage
from rxcontext.cost import context_cost, format_usd, price
from rxcontext.providers import ScriptedModel

pytestmark = pytest.mark.e2e  # a program built on the library: run with -m e2e (setup.cfg)

pytest.importorskip("genai_prices", reason="needs rxcontext[prices]")

USAGE = Usage.of(120_000, 4_000)
SEP = r"[\s│┃|]+"


def _reply(text: str) -> list[Chunk]:
    return [Chunk(ChunkKind.TEXT, text), Chunk(ChunkKind.USAGE, usage=USAGE)]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cost") / "cost.db"
    with rxcontext.open(path) as store:
        cw = ContextWindow(
            store, ScriptedModel([_reply("Lisbon."), _reply("Porto.")], name="openai:gpt-4o-mini")
        )
        cw.switch_context("priced")
        for prompt in ("Capital of Portugal?", "Its second city?"):
            cw.add_prompt(prompt)
            cw.call()
        odd = ContextWindow(
            store, ScriptedModel([_reply("?")], name="openai:no-such-model-xyz"), context="odd"
        )
        odd.add_prompt("x")
        odd.call()
    return path


def one() -> str:
    return format_usd(price(USAGE, "gpt-4o-mini", "openai"))


def two() -> str:
    amount = price(USAGE, "gpt-4o-mini", "openai")
    assert amount is not None
    return format_usd(amount * 2)


@pytest.mark.parametrize("width", WIDTHS)
def test_contexts_list_shows_each_contexts_cost(env: dict[str, str], db: Path, width: int) -> None:
    _, text, status = run_pty(env, width, "contexts", "--db", str(db))
    assert status == 0, text
    for line in text.splitlines():
        assert cell_len(line) <= width, line
    assert re.search(rf"^priced{SEP}4{SEP}.*{re.escape(two())}", text, re.M), text
    assert re.search(rf"^odd{SEP}2{SEP}.*\bunknown\b", text, re.M), text


@pytest.mark.parametrize("width", WIDTHS)
def test_contexts_show_gives_each_reply_its_cost(env: dict[str, str], db: Path, width: int) -> None:
    _, text, status = run_pty(env, width, "contexts", "show", "priced", "--db", str(db))
    assert status == 0, text
    for line in text.splitlines():
        assert cell_len(line) <= width, line
    for rid in (2, 4):
        assert re.search(
            rf"^\s*{rid}{SEP}MODEL_RESP{SEP}yes{SEP}(\d+{SEP})?{re.escape(one())}", text, re.M
        ), text
    assert f"cost {two()}" in text.replace("\n", " ") or width < 120


def test_piped_and_json(env: dict[str, str], db: Path) -> None:
    listed = run(env, "contexts", "--db", str(db)).stdout.splitlines()
    assert listed[0].split("\t")[4] == "cost"
    rows = {line.split("\t")[0]: line.split("\t") for line in listed[1:]}
    assert rows["priced"][4] == two() and rows["odd"][4] == "unknown"
    entries = json.loads(run(env, "contexts", "--json", "--db", str(db)).stdout)
    by_name = {e["name"]: e for e in entries}
    with rxcontext.open(db) as store:
        ctx = store.get_context_by_name("priced")
        assert by_name["priced"]["cost_usd"] == str(context_cost(store.records(ctx.id)).usd)
    assert by_name["priced"]["cost_complete"] is True
    assert by_name["odd"]["cost_complete"] is False and by_name["odd"]["unpriced"] == 1
    shown = run(env, "contexts", "show", "priced", "--db", str(db)).stdout
    assert f"cost {two()}" in shown
    assert re.search(rf"^\s+2 MODEL_RESP\s+live\s+\d+\s+{re.escape(one())}  Lisbon\.", shown, re.M)


def test_a_clones_copied_replies_show_no_cost_of_their_own(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A clone's copied replies were billed to its source: `contexts show` of the clone
    prices none of them, as its total (0) says."""
    path = tmp_path / "clone.db"
    with rxcontext.open(path) as store:
        cw = ContextWindow(store, ScriptedModel([_reply("Lisbon.")], name="openai:gpt-4o-mini"))
        cw.switch_context("source")
        cw.add_prompt("Capital of Portugal?")
        cw.call()
        cw.clone("copy")
    shown = run(env, "contexts", "show", "copy", "--db", str(path)).stdout
    assert shown.splitlines()[0].endswith("cost -"), shown  # no reply of its own
    assert one() not in shown, shown
    source = run(env, "contexts", "show", "source", "--db", str(path)).stdout
    assert re.search(rf"^\s+2 MODEL_RESP\s+live\s+\d+\s+{re.escape(one())}  Lisbon\.", source, re.M)


def test_json_is_refused_for_show(env: dict[str, str], db: Path) -> None:
    """`--json` is for `contexts list`; given to `show` it was ignored (a table, status 0)."""
    refused = run(env, "contexts", "show", "priced", "--json", "--db", str(db))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--json is for contexts list" in refused.stderr
