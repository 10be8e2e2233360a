"""The web chat (examples/05_webchat.py, examples/webchat/) in headless Chromium.

A person sends messages and watches Markdown stream in, stops a reply and resumes, keeps or
discards it, reloads mid-reply, scrolls up while a reply streams, switches conversations,
and uses the page at desktop and phone widths; the database is checked at each step.

Most tests run the server in a thread of this process with the offline bot paced by a gate
the test opens event by event, so "mid-reply" is a place the test chooses, never a race with
a timer. One test runs the example as a user does (``python examples/05_webchat.py``).

The browser is a system Chromium (``$RXCONTEXT_CHROMIUM``, else Debian's
``chromium-headless-shell`` or ``chromium`` on the PATH; ``.ci/run`` installs the first with
``examples/webchat/install_browser.sh``) driven by
Playwright (the ``browser`` extra); Playwright's own browser download is never used, and the
tests never install anything. Without a browser or Playwright they skip, saying why; under
CI they fail. Screenshots go to a temporary folder (``$WEBCHAT_SCREENSHOTS`` if set).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from needs import unavailable

import rxcontext
from rxcontext import RecordType, ReplyState

pytestmark = pytest.mark.e2e  # a program built on the library: run with -m e2e (setup.cfg)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXAMPLE = EXAMPLES / "05_webchat.py"
STATIC = EXAMPLES / "webchat" / "static"
INSTALL = EXAMPLES / "webchat" / "install_browser.sh"
sys.path.insert(0, str(EXAMPLES))

from webchat.app import parser, serve  # noqa: E402
from webchat.bot import answer  # noqa: E402
from webchat.chat import Chat, UsageTally, reply_cost  # noqa: E402

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 20_000
WORDS = re.compile(r"\S+\s*|\s+")  # how the offline bot cuts its answer: two per event


def _find_browser() -> str | None:
    explicit = os.environ.get("RXCONTEXT_CHROMIUM")
    if explicit:
        return explicit
    # Debian's headless shell first: the full browser costs several times its CPU time here.
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser_path() -> str:
    path = _find_browser()
    if path is None:
        unavailable(
            "no Chromium for the web chat test: install one (sudo sh "
            f"examples/webchat/{INSTALL.name} on Debian) or set RXCONTEXT_CHROMIUM"
        )
    return path


@pytest.fixture(scope="module")
def browser(browser_path: str) -> Iterator[Any]:
    try:
        from playwright import sync_api
    except ImportError:
        unavailable("playwright is in the browser extra: pip install -e '.[browser]'")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=browser_path, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


# -- the server, in a thread, with the bot's pace in the test's hands ----------------------------


class Gate:
    """The offline bot's pace: each event after the first waits for the test to allow it."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._allowed = 0
        self._open = False
        self._changed: asyncio.Condition | None = None
        self._waking: asyncio.Future[None] | None = None

    async def wait(self, n: int) -> None:
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self._open or self._allowed > 0)
            if not self._open:
                self._allowed -= 1

    def _set(self, allowed: int, open_: bool) -> None:
        self._allowed += allowed
        self._open = open_

        async def wake() -> None:
            if self._changed is None:
                self._changed = asyncio.Condition()
            async with self._changed:
                self._changed.notify_all()

        self._waking = asyncio.ensure_future(wake())

    def allow(self, events: int) -> None:
        """Let ``events`` more events out (closing the gate if it was open)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._set, events, False)

    def open(self) -> None:
        """Let everything out from now on."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._set, 0, True)


@dataclass
class Webchat:
    url: str
    db: Path
    gate: Gate
    chat: Chat

    def records(self, context: str = "webchat") -> list[rxcontext.Record]:
        with rxcontext.open(self.db) as store:
            return store.records(store.get_context_by_name(context).id)

    def checkpoints(self, context: str = "webchat") -> list[rxcontext.Checkpoint]:
        with rxcontext.open(self.db) as store:
            ctx = store.get_context_by_name(context)
            return store.checkpoints(ctx.id, include_resolved=True)


@pytest.fixture
def webchat(tmp_path: Path) -> Iterator[Webchat]:
    db = tmp_path / "webchat.db"
    gate = Gate()
    loop = asyncio.new_event_loop()
    gate.loop = loop
    started: queue.Queue[tuple[str, Chat] | BaseException] = queue.Queue()
    args = parser().parse_args(["--port", "0", "--db", str(db)])
    task: asyncio.Task[None] | None = None

    def run() -> None:
        nonlocal task
        asyncio.set_event_loop(loop)
        task = loop.create_task(serve(args, gate, lambda url, chat: started.put((url, chat))))
        try:
            loop.run_until_complete(task)
        except BaseException as exc:  # handed to the test thread
            started.put(exc)
        finally:
            # As asyncio.run does: what serve() left (a page's connection handler, the
            # gate's wake-ups) is cancelled and awaited, not left pending at close, where it
            # would surface later as an unraisable warning in some other test.
            left = asyncio.all_tasks(loop)
            for pending in left:
                pending.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    first = started.get(timeout=30)
    if isinstance(first, BaseException):
        raise first
    url, chat = first
    yield Webchat(url, db, gate, chat)
    gate.open()
    loop.call_soon_threadsafe(lambda: task.cancel() if task else None)
    thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = new_page(browser)
    yield page
    page.close()


def open_chat(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-loaded]")


def reload(page: Any) -> None:
    page.reload()
    page.wait_for_selector("body[data-loaded]")


def new_page(browser: Any, width: int = 1000, height: int = 800) -> Any:
    """A page whose tests may evaluate their own script (the page's CSP forbids ``eval``)."""
    page = browser.new_page(viewport={"width": width, "height": height}, bypass_csp=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    return page


def prefix(text: str, events: int) -> str:
    """What the bot has sent of ``text`` after ``events`` content events."""
    return "".join(WORDS.findall(text)[: 2 * events])


def wait_shown(page: Any, raw: str, which: str = ".msg.assistant, .msg.interrupted") -> None:
    """Wait until the last reply on the page (of ``which``) shows ``raw`` (Markdown), rendered."""
    page.wait_for_function(
        """([raw, which]) => {
          const all = document.querySelectorAll(which);
          const last = all[all.length - 1];
          const want = document.createElement('div');
          want.append(Markdown.render(raw));
          return last !== undefined && last.querySelector('.body').textContent === want.textContent;
        }""",
        arg=[raw, which],
    )


def send(page: Any, prompt: str) -> None:
    """Type ``prompt``, press Enter, and wait for its reply to appear (streaming or not)."""
    replies = page.locator(".msg.assistant")
    before = replies.count()
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    replies.nth(before).wait_for()


def last_reply_html(page: Any) -> str:
    return page.eval_on_selector_all(
        ".msg.assistant .body, .msg.interrupted .body", "els => els[els.length - 1].innerHTML"
    )


# -- the example as a user runs it -------------------------------------------------------------


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=10)


def _post(url: str, data: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_a_server_stopped_mid_reply_keeps_a_checkpoint_and_the_next_stores_the_complete_reply(
    browser: Any, example: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    # The example as a user runs it: a reply arrives, the server is stopped (SIGTERM) halfway.
    proc = example("--port", "0", "--db", "chat.db", "--delay", "0.05")
    assert proc.stdout is not None
    url = proc.stdout.readline().split()[2]
    reply_id = _post(url + "/api/send", {"context": "webchat", "prompt": "hi"})["reply_id"]
    received = ""
    with urllib.request.urlopen(f"{url}/api/watch?reply={reply_id}", timeout=30) as events:
        for line in events:
            if line.startswith(b"data: "):
                received += json.loads(line[6:]).get("text", "")
            if len(received) > 40:
                break
    proc.terminate()
    assert proc.wait(timeout=30) == 0  # a clean stop: exit status 0, nothing on stderr
    assert proc.stderr is not None and proc.stderr.read() == ""
    with rxcontext.open(tmp_path / "chat.db") as store:
        (cp,) = store.checkpoints(store.get_context_by_name("webchat").id)
    assert cp.state is ReplyState.INTERRUPTED and cp.reply_id == reply_id
    assert cp.text.startswith(received) and answer("hi").startswith(cp.text)

    # The next server offers it; resumed, then a new message: complete replies, stored. This
    # page runs under the page's own Content-Security-Policy (no test script evaluated).
    proc = example("--port", "0", "--db", "chat.db", "--delay", "0")
    assert proc.stdout is not None
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    open_chat(page, proc.stdout.readline().split()[2])
    assert page.text_content(".msg.interrupted .note") == (
        "Reply cut off: the server stopped. Resume it, keep it as it is, or discard it."
    )
    page.click(".msg.interrupted button[data-action=resume]")
    page.wait_for_selector(".msg.assistant[data-record]")
    send(page, "hello")
    page.locator(".msg.assistant[data-record]").nth(1).wait_for()
    with rxcontext.open(tmp_path / "chat.db") as store:
        records = store.records(store.get_context_by_name("webchat").id)
    assert [r.content for r in records] == ["hi", answer("hi"), "hello", answer("hello")]
    assert page.locator(".msg.assistant strong").first.text_content() == "streamed"
    assert page.locator(".msg.assistant .tokens-out").last.text_content() == (
        f"{len(answer('hello')) // 4} out"
    )
    page.close()
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    assert proc.stderr is not None and proc.stderr.read() == ""


def test_a_busy_port_is_one_clear_line(example: Callable[..., subprocess.Popen[str]]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = example("--port", str(port), "--db", "chat.db")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert out == ""
    assert err == (
        f"webchat: cannot listen on 127.0.0.1:{port}: the port is in use; stop the other "
        "server or pick another --port (--port 0 picks a free one)\n"
    )


def test_an_unusable_database_is_one_clear_line(
    example: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    proc = example("--port", "0", "--db", "notes.txt")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert err.startswith("webchat: cannot open the database notes.txt: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_unknown_fanout_is_one_clear_line(
    example: Callable[..., subprocess.Popen[str]],
) -> None:
    proc = example("--port", "0", "--db", "chat.db", "--fanout", "memcache://x")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert err == (
        "webchat: --fanout: fanout must be 'memory', a redis:// URL or None, not 'memcache://x'\n"
    )


def _call(url: str, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, Any]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_the_api_refuses_what_it_cannot_do(webchat: Webchat) -> None:
    url = webchat.url
    as_json = {"Content-Type": "application/json"}
    send = json.dumps({"context": "webchat", "prompt": "hi"}).encode()
    # A form post from another site, a rebound DNS name: refused.
    assert _call(url, "POST", "/api/send", send, **{"Content-Type": "text/plain"})[0] == 415
    assert _call(url, "GET", "/api/state", Host="evil.example:80") == (
        403,
        {"error": "unknown Host header"},
    )
    empty = json.dumps({"context": "webchat", "prompt": "  "}).encode()
    assert _call(url, "POST", "/api/send", empty, **as_json) == (
        400,
        {"error": "the message is empty"},
    )
    assert _call(url, "GET", "/api/state?context=nope")[0] == 404
    status, body = _call(url, "POST", "/api/resume", b'{"context": "webchat", "checkpoint": 99}',
                         **as_json)  # fmt: skip
    assert status == 404 and "99" in body["error"]
    assert _call(url, "POST", "/api/send", send, **as_json)[0] == 200
    status, body = _call(url, "POST", "/api/send", send, **as_json)  # one reply at a time
    assert status == 409 and "still streaming" in body["error"]
    assert _call(url, "POST", "/api/stop", b'{"reply_id": "nope"}', **as_json)[0] == 404


def test_malformed_requests_get_a_clear_4xx_not_a_dropped_connection(webchat: Webchat) -> None:
    """JSON nested past the parser's depth, a Content-Length that is no number, a body over
    the limit: each gets its status and a JSON error (never a closed connection, nor a
    traceback in the server's log)."""
    url = webchat.url
    as_json = {"Content-Type": "application/json"}
    deep = b"[" * 200_000 + b"]" * 200_000
    status, body = _call(url, "POST", "/api/send", deep, **as_json)
    assert status == 400 and "JSON" in body["error"]
    parts = urllib.parse.urlsplit(url)
    for length, want in ((b"abc", 400), (b"-5", 400)):
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as raw:
            raw.sendall(
                b"POST /api/send HTTP/1.1\r\nHost: " + parts.netloc.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: " + length
                + b"\r\n\r\n"
            )  # fmt: skip
            assert raw.recv(4096).split(b" ", 2)[1] == str(want).encode()
    big = b'{"context": "webchat", "prompt": "' + b"x" * (2 << 20) + b'"}'
    assert _call(url, "POST", "/api/send", big, **as_json)[0] == 413


def _events(url: str, path: str, **headers: str) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """A watch's server-sent events as they come: (the event's id or None, its data)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        event_id: str | None = None
        for line in response:
            if line.startswith(b"id: "):
                event_id = line[4:].decode().strip()
            elif line.startswith(b"data: "):
                yield event_id, json.loads(line[6:])
                event_id = None
    finally:
        conn.close()


def _position(text: str) -> str:
    return f"{len(text)}-{zlib.crc32(text.encode()):08x}"


def test_a_watch_that_reconnects_goes_on_from_the_last_event_id(webchat: Webchat) -> None:
    url, prompt = webchat.url, "Where does the 🌊 go?"  # not one UTF-16 unit: lengths differ
    whole = answer(prompt)
    body = json.dumps({"context": "webchat", "prompt": prompt}).encode()
    status, sent = _call(url, "POST", "/api/send", body, **{"Content-Type": "application/json"})
    assert status == 200
    watch = f"/api/watch?reply={sent['reply_id']}"
    webchat.gate.allow(6)
    shown, last = "", None
    for event_id, event in _events(url, watch):  # a page that leaves after 6 events' text
        if event["type"] == "text":
            shown += event["text"]
            assert event_id == _position(shown)  # each text event: where the page is now
            last = event_id
            if shown == prefix(whole, 6):
                break
    assert last is not None

    # Back with Last-Event-ID (as EventSource reconnects): the rest only, nothing twice.
    webchat.gate.open()
    rest = shown
    for event_id, event in _events(url, watch, **{"Last-Event-ID": last}):
        assert event["type"] != "rewind"
        if event["type"] == "text":
            rest += event["text"]
            assert event_id == _position(rest)
        if event["type"] == "done":
            break
    assert rest == whole and event["message"]["text"] == whole

    # A page whose text is not the reply's (same length, other text) gets all of it again;
    # ?after= says the same for a client that reconnects by itself.
    wrong = f"{len(shown)}-{zlib.crc32(b'other'):08x}"
    for path, headers in ((watch, {"Last-Event-ID": wrong}), (f"{watch}&after={wrong}", {})):
        got = [(i, e) for i, e in _events(url, path, **headers) if e["type"] != "usage"]
        assert got[0] == ("0-00000000", {"type": "rewind", "length": 0})
        again = ""
        for event_id, event in got[1:-1]:
            again += event["text"]
            assert event_id == _position(again)
        assert again == whole and got[-1][1]["type"] == "done"
    assert _call(url, "GET", watch, **{"Last-Event-ID": "nonsense"})[0] == 400


# -- Markdown, streamed and safe ---------------------------------------------------------------

HOSTILE = (
    "Look: <script>window.__pwned = 1</script> "
    '<img src=x onerror="window.__pwned = 1"> '
    "[click](javascript:window.__pwned=1) [fine](https://example.com/a_b) **bold**"
)


def test_markdown_streams_formatted_and_hostile_text_stays_text(
    page: Any, webchat: Webchat
) -> None:
    open_chat(page, webchat.url)
    send(page, HOSTILE)
    text = answer(HOSTILE)
    # Mid-reply: the quote with the hostile text and the start of the list are in.
    events = next(n for n in range(1, 200) if "the *offline bot*" in prefix(text, n))
    webchat.gate.allow(events)
    wait_shown(page, prefix(text, events))
    html = last_reply_html(page)
    assert "<strong>streamed</strong>" in html and "<ol><li>" in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    webchat.gate.open()
    page.wait_for_selector(".msg.assistant[data-record]")

    def check() -> None:
        body = page.locator(".msg.assistant .body")
        assert "<script>window.__pwned = 1</script>" in body.text_content()
        assert '<img src=x onerror="window.__pwned = 1">' in body.text_content()
        assert body.locator("script, img, iframe, object, embed, svg").count() == 0
        hrefs = body.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
        assert hrefs == ["https://example.com/a_b", "https://rxpy.readthedocs.io/"]
        assert body.locator("a", has_text="click").count() == 0  # shown as its label
        assert body.locator("blockquote strong").text_content() == "bold"
        assert body.locator("pre code.language-python").count() == 1
        assert body.locator("ol > li").count() == 3
        assert page.evaluate("window.__pwned") is None
        assert page.text_content(".msg.user .body") == HOSTILE  # the prompt, as typed

    check()
    reload(page)  # the stored text, rendered again
    check()
    (record,) = [r for r in webchat.records() if r.type is RecordType.MODEL_RESP]
    assert record.content == text


@pytest.fixture(scope="module")
def renderer(browser: Any) -> Iterator[Any]:
    page = browser.new_page()
    page.set_content("<!doctype html><body></body>")  # no CSP here: the test's own script runs
    page.add_script_tag(path=str(STATIC / "markdown.js"))
    page.evaluate(
        """() => { window.html = (md) => {
             const div = document.createElement('div');
             div.append(Markdown.render(md));
             return div.innerHTML;
           }; }"""
    )
    yield page
    page.close()


A = '<a href="{}" target="_blank" rel="noopener noreferrer nofollow">{}</a>'


TABLE = (
    '<div class="table"><table><thead><tr><th>a</th><th class="align-right">b</th></tr>'
    '</thead><tbody><tr><td>1</td><td class="align-right"><strong>2</strong></td></tr>'
    "</tbody></table></div>"
)
RENDERED = [
    ("**b** *i* _j_ `c` ~~d~~",
     "<p><strong>b</strong> <em>i</em> <em>j</em> <code>c</code> <del>d</del></p>"),
    ("***both*** and *a **nested** one*",
     "<p><em><strong>both</strong></em> and <em>a <strong>nested</strong> one</em></p>"),
    ("snake_case_name, 2*3*4 and 5 * 6 * 7",
     "<p>snake_case_name, 2<em>3</em>4 and 5 * 6 * 7</p>"),
    ("unclosed **bold and `code", "<p>unclosed **bold and `code</p>"),
    ("a \\*b\\* \\<c>", "<p>a *b* &lt;c&gt;</p>"),
    ("line one\nline two", "<p>line one<br>line two</p>"),
    ("# Title\n\npara\n## Sub ##", "<h1>Title</h1><p>para</p><h2>Sub</h2>"),
    ("- a\n- b\n  - c\n- d", "<ul><li>a</li><li>b<ul><li>c</li></ul></li><li>d</li></ul>"),
    ("3. x\n4. y", '<ol start="3"><li>x</li><li>y</li></ol>'),
    ("- a\n\n- b", "<ul><li><p>a</p></li><li><p>b</p></li></ul>"),
    ("it was\n2024. a good year", "<p>it was<br>2024. a good year</p>"),
    ("> q\n> > deeper",
     "<blockquote><p>q</p><blockquote><p>deeper</p></blockquote></blockquote>"),
    ("---", "<hr>"),
    ("```js\nlet a = '<b>';\n```\nafter",
     '<pre><code class="language-js">let a = \'&lt;b&gt;\';</code></pre><p>after</p>'),
    ("```\nstill streaming **not bold**",
     "<pre><code>still streaming **not bold**</code></pre>"),
    ("| a | b |\n|---|--:|\n| 1 | **2** |", TABLE),
    ("<b>x</b> &amp; <script>alert(1)</script>",
     "<p>&lt;b&gt;x&lt;/b&gt; &amp;amp; &lt;script&gt;alert(1)&lt;/script&gt;</p>"),
    ("[ok](https://a.example/x?y=1&z=2)",
     "<p>" + A.format("https://a.example/x?y=1&amp;z=2", "ok") + "</p>"),
    ("[mail](mailto:a@b.example)", "<p>" + A.format("mailto:a@b.example", "mail") + "</p>"),
    ("see https://a.example/x. Or <https://b.example>",
     "<p>see " + A.format("https://a.example/x", "https://a.example/x") + ". Or "
     + A.format("https://b.example", "https://b.example") + "</p>"),
    ("![cat](https://a.example/cat.png)",
     "<p>" + A.format("https://a.example/cat.png", "image: cat") + "</p>"),
    ("[x](javascript:alert(1))", "<p>x)</p>"),
    ("[x](JaVaScRiPt:alert`1`)", "<p>x</p>"),
    ("[x](java\tscript:alert`1`)", "<p>x</p>"),
    ("[x](data:text/html,hi)", "<p>x</p>"),
    ("[x](//evil.example)", "<p>x</p>"),
    ("[x](/api/state)", "<p>x</p>"),
    ("[x](https://a.example/\u0000)", "<p>x</p>"),
    ("<javascript:alert(1)>", "<p>&lt;javascript:alert(1)&gt;</p>"),
    ("[**b** `c`](https://a.example)",
     "<p>" + A.format("https://a.example", "<strong>b</strong> <code>c</code>") + "</p>"),
]  # fmt: skip


@pytest.mark.parametrize(("markdown", "html"), RENDERED)
def test_the_markdown_renderer(renderer: Any, markdown: str, html: str) -> None:
    assert renderer.evaluate("md => html(md)", markdown) == html


PIECES = [
    "*", "**", "_", "__", "~~", "`", "```", "\n", "\n\n", " ", "#", "> ", "- ", "1. ", "|",
    "---", "[", "]", "(", ")", "<", ">", "\\", "!", "a", "b c", "https://x.example/a", "\t",
    "javascript:alert(1)", "<script>alert(1)</script>", '<img src=x onerror="alert(1)">',
    "[x](javascript:alert(1))", "[y](https://ok.example)", "<a href='javascript:1'>", "&lt;",
    "\u0000", "\u2028", "é", "👍",
]  # fmt: skip
ALLOWED_TAGS = {
    "P", "BR", "STRONG", "EM", "DEL", "CODE", "PRE", "A", "UL", "OL", "LI", "BLOCKQUOTE",
    "H1", "H2", "H3", "H4", "H5", "H6", "HR", "DIV", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "A": {"href", "target", "rel"},
    "OL": {"start"},
    "CODE": {"class"},
    "DIV": {"class"},
    "TH": {"class"},
    "TD": {"class"},
}


@settings(max_examples=10)
@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=40).map("".join), min_size=20))
def test_rendered_markdown_holds_only_safe_elements(renderer: Any, documents: list[str]) -> None:
    # Twenty documents or more per round trip to the browser.
    rendered = renderer.evaluate(
        """docs => docs.map(md => {
          const div = document.createElement('div');
          div.append(Markdown.render(md));
          return [...div.querySelectorAll('*')].map(e =>
            [e.tagName, [...e.attributes].map(a => [a.name, a.value])]);
        })""",
        documents,
    )
    for markdown, elements in zip(documents, rendered, strict=True):
        for tag, attributes in elements:
            assert tag in ALLOWED_TAGS, (tag, markdown)
            for name, value in attributes:
                assert name in ALLOWED_ATTRIBUTES.get(tag, set()), (tag, name, markdown)
                if name == "href":
                    assert re.match(r"(https?://|mailto:)[^\x00-\x20]*$", value, re.I), value


def test_the_page_never_parses_html_from_strings() -> None:
    for name in ("app.js", "markdown.js"):
        source = (STATIC / name).read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, (name, sink)


# -- Stop, then Resume / Keep / Discard --------------------------------------------------------


def stop_mid_reply(page: Any, webchat: Webchat, prompt: str, events: int) -> str:
    """Send ``prompt``, let ``events`` events of the reply out, press Stop; returns the text
    that was on the page when Stop was pressed (raw Markdown)."""
    send(page, prompt)
    shown = prefix(answer(prompt), events)
    webchat.gate.allow(events)
    wait_shown(page, shown)
    page.click("#stop")
    page.wait_for_selector(".msg.interrupted")
    return shown


def test_stop_keeps_exactly_what_was_shown_and_resume_finishes_it_in_place(
    page: Any, webchat: Webchat
) -> None:
    open_chat(page, webchat.url)
    shown = stop_mid_reply(page, webchat, "Is the river calm today?", 12)
    (cp,) = webchat.checkpoints()
    assert cp.state is ReplyState.INTERRUPTED and cp.text == shown
    wait_shown(page, shown)  # the box shows the same text
    assert page.get_attribute(".msg.interrupted", "data-checkpoint") == str(cp.id)
    assert page.locator(".msg.interrupted .actions button").all_text_contents() == [
        "Resume",
        "Keep",
        "Discard",
    ]
    assert "Reply stopped." in page.text_content(".msg.interrupted .note")
    assert page.is_visible("#send") and page.is_hidden("#stop")
    assert [r.type for r in webchat.records()] == [RecordType.PROMPT]

    # The conversation moves on; the interrupted reply stays in its place.
    webchat.gate.open()
    send(page, "And tomorrow?")
    page.wait_for_selector(".msg.assistant[data-record]")
    webchat.gate.allow(0)  # close the gate again

    page.click(".msg.interrupted button[data-action=resume]")
    page.wait_for_selector(".msg.assistant.streaming")
    wait_shown(page, shown, ".msg.streaming")  # the partial text first, then the rest
    webchat.gate.open()
    page.wait_for_function("document.querySelectorAll('.msg.assistant[data-record]').length == 2")
    whole = answer("Is the river calm today?")
    bodies = page.locator(".msg .body").all_text_contents()
    assert len(bodies) == 4 and "Is the river calm today?" in bodies[1]  # in its place
    records = webchat.records()
    assert [(r.type, r.content) for r in records] == [
        (RecordType.PROMPT, "Is the river calm today?"),
        (RecordType.MODEL_RESP, whole),
        (RecordType.PROMPT, "And tomorrow?"),
        (RecordType.MODEL_RESP, answer("And tomorrow?")),
    ]
    assert webchat.checkpoints()[0].state is ReplyState.COMPLETED
    reload(page)
    assert page.locator(".msg.interrupted").count() == 0
    assert page.locator(".msg.assistant").count() == 2


def test_keep_stores_the_partial_reply(page: Any, webchat: Webchat) -> None:
    open_chat(page, webchat.url)
    shown = stop_mid_reply(page, webchat, "Tell me about tides", 5)
    page.click(".msg.interrupted button[data-action=keep]")
    page.wait_for_selector(".msg.assistant[data-record] .partial")
    (_, kept) = webchat.records()
    assert kept.type is RecordType.MODEL_RESP and kept.content == shown
    assert kept.metadata.get("partial") is True
    reload(page)
    assert page.locator(".msg.interrupted").count() == 0
    assert page.text_content(".msg.assistant .partial") == "kept as it was cut"
    wait_shown(page, shown)


def test_discard_removes_the_box_for_good(page: Any, webchat: Webchat) -> None:
    open_chat(page, webchat.url)
    stop_mid_reply(page, webchat, "Tell me about waves", 4)
    reload(page)  # the box comes back until something is done with it
    page.click(".msg.interrupted button[data-action=discard]")
    page.wait_for_selector(".msg.interrupted", state="detached")
    (cp,) = webchat.checkpoints()
    assert cp.state is ReplyState.DISCARDED
    reload(page)
    assert page.locator(".msg.interrupted").count() == 0
    assert page.locator(".msg").count() == 1  # the prompt alone
    assert page.text_content("#status") == "ready"


# -- a reload is not a stop --------------------------------------------------------------------


def test_a_reload_mid_reply_shows_it_still_streaming_and_it_completes(
    page: Any, webchat: Webchat
) -> None:
    open_chat(page, webchat.url)
    send(page, "Where do rivers go?")
    text = answer("Where do rivers go?")
    webchat.gate.allow(6)
    wait_shown(page, prefix(text, 6))
    reload(page)
    page.wait_for_selector(".msg.assistant.streaming")
    wait_shown(page, prefix(text, 6))  # all of it so far
    assert page.is_visible("#stop")
    webchat.gate.allow(4)
    wait_shown(page, prefix(text, 10))  # then live
    assert webchat.checkpoints()[0].state is ReplyState.STREAMING  # never cut
    webchat.gate.open()
    page.wait_for_selector(".msg.assistant[data-record]")
    wait_shown(page, text)
    assert [r.content for r in webchat.records()] == ["Where do rivers go?", text]
    assert webchat.checkpoints() == []  # completed without a cut: no row left


# -- auto-scroll -------------------------------------------------------------------------------

AT_BOTTOM = "(log => log.scrollHeight - log.scrollTop - log.clientHeight < 2)"
SETTLED = """log => new Promise(done => {
  let last = -1, same = 0;
  const tick = () => {
    same = log.scrollTop === last ? same + 1 : 0;
    last = log.scrollTop;
    if (same >= 5) done(last); else requestAnimationFrame(tick);
  };
  tick();
})"""


def test_autoscroll_follows_until_the_reader_scrolls_up(browser: Any, webchat: Webchat) -> None:
    page = new_page(browser, 390, 520)
    open_chat(page, webchat.url)
    prompt = "Scroll with me"
    text = answer(prompt)
    send(page, prompt)
    events = 0
    overflowing = "log => log.scrollHeight > log.clientHeight + 200"
    while not page.eval_on_selector("#log", overflowing):  # until the reply is below the fold
        events += 4
        webchat.gate.allow(4)
        wait_shown(page, prefix(text, events))
        assert page.eval_on_selector("#log", AT_BOTTOM), events  # following
    assert page.is_hidden("#jump")

    page.mouse.move(195, 250)
    page.mouse.wheel(0, -150)
    page.wait_for_selector("#jump", state="visible")
    top = page.eval_on_selector("#log", SETTLED)  # where the wheel's scrolling came to rest
    assert not page.eval_on_selector("#log", AT_BOTTOM)
    events += 6
    webchat.gate.allow(6)
    wait_shown(page, prefix(text, events))
    assert page.eval_on_selector("#log", "log => log.scrollTop") == top  # left alone
    assert not page.eval_on_selector("#log", AT_BOTTOM)

    page.click("#jump")  # back to the end: following again
    page.wait_for_selector("#jump", state="hidden")
    events += 6
    webchat.gate.allow(6)
    wait_shown(page, prefix(text, events))
    # Following again: the view comes to rest at the end (under load, what is left of the
    # wheel's smooth scrolling may land a frame after the click).
    page.wait_for_function(f"() => {AT_BOTTOM}(document.getElementById('log'))")
    webchat.gate.open()
    page.wait_for_selector(".msg.assistant[data-record]")
    page.wait_for_function(f"() => {AT_BOTTOM}(document.getElementById('log'))")
    page.close()


# -- conversations and usage -------------------------------------------------------------------


def test_the_context_picker_switches_conversations(page: Any, webchat: Webchat) -> None:
    webchat.gate.open()
    open_chat(page, webchat.url)
    send(page, "first conversation")
    page.wait_for_selector(".msg.assistant[data-record]")

    page.click("#new-context")
    page.fill("#new-context-name", "second")
    page.press("#new-context-name", "Enter")
    page.wait_for_function("document.body.dataset.loaded === 'second'")
    assert page.locator(".msg").count() == 0
    assert page.is_visible("#empty")
    send(page, "second conversation")
    page.wait_for_selector(".msg.assistant[data-record]")
    assert "context=second" in page.url

    page.select_option("#context", "webchat")
    page.wait_for_function("document.body.dataset.loaded === 'webchat'")
    assert page.locator(".msg.user").all_text_contents() == ["first conversation"]
    page.reload()  # the URL names the conversation
    page.wait_for_function("document.body.dataset.loaded === 'webchat'")
    assert page.eval_on_selector_all("#context option", "os => os.map(o => o.value)") == [
        "second",
        "webchat",
    ]
    page.select_option("#context", "second")
    page.wait_for_function("document.body.dataset.loaded === 'second'")
    assert page.locator(".msg.user").all_text_contents() == ["second conversation"]
    assert webchat.records("second")[0].content == "second conversation"
    assert webchat.records("webchat")[0].content == "first conversation"


def test_each_reply_shows_its_usage(page: Any, webchat: Webchat) -> None:
    webchat.gate.open()
    open_chat(page, webchat.url)
    for prompt in ("one", "a second, longer question"):
        send(page, prompt)
        page.wait_for_function(
            "n => document.querySelectorAll('.msg.assistant[data-record]').length === n",
            arg=1 if prompt == "one" else 2,
        )
    metas = "ms => ms.map(m => [...m.children].map(part => part.textContent).join(' · '))"
    first_in = len("one") // 4 or 1
    second_in = (len("one") + len(answer("one")) + len("a second, longer question")) // 4
    expected = [
        f"openai:offline-bot · {first_in} in · {len(answer('one')) // 4} out · cost unknown",
        f"openai:offline-bot · {second_in} in · "
        f"{len(answer('a second, longer question')) // 4} out · cost unknown",
    ]
    assert page.eval_on_selector_all(".msg.assistant .meta", metas) == expected
    assert page.get_attribute(".msg.assistant .cost", "title") == (
        "genai-prices has no price for openai:offline-bot"
    )
    reload(page)
    assert page.eval_on_selector_all(".msg.assistant .meta", metas) == expected


def test_a_reply_of_a_priced_model_shows_what_genai_prices_says() -> None:
    prices = pytest.importorskip("genai_prices", reason="needs rxcontext[prices]")
    tally = UsageTally(model="openai:gpt-4o-mini")
    tally.add(rxcontext.Chunk(rxcontext.ChunkKind.USAGE, usage=rxcontext.Usage.of(1000, 200)))
    tally.add(rxcontext.Chunk(rxcontext.ChunkKind.DONE))
    tally.add(rxcontext.Chunk(rxcontext.ChunkKind.USAGE, usage=rxcontext.Usage.of(1500, 100)))
    shown = tally.to_dict()
    assert shown is not None and shown["input_tokens"] == 2500  # both rounds of a tool loop
    expected = prices.calc_price(
        prices.Usage(input_tokens=2500, output_tokens=300), "gpt-4o-mini", provider_id="openai"
    ).total_price
    assert shown["cost"] == str(expected) and shown["cost_note"] is None
    assert reply_cost(rxcontext.Usage.of(10, 1), "openai:offline-bot") == (
        None,
        "genai-prices has no price for openai:offline-bot",
    )


# -- layout at desktop and phone widths --------------------------------------------------------

WIDE = (
    "Here is a table and a long line:\n\n"
    "| column | another column | a third, wider column |\n|---|---|---|\n"
    "| 1 | 2 | 3 |\n\n"
    "```\n" + "x = 'a very long line of code that must scroll inside its block' " * 3 + "\n```\n\n"
    "and an unbroken https://example.com/" + "a" * 120
)

LAYOUT = """() => {
  const vw = innerWidth, vh = innerHeight;
  const inside = (el) => { const r = el.getBoundingClientRect();
    return r.left >= -0.5 && r.right <= vw + 0.5; };
  const visible = (el) => { const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.top >= 0 && r.bottom <= vh + 0.5 && inside(el); };
  return {
    overflow: document.documentElement.scrollWidth - vw,
    bodyOverflow: document.body.scrollWidth - vw,
    bubbles: [...document.querySelectorAll('.msg')].filter(m => !inside(m)).length,
    blocks: [...document.querySelectorAll('.msg pre, .msg .table')].filter(b => {
      const bubble = b.closest('.msg').getBoundingClientRect();
      return b.getBoundingClientRect().right > bubble.right + 0.5; }).length,
    prompt: visible(document.getElementById('prompt')),
    send: visible(document.getElementById('send')),
    picker: visible(document.getElementById('context')),
    actions: [...document.querySelectorAll('.msg .actions button')].every(inside),
    count: document.querySelectorAll('.msg').length,
  };
}"""


def screenshots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("WEBCHAT_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_page_fits_desktop_and_phone_widths(
    browser: Any, webchat: Webchat, tmp_path: Path
) -> None:
    page = new_page(browser, 1280, 800)
    open_chat(page, webchat.url)
    webchat.gate.open()
    send(page, WIDE)
    page.wait_for_selector(".msg.assistant[data-record]")
    webchat.gate.allow(0)
    stop_mid_reply(page, webchat, "And a short one", 9)

    folder = screenshots_dir(tmp_path)
    reload(page)  # drawn from the server's state
    for name, width, height in (("desktop", 1280, 800), ("phone", 390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.eval_on_selector("#log", "log => { log.scrollTop = log.scrollHeight; }")
        layout = page.evaluate(LAYOUT)
        assert layout == {
            "overflow": 0,
            "bodyOverflow": 0,
            "bubbles": 0,
            "blocks": 0,
            "prompt": True,
            "send": True,
            "picker": True,
            "actions": True,
            "count": 4,
        }, name
        page.screenshot(path=str(folder / f"webchat-{name}.png"))
        if os.environ.get("WEBCHAT_SCREENSHOTS"):  # the top of the conversation too, to look at
            page.eval_on_selector("#log", "log => { log.scrollTop = 0; }")
            page.screenshot(path=str(folder / f"webchat-{name}-top.png"))

    # Streaming on a phone: Stop takes Send's place, in view.
    page.click(".msg.interrupted button[data-action=resume]")
    webchat.gate.allow(3)
    wait_shown(page, prefix(answer("And a short one"), 12), ".msg.streaming")
    layout = page.evaluate(LAYOUT)
    assert layout["overflow"] == 0 and layout["bubbles"] == 0 and layout["prompt"], layout
    assert page.is_hidden("#send")
    stop = page.locator("#stop").bounding_box()
    assert stop is not None
    assert stop["x"] + stop["width"] <= 390 and stop["y"] + stop["height"] <= 844
    page.screenshot(path=str(folder / "webchat-phone-streaming.png"))
    webchat.gate.open()
    page.wait_for_selector(".msg.assistant.streaming", state="detached")
    page.close()
