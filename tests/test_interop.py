"""contextwindow parity and interop: import (the inverse of export, rxcontext's and
contextwindow's JSON), fork at a record, live-record indexing, summaries in a named context,
a model's context size, and token usage with a total."""

from __future__ import annotations

import json
from typing import Any

import pytest
from stores import open_store

import rxcontext
from rxcontext import (
    Chunk,
    ChunkKind,
    ContextWindow,
    InvalidExport,
    RecordType,
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
    to their context (nor delete it, as a failed import deletes what it created)."""
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
    """An export of one prompt, with ``changes`` made: ``record_<key>`` on the record,
    ``context_<key>`` on the context."""
    record: dict[str, Any] = {"source": 0, "content": "hi", "live": True}
    context: dict[str, Any] = {"name": "ok"}
    for key, value in changes.items():
        where, _, field = key.partition("_")
        (record if where == "record" else context)[field] = value
    return {"context": context, "records": [record]}


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
