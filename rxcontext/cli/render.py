"""Terminal rendering for the CLI: live Markdown on a terminal, plain text otherwise.

On a terminal a reply is drawn with rich's ``Live`` as it streams (its last screenful, with a
status line of tokens/s and the context's token usage), then printed once in full. Anywhere
else (a pipe, a file, a ``TERM=dumb`` terminal that cannot redraw) the text deltas are written
as they arrive, with no cursor movement, so output piped to a file or another command is
exactly the reply.

Everything shown comes from data (stored records, model output, names people chose), so the
console never parses rich markup or emoji codes, Markdown links show their address, and
control characters are made visible (:mod:`.text`) before they reach a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from reactivex import Observable
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment
from rich.text import Text

from ..chunks import Chunk, ChunkKind, Usage
from ..records import Checkpoint, ContextStats, Record
from ..tokens import estimate_tokens
from .tables import Column, rich_table
from .text import as_text, one_line, preview, printable

__all__ = ["Renderer", "StreamStats", "Window", "status_text"]

_DATE = "%Y-%m-%d %H:%M"
_PLAIN_DATE = "%Y-%m-%d %H:%M:%S"


@dataclass
class StreamStats:
    """What one rendered stream delivered; updated as it runs."""

    text: str = ""
    chunks: int = 0
    usage: Usage | None = None
    started: float = 0.0
    first_at: float | None = None
    last_at: float | None = None

    @property
    def output_tokens(self) -> int:
        """The provider's output token count once known, else an estimate of the text."""
        if self.usage is not None and self.usage.output_tokens:
            return self.usage.output_tokens
        return estimate_tokens(self.text)

    @property
    def tokens_per_second(self) -> float:
        """Output tokens per second, from the first chunk to the last."""
        if self.first_at is None or self.last_at is None:
            return 0.0
        return self.output_tokens / max(self.last_at - self.first_at, 1e-3)


@dataclass(frozen=True)
class Window:
    """A context's token budget: live tokens before this reply, and the model's window."""

    live_tokens: int
    context_window: int


def status_text(stats: StreamStats, window: Window | None, *, final: bool = False) -> str:
    """The status line: tokens, tokens/s and (with ``window``) the context's token usage."""
    parts = []
    if final and stats.usage is not None:
        parts.append(f"{stats.usage.input_tokens} in / {stats.usage.output_tokens} out tokens")
    else:
        parts.append(f"{stats.output_tokens} tokens")
    parts.append(f"{stats.tokens_per_second:.1f} tok/s")
    if window is not None:
        used = window.live_tokens + estimate_tokens(stats.text)
        size = window.context_window
        percent = 100.0 * used / size if size else 0.0
        parts.append(f"context {used:,}/{size:,} tokens ({percent:.1f}%)")
    return " · ".join(parts)


class _Tail:
    """The last screenful of the Markdown so far, plus the status line (for ``Live``)."""

    def __init__(self, stats: StreamStats, parts: list[str], window: Window | None) -> None:
        self.stats = stats
        self.parts = parts
        self.window = window

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = printable("".join(self.parts))
        height = max(3, (options.height or console.size.height) - 2)
        lines = console.render_lines(_markdown(text), options.update(height=None), pad=False)
        for line in lines[-height:]:
            yield from line
            yield Segment.line()
        yield Text("▍ " + status_text(self.stats, self.window), style="dim")


def _markdown(text: str) -> Markdown:
    # A link shows its address: a reply (or a prompt injected into it) cannot hide a URL
    # behind friendly words.
    return Markdown(text, hyperlinks=False)


RECORD_COLUMNS = (
    Column("id", fixed=True, justify="right"),
    Column("type", fixed=True),
    Column("live", fixed=True),
    Column("tokens", fixed=True, justify="right", drop=1),
    Column("content", min_width=12),
)
RECORD_COST_COLUMNS = (
    *RECORD_COLUMNS[:4],
    Column("cost", fixed=True, justify="right", drop=2),
    RECORD_COLUMNS[4],
)
CHECKPOINT_COLUMNS = (
    Column("id", fixed=True, justify="right"),
    Column("context", min_width=8),
    Column("created", fixed=True, drop=1),
    Column("state", fixed=True),
    Column("chars", fixed=True, justify="right", drop=2),
    Column("error", min_width=24, drop=3),
    Column("text", min_width=12, weight=2),
)
CONTEXT_COLUMNS = (
    Column("name", min_width=16),
    Column("records", fixed=True, justify="right"),
    Column("live tokens", fixed=True, justify="right", drop=2),
    Column("replies", fixed=True, justify="right", drop=3),
    Column("checkpoints", fixed=True, justify="right"),
    Column("last activity", fixed=True, drop=1),
)
CONTEXT_COST_COLUMNS = (
    *CONTEXT_COLUMNS[:4],
    Column("cost", fixed=True, justify="right", drop=2),
    *CONTEXT_COLUMNS[4:],
)


class Renderer:
    """Shows streams, records and checkpoints.

    ``live=None`` means "live redraws only when ``out`` is a terminal that can redraw (not
    ``TERM=dumb``)". ``info`` receives
    notes and status lines in plain mode (default ``out``; the chat command passes stderr
    so that stdout holds only the reply).
    """

    def __init__(
        self, out: TextIO | None = None, *, live: bool | None = None, info: TextIO | None = None
    ) -> None:
        self.out = out or sys.stdout
        self.info = info or self.out
        if live is None:
            # A dumb terminal (TERM=dumb: Emacs' shell, some IDE consoles) cannot redraw:
            # rich's Live would show nothing until the end, so it gets the plain stream.
            live = _isatty(self.out) and not Console(file=self.out).is_dumb_terminal
        self.live = live
        self.console = Console(
            file=self.out,
            force_terminal=self.live,
            highlight=False,
            markup=False,
            emoji=False,
            soft_wrap=not self.live,
        )

    # -- small pieces -----------------------------------------------------------------------

    def heading(self, text: str) -> None:
        """A section title."""
        if self.live:
            self.console.rule(Text(printable(text), style="bold"))
        else:
            print(f"== {printable(text)}", file=self.out, flush=True)

    def line(self, text: str, *, style: str | None = None) -> None:
        """One line of text (styled on a terminal)."""
        if self.live:
            self.console.print(Text(printable(text), style=style or ""))
        else:
            print(printable(text), file=self.out, flush=True)

    def note(self, text: str) -> None:
        """A side note (tool activity, status): cyan on a terminal, else to ``info``."""
        if self.live:
            self.console.print(Text(printable(text), style="cyan"))
        else:
            print(printable(text), file=self.info, flush=True)

    def markdown(self, text: str) -> None:
        """Markdown on a terminal, the text itself elsewhere."""
        if self.live:
            self.console.print(_markdown(printable(text)))
        else:
            print(text, file=self.out, flush=True)

    # -- streams ----------------------------------------------------------------------------

    def stream(
        self,
        chunks: Observable[Chunk],
        *,
        prefix: str = "",
        window: Window | None = None,
    ) -> StreamStats:
        """Render a reply as it streams; return what it delivered.

        ``prefix`` (a resumed checkpoint's text) is shown first. The stream's error is
        re-raised after the partial reply is shown, and so is ``KeyboardInterrupt``. Off a
        terminal the text is written exactly as it arrives: it is the command's output.
        """
        parts: list[str] = [prefix] if prefix else []
        errors: list[Exception] = []
        stats = StreamStats(started=time.monotonic())
        delivered: list[str] = []

        def on_next(chunk: Chunk) -> None:
            now = time.monotonic()
            stats.chunks += 1
            if chunk.usage is not None:
                stats.usage = chunk.usage
            if chunk.kind is ChunkKind.TEXT and chunk.text:
                if stats.first_at is None:
                    stats.first_at = now
                stats.last_at = now
                delivered.append(chunk.text)
                stats.text = "".join(delivered)
                parts.append(chunk.text)
                if not self.live:
                    self.out.write(chunk.text)
                    self.out.flush()
            elif chunk.kind is ChunkKind.TOOL_CALL and chunk.name:
                self._break_line(parts)
                self.note(f"[tool call] {chunk.name} ({chunk.id})")
            elif chunk.kind is ChunkKind.TOOL_RESULT:
                self._break_line(parts)
                self.note(f"[tool result] {chunk.name}: {preview(chunk.text)}")

        live: Live | None = None
        if self.live:
            live = Live(
                _Tail(stats, parts, window),
                console=self.console,
                refresh_per_second=12,
                transient=True,
                vertical_overflow="visible",
            )
            live.start()
        elif prefix:
            self.out.write(prefix)
            self.out.flush()
        try:
            chunks.subscribe(on_next, errors.append)
        finally:
            if live is not None:
                live.stop()
                text = "".join(parts)
                if text:
                    self.console.print(_markdown(printable(text)))
            elif parts and not "".join(parts).endswith("\n"):
                self.out.write("\n")
                self.out.flush()
        if errors:
            raise errors[0]
        return stats

    def _break_line(self, parts: list[str]) -> None:
        # In plain mode a note interrupts the text; start it on its own line.
        if not self.live and parts and not parts[-1].endswith("\n"):
            self.out.write("\n")
            self.out.flush()
            parts.append("\n")

    def status(self, stats: StreamStats, window: Window | None, extra: str = "") -> None:
        """The final status line of a reply."""
        line = status_text(stats, window, final=True) + (f" · {extra}" if extra else "")
        if self.live:
            self.console.print(Text(printable(line), style="dim"))
        else:
            print(printable(line), file=self.info, flush=True)

    # -- tables -----------------------------------------------------------------------------

    def table(
        self, title: str, columns: Sequence[Column], rows: Iterable[Sequence[object]]
    ) -> None:
        """A table fitted to the terminal; tab-separated lines (header first) elsewhere.

        Cells are data: shown as text on one line, control characters made visible.
        """
        cells = [[one_line(value) for value in row] for row in rows]
        if self.live:
            table, hidden = rich_table(printable(title), columns, cells, self.console.width)
            self.console.print(table)
            if hidden:
                self.console.print(
                    Text(f"(hidden at this width: {', '.join(hidden)})", style="dim")
                )
            return
        print("\t".join(c.header for c in columns), file=self.out)
        for row in cells:
            print("\t".join(row), file=self.out)
        self.out.flush()

    def records(
        self,
        records: Sequence[Record],
        *,
        title: str,
        costs: Mapping[int, str] | None = None,
    ) -> None:
        """A table of stored records; with ``costs`` (by record id: the replies' costs),
        a cost column."""
        if self.live:
            if costs is None:
                self.table(
                    title,
                    RECORD_COLUMNS,
                    (
                        (r.id, r.type.name, "yes" if r.live else "no", r.est_tokens, r.content)
                        for r in records
                    ),
                )
                return
            self.table(
                title,
                RECORD_COST_COLUMNS,
                (
                    (
                        r.id,
                        r.type.name,
                        "yes" if r.live else "no",
                        r.est_tokens,
                        costs.get(r.id, ""),
                        r.content,
                    )
                    for r in records
                ),
            )
            return
        print(f"== {printable(title)}", file=self.out)
        for r in records:
            cost = "" if costs is None else f" {costs.get(r.id, ''):>9}"
            print(
                f"{r.id:>4} {r.type.name:<13} {'live' if r.live else 'dead':<4} "
                f"{r.est_tokens:>5}{cost}  {preview(r.content)}",
                file=self.out,
            )
        self.out.flush()

    def checkpoints(self, checkpoints: Sequence[tuple[str, Checkpoint]]) -> None:
        """A table of checkpoints, each with its context's name."""
        date = _DATE if self.live else _PLAIN_DATE
        self.table(
            "checkpoints",
            CHECKPOINT_COLUMNS,
            (
                (
                    cp.id,
                    name,
                    cp.created_at.strftime(date),
                    cp.state.value,
                    len(as_text(cp.text)),
                    cp.error or "",
                    cp.text if self.live else preview(cp.text, 40),
                )
                for name, cp in checkpoints
            ),
        )

    def contexts(
        self, stats: Sequence[ContextStats], costs: Mapping[str, str] | None = None
    ) -> None:
        """A table of contexts with their numbers; with ``costs`` (by context id), a cost
        column."""
        date = _DATE if self.live else _PLAIN_DATE
        rows = [
            [
                s.name,
                s.records,
                s.live_tokens,
                s.replies,
                s.open_checkpoints,
                s.last_activity.strftime(date) if s.last_activity else "",
            ]
            for s in stats
        ]
        if costs is None:
            self.table("contexts", CONTEXT_COLUMNS, rows)
            return
        for row, s in zip(rows, stats, strict=True):
            row.insert(4, costs.get(s.context_id, ""))
        self.table("contexts", CONTEXT_COST_COLUMNS, rows)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
