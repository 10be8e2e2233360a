"""04 — asyncio: many concurrent replies, and cancelling one.

Five conversations stream at once on one event loop (``cw.acall()``); a sixth is iterated
with ``cw.astream()`` and its task is cancelled partway. The cancellation saves a checkpoint
holding exactly the text that had been received; ``cw.aresume(id)`` then finishes it.

    python examples/04_asyncio.py
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import rxcontext
from rxcontext import ChunkKind, ContextWindow
from rxcontext.providers.replay import ScriptedReply, replay_model

CITIES = ["Lisbon", "Porto", "Coimbra", "Faro", "Braga"]
STORY = (
    "Once upon a time a river wanted to see the sea. It ran through hills and towns, "
    "past mills and bridges, gathering brooks as it went, and one spring morning it "
    "finally heard the waves."
)


async def one_reply(store: rxcontext.SQLiteStore, city: str) -> str:
    model, _ = replay_model([ScriptedReply(f"{city} is lovely in spring.")], delay=0.02)
    cw = ContextWindow(store, model, context=f"city-{city.lower()}")
    cw.add_prompt(f"One line about {city}, please.")
    reply = await cw.acall()
    return reply.text


async def main() -> None:
    store = rxcontext.open(":memory:")

    started = time.monotonic()
    texts = await asyncio.gather(*(one_reply(store, city) for city in CITIES))
    elapsed = time.monotonic() - started
    for text in texts:
        print(f"  {text}")
    print(f"{len(texts)} replies streamed concurrently in {elapsed:.2f} s")

    # Cancel one reply partway through.
    model, _ = replay_model([ScriptedReply(STORY)], delay=0.02)
    cw = ContextWindow(store, model, context="story")
    cw.add_prompt("Tell me a short story about a river.")
    received: list[str] = []
    enough = asyncio.Event()

    async def listen() -> None:
        async for chunk in cw.astream():
            if chunk.kind is ChunkKind.TEXT:
                received.append(chunk.text)
                if len(received) == 8:
                    enough.set()

    task = asyncio.create_task(listen())
    await enough.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    (checkpoint,) = cw.checkpoints()
    print(f"cancelled after {len(received)} chunks; checkpoint {checkpoint.id} kept:")
    print(f"  {checkpoint.text!r}")
    print(f"  same as received: {checkpoint.text == ''.join(received)}; reason: {checkpoint.error}")

    # Finish it later (a new process would open the same database file).
    cw.model, _ = replay_model([ScriptedReply(STORY[len(checkpoint.text) :])], delay=0.0)
    async for _ in cw.aresume(checkpoint.id):
        pass
    final = cw.live_records()[-1]
    print(f"resumed: record {final.id} holds the whole story: {final.content == STORY}")
    print(f"open checkpoints now: {len(cw.checkpoints())}")
    store.close()


if __name__ == "__main__":
    asyncio.run(main())
