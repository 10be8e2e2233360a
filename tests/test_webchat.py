"""examples/05_webchat.py end to end in headless Chromium (driven by Playwright).

A person sends a message, reloads the page while the reply is streaming, sees the stored
checkpoint, and resumes it; the database is checked at each step. The browser is a system
Chromium (``$RXCONTEXT_CHROMIUM``, else ``chromium`` on the PATH; ``.ci/run`` installs
Debian's with ``examples/webchat/install_browser.sh``) driven by Playwright (the ``browser``
extra); Playwright's own browser download is never used, and the tests never install
anything. Without a browser or Playwright they skip, saying why; under CI they fail.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from needs import unavailable

import rxcontext
from rxcontext import RecordType

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "05_webchat.py"
INSTALL = ROOT / "examples" / "webchat" / "install_browser.sh"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 20_000


def _find_browser() -> str | None:
    explicit = os.environ.get("RXCONTEXT_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome"):
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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[[float], tuple[str, Path]]]:
    """Starts the example server on a free port; ``delay`` paces the offline bot's events."""
    procs: list[subprocess.Popen[str]] = []

    def start(delay: float) -> tuple[str, Path]:
        db = tmp_path / "webchat.db"
        args = ["--port", "0", "--db", str(db), "--delay", str(delay)]
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(x) for x in proc.stdout or ()], daemon=True
        ).start()
        first = lines.get(timeout=30)
        assert first.startswith("serving on http://"), first
        return first.split()[2], db

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _db(db: Path) -> tuple[list[rxcontext.Record], list[rxcontext.Checkpoint]]:
    with rxcontext.open(db) as store:
        ctx = store.get_context_by_name("webchat")
        return store.records(ctx.id), store.checkpoints(ctx.id, include_resolved=True)


def test_reload_mid_reply_shows_checkpoint_and_resumes(
    browser: Any, server: Callable[[float], tuple[str, Path]]
) -> None:
    url, db = server(0.1)  # about five seconds per reply: time to reload halfway
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_function("document.getElementById('status').textContent === 'ready'")

    page.fill("#prompt", "Is the river calm today?")
    page.click("#send")
    # Wait until part of the reply is on the page, then reload while it is still streaming.
    page.wait_for_function(
        "document.querySelector('.assistant.streaming')?.textContent.includes('server-sent')"
    )
    partial = page.text_content(".assistant.streaming") or ""
    page.reload()

    page.wait_for_selector("#checkpoint:not([hidden])")
    shown = page.text_content("#cp-text") or ""
    cp_id = int(page.text_content("#cp-id") or "0")
    records, checkpoints = _db(db)
    (cp,) = checkpoints
    assert cp.id == cp_id and not cp.resolved
    assert shown == cp.text  # the page shows what the database holds
    assert shown.startswith(partial) and "server-sent" in shown
    assert [r.type for r in records] == [RecordType.PROMPT]  # no reply stored yet
    assert page.locator(".msg.user").all_text_contents() == ["Is the river calm today?"]

    page.click("#resume")
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('stored as record')"
    )
    answer = page.locator(".msg.assistant").last.text_content() or ""
    assert answer.startswith(shown) and answer.endswith("as if it had never been cut.")
    records, checkpoints = _db(db)
    assert [r.type for r in records] == [RecordType.PROMPT, RecordType.MODEL_RESP]
    assert records[-1].content == answer
    assert checkpoints[0].resolved

    # A fresh load shows the stored conversation and no open checkpoint.
    page.reload()
    page.wait_for_function("document.getElementById('status').textContent === 'ready'")
    assert page.is_hidden("#checkpoint")
    assert page.locator(".msg.assistant").all_text_contents() == [answer]
    page.close()


def test_a_complete_reply_is_stored(
    browser: Any, server: Callable[[float], tuple[str, Path]]
) -> None:
    url, db = server(0.0)
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_function("document.getElementById('status').textContent === 'ready'")
    page.fill("#prompt", "hello")
    page.press("#prompt", "Enter")
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('stored as record')"
    )
    text = page.locator(".msg.assistant").last.text_content()
    records, checkpoints = _db(db)
    assert [r.content for r in records] == ["hello", text]
    assert checkpoints == []
    page.close()
