"""Terminal rendering for the CLI: live Markdown on a terminal, plain text otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from reactivex import Observable
from rich.console import Console, Group
from rich.live import Live
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from .chunks import Chunk, ChunkKind, Usage
from .records import Record

__all__ = ["Renderer"]


def _preview(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class Renderer:
    """Shows streams and records; ``live=None`` means "live redraws only on a terminal"."""

    def __init__(self, out: TextIO | None = None, *, live: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.console = Console(
            file=self.out, force_terminal=self.live, highlight=False, soft_wrap=not self.live
        )

    def heading(self, text: str) -> None:
        """A section title."""
        if self.live:
            self.console.rule(f"[bold]{text}")
        else:
            print(f"== {text}", file=self.out, flush=True)

    def line(self, text: str) -> None:
        """One line of plain text."""
        print(text, file=self.out, flush=True)

    def stream(self, chunks: Observable[Chunk], *, prefix: str = "") -> str:
        """Render a reply as it streams; returns its text. Re-raises the stream's error."""
        parts: list[str] = [prefix] if prefix else []
        errors: list[Exception] = []
        usage: list[Usage] = []
        started = time.monotonic()
        count = 0

        def status() -> Text:
            elapsed = max(time.monotonic() - started, 1e-6)
            u = usage[-1] if usage else None
            tokens = f" · {u.input_tokens} in / {u.output_tokens} out tokens" if u else ""
            return Text(f"{count} chunks · {count / elapsed:.0f} chunks/s{tokens}", style="dim")

        def on_next(chunk: Chunk) -> None:
            nonlocal count
            count += 1
            if chunk.usage is not None:
                usage.append(chunk.usage)
            if chunk.kind is ChunkKind.TEXT:
                parts.append(chunk.text)
                if not self.live:
                    self.out.write(chunk.text)
                    self.out.flush()
            elif chunk.kind is ChunkKind.TOOL_CALL and chunk.name:
                self._note(f"[tool call] {chunk.name} ({chunk.id})")
            elif chunk.kind is ChunkKind.TOOL_RESULT:
                self._note(f"[tool result] {chunk.name}: {_preview(chunk.text)}")
            if live is not None:
                live.update(Group(Markdown("".join(parts)), status()))

        live: Live | None = None
        if self.live:
            live = Live(
                Group(Markdown(prefix), status()),
                console=self.console,
                refresh_per_second=12,
                transient=False,
            )
            live.start()
        elif prefix:
            self.out.write(prefix)
        try:
            chunks.subscribe(on_next, errors.append)
        finally:
            if live is not None:
                live.stop()
            elif parts:
                self.out.write("\n")
                self.out.flush()
        if errors:
            raise errors[0]
        return "".join(parts)

    def _note(self, text: str) -> None:
        if self.live:
            self.console.print(Text(text, style="cyan"))
        else:
            print(text, file=self.out, flush=True)

    def records(self, records: Sequence[Record], *, title: str) -> None:
        """A table of stored records."""
        if self.live:
            table = Table(title=title)
            for column in ("id", "type", "live", "tokens", "content"):
                table.add_column(column)
            for r in records:
                table.add_row(
                    str(r.id),
                    r.type.name,
                    "yes" if r.live else "no",
                    str(r.est_tokens),
                    _preview(r.content),
                )
            self.console.print(table)
            return
        print(f"== {title}", file=self.out)
        for r in records:
            print(
                f"{r.id:>4} {r.type.name:<13} {'live' if r.live else 'dead':<4} "
                f"{r.est_tokens:>5}  {_preview(r.content)}",
                file=self.out,
            )
        self.out.flush()
