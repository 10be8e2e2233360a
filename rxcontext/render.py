"""Terminal rendering for the CLI: live Markdown on a terminal, plain text otherwise.

On a terminal a reply is drawn with rich's ``Live`` as it streams (its last screenful, with a
status line of tokens/s and the context's token usage), then printed once in full. Anywhere
else the text deltas are written as they arrive, with no cursor movement, so output piped to a
file or another command is exactly the reply.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from reactivex import Observable
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from .chunks import Chunk, ChunkKind, Usage
from .records import Checkpoint, Record
from .tokens import estimate_tokens

__all__ = ["Renderer", "StreamStats", "preview"]


def preview(text: str, width: int = 60) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


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
    max_tokens: int


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
        percent = 100.0 * used / window.max_tokens if window.max_tokens else 0.0
        parts.append(f"context {used:,}/{window.max_tokens:,} tokens ({percent:.1f}%)")
    return " · ".join(parts)


class _Tail:
    """The last screenful of the Markdown so far, plus the status line (for ``Live``)."""

    def __init__(self, stats: StreamStats, parts: list[str], window: Window | None) -> None:
        self.stats = stats
        self.parts = parts
        self.window = window

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = "".join(self.parts)
        height = max(3, (options.height or console.size.height) - 2)
        lines = console.render_lines(Markdown(text), options.update(height=None), pad=False)
        for line in lines[-height:]:
            yield from line
            yield Segment.line()
        yield Text("▍ " + status_text(self.stats, self.window), style="dim")


class Renderer:
    """Shows streams, records and checkpoints.

    ``live=None`` means "live redraws only when ``out`` is a terminal". ``info`` receives
    notes and status lines in plain mode (default ``out``; the chat command passes stderr
    so that stdout holds only the reply).
    """

    def __init__(
        self, out: TextIO | None = None, *, live: bool | None = None, info: TextIO | None = None
    ) -> None:
        self.out = out or sys.stdout
        self.info = info or self.out
        self.live = _isatty(self.out) if live is None else live
        self.console = Console(
            file=self.out, force_terminal=self.live, highlight=False, soft_wrap=not self.live
        )

    # -- small pieces -----------------------------------------------------------------------

    def heading(self, text: str) -> None:
        """A section title."""
        if self.live:
            self.console.rule(f"[bold]{text}")
        else:
            print(f"== {text}", file=self.out, flush=True)

    def line(self, text: str, *, style: str | None = None) -> None:
        """One line of text (styled on a terminal)."""
        if self.live:
            self.console.print(Text(text, style=style or ""))
        else:
            print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        """A side note (tool activity, status): cyan on a terminal, else to ``info``."""
        if self.live:
            self.console.print(Text(text, style="cyan"))
        else:
            print(text, file=self.info, flush=True)

    def markdown(self, text: str) -> None:
        """Markdown on a terminal, the text itself elsewhere."""
        if self.live:
            self.console.print(Markdown(text))
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
        re-raised after the partial reply is shown, and so is ``KeyboardInterrupt``.
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
                    self.console.print(Markdown(text))
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
            self.console.print(Text(line, style="dim"))
        else:
            print(line, file=self.info, flush=True)

    # -- tables -----------------------------------------------------------------------------

    def table(self, title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """A table on a terminal; tab-separated lines (header first) elsewhere."""
        if self.live:
            table = Table(title=title, title_justify="left")
            for i, column in enumerate(columns):
                last = i == len(columns) - 1
                table.add_column(column, no_wrap=last, overflow="ellipsis" if last else "fold")
            for row in rows:
                table.add_row(*(str(v) for v in row))
            self.console.print(table)
            return
        print("\t".join(columns), file=self.out)
        for row in rows:
            print("\t".join(str(v) for v in row), file=self.out)
        self.out.flush()

    def records(self, records: Sequence[Record], *, title: str) -> None:
        """A table of stored records."""
        if self.live:
            self.table(
                title,
                ("id", "type", "live", "tokens", "content"),
                (
                    (r.id, r.type.name, "yes" if r.live else "no", r.est_tokens, preview(r.content))
                    for r in records
                ),
            )
            return
        print(f"== {title}", file=self.out)
        for r in records:
            print(
                f"{r.id:>4} {r.type.name:<13} {'live' if r.live else 'dead':<4} "
                f"{r.est_tokens:>5}  {preview(r.content)}",
                file=self.out,
            )
        self.out.flush()

    def checkpoints(self, checkpoints: Sequence[tuple[str, Checkpoint]]) -> None:
        """A table of checkpoints, each with its context's name."""
        self.table(
            "checkpoints",
            ("id", "context", "created", "state", "chars", "error", "text"),
            (
                (
                    cp.id,
                    name,
                    cp.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    "resolved" if cp.resolved else "open",
                    len(cp.text),
                    cp.error or "",
                    preview(cp.text, 40),
                )
                for name, cp in checkpoints
            ),
        )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
