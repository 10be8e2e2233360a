"""One hot context, many writers: processes × threads add prompts and stream replies into
the same context at once, on a SQLite file and on PostgreSQL; then every process races to
resume every reply that was cut.

Each thread of each process, for each of its turns: ``add_prompt(key)``, then streams a
reply ``reply_id=key`` (a few chunks, a millisecond apart, checkpoints every 20 ms so
they run into the other writers); every third reply is cut by the model mid-stream
(``StreamInterrupted``). Then all the processes, released by one line, resume each cut
reply in the same order.

Checked from the store (design: "a reply's place is fixed when its request is sent;
records are ordered by a per-context position"):

* every prompt stored once; every completed reply stored once (one MODEL_RESP named by
  its reply id, its text whole), after its own prompt;
* positions unique and dense: 0 … next_pos - 1, each held by exactly one prompt or one
  reply (a discarded reply keeps its place, with no record);
* per cut reply, among the racing resumers exactly one wins (its record is the checkpoint
  plus that winner's continuation, stored once), unless the reply was answered again by a
  later reply: then every racer is told ``ReplySuperseded`` and it is discarded. (Whether
  a reply counts as answered again can change during the race, as the resumes of its
  neighbours land: the check is made before the claim, not in it. Some racers of a reply
  may then be told ``ReplySuperseded`` while another wins; there is never a second
  winner.)
* nothing is left streaming.

The default run has a short version on each store; ``-m faults`` a longer one.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from typing import Any

import pytest
from watching import WAIT

import rxcontext
from rxcontext import ContextWindow, RecordType, ReplyState

CHUNKS = 4


def text_of(key: str) -> str:
    return "".join(f"{key}:{i} " for i in range(CHUNKS))


def cut_text(key: str, chunks: int = 2) -> str:
    """What the subscriber of a cut reply received: its first ``chunks`` chunks (the model
    cuts after two; a reply its process gave up, ``OwnershipLost`` because its lease ran out
    while the process starved, may have received fewer or more)."""
    return "".join(f"{key}:{i} " for i in range(chunks))


WRITER = textwrap.dedent(
    f"""
    import sys, threading
    import rxcontext
    from reactivex import operators as ops
    from rxcontext import Chunk, ChunkKind, ContextWindow, ReplySuperseded, StreamInterrupted
    from rxcontext.providers import ScriptedModel

    target, name, threads, turns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = rxcontext.open(target, lease_ttl=2.0)
    out = threading.Lock()

    def say(*words):
        with out:
            print(*words, flush=True)

    def script(key, cut):
        chunks = [Chunk(ChunkKind.TEXT, f"{{key}}:{{i}} ") for i in range({CHUNKS})]
        if cut:
            return [*chunks[:2], ConnectionError("cut")]
        return [*chunks, Chunk(ChunkKind.DONE, finish_reason="stop")]

    def write(t):
        keys = [f"{{name}}.{{t}}.{{i}}" for i in range(turns)]
        model = ScriptedModel([script(k, i % 3 == 2) for i, k in enumerate(keys)], delay=0.001)
        cw = ContextWindow(store, model, "hot", retry=None, checkpoint_every=0.02)
        for i, key in enumerate(keys):
            cw.add_prompt(key)
            got = []  # what this reply's subscriber received
            try:
                cw.stream(reply_id=key).pipe(ops.do_action(lambda c: got.append(c.text))).run()
                say("ack", key)
            except StreamInterrupted as e:
                received = "".join(got)
                why = type(e.__cause__).__name__
                say("cut", key, e.checkpoint.id, len(got), int(e.checkpoint.text == received), why)

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    say("written")
    ids = [int(i) for i in sys.stdin.readline().split()]  # released together
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, f"+{{name}}"), Chunk(ChunkKind.DONE)]],
                          repeat_last=True)
    cw = ContextWindow(store, model, "hot", retry=None)
    for cp_id in ids:
        try:
            cw.resume_call(cp_id)
            say("won", cp_id)
        except rxcontext.RxContextError as e:
            say("lost", cp_id, type(e).__name__)
    say("resumed")
    sys.stdin.readline()  # alive until every racer is done: a dead one's claim is free
    store.close()
    """
)


class Writer:
    def __init__(self, target: str, name: str, threads: int, turns: int) -> None:
        self.name = name
        self.lines: list[list[str]] = []
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, target, name, str(threads), str(turns)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def until(self, word: str) -> list[list[str]]:
        assert self.proc.stdout is not None
        got: list[list[str]] = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.stderr.seek(0)
                raise AssertionError(f"{self.name} ended: {self.stderr.read()[-2000:]}")
            words = line.split()
            if words == [word]:
                self.lines += got
                return got
            got.append(words)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.send("exit")
        try:
            self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self.stderr.close()


def hot_context(target: str, processes: int, threads: int, turns: int) -> None:
    store = rxcontext.open(target)
    cw = ContextWindow(store, None, "hot")  # the context exists before the writers race
    writers = [Writer(target, f"p{k}", threads, turns) for k in range(processes)]
    try:
        written = [w.until("written") for w in writers]
        acked = {words[1] for lines in written for words in lines if words[0] == "ack"}
        cut = {words[1]: int(words[2]) for lines in written for words in lines if words[0] == "cut"}
        assert len(acked) + len(cut) == processes * threads * turns
        cuts = [w for lines in written for w in lines if w[0] == "cut"]
        received = {w[1]: int(w[3]) for w in cuts}
        # The checkpoint a cut writer was given holds exactly what its subscriber received.
        assert [w for w in cuts if w[4] != "1"] == [], cuts
        # The model cut every third reply after two chunks; nothing else cuts a reply but a
        # process that gave a reply up (its lease ran out: it starved on a loaded machine).
        # A healthy reply that waited long for the hot context's lock is not given up.
        model_cut = {
            f"{w.name}.{t}.{i}"
            for w in writers
            for t in range(threads)
            for i in range(turns)
            if i % 3 == 2
        }
        odd = [w for w in cuts if (w[1] in model_cut, w[5], w[3]) != (True, "ConnectionError", "2")]
        assert all(w[5] == "OwnershipLost" for w in odd), odd
        if odd:
            print(f"given up (lease ran out): {odd}")
        ids = sorted(cut.values())
        for w in writers:  # every process races for every cut reply, in the same order
            w.send(" ".join(map(str, ids)))
        raced = [w.until("resumed") for w in writers]
        outcomes: dict[int, list[tuple[str, str]]] = {i: [] for i in ids}
        for w, lines in zip(writers, raced, strict=True):
            for words in lines:
                outcomes[int(words[1])].append((w.name, " ".join([words[0], *words[2:]])))
    finally:
        for w in writers:
            w.finish()
    records = store.records(cw.context_id)
    replies = [r for r in records if r.type is RecordType.MODEL_RESP]
    prompts = [r for r in records if r.type is RecordType.PROMPT]
    # Every prompt once; every reply stored at most once.
    assert sorted(r.content for r in prompts) == sorted(acked | set(cut))
    assert Counter(r.reply_id for r in replies).most_common(1)[0][1] == 1
    by_reply = {r.reply_id: r for r in replies}
    for key in acked:
        assert by_reply[key].content == text_of(key)
    # The race for each cut reply: one winner, or superseded for everyone (then discarded).
    discarded: dict[str, int] = {}
    for key, cp_id in cut.items():
        results = [result for _, result in outcomes[cp_id]]
        assert len(results) == processes
        winners = [name for name, result in outcomes[cp_id] if result == "won"]
        if winners:
            assert len(winners) == 1, outcomes[cp_id]
            # A racer that looks after a neighbouring cut reply's resume landed (between
            # this reply's prompt and place) is told ReplySuperseded: the check is not part
            # of the claim. Never a second winner.
            allowed = ("won", "lost ReplyBusy", "lost CheckpointResolved", "lost ReplySuperseded")
            assert all(r in allowed for r in results), outcomes[cp_id]
            assert by_reply[key].content == cut_text(key, received[key]) + f"+{winners[0]}"
        else:
            assert results == ["lost ReplySuperseded"] * processes, results
            assert key not in by_reply
            cw.discard(cp_id)
            discarded[key] = cp_id
    # Positions: unique, dense, each one prompt or one reply; every reply after its prompt.
    rows = store.checkpoints(cw.context_id, include_resolved=True)
    places: dict[int, set[Any]] = {}
    for r in records:
        places.setdefault(r.pos, set()).add((r.type is RecordType.PROMPT, r.reply_id or r.content))
    for cp in rows:
        if cp.state is ReplyState.DISCARDED:
            assert cp.pos is not None and cp.pos not in places
            places[cp.pos] = {(False, cp.reply_id)}
    assert sorted(places) == list(range(len(places)))
    assert all(len(unit) == 1 for unit in places.values())
    asked = {key: pos for pos, unit in places.items() for is_prompt, key in unit if is_prompt}
    for pos, unit in places.items():
        for is_prompt, key in unit:
            assert is_prompt or asked[key] < pos, key
    assert {cp.reply_id for cp in rows if cp.state is ReplyState.DISCARDED} == set(discarded)
    assert cw.active_replies() == [] and cw.checkpoints() == []
    print(
        f"{len(acked)} completed, {len(cut)} cut: {len(cut) - len(discarded)} resumed by one"
        f" of {processes} racers, {len(discarded)} superseded and discarded"
    )
    store.close()


def test_many_writers_in_one_hot_context(target: str) -> None:
    hot_context(target, processes=4, threads=2, turns=3)


@pytest.mark.faults
def test_many_writers_in_one_hot_context_longer(target: str) -> None:
    hot_context(target, processes=4, threads=4, turns=24)
