"""What ``cw.astream()`` returns: the driver's async generator, cut for good once cut.

An async generator that raised (a cancellation thrown into it, a model error it passed on)
is finished, and advanced again it raises ``StopAsyncIteration``: the end of a reply that
was stored. A consumer that goes on after an error — ``asyncio.wait_for(anext(stream), 30)``
in a keep-alive loop, whose timeout cancels the read and cuts the reply — would end its loop
normally with a truncated text nothing stored. :class:`ReplyStream` takes the generator's
own step (``anext``) on the hot path and looks at how the reply ended only once it has ended:
after a reply that completed it ends as before; after one that was cut it raises
:class:`~rxcontext.StreamInterrupted` with the reply's checkpoint, every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from .chunks import Chunk
from .errors import RxContextError, StreamInterrupted

if TYPE_CHECKING:
    import types

    from .run import Run

__all__ = ["ReplyStream"]


class ReplyStream(AsyncGenerator[Chunk, None]):
    """The driver's generator ``agen`` for ``run``'s reply; advanced after the reply was cut
    (the generator ended without storing it), it raises StreamInterrupted, not the end.

    ``aclose()`` and ``athrow()`` are the generator's; a stream its consumer closed ends
    (``StopAsyncIteration``), as a closed generator does.
    """

    __slots__ = ("_agen", "_closed", "_run")

    def __init__(self, agen: AsyncGenerator[Chunk, None], run: Run) -> None:
        self._agen = cast("types.AsyncGeneratorType[Chunk, None]", agen)
        self._run = run
        self._closed = False

    def __aiter__(self) -> ReplyStream:
        return self

    def __anext__(self) -> Coroutine[Any, Any, Chunk]:
        if self._agen.ag_frame is None and not self._closed:  # it ended: how?
            return self._after_end()
        # anext(): the generator's own step, with no bound ``__anext__`` kept for it (one
        # object more a suspended reply for the cyclic collector) and fewer instructions.
        return anext(self._agen)

    def asend(self, value: None) -> Coroutine[Any, Any, Chunk]:
        if self._agen.ag_frame is None and not self._closed:
            return self._after_end()
        return self._agen.asend(value)

    def athrow(
        self, typ: Any, val: Any = None, tb: TracebackType | None = None, /
    ) -> Coroutine[Any, Any, Chunk]:
        if val is None and tb is None:
            return self._agen.athrow(typ)
        return self._agen.athrow(typ, val, tb)

    def aclose(self) -> Coroutine[Any, Any, None]:
        self._closed = True
        return self._agen.aclose()

    async def _after_end(self) -> Chunk:
        """The generator has ended: its end if the reply was stored whole, else what cut it."""
        run = self._run
        persister = run.persister
        final = persister.final
        # Its last round was committed (one that asks for no tool is the last): the reply is
        # stored whole, even if what came after (an on_complete hook) raised.
        if final is not None and not run.calls_to_run(final):
            raise StopAsyncIteration
        if persister.lost is not None:
            raise persister.lost  # taken over elsewhere: as the driver said when it ended
        ticket = persister.ticket
        if ticket is None:
            raise RxContextError(
                "the stream cannot go on: it ended with the error it raised before its reply "
                "began; start a new one"
            )
        checkpoint = await asyncio.to_thread(persister.store.get_checkpoint, ticket.checkpoint_id)
        raise StreamInterrupted(
            checkpoint,
            "stream interrupted: its reply was cut (by a cancellation, or the error the "
            f"stream raised then), and its checkpoint {checkpoint.id} was saved; the stream "
            f"cannot go on (resume the reply with cw.aresume({checkpoint.id}))",
        )
