"""Server-side threading (previous_response_id) chain rules, and summaries."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest
from stores import open_store

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType
from rxcontext.chain import new_input, validate_chain
from rxcontext.errors import ProviderError
from rxcontext.providers import ScriptedModel
from rxcontext.records import Context, Record
from rxcontext.store import RecordDraft, ReplyTicket
from rxcontext.store.owner import worker_id
from rxcontext.summarize import SUMMARY_PREFIX, default_prompt


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


def done(response_id: str | None) -> Chunk:
    return Chunk(ChunkKind.DONE, finish_reason="stop", response_id=response_id)


class ThreadingModel(ScriptedModel):
    """A scripted model that, like OpenAIResponsesModel, accepts previous_response_id."""

    supports_previous_response_id = True


def rec(type_: RecordType, content: str = "x", response_id: str | None = None) -> Record:
    return Record(0, "c", type_, content, True, 1, datetime.now(UTC), response_id=response_id)


def ctx(last: str | None) -> Context:
    return Context("c", "n", datetime.now(UTC), True, last)


# -- chain rules ------------------------------------------------------------------------


P, R, TC, TO, S = (
    RecordType.PROMPT,
    RecordType.MODEL_RESP,
    RecordType.TOOL_CALL,
    RecordType.TOOL_OUTPUT,
    RecordType.SYSTEM_PROMPT,
)


@pytest.mark.parametrize(
    ("last", "records", "valid", "reason"),
    [
        ("r2", [rec(P), rec(R, response_id="r1"), rec(P), rec(R, response_id="r2")], True, "valid"),
        (None, [rec(P), rec(R, response_id="r1")], False, "no last_response_id"),
        ("r1", [rec(P), rec(R, response_id="r1"), rec(TC), rec(TO)], False, "tool calls"),
        ("r2", [rec(P), rec(R), rec(P), rec(R, response_id="r2")], False, "mixed"),
        ("r9", [rec(P), rec(R, response_id="r1")], False, "not among"),
        ("r1", [rec(P), rec(R, response_id="r1"), rec(R, response_id="r2")], False, "last reply"),
        ("r1", [rec(P)], False, "no live model reply"),
    ],
)
def test_chain_rules(last, records, valid, reason):
    ok, why = validate_chain(ctx(last), records)
    assert ok is valid
    assert reason in why


def test_new_input_keeps_system_prompts_and_what_follows_the_last_reply():
    records = [rec(S, "sys"), rec(P, "q1"), rec(R, "a1", "r1"), rec(P, "q2")]
    assert [r.content for r in new_input(records)] == ["sys", "q2"]


# -- threading through the window -----------------------------------------------------------


def threaded_window(*scripts) -> tuple[ContextWindow, ThreadingModel]:
    model = ThreadingModel(list(scripts))
    cw = ContextWindow(rxcontext.open(":memory:"), model, "t")
    cw.set_system_prompt("sys")
    cw.set_server_side_threading(True)
    return cw, model


def test_valid_chain_sends_only_new_input_with_previous_response_id():
    cw, model = threaded_window([T("a1"), done("resp_1")], [T("a2"), done("resp_2")])
    cw.add_prompt("q1")
    cw.call()
    cw.add_prompt("q2")
    cw.call()
    first, second = model.requests
    assert first.previous_response_id is None  # nothing to continue yet
    assert second.previous_response_id == "resp_1"
    assert [r.content for r in second.records] == ["sys", "q2"]
    assert second.fallback is None  # the window keeps the full request to itself
    assert cw.context.last_response_id == "resp_2"


def test_threading_off_or_broken_chain_sends_the_full_history():
    cw, model = threaded_window(
        [T("a1"), done("resp_1")], [T("a2"), done(None)], [T("a3"), done("x")]
    )
    cw.set_server_side_threading(False)
    cw.add_prompt("q1")
    cw.call()
    cw.add_prompt("q2")
    cw.call()
    assert model.requests[1].previous_response_id is None
    cw.set_server_side_threading(True)
    cw.add_prompt("q3")  # the second reply had no id: the chain is mixed
    cw.call()
    assert model.requests[2].previous_response_id is None
    assert len(model.requests[2].records) == 6


@pytest.mark.parametrize("change", ["kill", "revive", "summary"])
def test_a_live_flag_changed_inside_the_thread_breaks_it(change: str):
    """The server's thread holds every record its responses were given: once one of those
    is killed (or a dead one revived, or records replaced by a summary), continuing it would
    show the model what the user took out (or hide what they put back), so the next request
    sends the live history whole; its reply starts a thread that can be continued again."""
    cw, model = threaded_window(
        [T("a1"), done("resp_1")],
        [T("a2"), done("resp_2")],
        [T("a3"), done("resp_3")],
        [T("a4"), done("resp_4")],
    )
    cw.add_prompt("q1")
    cw.call()
    if change == "revive":
        cw.set_record_live_state(1, 1, False)  # q1 dead before the thread goes on
    cw.add_prompt("q2")
    cw.call()
    assert (change == "revive") == (model.requests[1].previous_response_id is None)
    if change == "kill":
        cw.set_record_live_state(1, 2, False)  # q1 and a1
    elif change == "revive":
        cw.set_record_live_state(1, 1, True, among="all")
    else:
        old = [r.id for r in cw.live_records() if r.content in ("q1", "a1")]
        cw.store.replace_records(cw.context_id, old, RecordDraft(RecordType.PROMPT, "summary"))
    cw.add_prompt("q3")
    cw.call()
    third = model.requests[2]
    assert third.previous_response_id is None
    assert [r.content for r in third.records] == [r.content for r in cw.live_records()][:-1]
    cw.add_prompt("q4")
    cw.call()
    assert model.requests[3].previous_response_id == "resp_3"


@pytest.mark.parametrize("change", ["kill", "summary"])
def test_a_live_flag_changed_while_a_reply_streams_breaks_the_thread_it_commits(change: str):
    """The reply in flight was asked with the records as they were: its response's thread
    holds what the user then took out. Its commit must not make that thread the one the
    next request continues."""
    cw, model = threaded_window(
        [T("a1"), done("resp_1")], [T("a2"), done("resp_2")], [T("a3"), done("resp_3")]
    )
    cw.add_prompt("q1")
    cw.call()
    cw.add_prompt("q2")

    def change_now(chunk: Chunk) -> None:
        if chunk.text != "a2":
            return
        if change == "kill":
            cw.set_record_live_state(1, 2, False)  # q1 and a1
        else:
            old = [r.id for r in cw.live_records() if r.content in ("q1", "a1")]
            cw.store.replace_records(cw.context_id, old, RecordDraft(P, "summary"))

    cw.call(rxcontext.operators.middleware(on_chunk=change_now))
    assert model.requests[1].previous_response_id == "resp_1"  # before the change
    cw.add_prompt("q3")
    cw.call()
    third = model.requests[2]
    assert third.previous_response_id is None
    assert [r.content for r in third.records] == [r.content for r in cw.live_records()][:-1]


def test_a_rejected_previous_response_id_falls_back_once_to_the_full_history():
    rejected = ProviderError("previous response not found", provider="openai", status_code=400)
    cw, model = threaded_window([T("a1"), done("resp_1")], [rejected], [T("a2"), done("resp_2")])
    cw.add_prompt("q1")
    cw.call()
    cw.add_prompt("q2")
    reply = cw.call()
    assert reply.text == "a2"
    threaded, full = model.requests[1:]
    assert threaded.previous_response_id == "resp_1"
    assert full.previous_response_id is None and len(full.records) == 4


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_retryable_error_on_a_threaded_request_follows_the_retry_policy(path: str):
    """A 429 or a dropped connection is not the provider refusing the thread: the request is
    retried as the policy says (with its previous_response_id), or the error raised; it does
    not send the full history at once, past the policy and the server's Retry-After."""
    busy = ProviderError("rate limited", provider="openai", status_code=429, retryable=True)
    cw, model = threaded_window([T("a1"), done("resp_1")], [busy], [busy])
    cw.retry = None
    cw.add_prompt("q1")
    cw.call()
    cw.add_prompt("q2")
    with pytest.raises(rxcontext.StreamInterrupted) as info:
        if path == "sync":
            cw.call()
        else:
            asyncio.run(cw.acall())
    assert info.value.__cause__ is busy
    assert [r.previous_response_id for r in model.requests[1:]] == ["resp_1"]


async def test_async_fallback_and_only_once():
    rejected = ProviderError("bad id", provider="openai", status_code=400)
    cw, model = threaded_window(
        [T("a1"), done("resp_1")], [rejected], [ProviderError("down", provider="openai")]
    )
    cw.add_prompt("q1")
    await cw.acall()
    cw.add_prompt("q2")
    with pytest.raises(rxcontext.StreamInterrupted) as info:
        await cw.acall()
    assert str(info.value.__cause__) == "down"  # the fallback's error, no third attempt
    assert len(model.requests) == 3


# -- summaries --------------------------------------------------------------------------


def summarizing_window(summary: str = "The user greeted; the assistant answered."):
    model = ScriptedModel([[T("hello back"), done(None)]])
    summarizer = ScriptedModel([[T(summary[:10]), T(summary[10:]), done(None)]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "s", summarizer=summarizer)
    cw.set_system_prompt("be kind")
    cw.add_prompt("hello")
    cw.call()
    return cw, summarizer


def test_summarize_proposes_without_changing_the_conversation():
    cw, summarizer = summarizing_window()
    before = cw.records()
    seen: list[Chunk] = []
    proposal = cw.summarize(on_chunk=seen.append)
    assert proposal.text == "The user greeted; the assistant answered."
    assert len(seen) == 3  # streamed
    # Only what the summariser was billed is kept: its reply, dead (never sent), priced
    # from its metadata (this scripted summariser reported no usage: unknown).
    *kept, billed = cw.records()
    assert kept == before
    assert (billed.type, billed.content, billed.live) == (R, proposal.text, False)
    assert billed.metadata["summarizer"] is True
    assert (billed.metadata["provider"], billed.metadata["usage"]) == ("scripted", None)
    request = summarizer.requests[0]
    assert request.records[0].type is RecordType.SYSTEM_PROMPT
    assert request.records[0].content == default_prompt()
    assert "User: hello" in request.records[1].content
    assert "Assistant: hello back" in request.records[1].content
    cw.reject_summary(proposal)
    assert cw.records() == [*before, billed]


def test_accept_summary_replaces_live_records_in_one_step():
    cw, _ = summarizing_window()
    proposal = cw.summarize()
    summary = cw.accept_summary(proposal)
    live = cw.live_records()
    assert [(r.type, r.content) for r in live] == [
        (RecordType.SYSTEM_PROMPT, "be kind"),
        (RecordType.PROMPT, SUMMARY_PREFIX + proposal.text),
    ]
    assert summary.metadata["summary"] is True
    assert len(cw.records()) == 5  # the replaced ones are kept, dead; and the summariser's
    with pytest.raises(ValueError, match="no longer"):
        cw.accept_summary(proposal)  # stale: nothing changes
    assert cw.live_records() == live


async def test_asummarize_and_custom_prompt():
    cw, summarizer = summarizing_window()
    proposal = await cw.asummarize(prompt="Be short.")
    assert summarizer.requests[0].records[0].content == "Be short."
    assert proposal.summary_tokens > 0


def test_auto_compact_only_past_the_threshold():
    cw, _ = summarizing_window()
    cw.max_tokens = 10_000
    assert cw.auto_compact(50.0) is None
    cw.max_tokens = 4
    proposal = cw.auto_compact(50.0)
    assert proposal is not None
    assert cw.live_records()[-1].content.startswith(SUMMARY_PREFIX)


@pytest.mark.parametrize("bad", [float("nan"), -1.0, "50"])
def test_auto_compact_refuses_a_threshold_that_is_not_a_percentage(bad: object) -> None:
    cw, model = summarizing_window()
    with pytest.raises((ValueError, TypeError), match="threshold"):
        cw.auto_compact(bad)  # type: ignore[arg-type]
    assert model.requests == []


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_summary_is_a_request_the_budget_checks(path: str) -> None:
    """The summariser's request is the largest a context sends (its whole live history): a
    context over its budget is refused it, as any other request, before it is sent."""
    cw, summarizer = summarizing_window()
    cw.budget = rxcontext.Budget(max_tokens=1)
    with pytest.raises(rxcontext.BudgetExceeded):
        if path == "sync":
            cw.summarize()
        else:
            asyncio.run(cw.asummarize())
    assert summarizer.requests == []


@pytest.mark.parametrize("path", ["sync", "async"])
def test_what_the_summariser_was_billed_is_spent(path: str) -> None:
    """The summariser's request is billed like any other: its usage joins the context's
    spent totals (what budgets count), whether or not the summary is accepted."""
    model = ScriptedModel([[T("hello back"), done(None)]])
    summarizer = ScriptedModel(
        [[T("Greetings."), Chunk(ChunkKind.USAGE, usage=rxcontext.Usage.of(300, 20)), done(None)]]
    )
    cw = ContextWindow(rxcontext.open(":memory:"), model, "s", summarizer=summarizer)
    cw.add_prompt("hello")
    cw.call()
    before = cw.stats().usage.total_tokens
    proposal = cw.summarize() if path == "sync" else asyncio.run(cw.asummarize())
    cw.reject_summary(proposal)
    assert cw.stats().usage.total_tokens == before + 320


@pytest.mark.usefixtures("both_stores")
def test_a_rejected_summary_leaves_the_thread_as_it_was() -> None:
    """What the summariser was billed is stored as a reply, but a dead one: the live
    conversation, and so the server-side thread, go on as if it had not been asked."""
    model = ThreadingModel([[T("a1"), done("resp_1")], [T("a2"), done("resp_2")]])
    summarizer = ScriptedModel([[T("Greetings."), done("resp_summary")]])
    cw = ContextWindow(open_store(), model, "t", summarizer=summarizer)
    cw.set_server_side_threading(True)
    cw.add_prompt("q1")
    cw.call()
    cw.reject_summary(cw.summarize())
    cw.add_prompt("q2")
    cw.call()
    assert [r.previous_response_id for r in model.requests] == [None, "resp_1"]


def test_nothing_to_summarize_is_a_clear_error():
    cw = ContextWindow(rxcontext.open(":memory:"), ScriptedModel([]), "e")
    cw.set_system_prompt("only this")
    with pytest.raises(ValueError, match="nothing to summarize"):
        cw.summarize()


# -- threading through the real openai SDK (Responses API) ------------------------------


def responses_window(*responses):
    import openai
    from replay import Replay, real_fixture

    from rxcontext.providers import OpenAIResponsesModel

    body = real_fixture("openai_responses/text_basic_gpt55.sse")
    replay = Replay(*(body if r is None else r for r in responses))
    client = openai.OpenAI(
        api_key="sk-test-thread-0123456789", max_retries=0, http_client=replay.client()
    )
    model = OpenAIResponsesModel("gpt-test", client=client)
    cw = ContextWindow(rxcontext.open(":memory:"), model, "r", retry=None)
    cw.set_system_prompt("Answer tersely.")
    cw.set_server_side_threading(True)
    return cw, replay


RESP_ID = "resp_00592e63e61b66660169fab1b9f8e481a2b321356198d7ac1b"


def test_responses_second_turn_sends_previous_response_id_and_only_new_input():
    cw, replay = responses_window(None, None)
    cw.add_prompt("Reply with exactly: pong")
    assert cw.call().text == "pong"
    cw.add_prompt("Again")
    cw.call()
    first, second = replay.bodies
    assert "previous_response_id" not in first
    assert second["previous_response_id"] == RESP_ID
    assert second["instructions"] == "Answer tersely."
    assert [item.get("content") for item in second["input"]] == ["Again"]


def test_responses_rejected_thread_falls_back_to_full_history_through_the_sdk():
    from replay import Reply as Canned

    rejected = Canned(
        b'{"error": {"message": "Previous response not found.", "type": "invalid_request_error"}}',
        status=400,
        headers={"content-type": "application/json"},
    )
    cw, replay = responses_window(None, rejected, None)
    cw.add_prompt("Reply with exactly: pong")
    cw.call()
    cw.add_prompt("Again")
    assert cw.call().text == "pong"
    threaded, full = replay.bodies[1:]
    assert threaded["previous_response_id"] == RESP_ID
    assert "previous_response_id" not in full
    assert [i.get("content") for i in full["input"] if i.get("role") == "user"] == [
        "Reply with exactly: pong",
        "Again",
    ]


def test_a_summary_never_takes_half_a_reply_that_ends_while_it_reads() -> None:
    """A reply whose last round commits right after the summary reads the live records (its
    tool call read, its output not) is no longer busy when asked afterwards: it must be
    left out whole, not summarised down to its call, leaving its output answering nothing."""
    cw, _ = summarizing_window()
    store, ctx = cw.store, cw.context.id
    row = store.begin_reply(ctx, "streaming", owner=worker_id())
    ticket = ReplyTicket(row.id, row.epoch)
    call = RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id="c1", tool_name="f")
    output = RecordDraft(RecordType.TOOL_OUTPUT, "42", tool_call_id="c1", tool_name="f")
    (committed,) = store.commit_reply(ctx, [call], reply=ticket)
    real = store.records

    def read_then_the_reply_ends(*args: object, **kwargs: object) -> object:
        found = real(*args, **kwargs)  # type: ignore[arg-type]
        if kwargs.get("live_only") and committed.id in {r.id for r in found}:
            store.records = real  # type: ignore[method-assign]
            store.commit_reply(ctx, [output], reply=ticket, end="round")
            store.commit_reply(ctx, [RecordDraft(R, "done")], reply=ticket, end="reply")
        return found

    store.records = read_then_the_reply_ends  # type: ignore[method-assign]
    try:
        proposal = cw.summarize()
    finally:
        store.records = real  # type: ignore[method-assign]
    assert committed.id not in proposal.replaced_ids


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_summary_leaves_out_a_reply_still_being_generated(path: str) -> None:
    """A reply streaming in the context (a tool round committed, its output to come) is not
    summarised away: its call would go dead, and its own next request would carry its output
    with no call."""
    cw, _ = summarizing_window()
    store, ctx = cw.store, cw.context.id
    row = store.begin_reply(ctx, "streaming", owner=worker_id())
    call = RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id="c1", tool_name="f")
    (committed,) = store.commit_reply(ctx, [call], reply=ReplyTicket(row.id, row.epoch))
    proposal = cw.summarize() if path == "sync" else asyncio.run(cw.asummarize())
    assert committed.id not in proposal.replaced_ids
    cw.accept_summary(proposal)
    assert committed.id in {r.id for r in cw.live_records()}


class _HeldStream(threading.Event):
    """The gate of a replayed stream: says when the stream reached it (its reply is begun
    and streaming), then holds the stream until set."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.reached.set()
        return super().wait(timeout)


def _texts(items: list[dict[str, object]]) -> list[str]:
    """The texts of a Responses request's input items, in order."""
    out: list[str] = []
    for item in items:
        content = item.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(str(part.get("text")) for part in content if isinstance(part, dict))
    return out


def test_a_reply_that_ends_while_a_threaded_request_reads_is_never_left_out_of_the_thread(
    target: str,
) -> None:
    """Two workers share a threaded context. B's reply ends between A's question of which
    replies are busy and A's read of the records: left out of A's request as busy, it was
    already stored before A read. A's commit then made A's response the thread to continue,
    and every later request continued a server-side conversation that never held B's
    answer. The request after A's must carry B's answer or continue no thread lacking it."""
    import openai
    from replay import Replay, real_fixture
    from replay import Reply as Canned

    from rxcontext.providers import OpenAIResponsesModel

    body = real_fixture("openai_responses/text_basic_gpt55.sse").read_bytes()

    def answer(response_id: str, text: str) -> bytes:
        return body.replace(RESP_ID.encode(), response_id.encode()).replace(b"pong", text.encode())

    def window(store: rxcontext.Store, replay: Replay) -> ContextWindow:
        client = openai.OpenAI(
            api_key="sk-test-thread-0123456789", max_retries=0, http_client=replay.client()
        )
        model = OpenAIResponsesModel("gpt-test", client=client)
        return ContextWindow(store, model, "race", retry=None, checkpoint_every=None)

    a_ids = [f"resp_a{n}" for n in range(1, 5)]
    a_replay = Replay(*(answer(rid, f"answer {rid}") for rid in a_ids))
    gate = _HeldStream()
    b_replay = Replay(Canned(answer("resp_b1", "answer resp_b1"), gate=gate))
    store_a, store_b = rxcontext.open(target), rxcontext.open(target)
    try:
        a = window(store_a, a_replay)
        a.set_server_side_threading(True)
        for q in ("q1 from A", "q2 from A"):  # A's history cache has met a reply
            a.add_prompt(q)
            a.call()
        b = window(store_b, b_replay)
        b.add_prompt("q3 from B")
        b_done = threading.Event()
        b_failed: list[BaseException] = []

        def run_b() -> None:
            try:
                b.call()
            except BaseException as e:  # reported below
                b_failed.append(e)
            finally:
                b_done.set()

        worker = threading.Thread(target=run_b)
        worker.start()
        assert gate.reached.wait(10)  # B's reply is begun and streaming
        real = store_a.busy_reply_ids

        def busy_then_b_ends(context_id: str) -> set[str]:
            found = real(context_id)
            store_a.busy_reply_ids = real  # type: ignore[method-assign]
            gate.set()
            assert b_done.wait(10)  # B's reply is stored right here
            return found

        store_a.busy_reply_ids = busy_then_b_ends  # type: ignore[method-assign]
        try:
            a.add_prompt("q4 from A")
            a.call()
        finally:
            store_a.busy_reply_ids = real  # type: ignore[method-assign]
            gate.set()
            worker.join(10)
        assert not b_failed
        assert "answer resp_b1" in [r.content for r in a.live_records()]
        a.add_prompt("q5 from A")
        a.call()
    finally:
        store_a.close()
        store_b.close()

    # What the server holds for each response: its previous response's thread, its input
    # and its answer.
    held: dict[str, list[str]] = {}
    a1, a2, a3, a4 = a_replay.bodies
    (b1,) = b_replay.bodies
    sent = {"resp_a1": a1, "resp_a2": a2, "resp_b1": b1, "resp_a3": a3, "resp_a4": a4}
    for rid, request in sent.items():  # in the order the server made them
        prev = request.get("previous_response_id")
        held[rid] = [*(held[prev] if prev else []), *_texts(request["input"]), f"answer {rid}"]
    assert "answer resp_b1" in held["resp_a4"]  # the request after A's saw B's answer
