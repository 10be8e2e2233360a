"""contextwindow parity and interop: import (the inverse of export, rxcontext's and
contextwindow's JSON), fork at a record, live-record indexing, summaries in a named context,
a model's context size, and token usage with a total."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
from stores import open_store
from watching import WAIT, until

import rxcontext
from rxcontext import (
    Chunk,
    ChunkKind,
    ContextWindow,
    InvalidExport,
    RecordType,
    StoreError,
    Usage,
)
from rxcontext.providers import ScriptedModel

pytestmark = pytest.mark.usefixtures("both_stores")  # every test on SQLite and PostgreSQL


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


def done(inp: int = 0, out: int = 0) -> Chunk:
    return Chunk(ChunkKind.DONE, finish_reason="stop", usage=Usage.of(inp, out))


def conversation() -> ContextWindow:
    model = ScriptedModel(
        [
            [T("Paris."), done(10, 2)],
            [Chunk(ChunkKind.TOOL_CALL, '{"c": "Oslo"}', id="call_1", name="w"), done(5, 1)],
            [T("Sunny."), done(7, 2)],
        ]
    )
    cw = ContextWindow(open_store(), model, "src", retry=None)
    cw.set_system_prompt("Be brief.")
    cw.add_prompt("Capital of France?")
    cw.call()
    cw.add_tool(rxcontext.Tool("w", "weather").string("c", "city"), lambda a: "sunny")
    cw.add_prompt("Weather in Oslo?")
    cw.call()
    cw.set_record_live_state(1, 1, False)  # the first question goes dead
    return cw


def shape(records: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (r.type, r.content, r.live, r.response_id, r.streamed, r.tool_call_id, r.tool_name,
         {k: v for k, v in r.metadata.items()}, r.timestamp)
        for r in records
    ]  # fmt: skip


def test_import_is_the_inverse_of_export():
    cw = conversation()
    exported = json.loads(cw.export_json())
    copy = cw.import_context(exported, name="copy")
    assert cw.context_name == "src"  # the current context stays
    other = ContextWindow(cw.store, None, "copy")
    assert shape(other.records()) == shape(cw.records())
    assert [r.pos for r in other.records()] == list(range(len(cw.records())))  # own places
    assert other.stats().usage == cw.stats().usage
    assert [t["name"] for t in cw.store.context_tools(copy.id)] == ["w"]
    again = json.loads(other.export_json())
    for key in ("records", "tools"):
        strip = lambda items: [  # noqa: E731
            {k: v for k, v in i.items() if k not in ("id", "pos", "created_at", "reply_id")}
            for i in items
        ]
        assert strip(again[key]) == strip(exported[key])


def test_a_reply_stored_without_usage_exports_and_imports() -> None:
    """A stream that reports no usage (a ScriptedModel, some servers) stores
    ``metadata["usage"] = None``: its context's export imports, and forks, as any other."""
    model = ScriptedModel([[T("Paris."), Chunk(ChunkKind.DONE, finish_reason="stop")]])
    cw = ContextWindow(open_store(), model, "src", retry=None)
    cw.add_prompt("Capital of France?")
    cw.call()
    assert cw.records()[-1].metadata["usage"] is None
    copy = cw.import_context(json.loads(cw.export_json()), name="copy")
    assert [r.content for r in cw.store.records(copy.id)] == ["Capital of France?", "Paris."]
    forked = cw.fork("fork", at=cw.records()[-1].id)
    assert [r.content for r in cw.store.records(forked.id)] == ["Capital of France?", "Paris."]


@pytest.mark.parametrize("how", ["import", "fork"])
def test_an_import_into_a_name_another_writer_takes_meanwhile_leaves_theirs_alone(how: str) -> None:
    """The name is checked, then the context created: another writer creating the same
    name in between (here: the check reads no contexts) must make the import fail, not add
    to their context (nor delete it)."""
    cw = conversation()
    store = cw.store
    theirs = ContextWindow(store, None, "shared")
    theirs.add_prompt("their prompt")
    exported = json.loads(cw.export_json())
    real = store.list_contexts
    store.list_contexts = lambda: []  # type: ignore[method-assign]  # the name was free then
    try:
        with pytest.raises(ValueError, match="'shared' already exists"):
            if how == "import":
                cw.import_context(exported, name="shared")
            else:
                cw.fork("shared", at=cw.records()[-1].id)
    finally:
        store.list_contexts = real  # type: ignore[method-assign]
    assert [r.content for r in theirs.records()] == ["their prompt"]


def test_import_refuses_a_bad_export_naming_the_record_and_writes_nothing():
    cw = conversation()
    exported = json.loads(cw.export_json())
    exported["records"][2]["source"] = 9
    with pytest.raises(InvalidExport, match="record 2: unknown record type 9"):
        cw.import_context(exported, name="bad")
    exported["records"][2]["source"] = 1
    exported["records"][3]["timestamp"] = "yesterday"
    with pytest.raises(InvalidExport, match="record 3: 'yesterday' is not a time"):
        cw.import_context(exported, name="bad")
    with pytest.raises(InvalidExport, match="not an export"):
        cw.import_context({"records": []}, name="bad")
    assert [c.name for c in cw.list_contexts()] == ["src"]
    with pytest.raises(ValueError, match="already exists"):
        cw.import_context(json.loads(cw.export_json()))


def test_a_contextwindow_export_imports():
    # The JSON of contextwindow's ExportContextJSON (storage.go ContextExport).
    exported = {
        "context": {
            "id": "6d5d…",
            "name": "from-go",
            "start_time": "2025-09-17T10:00:00.5Z",
            "use_server_side_threading": True,
            "last_response_id": "resp_2",
        },
        "records": [
            {"id": 1, "timestamp": "2025-09-17T10:00:01.123456789Z", "source": 4,
             "content": "Be brief.", "live": True, "est_tokens": 3, "context_id": "6d5d…"},
            {"id": 2, "timestamp": "2025-09-17T10:00:02Z", "source": 0,
             "content": "Hi", "live": True, "est_tokens": 1, "context_id": "6d5d…"},
            {"id": 3, "timestamp": "2025-09-17T10:00:03Z", "source": 1, "content": "Hello!",
             "live": True, "est_tokens": 2, "context_id": "6d5d…", "response_id": "resp_2"},
        ],
        "tools": [{"id": 1, "context_id": "6d5d…", "tool_name": "ls",
                   "created_at": "2025-09-17T10:00:00Z"}],
    }  # fmt: skip
    cw = ContextWindow(open_store(), None, "mine")
    ctx = cw.import_context(exported)
    assert (ctx.name, ctx.use_server_side_threading, ctx.last_response_id) == (
        "from-go",
        True,
        "resp_2",
    )
    other = ContextWindow(cw.store, None, "from-go")
    assert [(r.type, r.content, r.response_id) for r in other.records()] == [
        (RecordType.SYSTEM_PROMPT, "Be brief.", None),
        (RecordType.PROMPT, "Hi", None),
        (RecordType.MODEL_RESP, "Hello!", "resp_2"),
    ]
    assert other.records()[0].timestamp.microsecond == 123456
    assert [t["name"] for t in cw.store.context_tools(ctx.id)] == ["ls"]


def test_fork_at_a_record():
    cw = conversation()
    records = cw.records()
    at = records[3].id  # "Weather in Oslo?"... up to the first answer
    forked = cw.fork("branch", at=records[2].id)
    branch = ContextWindow(cw.store, None, "branch")
    assert shape(branch.records()) == shape(records[:3])
    assert forked.last_response_id is None and branch.stats().usage == Usage()
    assert cw.records() == records  # the source is unchanged
    with pytest.raises(ValueError, match="not in this context"):
        cw.fork("nope", at=10**6)
    assert at != records[2].id


def test_set_record_live_state_indexes_live_records_as_contextwindow_does():
    cw = ContextWindow(open_store(), None, "c")
    for i in range(5):
        cw.add_prompt(f"p{i}")
    cw.set_record_live_state(0, 0, False)  # p0
    cw.set_record_live_state(0, 1, False)  # now p1, p2
    assert [r.content for r in cw.live_records()] == ["p3", "p4"]


def test_summaries_in_a_named_context():
    store = open_store()
    other = ContextWindow(store, None, "notes")
    other.add_prompt("first")
    other.add_prompt("second")
    cw = ContextWindow(store, ScriptedModel([[T("They said two things."), done()]]), "main")
    proposal = cw.summarize(context="notes")
    cw.accept_summary(proposal)
    assert [r.content for r in other.live_records()][-1].endswith("They said two things.")
    assert cw.live_records() == []


def test_a_model_reports_its_context_size_and_token_usage_has_a_total():
    model = ScriptedModel([[T("ok"), done(100, 20)]], context_window=2_000)
    cw = ContextWindow(open_store(), model, "c")
    assert cw.max_tokens == 2_000
    cw.add_prompt("x" * 400)  # 100 tokens by the estimate
    cw.call()
    usage = cw.token_usage()
    assert usage.max_tokens == 2_000 and usage.total_tokens == 120
    assert 0 < usage.percent <= 100 and usage.percent == 100 * usage.live_tokens / 2_000
    assert ContextWindow(open_store(), model, "d", max_tokens=50).max_tokens == 50


def _minimal(**changes: Any) -> dict[str, Any]:
    """An export of one prompt and one tool, with ``changes`` made: ``record_<key>`` on the
    record, ``tool_<key>`` on the tool, ``context_<key>`` on the context, ``tools`` for the
    export's list of tools."""
    record: dict[str, Any] = {"source": 0, "content": "hi", "live": True}
    tool: dict[str, Any] = {"name": "search", "definition": {}}
    context: dict[str, Any] = {"name": "ok"}
    export = {"context": context, "records": [record], "tools": [tool]}
    for key, value in changes.items():
        where, _, field = key.partition("_")
        if not field:
            export[key] = value
            continue
        {"record": record, "tool": tool, "context": context}[where][field] = value
    return export


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"record_live": "false"}, "record 0: 'live' must be true or false"),
        ({"record_streamed": "no"}, "record 0: 'streamed' must be true or false"),
        ({"context_use_server_side_threading": "false"}, "'use_server_side_threading'"),
        ({"context_usage": {"input_tokens": "abc"}}, "usage.input_tokens"),
        ({"context_usage": {"output_tokens": [1]}}, "usage.output_tokens"),
        ({"context_usage": {"input_tokens": 2.9}}, "usage.input_tokens"),
        ({"context_usage": {"input_tokens": -1}}, "usage.input_tokens"),
        ({"context_usage": {"total_tokens": 10**30}}, "usage.total_tokens"),
        ({"record_metadata": {"usage": {"input_tokens": "abc"}}}, "record 0: metadata.usage.in"),
        ({"record_metadata": {"usage": {"output_tokens": 2**63}}}, "record 0: metadata.usage.out"),
        ({"record_metadata": {"usage": [1, 2]}}, "record 0: metadata.usage must be an object"),
        ({"record_metadata": {"model": 5}}, "record 0: metadata.model must be a string"),
        ({"record_metadata": {"provider": ["x"]}}, "record 0: metadata.provider must be a string"),
        ({"record_response_id": "a\ud800b"}, "record 0: 'response_id' is not valid Unicode"),
        ({"record_tool_name": "\udfff"}, "record 0: 'tool_name' is not valid Unicode"),
        ({"context_last_response_id": "r\ud800"}, "'last_response_id' is not valid Unicode"),
        ({"context_name": "n\ud800"}, "the context's name is not valid Unicode"),
        ({"record_timestamp": "0001-01-01T00:00:00+01:00"}, "record 0: .* is out of range"),
        ({"tool_name": "lookup\ud800"}, "tool 0: its name is not valid Unicode"),
        ({"record_source": 1.9}, "record 0: unknown record type 1.9"),
        ({"record_source": 1.0}, "record 0: unknown record type 1.0"),
        ({"record_source": True}, "record 0: unknown record type True"),
        ({"record_source": "3"}, "record 0: unknown record type '3'"),
        ({"record_source": None}, "record 0: unknown record type None"),
        ({"context_usage": "lots"}, "context: usage must be an object"),
        ({"context_usage": [1, 2]}, "context: usage must be an object"),
        ({"context_last_response_id": 5}, "context: 'last_response_id' must be a string"),
        ({"tools": "abc"}, "'tools' must be a list"),
        ({"tools": {"name": "search"}}, "'tools' must be a list"),
    ],
)
def test_import_refuses_values_of_the_wrong_kind_clearly_and_writes_nothing(
    changes: dict[str, Any], says: str
) -> None:
    """A flag that is not a boolean, a usage count that is not a count, text no database
    can hold, a time out of range: refused as :class:`InvalidExport` naming the field (they
    were coerced, or failed deep in the database driver), with nothing imported."""
    store = open_store()
    cw = ContextWindow(store, None, "here")
    with pytest.raises(InvalidExport, match=says):
        cw.import_context(_minimal(**changes))
    assert [c.name for c in store.list_contexts()] == ["here"]


# -- An import is one transaction -------------------------------------------------------------

_GATE_KEY = 7_100  # this test database's own advisory lock: the gate's bolt
_SQLITE_GATE = (
    "CREATE TEMP TRIGGER gate BEFORE INSERT ON main.context_tools BEGIN SELECT gate();"
    " SELECT RAISE(ABORT, 'no room for tools') WHERE NEW.tool_name = 'refuse'; END"
)
_PG_GATE = f"""
CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared({_GATE_KEY});
  IF NEW.tool_name = 'refuse' THEN RAISE EXCEPTION 'no room for tools'; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER gate BEFORE INSERT ON context_tools FOR EACH ROW EXECUTE FUNCTION gate();
"""
_WAITING = (
    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND wait_event_type = 'Lock'"
)


class _Gate:
    """Holds an import at its tools' insert (in its transaction: the records are written by
    then), until :meth:`open`; a tool named ``refuse`` then fails there, in the database.

    A real trigger: on PostgreSQL in the test's own database, waiting for an advisory lock
    the gate holds; on SQLite a temporary one on the importer's connection, calling back
    into the test (another process installs it itself: :data:`_CHILD`)."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.inside = threading.Event()
        self._bolt = threading.Event()
        self._pg: Any = None
        if kind == "postgres":
            import psycopg

            self._pg = psycopg.connect(target, autocommit=True)
            self._pg.execute(_PG_GATE)
            self._pg.execute("SELECT pg_advisory_lock(%s)", (_GATE_KEY,))

    def install(self, store: Any) -> None:
        """On SQLite: gate ``store``'s imports (its connection's own trigger)."""
        if self.kind == "sqlite":
            store._db().create_function("gate", 0, self._wait)
            store._db().execute(_SQLITE_GATE)

    def _wait(self) -> None:
        self.inside.set()
        self._bolt.wait()

    def waiting(self, n: int) -> None:
        """Wait until an import is held (and, on PostgreSQL, ``n`` sessions wait for a lock:
        the import and the writers behind it)."""
        if self.kind == "postgres":
            assert until(lambda: self._pg.execute(_WAITING).fetchone()[0] == n)
        else:
            assert self.inside.wait(WAIT)

    def open(self) -> None:
        self._bolt.set()
        if self._pg is not None:
            self._pg.execute("SELECT pg_advisory_unlock(%s)", (_GATE_KEY,))

    def close(self) -> None:
        """Open, and on PostgreSQL take the trigger away (the database serves other tests)."""
        self.open()
        if self._pg is not None:
            self._pg.execute("DROP TRIGGER gate ON context_tools; DROP FUNCTION gate()")
            self._pg.close()


def _shared(request: pytest.FixtureRequest, store_kind: str, tmp_path: Any) -> str:
    """A database other connections and processes see: this test's own."""
    if store_kind == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "shared.db")


def _support_chat(n: int = 2, *tools: str) -> dict[str, Any]:
    return {
        "context": {"name": "support-chat", "usage": Usage.of(7, 3).to_dict()},
        "records": [{"source": i % 2, "content": f"message {i}"} for i in range(n)],
        "tools": [{"name": t, "definition": {"description": t}} for t in tools],
    }


def test_an_import_is_one_transaction_a_failure_at_its_last_step_leaves_theirs_alone(
    request: pytest.FixtureRequest, store_kind: str, tmp_path: Any
) -> None:
    """Nobody sees a half import: held at its last statement (the tools, after the
    records), another connection finds no context of its name. Failing there (in the
    database) leaves nothing of it; another writer that opened the context by name
    meanwhile (as ContextWindow does) gets its prompt stored, not deleted by a clean-up."""
    target = _shared(request, store_kind, tmp_path)
    importer, other = rxcontext.open(target), rxcontext.open(target)
    gate = _Gate(store_kind, target)
    gate.install(importer)
    failed: list[BaseException] = []
    stored: list[Any] = []

    def run_import() -> None:
        try:
            rxcontext.interop.import_context(importer, _support_chat(2, "search", "refuse"))
        except BaseException as exc:
            failed.append(exc)

    def their_prompt() -> None:
        stored.append(ContextWindow(other, None, "support-chat").add_prompt("refund 1234"))

    importing = threading.Thread(target=run_import)
    writer = threading.Thread(target=their_prompt)
    try:
        importing.start()
        gate.waiting(1)
        assert [c.name for c in other.list_contexts()] == []  # not even the empty context
        writer.start()
        gate.waiting(2)  # PostgreSQL: the writer waits for the import's end
        gate.open()
        importing.join(WAIT)
        writer.join(WAIT)
    finally:
        gate.close()
    assert len(failed) == 1 and isinstance(failed[0], StoreError), failed
    assert "no room for tools" in str(failed[0])
    ctx = other.get_context_by_name("support-chat")
    assert [r.content for r in other.records(ctx.id)] == ["refund 1234"]
    assert stored[0].context_id == ctx.id
    assert other.context_tools(ctx.id) == []
    assert other.context_stats(ctx.id).usage == Usage()
    assert [c.name for c in other.list_contexts()] == ["support-chat"]
    importer.close()
    other.close()


_CHILD = textwrap.dedent(
    f"""
    import json, sys
    import rxcontext
    from rxcontext.interop import import_context

    store = rxcontext.open(sys.argv[1])
    if isinstance(store, rxcontext.SQLiteStore):
        def gate():
            print("inside", flush=True)
            sys.stdin.read()  # held here until killed
        store._db().create_function("gate", 0, gate)
        store._db().execute({_SQLITE_GATE!r})
    with open(sys.argv[2]) as f:
        import_context(store, json.load(f))
    print("imported", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_an_importer_killed_mid_import_leaves_nothing_and_the_file_imports_again(
    request: pytest.FixtureRequest, store_kind: str, tmp_path: Any
) -> None:
    """A process importing a large export is SIGKILLed at its last statement: no other
    process saw any of it meanwhile, nothing is left, and the same file imports again
    whole (it was refused: "a context named 'support-chat' already exists")."""
    target = _shared(request, store_kind, tmp_path)
    store = rxcontext.open(target)
    export = _support_chat(5_000, "search")
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    gate = _Gate(store_kind, target)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, target, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if store_kind == "postgres":
            gate.waiting(1)
        else:
            assert child.stdout is not None and child.stdout.readline() == "inside\n"
        assert store.list_contexts() == []
    finally:
        child.kill()
        child.communicate(timeout=WAIT)
        gate.close()
    assert store.list_contexts() == []
    ctx = rxcontext.interop.import_context(store, export)
    got = store.records(ctx.id)  # more than one batch of PostgreSQL's inserts
    assert [(r.pos, r.content) for r in got] == [(i, f"message {i}") for i in range(5_000)]
    assert [t["name"] for t in store.context_tools(ctx.id)] == ["search"]
    assert store.context_stats(ctx.id).usage == Usage.of(7, 3)
    store.close()
