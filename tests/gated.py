"""An owner process whose model delivers chunks when the test says so (lines on its
stdin), for fault tests that cut something at an exact point of a reply.

The model delivers ``k`` chunks ``w<n> `` (each with ``metadata={"n": n}``: the live log
carries it, the store does not keep it) per line ``k``; ``end`` (or EOF) ends the reply.
The process prints ``at <n>`` once its subscriber has the first ``n`` chunks, ``error
<type> <cause type>`` if its stream fails, and ``done`` when the stream is over.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

from watching import WAIT

from rxcontext import Chunk, ChunkKind
from rxcontext.providers import ScriptedModel

__all__ = ["GatedModel", "OwnerProcess", "words"]

OWNER = textwrap.dedent(
    """
    import sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    target, url, prefix, context, rid = sys.argv[1:6]
    lease_ttl, every = float(sys.argv[6]), float(sys.argv[7])

    def say(line):
        print(line, flush=True)

    class Gated(ScriptedModel):
        def iter_chunks(self, request):
            n = 0
            say("at 0")
            while (line := sys.stdin.readline().strip()) not in ("end", ""):
                for _ in range(int(line)):
                    yield Chunk(ChunkKind.TEXT, f"w{n} ", metadata={"n": n})
                    n += 1
                say(f"at {n}")
            yield Chunk(ChunkKind.DONE, finish_reason="stop")

    fanout = None
    if url != "-":
        from rxcontext.fanout.redis import RedisFanout

        fanout = RedisFanout(url, prefix=prefix)
    store = rxcontext.open(target, fanout=fanout, lease_ttl=lease_ttl)
    cw = ContextWindow(store, Gated([[]]), context, retry=None, checkpoint_every=every)

    def failed(e):
        say(f"error {type(e).__name__} {type(e.__cause__).__name__}")

    cw.stream(reply_id=rid).subscribe(on_error=failed)
    store.close()
    say("done")
    if fanout is not None:
        fanout.close()
    """
)


def words(n: int, start: int = 0) -> str:
    """The text of chunks ``start`` … ``n - 1``."""
    return "".join(f"w{i} " for i in range(start, n))


class OwnerProcess:
    """The owner process; the store at ``target`` must hold ``context`` with a prompt."""

    def __init__(
        self,
        target: str,
        url: str | None,
        prefix: str = "rx",
        *,
        context: str = "gated",
        reply_id: str = "r",
        lease_ttl: float = 5.0,
        checkpoint_every: float = 0.05,
    ) -> None:
        args = [target, url or "-", prefix, context, reply_id, lease_ttl, checkpoint_every]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.reply_id = reply_id
        self.n = 0
        self.started = False

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def begun(self) -> None:
        """Wait until the reply's row exists and the model waits for the test."""
        if not self.started:
            assert self.line() == "at 0"
            self.started = True

    def deliver(self, k: int) -> None:
        """Let the owner deliver ``k`` more chunks; returns once its subscriber has them."""
        self.begun()
        self._send(str(k))
        self.n += k
        assert self.line() == f"at {self.n}"

    def end(self) -> str:
        """End the reply; the process's last line (``done``, or an ``error`` line)."""
        self._send("end")
        lines = []
        while (line := self.line()) not in ("done", ""):
            lines.append(line)
        return " | ".join([*lines, line])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(WAIT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class GatedModel(ScriptedModel):
    """The same model on a thread of the test's process: ``permits.release(k)`` lets ``k``
    more chunks of ``n`` (then the DONE) out; meanwhile it waits, as a model thinking."""

    def __init__(self, n: int) -> None:
        super().__init__([[]])
        self.n = n
        self.permits = threading.Semaphore(0)

    def iter_chunks(self, request: Any) -> Iterator[Chunk]:
        for i in range(self.n):
            assert self.permits.acquire(timeout=WAIT), "the test never let this chunk go"
            yield Chunk(ChunkKind.TEXT, f"w{i} ", metadata={"n": i})
        assert self.permits.acquire(timeout=WAIT), "the test never let the reply end"
        yield Chunk(ChunkKind.DONE, finish_reason="stop")
