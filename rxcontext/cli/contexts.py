"""``rxcontext contexts [list|show|export|import|delete|clone|fork]``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from .. import cost
from ..attachments import Attachment
from ..errors import InvalidExport
from ..interop import fork_context, import_context
from ..records import Context, ContextStats
from ..store import Store
from .common import CLIError, add_common, confirm, open_store, renderer
from .render import Renderer
from .text import one_line, to_json

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add ``contexts`` to the subcommands."""
    contexts = sub.add_parser(
        "contexts",
        help="list, show, export, import, delete, clone or fork contexts",
        description="contexts [list] | show NAME | export NAME [--out FILE] | "
        "import FILE [--name NAME] | delete NAME [--yes] | clone SRC DEST | "
        "fork SRC DEST --at RECORD_ID",
    )
    contexts.add_argument(
        "action",
        nargs="?",
        choices=("list", "show", "export", "import", "delete", "clone", "fork"),
    )
    contexts.add_argument("name", nargs="?", metavar="NAME")
    contexts.add_argument("dest", nargs="?", metavar="DEST")
    contexts.add_argument("--out", "-o", metavar="FILE", help="export: write JSON to FILE")
    contexts.add_argument(
        "--name", dest="new_name", metavar="NAME", help="import: the new context's name"
    )
    contexts.add_argument(
        "--at", type=int, metavar="RECORD_ID", help="fork: the last record to keep"
    )
    contexts.add_argument("--yes", "-y", action="store_true", help="delete: do not ask")
    contexts.add_argument("--json", action="store_true", help="list: JSON output")
    add_common(contexts)
    contexts.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``rxcontext contexts [list|show|export|import|delete|clone|fork]``."""
    action = args.action or "list"
    if args.json and action != "list":
        raise CLIError(
            f"--json is for contexts list, not contexts {action}",
            "rxcontext contexts --json (a context's records as JSON: contexts export NAME)",
            2,
        )
    if action != "list":
        _need(args.name, f"contexts {action} needs a context name")
    if action in ("clone", "fork"):
        _need(args.dest, f"contexts {action} needs SRC and DEST names")
    if action == "fork" and args.at is None:
        raise CLIError("contexts fork needs --at RECORD_ID", "see rxcontext contexts show SRC", 2)
    data = _read_export(args.name) if action == "import" else None
    store = open_store(args.db)
    with contextlib.closing(store):
        render = renderer()
        if action == "list":
            return _list(store, render, as_json=args.json)
        if data is not None:
            return _import(store, render, data, args.new_name)
        ctx = store.get_context_by_name(args.name)
        if action == "fork":
            try:
                forked = fork_context(store, ctx.id, args.dest, at=args.at)
            except ValueError as exc:
                taken = any(c.name == args.dest for c in store.list_contexts())
                hint = (
                    "name the fork anew; the contexts are listed by: rxcontext contexts"
                    if taken
                    else "see the record ids with: rxcontext contexts show SRC"
                )
                raise CLIError(str(exc), hint) from exc
            render.line(f"forked {ctx.name!r} at record {args.at} to {forked.name!r}")
            return 0
        if action == "show":
            return _show(store, render, ctx)
        if action == "export":
            return _export(store, ctx, args.out)
        if action == "delete":
            return _delete(store, render, ctx, yes=args.yes)
        try:
            clone = store.clone_context(ctx.id, args.dest)
        except ValueError as exc:
            raise CLIError(str(exc), "choose another DEST name") from exc
        render.line(f"cloned {ctx.name!r} to {clone.name!r}")
        return 0


def _read_export(path: str) -> Any:
    made_by = "give a file made by contexts export"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CLIError(
            f"cannot read {path}: {exc.strerror or exc}", "give an export's path"
        ) from exc
    except UnicodeDecodeError as exc:
        raise CLIError(f"{path} is not UTF-8 text: {exc.reason}", made_by) from exc
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise CLIError(f"{path} is JSON nested too deeply to read", made_by) from exc
    except ValueError as exc:
        raise CLIError(f"{path} is not JSON: {exc}", made_by) from exc


def _import(store: Store, render: Renderer, data: Any, name: str | None) -> int:
    try:
        ctx = import_context(store, data, name=name)
    except InvalidExport as exc:
        raise CLIError(
            str(exc), "give a file made by contexts export (or contextwindow's)"
        ) from exc
    except ValueError as exc:
        raise CLIError(str(exc), "pass --name NAME to import it under another name") from exc
    count = len(store.records(ctx.id))
    render.line(f"imported context {ctx.name!r} ({count} records)")
    return 0


def _need(value: str | None, message: str) -> str:
    if not value or not value.strip():
        raise CLIError(message, "see rxcontext contexts --help", 2)
    return value


def _list(store: Store, render: Renderer, *, as_json: bool) -> int:
    stats = [store.context_stats(c.id) for c in store.list_contexts()]
    # Costs only with genai-prices installed (rxcontext[prices]); without it, no column.
    costs = (
        {s.context_id: cost.context_cost(store.records(s.context_id)) for s in stats}
        if cost.available()
        else None
    )
    if as_json:
        print(to_json([_stats_dict(s, costs.get(s.context_id) if costs else None) for s in stats]))
    else:
        shown = {k: c.describe() for k, c in costs.items()} if costs is not None else None
        render.contexts(stats, shown)
    return 0


def _show(store: Store, render: Renderer, ctx: Context) -> int:
    s = store.context_stats(ctx.id)
    records = store.records(ctx.id)
    costs: dict[int, str] | None = None
    spent = ""
    if cost.available():
        costs = {  # a clone's or fork's copied replies were billed to its source
            r.id: cost.format_usd(cost.reply_cost(r))
            for r in records
            if "usage" in r.metadata and "model" in r.metadata and not r.inherited
        }
        spent = f" · cost {cost.context_cost(records).describe()}"
        if all(shown == "unknown" for shown in costs.values()):
            costs = None  # no reply priced: the line above says so, the table stays roomy
    render.line(
        f"context {ctx.name!r} · {s.records} records ({s.live_records} live, "
        f"{s.live_tokens} live tokens) · provider usage {s.usage.input_tokens} in / "
        f"{s.usage.output_tokens} out{spent}",
        style="bold",
    )
    render.records(records, title=f"records of {ctx.name!r}", costs=costs)
    attached = [(r.id, a) for r in records for a in r.attachments]
    if attached:
        render.line("attachments:")
        for record_id, a in attached:
            render.line(f"  record {record_id}: {describe_attachment(a)}")
    tools = store.context_tools(ctx.id)
    if tools:
        render.line("tools: " + ", ".join(str(t.get("name", "?")) for t in tools))
    cps = store.checkpoints(ctx.id)
    if cps:
        render.checkpoints([(ctx.name, cp) for cp in cps])
    return 0


def describe_attachment(a: Attachment) -> str:
    """``name (media type, size)`` or ``URL (media type)``, on one line, controls made visible."""
    if a.url is not None:
        return f"{one_line(a.url)} ({one_line(a.media_type)}, URL)"
    size = a.size or 0
    shown = f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB"
    if size >= 1024 * 1024:
        shown = f"{size / 1024 / 1024:.1f} MiB"
    return f"{one_line(a.name or '(unnamed)')} ({one_line(a.media_type)}, {shown})"


def _export(store: Store, ctx: Context, out: str | None) -> int:
    text = to_json(store.export_context(ctx.id))
    if not out:
        print(text)
        return 0
    try:
        Path(out).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise CLIError(
            f"cannot write {out}: {exc.strerror or exc}", "give --out a writable file path"
        ) from exc
    print(f"exported context {ctx.name!r} to {out}", file=sys.stderr)
    return 0


def _delete(store: Store, render: Renderer, ctx: Context, *, yes: bool) -> int:
    if not yes:
        if not sys.stdin.isatty():
            raise CLIError(
                f"not deleting context {ctx.name!r} without confirmation",
                "pass --yes to delete from a script",
            )
        count = len(store.records(ctx.id))
        if not confirm(f"Delete context {ctx.name!r} and its {count} records?"):
            render.line("kept")
            return 1
    store.delete_context(ctx.id)
    render.line(f"deleted context {ctx.name!r}")
    return 0


def _stats_dict(s: ContextStats, spent: cost.ContextCost | None) -> dict[str, Any]:
    money = (
        {"cost_usd": str(spent.usd), "cost_complete": spent.complete, "unpriced": spent.unpriced}
        if spent is not None
        else {}
    )
    return {
        "name": s.name,
        "id": s.context_id,
        "records": s.records,
        "live_records": s.live_records,
        "live_tokens": s.live_tokens,
        "replies": s.replies,
        "open_checkpoints": s.open_checkpoints,
        "usage": s.usage.to_dict(),
        "last_activity": s.last_activity.isoformat() if s.last_activity else None,
        **money,
    }
