"""``cw.stop`` through Redis: with ``fanout="redis://..."`` the owner hears a stop at once
(a pub/sub hint that pokes its heartbeat) instead of at its next look in the store.

To tell the hint from the store's poll without timing anything, the owner's heartbeat looks
for stop requests only every 600 s here (``poll_every``; ``lease_ttl=120``, so its
renewals, which look too, come every 40 s): a stop seen within the tests' bounded wait
(20 s) came through Redis. In each case the owner's subscriber gets ``StreamInterrupted``
caused by ``ReplyStopped`` and the stored checkpoint is exactly the text it received.

* from another process, through the shared Redis (a key prefix of the test's own), on a
  SQLite file and on PostgreSQL;
* Redis killed or paused (SIGSTOP: a cut network; a private ``redis-server``): ``cw.stop``
  still returns True with no error, and the owner's ordinary poll (0.25 s) stops the reply;
* Redis killed, then back on the same port: the owner's listener subscribes again (with a
  growing pause between tries) and looks in the store at once, so even the stop asked
  while Redis was down reaches it long before its poll would;
* in one process: the listener's thread runs only while replies are served and ends with
  the store.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redistest

import rxcontext
from rxcontext import ContextWindow, ReplyStopped, StreamInterrupted
from rxcontext.heartbeat import heartbeat_for
from rxcontext.providers import ScriptedModel
from tests.test_heartbeat import DONE, PausingModel, Subscriber, T, in_thread

redis = pytest.importorskip("redis")
from rxcontext.fanout.redis import RedisFanout  # noqa: E402

WAIT = 20.0  # the longest any step may take on a loaded machine before the test fails
SLOW_POLL = ("120", "600")  # lease_ttl, poll_every: only a hint can stop within WAIT
USUAL_POLL = ("1.0", "0.25")

OWNER = textwrap.dedent(
    """
    import sys
    import threading
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.fanout.redis import RedisFanout
    from rxcontext.heartbeat import heartbeat_for
    from rxcontext.providers import ScriptedModel

    target, url, prefix, rid, ttl, poll = sys.argv[1:7]
    T = lambda s: Chunk(ChunkKind.TEXT, s)

    def say(line):
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    fanout = RedisFanout(url, prefix=prefix)
    store = rxcontext.open(target, lease_ttl=float(ttl), fanout=fanout)
    heartbeat = heartbeat_for(store)
    heartbeat.poll_every = float(poll)
    looked = threading.Event()  # set after each look in the store
    heartbeat.listeners.append(looked.set)
    (listener,) = fanout.stop_listeners

    class Pausing(ScriptedModel):
        def iter_chunks(self, request):
            for i in range(5):
                yield T(f"[{i}]")
            # Subscribed, and the look in the store that follows a subscription is over
            # (with the slow poll, the only one): from now on only a hint stops it soon.
            say(f"paused subscribed={listener.subscribed.wait(20) and looked.wait(20)}")
            sys.stdin.readline()  # silent until the parent says go
            yield T("[late]")
            yield Chunk(ChunkKind.DONE, finish_reason="stop")

    cw = ContextWindow(store, Pausing([[]]), "stophint", checkpoint_every=0.05)

    def on_error(e):
        cause = type(e.__cause__).__name__ if e.__cause__ is not None else "-"
        say(f"error {type(e).__name__} {cause} {listener.hints} {listener.subscriptions}")

    cw.stream(reply_id=rid).subscribe(
        lambda c: say(f"chunk {c.text}"), on_error, lambda: say("completed")
    )
    store.close()
    say("end")
    """
)


class Child:
    """The owner process; its stdout lines are read by a thread, so every wait is bounded."""

    def __init__(self, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        in_thread(self._read)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, prefix: str) -> list[str]:
        """Lines up to and including the first that starts with ``prefix``."""
        got: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} within {WAIT} s: {got}") from None
            assert line is not None, f"the owner ended before {prefix!r}: {got}"
            got.append(line)
            if line.startswith(prefix):
                return got

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def shared() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


@pytest.fixture
def owners() -> Iterator[list[Child]]:
    children: list[Child] = []
    yield children
    for child in children:
        child.close()


def delivered(lines: list[str]) -> str:
    return "".join(line.split(" ", 1)[1] for line in lines if line.startswith("chunk "))


def stop_across(
    target: str,
    url: str,
    prefix: str,
    poll: tuple[str, str],
    owners: list[Child],
    before: Callable[[], object] | None = None,
    after: Callable[[], object] | None = None,
) -> list[str]:
    """Start an owner process and stop its reply from this one (``before`` and ``after``
    run around the stop): the stored checkpoint is exactly what the owner delivered.
    Returns the listener's counts of hints heard and subscriptions made."""
    fanout = RedisFanout(url, prefix=prefix)
    store = rxcontext.open(target, fanout=fanout)
    cw = ContextWindow(store, ScriptedModel([]), "stophint")
    cw.add_prompt("tell me")
    owner = Child(target, url, prefix, "r", *poll)
    owners.append(owner)
    lines = owner.until("paused")
    assert lines[-1] == "paused subscribed=True", lines
    if before is not None:
        before()
    assert cw.stop("r") is True
    if after is not None:
        after()
    rest = owner.until("error")
    error = rest[-1].split(" ")
    assert error[:3] == ["error", "StreamInterrupted", "ReplyStopped"], rest
    (cp,) = cw.checkpoints()
    assert cp.reply_id == "r" and cp.text == delivered(lines) == "[0][1][2][3][4]"
    assert "ReplyStopped" in (cp.error or "")
    owner.send("go")  # its model goes on: the stopped stream delivers nothing more
    rest += owner.until("end")
    assert not [line for line in rest if line.startswith(("chunk", "completed"))], rest
    store.close()
    fanout.close()
    return error[3:]


def test_a_stop_reaches_the_owner_through_redis(
    target: str, shared: tuple[str, str], owners: list[Child]
) -> None:
    hints, subscriptions = stop_across(target, *shared, SLOW_POLL, owners)
    assert int(hints) >= 1 and subscriptions == "1"


@pytest.mark.parametrize("outage", ["kill", "pause"])
def test_with_redis_down_the_poll_still_stops_the_owner(
    tmp_path: Path, private: redistest.PrivateRedis, owners: list[Child], outage: str
) -> None:
    target = str(tmp_path / "shared.db")
    down = private.kill if outage == "kill" else private.pause  # pause: a cut network
    hints, _ = stop_across(target, private.url, "rx", USUAL_POLL, owners, before=down)
    assert hints == "0"


def test_the_listener_subscribes_again_when_redis_comes_back(
    tmp_path: Path, private: redistest.PrivateRedis, owners: list[Child]
) -> None:
    # The stop is asked while Redis is down (its hint is lost); Redis comes back after it,
    # and the owner's listener, subscribed again, looks in the store.
    target = str(tmp_path / "shared.db")
    hints, subscriptions = stop_across(
        target, private.url, "rx", SLOW_POLL, owners, before=private.kill, after=private.start
    )
    assert hints == "0" and int(subscriptions) >= 2, (hints, subscriptions)


def test_the_listener_runs_while_replies_are_served_and_ends_with_the_store(
    tmp_path: Path, shared: tuple[str, str]
) -> None:
    url, prefix = shared
    path = tmp_path / "one.db"
    fanout = RedisFanout(url, prefix=prefix)
    store = rxcontext.open(path, lease_ttl=120, fanout=fanout)
    heartbeat = heartbeat_for(store)
    heartbeat.poll_every = 600
    looked = threading.Event()
    heartbeat.listeners.append(looked.set)
    (listener,) = fanout.stop_listeners
    assert not listener.running
    model = PausingModel([T("Rivers: "), T("the Nile")], [T(", the Amazon"), DONE])
    cw = ContextWindow(store, model, "one", checkpoint_every=None)
    cw.add_prompt("Rivers?")
    owner = Subscriber()
    driver = in_thread(lambda: cw.stream(reply_id="r").subscribe(owner))
    assert model.paused.wait(WAIT) and listener.subscribed.wait(WAIT) and looked.wait(WAIT)
    assert listener.running
    # Another store of the same file stops it: its request pokes its own heartbeat, not
    # the owner's, which hears of it through Redis only.
    other_fanout = RedisFanout(url, prefix=prefix)
    other = rxcontext.open(path, fanout=other_fanout)
    assert ContextWindow(other, ScriptedModel([]), "one").stop("r") is True
    assert owner.ended.wait(WAIT)
    model.go.set()
    driver.join(WAIT)
    assert isinstance(owner.error, StreamInterrupted), owner.error
    assert isinstance(owner.error.__cause__, ReplyStopped)
    assert owner.error.checkpoint.text == "".join(owner.texts) == "Rivers: the Nile"
    assert listener.hints >= 1
    other.close()
    store.close()
    other_fanout.close()
    fanout.close()
    assert not listener.running and not listener.subscribed.is_set()
    assert not fanout.stop_listeners


def test_a_listener_cut_off_from_redis_notices_and_subscribes_again(
    private: redistest.PrivateRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paused Redis (a cut network) answers nothing but keeps the connection open: the
    listener's unanswered ping gives it away, and it subscribes anew once Redis is back."""
    from rxcontext.fanout import stops

    monkeypatch.setattr(stops, "KEEPALIVE", 0.2)
    fanout = RedisFanout(private.url)
    store = rxcontext.open(":memory:", fanout=fanout)
    (listener,) = fanout.stop_listeners
    looked = threading.Event()
    heartbeat_for(store).listeners.append(looked.set)
    listener.serving(True)  # as the heartbeat's thread does when a reply begins
    try:
        assert listener.subscribed.wait(WAIT) and listener.subscriptions == 1
        private.pause()
        deadline = time.monotonic() + WAIT
        while listener.subscribed.is_set():
            assert time.monotonic() < deadline, "the cut was never noticed"
            threading.Event().wait(0.02)
        private.resume()
        assert listener.subscribed.wait(WAIT) and listener.subscriptions == 2
    finally:
        listener.serving(False)
        store.close()
        fanout.close()
    assert not listener.running
