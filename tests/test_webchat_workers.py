"""The web chat served by two workers, as a multi-worker deployment runs it: two processes of
``examples/05_webchat.py`` on two ports over one PostgreSQL database (a database of this
module's own) and the shared Redis (under a key prefix of this module's own), started once
for the module; each test works in a conversation of its own.

* A page on worker A sends a prompt; a page on worker B shows the same reply streaming live
  (through the Redis fan-out, not read back from the store) and then complete with the same
  text. Stop pressed on B stops the reply worker A generates, and Stop pressed on A the one
  B generates: both pages show the same checkpoint box.
* Behind a load balancer (tests/balancer.py): the page's connection to A is cut mid-reply;
  its EventSource reconnects, through the balancer, to B with ``Last-Event-ID``, and the
  reply goes on from exactly where the page was: no event missing, none twice, the text
  shown is the stored record's.
* Worker A is killed (SIGKILL) mid-reply: the page on B shows the reply interrupted once A's
  lease runs out (the workers run with ``--lease-ttl 1``), Resume on B finishes it, and the
  stored reply is the whole answer, once.

Skips (saying why) without Chromium, Playwright, PostgreSQL or Redis.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgtest
import pytest
import redistest
import test_webchat
from balancer import Balancer
from test_webchat import (
    EXAMPLE,
    new_page,
    open_chat,
    screenshots_dir,
    send,
    wait_shown,
)
from webchat.bot import answer

import rxcontext
from rxcontext import RecordType, ReplyState

pytestmark = pytest.mark.e2e  # a program built on the library: run with -m e2e (setup.cfg)

browser_path = test_webchat.browser_path  # the same Chromium fixtures
browser = test_webchat.browser

LEASE_TTL = 1.0  # seconds: how soon a killed worker's reply reads as interrupted

# Each text event on a page, counted as it is drawn: a store poll would draw a few big steps.
COUNT_STEPS = """() => {
  window.__steps = 0;
  new MutationObserver(() => { window.__steps += 1; })
    .observe(document.getElementById('messages'), {childList: true, subtree: true,
                                                   characterData: true});
}"""

# Every event the page's EventSources get, in order, with the id the browser holds for it
# (an event without an id keeps the last one), and each (re)connection.
RECORD_EVENTS = """(() => {
  const Native = window.EventSource;
  window.__sse = [];
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      this.addEventListener("open", () => window.__sse.push({ open: true }));
      this.addEventListener("message", (m) =>
        window.__sse.push({ id: m.lastEventId, event: JSON.parse(m.data) }));
    }
  };
})();"""


@functools.cache
def _unshare() -> bool:
    """Whether this machine lets a process have a host name of its own (a user and a UTS
    namespace: ``unshare``, util-linux)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--uts", "hostname", "probe"],
        capture_output=True,
    )
    return probe.returncode == 0


def _own_host(name: str) -> list[str]:
    """A command prefix that runs a process under host name ``name``, as if on a machine of
    its own: the other workers cannot see its process die, only its lease run out. Where
    namespaces are not allowed, nothing (the other workers see it die at once)."""
    if not _unshare():
        return []
    return ["unshare", "--user", "--map-root-user", "--uts", "sh", "-c",
            f'hostname {name} && exec "$0" "$@"']  # fmt: skip


class Workers:
    """Worker processes of the example on one database and one Redis prefix, by name."""

    def __init__(self, pg_url: str, redis_url: str, prefix: str, cwd: Path) -> None:
        self.args = ["--port", "0", "--db", pg_url, "--fanout", redis_url,
                     "--fanout-prefix", prefix, "--delay", "0.04",
                     "--lease-ttl", str(LEASE_TTL)]  # fmt: skip
        self.cwd = cwd
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.urls: dict[str, str] = {}
        self.killed: list[subprocess.Popen[str]] = []

    def start(self, *names: str) -> None:
        """Start the workers ``names`` (side by side) and wait until each listens."""
        for name in names:
            self.procs[name] = subprocess.Popen(
                [*_own_host(f"worker-{name}"), sys.executable, str(EXAMPLE), *self.args],
                cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        for name in names:
            proc = self.procs[name]
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline()
            if not line.startswith("serving on "):
                proc.wait(timeout=30)
                pytest.fail(f"worker {name} did not start: {line}{proc.stderr.read()}")
            self.urls[name] = line.split()[2]

    def url(self, name: str) -> str:
        """Worker ``name``'s URL (started again if a test killed it)."""
        if self.procs[name].poll() is not None:
            self.start(name)
        return self.urls[name]

    def kill(self, name: str) -> None:
        """SIGKILL worker ``name``: no clean-up of any kind, as a crash."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.killed.append(proc)

    def close(self) -> None:
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            proc.terminate()
        for proc in alive:
            assert proc.wait(timeout=30) == 0
            assert proc.stderr is not None and proc.stderr.read() == ""
        for proc in self.killed:
            assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def pg_module_url(pg_server: pgtest.PgServer) -> Iterator[str]:
    yield from pgtest.fresh_database(pg_server)


@pytest.fixture(scope="module")
def workers(pg_module_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """Workers "a" and "b" of the example, shared by this module's tests."""
    for redis_url, prefix in redistest.shared_prefix():
        found = Workers(pg_module_url, redis_url, prefix, tmp_path_factory.mktemp("workers"))
        try:
            found.start("a", "b")
            yield found
        finally:
            found.close()


def _post(url: str, data: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def conversation(url: str, name: str) -> str:
    """Create the conversation ``name`` (through the worker at ``url``); the page's URL."""
    _post(url + "/api/contexts", {"name": name})
    return f"{url}/?context={name}"


def stored(pg_url: str, context: str) -> tuple[list[rxcontext.Record], list[rxcontext.Checkpoint]]:
    with rxcontext.open(pg_url) as store:
        ctx = store.get_context_by_name(context)
        return store.records(ctx.id), store.checkpoints(ctx.id, include_resolved=True)


def position(text: str) -> str:
    """The id the server gives the event that leaves ``text`` on the page."""
    return f"{len(text)}-{zlib.crc32(text.encode()):08x}"


def streamed_chars(page: Any) -> int:
    return int(
        page.evaluate(
            "window.__sse.reduce((n, e) => n + (e.event?.type === 'text' ? e.event.text.length"
            " : 0), 0)"
        )
    )


def test_two_workers_share_live_replies_and_stop_from_either(
    browser: Any, workers: Workers, pg_module_url: str, tmp_path: Path
) -> None:
    url_a, url_b = workers.url("a"), workers.url("b")
    assert url_a != url_b
    chat_a, chat_b = conversation(url_a, "rivers"), f"{url_b}/?context=rivers"
    page_a, page_b = new_page(browser), new_page(browser)
    open_chat(page_a, chat_a)

    # A reply generated by worker A, watched live from worker B, then complete on both.
    send(page_a, "Where do rivers go?")
    open_chat(page_b, chat_b)
    page_b.wait_for_selector(".msg.assistant.streaming")  # listed by B from the database
    page_b.evaluate(COUNT_STEPS)
    page_b.wait_for_selector(".msg.assistant[data-record]")  # stored: drawn as a message
    page_a.wait_for_selector(".msg.assistant[data-record]")
    text = answer("Where do rivers go?")
    wait_shown(page_a, text)
    wait_shown(page_b, text)
    assert page_b.evaluate("window.__steps") >= 10  # word by word, not a poll's few jumps
    assert page_a.get_attribute(".msg.assistant", "data-record") == page_b.get_attribute(
        ".msg.assistant", "data-record"
    )

    # Stop pressed on B cuts the reply A generates; both pages show the same checkpoint.
    send(page_a, "And the sea?")
    open_chat(page_b, chat_b)  # the person on B opens the conversation again
    page_b.wait_for_function(
        "(document.querySelector('.msg.assistant.streaming .body')?.textContent ?? '').length > 20"
    )
    page_b.click("#stop")
    page_a.wait_for_selector(".msg.interrupted")
    page_b.wait_for_selector(".msg.interrupted")
    records, (cp,) = stored(pg_module_url, "rivers")
    assert cp.state is ReplyState.INTERRUPTED and cp.text and cp.text != answer("And the sea?")
    assert answer("And the sea?").startswith(cp.text)
    for page in (page_a, page_b):
        assert page.get_attribute(".msg.interrupted", "data-checkpoint") == str(cp.id)
        assert "Reply stopped." in page.text_content(".msg.interrupted .note")
        wait_shown(page, cp.text, ".msg.interrupted")
    assert [r.type for r in records] == [
        RecordType.PROMPT,
        RecordType.MODEL_RESP,
        RecordType.PROMPT,
    ]
    folder = screenshots_dir(tmp_path)
    page_a.screenshot(path=str(folder / "webchat-worker-a.png"))
    page_b.screenshot(path=str(folder / "webchat-worker-b.png"))

    # And the other way: Stop pressed on A cuts a reply B generates.
    open_chat(page_b, conversation(url_b, "lakes"))
    send(page_b, "And the lakes?")
    open_chat(page_a, f"{url_a}/?context=lakes")
    page_a.wait_for_function(
        "(document.querySelector('.msg.assistant.streaming .body')?.textContent ?? '').length > 20"
    )
    page_a.click("#stop")
    page_b.wait_for_selector(".msg.interrupted")
    page_a.wait_for_selector(".msg.interrupted")
    records, (cp,) = stored(pg_module_url, "lakes")
    assert cp.state is ReplyState.INTERRUPTED and answer("And the lakes?").startswith(cp.text)
    assert [r.type for r in records] == [RecordType.PROMPT]
    for page in (page_a, page_b):
        assert page.get_attribute(".msg.interrupted", "data-checkpoint") == str(cp.id)
        assert "Reply stopped." in page.text_content(".msg.interrupted .note")
    page_a.close()
    page_b.close()


def test_a_watch_cut_mid_reply_goes_on_from_the_same_place_on_the_other_worker(
    browser: Any, workers: Workers, pg_module_url: str
) -> None:
    balancer = Balancer(workers.url("a"))
    page = new_page(browser)
    page.add_init_script(RECORD_EVENTS)
    try:
        open_chat(page, conversation(balancer.url, "relay"))
        prompt = "What happens when the line drops?"
        send(page, prompt)
        page.wait_for_function(
            "window.__sse.reduce((n, e) => n + (e.event?.type === 'text' ? 1 : 0), 0) >= 8"
        )
        # Worker A's connection to the page breaks mid-reply; the page's next one reaches B.
        balancer.route(workers.url("b"))
        assert balancer.cut("/api/watch") == 1
        page.wait_for_selector(".msg.assistant[data-record]")
        events: list[dict[str, Any]] = page.evaluate("window.__sse")
    finally:
        balancer.close()

    (first, second) = balancer.watches()
    assert (first.upstream, second.upstream) == (workers.url("a"), workers.url("b"))
    records, _ = stored(pg_module_url, "relay")
    assert [(r.type, r.content) for r in records] == [
        (RecordType.PROMPT, prompt),
        (RecordType.MODEL_RESP, answer(prompt)),
    ]

    # The page's text, event by event, as the page makes it: each event's id is the
    # position of exactly that text (nothing missing, nothing twice), across the reconnect.
    text, opens, ids_before_cut = "", 0, []
    for entry in events:
        if entry.get("open"):
            opens += 1
            continue
        event = entry["event"]
        if event["type"] == "text":
            text += event["text"]
            assert entry["id"] == position(text)
        elif event["type"] == "rewind":
            pytest.fail(f"the watch went back after the reconnect: {entry}")
        elif event["type"] == "done":
            break
        if opens == 1:
            ids_before_cut.append(entry["id"])
    assert opens == 2  # one reconnection, by EventSource itself
    assert text == answer(prompt)  # what streamed in is the stored record, before "done"
    # The reconnection said where the page was, and B sent the rest from there: text.
    assert second.headers["last-event-id"] == ids_before_cut[-1] != ""
    assert b'"type": "text"' in second.response
    wait_shown(page, answer(prompt))
    assert page.text_content("#status") == "reply stored"
    page.close()


def test_a_killed_workers_reply_shows_interrupted_and_resumes_on_the_other(
    browser: Any, workers: Workers, pg_module_url: str
) -> None:
    url_b = workers.url("b")
    balancer = Balancer(workers.url("a"))
    page_a, page_b = new_page(browser), new_page(browser)
    page_a.add_init_script(RECORD_EVENTS)
    try:
        open_chat(page_a, conversation(balancer.url, "crash"))
        prompt = "Will this survive a crash?"
        send(page_a, prompt)
        open_chat(page_b, f"{url_b}/?context=crash")
        page_b.wait_for_function(
            "(document.querySelector('.msg.assistant.streaming .body')?.textContent ?? '')"
            ".length > 60"
        )
        workers.kill("a")  # mid-reply: no clean-up, its lease is left to run out
        killed = time.monotonic()
        balancer.route(url_b)  # the balancer sees A gone; page A's reconnection reaches B
        page_b.wait_for_selector(".msg.interrupted", timeout=(LEASE_TTL * 1.5 + 8) * 1000)
        seen_after = time.monotonic() - killed
        page_a.wait_for_selector(".msg.interrupted")
    finally:
        balancer.close()
    assert [w.upstream for w in balancer.watches()][-1] == url_b  # page A's, reconnected
    print(f"killed worker's reply shown interrupted on B after {seen_after:.2f} s")
    _, (cp,) = stored(pg_module_url, "crash")
    assert cp.state is ReplyState.INTERRUPTED and answer(prompt).startswith(cp.text)
    for page in (page_a, page_b):
        assert page.get_attribute(".msg.interrupted", "data-checkpoint") == str(cp.id)
        assert page.text_content(".msg.interrupted .note") == (
            "Reply cut off: its server stopped while it was streaming. Resume it, keep it as "
            "it is, or discard it."
        )
        wait_shown(page, cp.text, ".msg.interrupted")

    # Resumed on B: it finishes in place, and the stored reply is the whole answer, once.
    page_b.click(".msg.interrupted button[data-action=resume]")
    page_b.wait_for_selector(".msg.assistant[data-record]")
    wait_shown(page_b, answer(prompt))
    records, (cp,) = stored(pg_module_url, "crash")
    assert [(r.type, r.content) for r in records] == [
        (RecordType.PROMPT, prompt),
        (RecordType.MODEL_RESP, answer(prompt)),
    ]
    assert cp.state is ReplyState.COMPLETED
    assert page_b.locator(".msg.interrupted").count() == 0
    page_a.close()
    page_b.close()


def test_two_sends_at_once_on_two_workers_start_one_reply(
    workers: Workers, pg_module_url: str
) -> None:
    """One reply at a time per conversation holds across workers: of two sends that race
    on two workers, one starts its reply and the other is refused (409), its prompt not
    left to be answered by nobody."""
    import threading
    import urllib.error

    for trial in range(5):
        name = f"race-{trial}"
        conversation(workers.url("a"), name)
        gate = threading.Barrier(2)
        statuses: dict[str, int] = {}

        def send(
            worker: str,
            name: str = name,
            gate: threading.Barrier = gate,
            statuses: dict[str, int] = statuses,
        ) -> None:
            gate.wait(30)
            try:
                _post(workers.url(worker) + "/api/send", {"context": name, "prompt": worker})
                statuses[worker] = 200
            except urllib.error.HTTPError as error:
                statuses[worker] = error.code

        racers = [threading.Thread(target=send, args=(w,)) for w in ("a", "b")]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(60)
        assert sorted(statuses.values()) == [200, 409], (trial, statuses)
        winner = next(w for w, status in statuses.items() if status == 200)
        records, _ = stored(pg_module_url, name)
        assert [r.content for r in records if r.type is RecordType.PROMPT and r.live] == [winner]
