"""One conversation on the terminal: stream a reply or a resume, and say how it ended."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..attachments import Attachment
from ..errors import RxContextError, StreamInterrupted
from ..records import Checkpoint, RecordType
from ..window import ContextWindow
from .common import Terminated
from .render import Renderer, Window

__all__ = ["Session"]


class Session:
    """One window on the terminal: streams replies and reports how they ended."""

    def __init__(
        self,
        cw: ContextWindow,
        render: Renderer,
        base_url: str | None,
        options: dict[str, Any] | None = None,
        attachments: Sequence[Attachment] = (),
        *,
        resume_command: Callable[[int], str] = lambda cp_id: f"rxcontext resume {cp_id}",
    ) -> None:
        self.cw = cw
        self.render = render
        self.base_url = base_url
        self.resume_command = resume_command
        """The command that finishes a cancelled reply (given its checkpoint id), told when
        one is."""
        self.options = dict(options or {})
        """Per-call options of every reply and resume (``chat --temperature`` ...)."""
        self.attachments = tuple(attachments)
        """Sent with the next prompt only (``chat --attach``)."""

    def window(self) -> Window:
        return Window(self.cw.live_tokens(), self.cw.max_tokens)

    def reply(self, prompt: str, *, done: str | None = None) -> int:
        """Add ``prompt``, stream the reply; the exit status (130 when cancelled).

        ``done`` ends the status line (default: the record the reply was stored as).
        """
        cw = self.cw
        before = {cp.id for cp in cw.checkpoints()}
        replies = cw.stream(**self.options)  # an option the model lacks: refused, nothing stored
        record = cw.add_prompt(prompt, attachments=self.attachments)
        self.attachments = ()
        window = self.window()
        try:
            stats = self.render.stream(replies, window=window)
        except KeyboardInterrupt as stop:
            new = [cp for cp in cw.checkpoints() if cp.id not in before]
            checkpoint = new[-1] if new else None
            if self.undo_if_nothing_arrived(checkpoint, record.id):
                self.render.note(
                    "reply cancelled before anything arrived; the prompt was not answered "
                    "(it stays in the context as a dead record)"
                )
            else:
                self.cancelled(checkpoint)
            if isinstance(stop, Terminated):
                raise
            return 130
        except StreamInterrupted as exc:
            self.undo_if_nothing_arrived(exc.checkpoint, record.id)
            raise
        except RxContextError:  # refused before the reply began (a budget): not answered
            self.undo_if_nothing_arrived(None, record.id)
            raise
        if done is None:
            stored = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
            done = f"stored as record {stored[-1].id}" if stored else "stored"
        self.render.status(stats, window, done)
        return 0

    def resume(self, checkpoint: Checkpoint, *, done: str | None = None) -> int:
        """Stream the rest of an interrupted reply; ``done`` ends the status line."""
        window = self.window()
        try:
            stats = self.render.stream(
                self.cw.resume(checkpoint.id, **self.options),
                prefix=checkpoint.text,
                window=window,
            )
        except KeyboardInterrupt as stop:
            # The driver saved the checkpoint and released the claim: it can be resumed again.
            self.cancelled(self.cw.store.get_checkpoint(checkpoint.id))
            if isinstance(stop, Terminated):
                raise
            return 130
        self.render.status(stats, window, done or f"checkpoint {checkpoint.id} resolved")
        return 0

    def cancelled(self, checkpoint: Checkpoint | None) -> None:
        if checkpoint is None:
            self.render.note("reply cancelled before anything arrived; nothing to keep")
            return
        self.render.note(
            f"reply cancelled; its checkpoint {checkpoint.id} is kept "
            f"({len(checkpoint.text)} characters): " + self.resume_command(checkpoint.id)
        )

    def undo_if_nothing_arrived(self, checkpoint: Checkpoint | None, prompt_id: int) -> bool:
        """Drop an empty checkpoint and retire the unanswered prompt; whether it did.

        A request that failed or was cancelled before any output (no key, unreachable
        server, Ctrl-C while connecting) would otherwise leave an empty checkpoint and a
        dangling prompt, and running the same command again would send the prompt twice.
        """
        if checkpoint is not None and (
            checkpoint.text or checkpoint.thinking or checkpoint.tool_calls
        ):
            return False
        records = self.cw.records()
        if not records or records[-1].id != prompt_id:
            return False  # a tool round was stored: the checkpoint can continue from it
        if checkpoint is not None:
            self.cw.discard(checkpoint.id)
        self.cw.set_record_live_state(len(records) - 1, len(records) - 1, False, among="all")
        return True
