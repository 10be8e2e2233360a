"""``rxcontext demo``: the offline main job, a reply streamed live and stored in SQLite.

The first run streams a reply through the real OpenAI SDK (over a replay transport, so no
key and no network), renders it as it arrives and shows what was stored. Later runs show a
tool call, a stream cut halfway (checkpointed) and its resume. A reply cut by Ctrl-C is kept
as a checkpoint, as in ``chat``, and the next run finishes it first.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from ..errors import StreamInterrupted
from ..providers.replay import ScriptedReply, replay_model
from ..records import Checkpoint, RecordType
from ..store import open_any, without_password
from ..tools import Tool
from ..window import ContextWindow
from .common import add_common, db_path, db_url
from .render import Renderer
from .session import Session

__all__ = ["register", "run", "run_demo"]

CONTEXT = "demo"
CUT_AFTER = 9  # events of the second run's answer delivered before the cut
FIRST_PROMPT = "What happens when rxcontext streams a reply?"
SECOND_PROMPT = "Should I go for a walk in Lisbon today?"
_WORDS = re.compile(r"\S+\s*|\s+")


def register(sub: Any) -> None:
    """Add ``demo`` to the subcommands."""
    demo = sub.add_parser("demo", help="offline demo: a reply streamed live and stored (no key)")
    add_common(demo)
    demo.add_argument("--fast", action="store_true", help="no pauses between events")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``rxcontext demo [--fast]``."""
    delay = 0.0 if args.fast else 0.03
    db = db_url(args.db) or db_path(args.db, create=True)
    return run_demo(db, delay=delay, out=sys.stdout)


def _text(name: str) -> str:
    return resources.files("rxcontext").joinpath("data", name).read_text(encoding="utf-8")


def _weather(args: dict[str, object]) -> str:
    return f"sunny, 21 °C in {args.get('city', 'that city')}"


def run_demo(db: Path | str, *, delay: float, out: TextIO, live: bool | None = None) -> int:
    """Run the demo against the database at ``db``; returns an exit status.

    A reply cut by Ctrl-C keeps its checkpoint as in ``chat``; the next run resumes it (with
    the demo's own replayed model) before going on.
    """
    render = Renderer(out, live=live)
    store = open_any(db)
    where = shlex.quote(without_password(str(db)))
    try:
        cw = ContextWindow(store, context=CONTEXT)
        again = f"rxcontext demo --db {where} finishes it"
        session = Session(cw, render, None, resume_command=lambda _: again)
        first = not any(r.type is RecordType.MODEL_RESP for r in cw.records())
        cut = cw.checkpoints()
        if cut:
            status = _resume_run(session, cut[-1], first, delay)
        elif first:
            status = _first_run(session, delay)
        else:
            status = _second_run(session, delay)
        if status:
            return status
        render.records(cw.records(), title=f"context {CONTEXT!r} in {store.path}")
        if first:
            render.line("Run the demo again: a tool call, a cut stream and its resume.")
        else:
            render.line(
                f"Look around: rxcontext contexts show {CONTEXT} --db {where}   ·   "
                f"rxcontext checkpoints --all --db {where}"
            )
    finally:
        store.close()
    return 0


def _first_run(session: Session, delay: float) -> int:
    cw, render = session.cw, session.render
    cw.model, _ = replay_model([ScriptedReply(_text("demo_reply.md"), usage=(42, 0))], delay=delay)
    if not any(r.type is RecordType.SYSTEM_PROMPT for r in cw.live_records()):
        cw.set_system_prompt("You explain rxcontext briefly and precisely.")
    render.heading("streaming a reply (OpenAI SDK over a replay transport, no API key)")
    return session.reply(FIRST_PROMPT, done="stored in one transaction")


def _second_answer() -> str:
    return _text("demo_second.md").strip()


def _add_weather(cw: ContextWindow) -> None:
    cw.add_tool(Tool("weather", "Current weather for a city").string("city", "City name"), _weather)


def _second_run(session: Session, delay: float) -> int:
    cw, render = session.cw, session.render
    answer = _second_answer()
    words = _WORDS.findall(answer)
    # Events: one role event, then two words per event; the cut keeps CUT_AFTER events.
    seen = "".join(words[: 2 * (CUT_AFTER - 1)])
    rest = answer[len(seen) :]
    model, _ = replay_model(
        [
            ScriptedReply(
                tool_calls=[("call_demo_weather", "weather", {"city": "Lisbon"})], usage=(60, 12)
            ),
            ScriptedReply(answer, cut_after=CUT_AFTER, usage=(90, 0)),
            ScriptedReply(rest, usage=(120, 0)),
        ],
        delay=delay,
    )
    cw.model = model
    _add_weather(cw)
    render.heading("a tool call, then a stream cut halfway")
    try:
        status = session.reply(SECOND_PROMPT)
    except StreamInterrupted as exc:
        cp = exc.checkpoint
        render.note(f"stream cut ({cp.error})")
        render.note(f"checkpoint {cp.id} saved: exactly the {len(cp.text)} characters shown above")
        render.heading(f"resuming checkpoint {cp.id} (the same as `rxcontext resume {cp.id}`)")
        return session.resume(cp, done=f"checkpoint {cp.id} resolved; reply stored as one record")
    if status == 0:  # pragma: no cover - the replay always cuts
        render.line("the stream was not cut")
    return status  # 130: cancelled with Ctrl-C, its checkpoint kept


def _resume_run(session: Session, cp: Checkpoint, first: bool, delay: float) -> int:
    """Finish a reply an earlier run left cut (by Ctrl-C): the rest of its scripted text."""
    cw, render = session.cw, session.render
    answer = _text("demo_reply.md") if first else _second_answer()
    rest = answer[len(cp.text) :] if answer.startswith(cp.text) else ""
    cw.model, _ = replay_model([ScriptedReply(rest, usage=(120, 0))], delay=delay)
    if not first:
        _add_weather(cw)
    render.heading(f"resuming checkpoint {cp.id}, cut by an earlier run")
    return session.resume(cp, done=f"checkpoint {cp.id} resolved; reply stored as one record")
