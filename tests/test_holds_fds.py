"""The ``<db>-rxholds`` file's descriptor (:mod:`rxcontext.store.sqlite_holds`) does not
outlive its use: a program that goes through many SQLite databases (one per tenant, per
job, per test) keeps none of theirs open once each store is closed."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.providers import ScriptedModel

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd"
)

REPLY = [Chunk(ChunkKind.TEXT, "hi"), Chunk(ChunkKind.DONE)]


def _holds_fds(under: Path) -> list[str]:
    """The holds files of databases under ``under`` this process has open (other tests'
    stores, never closed, may hold theirs)."""
    root = os.path.realpath(under)
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            names.append(os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)"))
    return [n for n in names if n.endswith("-rxholds") and n.startswith(root)]


def test_many_databases_used_and_closed_leave_no_descriptor_open(tmp_path: Path) -> None:
    for i in range(60):
        where = tmp_path / f"tenant{i}"
        where.mkdir()
        with rxcontext.open(where / "tenant.db") as store:
            cw = ContextWindow(store, ScriptedModel([REPLY]), "c")
            cw.add_prompt("hello")
            assert cw.call().text == "hi"  # a committed reply: its final write was held
        shutil.rmtree(where)
    assert _holds_fds(tmp_path) == []


def test_one_descriptor_per_database_while_its_stores_are_open(tmp_path: Path) -> None:
    # Two stores of one database share the descriptor (closing any descriptor of the file
    # would drop this process's record locks on it): it goes with the last of them.
    path = tmp_path / "shared.db"
    first, second = rxcontext.open(path), rxcontext.open(path)
    for store in (first, second):
        cw = ContextWindow(store, ScriptedModel([REPLY]), "c")
        cw.add_prompt("hello")
        cw.call()
    assert len(_holds_fds(tmp_path)) <= 1
    first.close()
    assert len(_holds_fds(tmp_path)) <= 1
    cw = ContextWindow(second, ScriptedModel([REPLY]), "c")
    cw.add_prompt("again")
    assert cw.call().text == "hi"  # the second store still holds its replies' final writes
    second.close()
    assert _holds_fds(tmp_path) == []
