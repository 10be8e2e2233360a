"""Native resume of OpenAI Responses background mode, through the real openai SDK on replay.

A reply made with ``background=True`` keeps running on the server when its stream is cut, and
``GET /responses/{id}?stream=true&starting_after=<n>`` streams the events after sequence
number ``n``. The checkpoint keeps the response id and the sequence number of the last event
whose chunks reached subscribers; ``cw.resume(id)`` streams the rest of the same response,
so the stored MODEL_RESP is exactly the uncut reply: no delta repeated, none missing, no
continuation prompt. Without background mode the continuation-prompt path is unchanged.
An emoji cut between the halves of its surrogate pair is whole after a resume: the high
half is kept beside the checkpoint, the resumed stream brings the low half.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from matrix import spread
from reactivex import operators as ops
from reactivex.testing import TestScheduler
from replay import Replay, pieces, sse
from replay import Reply as Served

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, Record, RecordType, StreamInterrupted
from rxcontext import operators as rxops
from rxcontext.chunks import Usage
from rxcontext.cost import price, reply_cost
from rxcontext.persist import HELD_KEY, REPLY_KEYS
from rxcontext.providers import OpenAIResponsesModel
from rxcontext.providers.base import NATIVE_RESUME_KEY, ResumeCursor
from rxcontext.providers.openai import OUTPUT_KEY
from rxcontext.usage_by_model import USAGE_BY_MODEL
from rxcontext.window import CONTINUE_PROMPT

KEY = "sk-test-RXCONTEXT0123456789secret"
RID = "resp_bg_0123"
PATHS = [("sync", "sdk"), ("sync", "fast"), ("async", "sdk"), ("async", "fast")]
IDS = ["-".join(p) for p in PATHS]

DELTAS = ["Hel", "lo, ", "wor", "ld", "!"]
FULL = "".join(DELTAS)
THOUGHT = "think first"


# -- a crafted background-mode stream -----------------------------------------------------


def response(status: str, output: list[dict[str, Any]] | None = None, **kw: Any) -> dict:
    return {
        "id": RID,
        "object": "response",
        "created_at": 1,
        "model": "gpt-5.5",
        "status": status,
        "background": True,
        "output": output or [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        **kw,
    }


REASONING = {
    "type": "reasoning",
    "id": "rs_1",
    "summary": [{"type": "summary_text", "text": THOUGHT}],
}


def message(text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}] if text else [],
    }


USAGE = {
    "input_tokens": 9,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 16,
}


def background_events(deltas: list[str] = DELTAS) -> list[dict[str, Any]]:
    """The events of a background response, numbered as the API numbers them."""
    text = "".join(deltas)
    part = {"type": "output_text", "text": "", "annotations": []}
    payloads: list[dict[str, Any]] = [
        {"type": "response.created", "response": response("queued")},
        {"type": "response.queued", "response": response("queued")},
        {"type": "response.in_progress", "response": response("in_progress")},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"type": "reasoning", "id": "rs_1", "summary": []},
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": THOUGHT,
        },
        {"type": "response.output_item.done", "output_index": 0, "item": REASONING},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": message("", "in_progress"),
        },
        {
            "type": "response.content_part.added",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "part": part,
        },
        *(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 1,
                "content_index": 0,
                "delta": delta,
                "logprobs": [],
            }
            for delta in deltas
        ),
        {
            "type": "response.output_text.done",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "text": text,
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "item_id": "msg_1",
            "output_index": 1,
            "content_index": 0,
            "part": {**part, "text": text},
        },
        {"type": "response.output_item.done", "output_index": 1, "item": message(text)},
        {
            "type": "response.completed",
            "response": response("completed", [REASONING, message(text)], usage=USAGE),
        },
    ]
    return [{**p, "sequence_number": i} for i, p in enumerate(payloads)]


EVENTS = background_events()
FIRST_DELTA = next(i for i, e in enumerate(EVENTS) if e["type"] == "response.output_text.delta")


def frame(events: list[dict[str, Any]]) -> bytes:
    return sse(*events, event_names=[e["type"] for e in events])


def yields_chunks(event: dict[str, Any]) -> bool:
    """Whether an event of this stream becomes a chunk (an oracle independent of the adapter)."""
    return event["type"].endswith(".delta") or event["type"] == "response.completed"


def resume_point(k: int) -> int | None:
    """The sequence number to resume after when events[:k] arrived (None: no response id yet)."""
    seen = EVENTS[:k]
    if not any(e["type"] in ("response.created", "response.queued") for e in seen):
        return None
    after = None
    for e in seen:
        if e["type"] in ("response.created", "response.queued") or yields_chunks(e):
            after = e["sequence_number"]
    return after


def delivered_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


# -- windows and runners --------------------------------------------------------------------


def model(replay: Replay, wire: str, name: str = "gpt-5.5", **params: Any) -> OpenAIResponsesModel:
    return OpenAIResponsesModel(
        name,
        client=openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
        wire=wire,  # type: ignore[arg-type]
        **params,
    )


def window(
    replay: Replay, wire: str = "fast", name: str = "gpt-5.5", at: str = ":memory:", **params: Any
) -> ContextWindow:
    params.setdefault("background", True)
    cw = ContextWindow(rxcontext.open(at), model(replay, wire, name, **params), "bg", retry=None)
    cw.add_prompt("say hello")
    return cw


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if c.kind is ChunkKind.TEXT)


def replies(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP]


def run(mode: str, cw: ContextWindow, checkpoint_id: int | None = None) -> tuple[list[Chunk], Any]:
    got: list[Chunk] = []
    if mode == "sync":
        errors: list[Exception] = []
        obs = cw.stream() if checkpoint_id is None else cw.resume(checkpoint_id)
        obs.subscribe(got.append, errors.append)
        return got, (errors[0] if errors else None)

    async def consume() -> Any:
        chunks = cw.astream() if checkpoint_id is None else cw.aresume(checkpoint_id)
        try:
            async for chunk in chunks:
                got.append(chunk)
        except StreamInterrupted as e:
            return e
        return None

    return got, asyncio.run(consume())


def provider_metadata(record: Record) -> dict[str, Any]:
    """A MODEL_RESP's metadata without what rxcontext says about the reply (its times vary)."""
    return {k: v for k, v in record.metadata.items() if k not in (*REPLY_KEYS, "resumed")}


def reference(wire: str = "fast") -> tuple[str, dict[str, Any], str]:
    """The stored MODEL_RESP (content, provider metadata) and thinking of the uncut stream."""
    cw = window(Replay(frame(EVENTS)), wire)
    reply = cw.call()
    [record] = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert record.metadata["model"] == "gpt-5.5" and "resumed" not in record.metadata
    return record.content, provider_metadata(record), reply.thinking


def check_get(request: httpx2.Request, after: int) -> None:
    assert request.method == "GET"
    assert request.url.path == f"/v1/responses/{RID}"
    assert dict(request.url.params) == {"stream": "true", "starting_after": str(after)}


# -- the tests ------------------------------------------------------------------------------


def test_the_crafted_stream_reduces_to_the_full_reply():
    content, metadata, thinking = reference()
    assert content == FULL and thinking == THOUGHT
    assert metadata[OUTPUT_KEY] == [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": THOUGHT}]},
        {"type": "message", "id": "msg_1", "text": FULL},
    ]
    assert reference("sdk") == (content, metadata, thinking)


def test_background_is_sent_with_the_request():
    replay = Replay(frame(EVENTS))
    window(replay).call()
    assert replay.requests[0].method == "POST" and replay.bodies[0]["background"] is True
    assert replay.bodies[0]["stream"] is True


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
@pytest.mark.parametrize("k", spread(range(1, len(EVENTS))))
def test_cut_after_event_k_resumes_the_same_response_exactly(k, mode, wire):
    after = resume_point(k)
    assert after is not None
    rest = [e for e in EVENTS if e["sequence_number"] > after]
    replay = Replay(Served(frame(EVENTS), cut_after=k), frame(rest))
    cw = window(replay, wire)

    got, error = run(mode, cw)

    assert isinstance(error, StreamInterrupted)
    delivered = text(got)
    assert delivered == delivered_text(EVENTS[:k])
    cp = error.checkpoint
    assert cp.text == delivered
    assert cp.response_id == RID
    assert cp.metadata[NATIVE_RESUME_KEY] == {
        "provider": "openai-responses",
        "stream_id": RID,
        "after": after,
    }
    assert cw.checkpoints() == [cp] and replies(cw) == []

    more, error = run(mode, cw, cp.id)

    assert error is None
    assert len(replay.requests) == 2
    check_get(replay.requests[1], after)
    assert delivered + text(more) == FULL  # no delta repeated, none missing
    content, metadata, _ = reference(wire)
    [record] = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert (record.content, provider_metadata(record)) == (content, metadata)
    assert record.metadata["resumed"] is True and record.metadata["finish_reason"] == "completed"
    assert record.response_id == RID
    assert cw.context.last_response_id == RID
    assert cw.checkpoints() == [] and cw.store.get_checkpoint(cp.id).resolved
    # Nothing was asked of the model: no continuation prompt, no new response.
    assert all(
        r.type is not RecordType.PROMPT or r.content != CONTINUE_PROMPT for r in cw.records()
    )


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_a_resumed_stream_ends_at_response_completed_whatever_follows(mode, wire):
    """The resumed stream's ``response.completed`` ends it: a proxy holding the connection
    open after it (the read times out) does not turn the finished reply into an error."""
    k = FIRST_DELTA + 2
    after = resume_point(k)
    assert after is not None
    rest = frame([e for e in EVENTS if e["sequence_number"] > after])
    held = Served(rest, cut_after=len(pieces(rest)), error=httpx2.ReadTimeout("held open"))
    replay = Replay(Served(frame(EVENTS), cut_after=k), held)
    cw = window(replay, wire)
    got, error = run(mode, cw)
    assert isinstance(error, StreamInterrupted)

    more, error = run(mode, cw, error.checkpoint.id)

    assert error is None
    assert text(got) + text(more) == FULL
    assert replies(cw) == [FULL] and cw.checkpoints() == []


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_a_cut_before_the_response_id_resends_the_request(mode, wire):
    replay = Replay(Served(frame(EVENTS), cut_after=0), frame(EVENTS))
    cw = window(replay, wire)
    _, error = run(mode, cw)
    assert isinstance(error, StreamInterrupted)
    assert NATIVE_RESUME_KEY not in error.checkpoint.metadata
    more, error = run(mode, cw, error.checkpoint.id)
    assert error is None and text(more) == FULL
    assert replay.requests[1].method == "POST"  # the original request again
    assert replies(cw) == [FULL]


@pytest.mark.parametrize("wire", ["sdk", "fast"])
@pytest.mark.parametrize("n", range(1, len(DELTAS)))
def test_take_n_resumes_after_the_nth_delivered_delta(n, wire):
    # take(n) disposes after the n-th chunk; the driver has already pulled the next one from
    # the model (its event was noted) but never delivers it: the point must not include it.
    deltas = [FIRST_DELTA + i for i in range(len(DELTAS))]
    replay = Replay(frame(EVENTS), frame(EVENTS[deltas[n - 1] + 1 :]))
    cw = window(replay, wire)
    got: list[Chunk] = []
    cw.stream().pipe(ops.filter(lambda c: c.kind is ChunkKind.TEXT), ops.take(n)).subscribe(
        got.append
    )
    [cp] = cw.checkpoints()
    assert cp.text == text(got) == "".join(DELTAS[:n])
    assert cp.metadata[NATIVE_RESUME_KEY]["after"] == deltas[n - 1]
    assert cw.resume_call(cp.id).text == FULL
    check_get(replay.requests[1], deltas[n - 1])
    assert replies(cw) == [FULL]


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_periodic_checkpoint_holds_the_point_of_what_was_delivered(wire):
    ts = TestScheduler()
    replay = Replay(frame(EVENTS))
    m = model(replay, wire, background=True)
    cw = ContextWindow(
        rxcontext.open(":memory:"), m, "bg", retry=None, checkpoint_every=1.0, scheduler=ts
    )
    cw.add_prompt("say hello")
    seen: list[tuple[str, Any]] = []

    def tick(chunk: Chunk) -> None:
        ts.advance_by(1.0)  # a periodic write between every two chunks
        for cp in cw.active_replies():
            seen.append((cp.text, cp.metadata.get(NATIVE_RESUME_KEY, {}).get("after")))

    cw.call(rxops.middleware(on_chunk=tick))
    assert replies(cw) == [FULL] and cw.checkpoints() == []
    texts = [t for t, _ in seen]
    assert texts and all(FULL.startswith(t) for t in texts)
    # each periodic point is the event of the last chunk delivered when it was written
    written = [(t, after) for t, after in seen if t]
    assert len(written) > 2
    for t, after in written:
        assert after is not None
        assert delivered_text(EVENTS[: after + 1]) == t


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_a_resume_cut_again_moves_the_point_and_resumes_again(mode, wire):
    first_cut = FIRST_DELTA + 2  # two deltas delivered
    after1 = FIRST_DELTA + 1
    rest1 = [e for e in EVENTS if e["sequence_number"] > after1]
    after2 = FIRST_DELTA + 3
    rest2 = [e for e in EVENTS if e["sequence_number"] > after2]
    replay = Replay(
        Served(frame(EVENTS), cut_after=first_cut),
        Served(frame(rest1), cut_after=2),  # two more deltas, then the cut
        frame(rest2),
    )
    cw = window(replay, wire)
    _, error = run(mode, cw)
    cp_id = error.checkpoint.id
    _, error = run(mode, cw, cp_id)
    assert isinstance(error, StreamInterrupted) and error.checkpoint.id == cp_id
    assert error.checkpoint.text == "".join(DELTAS[:4])
    assert error.checkpoint.metadata[NATIVE_RESUME_KEY]["after"] == after2
    more, error = run(mode, cw, cp_id)
    assert error is None and text(more) == DELTAS[4]
    check_get(replay.requests[1], after1)
    check_get(replay.requests[2], after2)
    assert replies(cw) == [FULL] and cw.checkpoints() == []


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_without_background_mode_the_continuation_prompt_is_used(mode, wire):
    plain = [
        {**e, "response": {**e["response"], "background": False}} if "response" in e else e
        for e in EVENTS
        if e["type"] != "response.queued"
    ]
    k = next(i for i, e in enumerate(plain) if e["type"] == "response.output_text.delta") + 2
    continuation = frame(background_events([" and more"]))
    replay = Replay(Served(frame(plain), cut_after=k), continuation)
    cw = window(replay, wire, background=False)

    got, error = run(mode, cw)
    assert isinstance(error, StreamInterrupted)
    cp = error.checkpoint
    assert cp.text == text(got) == "".join(DELTAS[:2])
    assert NATIVE_RESUME_KEY not in cp.metadata and cp.response_id is None

    more, error = run(mode, cw, cp.id)
    assert error is None and text(more) == " and more"
    assert replay.requests[1].method == "POST"
    assert replay.requests[1].url.path == "/v1/responses"
    assert replay.bodies[1]["input"][-2:] == [
        {"role": "assistant", "content": cp.text},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    assert replies(cw) == [cp.text + " and more"]


def error_reply(status: int, message: str) -> Served:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
    return Served(body.encode(), status=status, headers={"content-type": "application/json"})


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_a_retryable_native_failure_keeps_the_point_for_the_next_resume(mode, wire):
    k = FIRST_DELTA + 1
    rest = [e for e in EVENTS if e["sequence_number"] > FIRST_DELTA]
    replay = Replay(Served(frame(EVENTS), cut_after=k), error_reply(500, "boom"), frame(rest))
    cw = window(replay, wire)
    _, error = run(mode, cw)
    cp = error.checkpoint
    _, error = run(mode, cw, cp.id)
    assert isinstance(error, StreamInterrupted)
    assert error.__cause__.status_code == 500
    assert error.checkpoint.id == cp.id and error.checkpoint.text == cp.text
    assert error.checkpoint.metadata[NATIVE_RESUME_KEY] == cp.metadata[NATIVE_RESUME_KEY]
    more, error = run(mode, cw, cp.id)
    assert error is None and cp.text + text(more) == FULL
    check_get(replay.requests[1], FIRST_DELTA)
    check_get(replay.requests[2], FIRST_DELTA)
    assert replies(cw) == [FULL]


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_an_expired_response_falls_back_to_the_continuation_prompt(mode, wire):
    k = FIRST_DELTA + 2
    replay = Replay(
        Served(frame(EVENTS), cut_after=k),
        error_reply(404, f"Response with id '{RID}' not found."),
        frame(background_events([" and more"])),
    )
    cw = window(replay, wire)
    _, error = run(mode, cw)
    cp = error.checkpoint
    more, error = run(mode, cw, cp.id)
    assert error is None and text(more) == " and more"
    check_get(replay.requests[1], FIRST_DELTA + 1)
    assert replay.requests[2].method == "POST"
    assert replay.bodies[2]["input"][-2:] == [
        {"role": "assistant", "content": cp.text},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    assert replies(cw) == [cp.text + " and more"]
    assert cw.checkpoints() == [] and cw.store.get_checkpoint(cp.id).resolved


# -- an emoji cut between the halves of its surrogate pair ------------------------------------

HIGH, LOW = "\ud83d", "\ude00"  # 😀 escaped as a pair, cut between two deltas
SPLIT = ["Hi ", HIGH, LOW, "!"]
SPLIT_EVENTS = background_events(SPLIT)
AT_HIGH = FIRST_DELTA + 1  # the sequence number of the delta holding the high half alone


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_an_emoji_cut_between_its_halves_is_whole_after_a_native_resume(mode, wire):
    """The cut comes right after the high half: the checkpoint's text ends before it and the
    half is kept beside it (UTF-8 cannot store it alone), so the resumed stream's low half
    completes the character instead of both halves becoming U+FFFD. A resume that fails
    before its first chunk keeps the half for the next one."""
    rest = [e for e in SPLIT_EVENTS if e["sequence_number"] > AT_HIGH]
    replay = Replay(
        Served(frame(SPLIT_EVENTS), cut_after=AT_HIGH + 1),
        error_reply(500, "boom"),
        frame(rest),
    )
    cw = window(replay, wire)

    got, error = run(mode, cw)
    assert isinstance(error, StreamInterrupted)
    assert text(got) == "Hi " + HIGH
    cp = error.checkpoint
    assert cp.text == "Hi " and cp.metadata[HELD_KEY] == {"text": ord(HIGH)}
    assert cp.metadata[NATIVE_RESUME_KEY]["after"] == AT_HIGH

    _, error = run(mode, cw, cp.id)
    assert isinstance(error, StreamInterrupted) and error.checkpoint.text == "Hi "
    assert error.checkpoint.metadata[HELD_KEY] == {"text": ord(HIGH)}

    more, error = run(mode, cw, cp.id)
    assert error is None and text(more) == LOW + "!"
    check_get(replay.requests[2], AT_HIGH)
    assert replies(cw) == ["Hi \U0001f600!"]
    assert cw.checkpoints() == []


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_a_continuation_after_an_emoji_cut_between_its_halves_goes_on_from_the_text(mode, wire):
    """When the response cannot be continued natively (expired), the half alone is no
    character: the continuation request and the stored reply go on from the checkpoint's
    text, with no U+FFFD in either."""
    replay = Replay(
        Served(frame(SPLIT_EVENTS), cut_after=AT_HIGH + 1),
        error_reply(404, f"Response with id '{RID}' not found."),
        frame(background_events([" and more"])),
    )
    cw = window(replay, wire)
    _, error = run(mode, cw)
    cp = error.checkpoint
    more, error = run(mode, cw, cp.id)
    assert error is None and text(more) == " and more"
    assert replay.bodies[2]["input"][-2:] == [
        {"role": "assistant", "content": "Hi "},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    assert replies(cw) == ["Hi  and more"]


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_a_periodic_checkpoint_between_the_halves_keeps_the_half_with_its_point(wire):
    """A periodic write lands with the high half delivered and the low half not yet: its
    point is after the high half's event, so the half is kept beside the text (a process
    killed right then leaves exactly this checkpoint to resume)."""
    ts = TestScheduler()
    replay = Replay(frame(SPLIT_EVENTS))
    cw = ContextWindow(
        rxcontext.open(":memory:"),
        model(replay, wire, background=True),
        "bg",
        retry=None,
        checkpoint_every=1.0,
        scheduler=ts,
    )
    cw.add_prompt("say hello")
    seen: list[Any] = []

    def tick(chunk: Chunk) -> None:
        if chunk.text == LOW:  # the high half delivered, the low half's hook running
            ts.advance_by(1.0)
            seen.extend(cw.active_replies())

    cw.call(rxops.middleware(on_chunk=tick))
    [cp] = seen
    assert cp.text == "Hi " and cp.metadata[HELD_KEY] == {"text": ord(HIGH)}
    assert cp.metadata[NATIVE_RESUME_KEY]["after"] == AT_HIGH
    assert replies(cw) == ["Hi \U0001f600!"]


KILLED_WORKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import openai
    from reactivex.testing import TestScheduler
    from replay import Replay
    import rxcontext
    from rxcontext import ContextWindow
    from rxcontext import operators as rxops
    from rxcontext.providers import OpenAIResponsesModel

    target, body, low = sys.argv[2], sys.argv[3], chr(int(sys.argv[4]))
    replay = Replay(open(body, "rb").read())
    client = openai.OpenAI(api_key="sk-test", max_retries=0, http_client=replay.client())
    model = OpenAIResponsesModel("gpt-5.5", client=client, background=True)
    ts = TestScheduler()
    store = rxcontext.open(target)
    cw = ContextWindow(store, model, "bg", retry=None, checkpoint_every=1.0, scheduler=ts)

    def hook(chunk):
        if chunk.text == low:  # the high half delivered, the low half's hook running
            ts.advance_by(1.0)  # a periodic write, then the kill
            print("written", flush=True)
            sys.stdin.readline()

    cw.call(rxops.middleware(on_chunk=hook))
    """
)


def test_a_process_killed_between_the_halves_leaves_a_checkpoint_that_resumes_whole(
    target: str, tmp_path: Path
):
    """A process killed right after a periodic write that fell between the halves: its
    checkpoint's point is after the high half's event and the half is beside its text, so a
    native resume from another process stores the emoji whole (both stores)."""
    body = tmp_path / "stream.sse"
    body.write_bytes(frame(SPLIT_EVENTS))
    store = rxcontext.open(target)
    rest = [e for e in SPLIT_EVENTS if e["sequence_number"] > AT_HIGH]
    replay = Replay(frame(rest))
    cw = ContextWindow(store, model(replay, "fast", background=True), "bg", retry=None)
    cw.add_prompt("say hello")
    tests = str(Path(__file__).parent)
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, tests, target, str(body), str(ord(LOW))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline() == "written\n"
    finally:
        worker.kill()
        worker.wait(30)
        for pipe in (worker.stdin, worker.stdout):
            if pipe is not None:
                pipe.close()
    [cp] = cw.checkpoints()  # a dead owner on this host is seen at once
    assert cp.text == "Hi " and cp.metadata[HELD_KEY] == {"text": ord(HIGH)}
    assert cp.metadata[NATIVE_RESUME_KEY]["after"] == AT_HIGH
    assert cw.resume_call(cp.id).text == "Hi " + HIGH + LOW + "!"
    check_get(replay.requests[0], AT_HIGH)
    assert replies(cw) == ["Hi \U0001f600!"]
    store.close()


USAGE_B = {
    "input_tokens": 30,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 3,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 33,
}


def with_usage(events: list[dict[str, Any]], usage: dict[str, Any]) -> list[dict[str, Any]]:
    """``events`` whose completed response reports ``usage``."""
    return [
        {**e, "response": {**e["response"], "usage": usage}}
        if e["type"] == "response.completed"
        else e
        for e in events
    ]


def cut_after_chunks(mode: str, cw: ContextWindow, n: int) -> Any:
    """The checkpoint of a reply whose subscriber stopped after ``n`` chunks."""
    if mode == "sync":
        cw.stream().pipe(ops.take(n)).subscribe(lambda _: None)
    else:

        async def consume() -> None:
            async with contextlib.aclosing(cw.astream()) as chunks:
                seen = 0
                async for _ in chunks:
                    seen += 1
                    if seen == n:
                        break

        asyncio.run(consume())
    [cp] = cw.checkpoints()
    return cp


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_a_native_resume_of_a_continuation_cut_again_carries_the_first_attempts_usage(mode, wire):
    """The first attempt is cut after its usage was delivered (its response completed on the
    server, billed); by the resume that response has expired, and the continuation, a
    response of its own, is cut in turn, then resumed natively (once more after a resume
    that failed before its first chunk). The native stream reports
    its own response's whole usage; the first attempt's is still carried, as a continuation
    carries it: the stored reply and the context's totals count both."""
    more = with_usage(background_events([" and", " more"]), USAGE_B)
    at = next(i for i, e in enumerate(more) if e["type"] == "response.output_text.delta")
    replay = Replay(
        frame(EVENTS),
        error_reply(404, f"Response with id '{RID}' not found."),
        Served(frame(more), cut_after=at + 1),
        error_reply(500, "boom"),
        frame([e for e in more if e["sequence_number"] > at]),
    )
    cw = window(replay, wire)
    cp = cut_after_chunks(mode, cw, 1 + len(DELTAS) + 1)  # the thinking, the text, the usage
    assert cp.text == FULL and cp.usage is not None and cp.usage.total_tokens == 16
    _, error = run(mode, cw, cp.id)
    assert isinstance(error, StreamInterrupted) and error.checkpoint.text == FULL + " and"
    assert error.checkpoint.usage == cp.usage
    _, error = run(mode, cw, cp.id)  # the native resume fails before its first chunk
    assert isinstance(error, StreamInterrupted) and error.checkpoint.usage == cp.usage
    _, error = run(mode, cw, cp.id)
    assert error is None
    check_get(replay.requests[3], at)
    check_get(replay.requests[4], at)
    [record] = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert record.content == FULL + " and more"
    assert record.metadata["usage"]["total_tokens"] == 16 + 33
    assert cw.stats().usage.total_tokens == 16 + 33


# A reply big enough that its model's price shows (gpt-5 costs 20 times gpt-5-nano).
BIG = {
    "input_tokens": 20000,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 8000,
    "output_tokens_details": {"reasoning_tokens": 2000},
    "total_tokens": 28000,
}


def own_usage(usage: dict[str, Any]) -> Usage:
    return Usage.of(
        usage["input_tokens"],
        usage["output_tokens"],
        usage["total_tokens"],
        usage["input_tokens_details"]["cached_tokens"],
        usage["output_tokens_details"]["reasoning_tokens"],
    )


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_a_native_resume_on_another_model_is_priced_as_the_model_that_made_the_response(mode, wire):
    """A background reply made by gpt-5 is cut; the window now uses gpt-5-nano and resumes
    it natively: the resume streams the rest of the same gpt-5 response, whose whole usage
    gpt-5 bills. The stored reply names gpt-5 and is priced as gpt-5; a checkpoint of the
    resume, cut again, names gpt-5 too."""
    events = with_usage(background_events(), BIG)
    cut = FIRST_DELTA + 2
    after = resume_point(cut)
    again = after + 1  # the native stream is cut once more, one delta on
    rest = [e for e in events if e["sequence_number"] > after]
    replay = Replay(
        Served(frame(events), cut_after=cut),
        Served(frame(rest), cut_after=again - after),
        frame([e for e in events if e["sequence_number"] > again]),
    )
    cw = window(replay, wire, "gpt-5")
    _, error = run(mode, cw)
    assert isinstance(error, StreamInterrupted)
    cp = error.checkpoint
    assert cp.metadata["model"] == "gpt-5" and cp.metadata[NATIVE_RESUME_KEY]["after"] == after
    cw.model = model(replay, wire, "gpt-5-nano", background=True)
    _, error = run(mode, cw, cp.id)
    assert isinstance(error, StreamInterrupted)
    check_get(replay.requests[1], after)
    cut_again = error.checkpoint
    assert cut_again.metadata["model"] == "gpt-5"
    assert cut_again.metadata["provider"] == "openai-responses"
    assert USAGE_BY_MODEL not in cut_again.metadata
    _, error = run(mode, cw, cut_again.id)
    assert error is None
    check_get(replay.requests[2], again)
    [record] = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert record.content == FULL
    assert record.metadata["model"] == "gpt-5"
    assert record.metadata["provider"] == "openai-responses"
    assert USAGE_BY_MODEL not in record.metadata
    assert record.metadata["usage"] == own_usage(BIG).to_dict()
    made = price(own_usage(BIG), "gpt-5", "openai-responses")
    assert made is not None and made != price(own_usage(BIG), "gpt-5-nano", "openai-responses")
    assert reply_cost(record) == made


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_a_native_resume_on_a_third_model_prices_each_models_part_by_its_own(mode, wire, target):
    """gpt-5's first attempt is cut after its usage came; by the resume, on gpt-5-mini, its
    response has expired, so gpt-5-mini continues it with a response of its own, which is
    cut in turn; the window now uses gpt-5-nano and resumes that natively: the stream is
    gpt-5-mini's. The reply names gpt-5-mini and lists gpt-5's part and gpt-5-mini's, each
    priced by its own model; gpt-5-nano billed nothing (both stores)."""
    first = with_usage(EVENTS, BIG)
    more = with_usage(background_events([" and", " more"]), USAGE_B)
    at = next(i for i, e in enumerate(more) if e["type"] == "response.output_text.delta")
    replay = Replay(
        frame(first),
        error_reply(404, f"Response with id '{RID}' not found."),
        Served(frame(more), cut_after=at + 1),
        frame([e for e in more if e["sequence_number"] > at]),
    )
    cw = window(replay, wire, "gpt-5", target)
    cp = cut_after_chunks(mode, cw, 1 + len(DELTAS) + 1)  # the thinking, the text, the usage
    assert cp.usage == own_usage(BIG)
    cw.model = model(replay, wire, "gpt-5-mini", background=True)
    _, error = run(mode, cw, cp.id)
    assert isinstance(error, StreamInterrupted) and error.checkpoint.text == FULL + " and"
    assert error.checkpoint.metadata["model"] == "gpt-5-mini"
    cw.model = model(replay, wire, "gpt-5-nano", background=True)
    _, error = run(mode, cw, cp.id)
    assert error is None
    check_get(replay.requests[3], at)
    [record] = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert record.content == FULL + " and more"
    assert record.metadata["model"] == "gpt-5-mini"
    assert record.metadata["usage"] == (own_usage(BIG) + own_usage(USAGE_B)).to_dict()
    assert record.metadata[USAGE_BY_MODEL] == [
        {"model": "gpt-5", "provider": "openai-responses", "usage": own_usage(BIG).to_dict()},
        {
            "model": "gpt-5-mini",
            "provider": "openai-responses",
            "usage": own_usage(USAGE_B).to_dict(),
        },
    ]
    first_cost = price(own_usage(BIG), "gpt-5", "openai-responses")
    second_cost = price(own_usage(USAGE_B), "gpt-5-mini", "openai-responses")
    assert first_cost is not None and second_cost is not None
    assert reply_cost(record) == first_cost + second_cost
    cw.store.close()


@pytest.mark.parametrize("wire", ["sdk", "fast"])
def test_a_native_resume_on_a_third_model_counts_the_streams_usage_once(wire):
    """As above, but gpt-5-mini's continuation is cut after its usage was delivered and
    before the rest of its final event: its checkpoint's gpt-5-mini part holds that usage,
    and the native stream, which goes on after the last delta, reports it again whole. It is
    counted once: the parts still add up to the reply's usage."""
    first = with_usage(EVENTS, BIG)
    more = with_usage(background_events([" and", " more"]), USAGE_B)
    last = max(i for i, e in enumerate(more) if e["type"] == "response.output_text.delta")
    replay = Replay(
        frame(first),
        error_reply(404, f"Response with id '{RID}' not found."),
        frame(more),
        frame(more[last + 1 :]),
    )
    cw = window(replay, wire, "gpt-5")
    cp = cut_after_chunks("sync", cw, 1 + len(DELTAS) + 1)  # the thinking, the text, the usage
    cw.model = model(replay, wire, "gpt-5-mini", background=True)
    # the thinking, the text, the usage: not the DONE chunk of the same event
    cw.resume(cp.id).pipe(ops.take(1 + 2 + 1)).subscribe(lambda _: None)
    [cut] = cw.checkpoints()
    assert cut.usage == own_usage(BIG) + own_usage(USAGE_B)
    assert cut.metadata[NATIVE_RESUME_KEY]["after"] == last  # before the final event
    cw.model = model(replay, wire, "gpt-5-nano", background=True)
    _, error = run("sync", cw, cut.id)
    assert error is None
    check_get(replay.requests[3], last)
    [record] = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert record.content == FULL + " and more"
    assert record.metadata["model"] == "gpt-5-mini"
    assert record.metadata["usage"] == (own_usage(BIG) + own_usage(USAGE_B)).to_dict()
    assert [(p["model"], p["usage"]) for p in record.metadata[USAGE_BY_MODEL]] == [
        ("gpt-5", own_usage(BIG).to_dict()),
        ("gpt-5-mini", own_usage(USAGE_B).to_dict()),
    ]


def tool_events() -> list[dict[str, Any]]:
    item = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "weather",
        "arguments": "",
        "status": "in_progress",
    }
    args = ['{"ci', 'ty": "Pa', 'ris"}']
    done = {**item, "arguments": "".join(args), "status": "completed"}
    payloads: list[dict[str, Any]] = [
        {"type": "response.created", "response": response("queued")},
        {"type": "response.in_progress", "response": response("in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        *(
            {
                "type": "response.function_call_arguments.delta",
                "item_id": "fc_1",
                "output_index": 0,
                "delta": a,
            }
            for a in args
        ),
        {
            "type": "response.function_call_arguments.done",
            "item_id": "fc_1",
            "output_index": 0,
            "arguments": "".join(args),
        },
        {"type": "response.output_item.done", "output_index": 0, "item": done},
        {
            "type": "response.completed",
            "response": response("completed", [done], usage=USAGE),
        },
    ]
    return [{**p, "sequence_number": i} for i, p in enumerate(payloads)]


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_a_tool_call_cut_mid_arguments_is_completed_by_the_rest_of_its_stream(mode, wire):
    events = tool_events()
    k = 5  # created, in_progress, item added, two argument deltas
    rest = [e for e in events if e["sequence_number"] > 4]
    replay = Replay(Served(frame(events), cut_after=k), frame(rest))
    cw = window(replay, wire)
    _, error = run(mode, cw)
    cp = error.checkpoint
    assert [dict(f) for f in cp.tool_calls] == [
        {"index": 0, "id": "call_1", "name": "weather", "arguments": '{"city": "Pa', "metadata": {}}
    ]
    assert cp.metadata[NATIVE_RESUME_KEY]["after"] == 4
    _, error = run(mode, cw, cp.id)
    assert error is None
    check_get(replay.requests[1], 4)
    calls = [r for r in cw.records() if r.type is RecordType.TOOL_CALL]
    assert [(c.tool_call_id, c.tool_name, c.content) for c in calls] == [
        ("call_1", "weather", '{"city": "Paris"}')
    ]


def test_the_cursor_points_before_an_event_whose_chunks_were_not_all_delivered():
    cursor = ResumeCursor()
    assert cursor.point(0) is None  # no stream id yet
    cursor.begin("p")
    cursor.started("s", 1)
    assert cursor.point(0) == {"provider": "p", "stream_id": "s", "after": 1}
    cursor.at(1, 4)
    cursor.at(3, 9)  # an event with two chunks
    assert cursor.point(3)["after"] == 9
    assert cursor.point(2)["after"] == 4 and cursor.point(1)["after"] == 4
    assert cursor.point(0) is None  # older than the cursor remembers
    cursor.at(4, None)  # an event without a sequence number
    assert cursor.point(4) is None


def test_models_without_native_resume_are_untouched():
    from rxcontext.providers import ScriptedModel

    model = ScriptedModel(
        [[Chunk(ChunkKind.TEXT, "a"), RuntimeError("cut")], [Chunk(ChunkKind.TEXT, "b")]]
    )
    cw = ContextWindow(rxcontext.open(":memory:"), model, "s", retry=None)
    cw.add_prompt("go")
    with contextlib.suppress(StreamInterrupted):
        cw.call()
    [cp] = cw.checkpoints()
    assert NATIVE_RESUME_KEY not in cp.metadata
    assert cw.resume_call(cp.id).text == "ab"
    assert all(r.cursor is None for r in model.requests)


@pytest.mark.parametrize("mode,wire", PATHS, ids=IDS)
def test_a_resumed_tool_call_runs_once_and_the_loop_continues_with_a_request(mode, wire):
    events = tool_events()
    rest = [e for e in events if e["sequence_number"] > 4]
    answer = background_events(["Sunny."])
    replay = Replay(Served(frame(events), cut_after=5), frame(rest), frame(answer))
    cw = window(replay, wire)
    ran: list[dict[str, Any]] = []
    cw.add_tool(
        rxcontext.Tool("weather", "Weather").string("city", "City"),
        lambda args: ran.append(args) or "sunny",
    )
    _, error = run(mode, cw)
    assert isinstance(error, StreamInterrupted) and ran == []
    more, error = run(mode, cw, error.checkpoint.id)
    assert error is None and ran == [{"city": "Paris"}]
    assert text(more) == "Sunny."
    check_get(replay.requests[1], 4)
    assert replay.requests[2].method == "POST"  # the next round is an ordinary request
    assert replay.bodies[2]["input"][-1] == {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": "sunny",
    }
    records = cw.records()
    assert [r.type for r in records] == [
        RecordType.PROMPT,
        RecordType.MODEL_RESP,  # empty text, the output items the next request sends back
        RecordType.TOOL_CALL,
        RecordType.TOOL_OUTPUT,
        RecordType.MODEL_RESP,
    ]
    assert records[1].metadata[OUTPUT_KEY] == [
        {"type": "function_call", "id": "fc_1", "call_id": "call_1"}
    ]
    assert records[2].content == '{"city": "Paris"}' and records[4].content == "Sunny."
    assert cw.checkpoints() == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_native_resume_is_checked_at_the_prices_of_the_models_that_billed_it(mode):
    """As the third-model case above, up to the native resume on gpt-5-nano of gpt-5-mini's
    response, which carries gpt-5's cut attempt (20,000 tokens in, 8,000 out). Before its
    first request is sent, the budget counts what the checkpoint carries (it was billed,
    though the context's totals count it only once the reply is settled), gpt-5's part at
    gpt-5's price, as the stored reply is priced, not at gpt-5-nano's (25x less), which
    would have let the resume go out over the budget."""
    from rxcontext import Budget, BudgetExceeded

    first = with_usage(EVENTS, BIG)
    more = with_usage(background_events([" and", " more"]), USAGE_B)
    at = next(i for i, e in enumerate(more) if e["type"] == "response.output_text.delta")
    replay = Replay(
        frame(first),
        error_reply(404, f"Response with id '{RID}' not found."),
        Served(frame(more), cut_after=at + 1),
    )
    cw = window(replay, "fast", "gpt-5")
    cp = cut_after_chunks(mode, cw, 1 + len(DELTAS) + 1)  # the thinking, the text, the usage
    cw.model = model(replay, "fast", "gpt-5-mini", background=True)
    _, error = run(mode, cw, cp.id)
    assert isinstance(error, StreamInterrupted)
    cw.model = model(replay, "fast", "gpt-5-nano", background=True)
    exact = price(own_usage(BIG), "gpt-5", "openai-responses")
    cheap = price(own_usage(BIG), "gpt-5-nano", "openai-responses")
    ahead = price(Usage.of(cw.live_tokens()), "gpt-5-nano", "openai-responses")
    assert exact is not None and cheap is not None and ahead is not None
    cw.budget = Budget(max_usd=ahead + (exact + cheap) / 2)
    with pytest.raises(BudgetExceeded) as refused:  # the async resume raises it as iterated
        _, error = run(mode, cw, cp.id)
        raise error  # the sync one gives it to on_error
    error = refused.value
    assert isinstance(error, BudgetExceeded) and error.limit == "usd"
    assert (error.spent, error.estimate) == (exact, ahead)
    assert len(replay.requests) == 3  # not sent
