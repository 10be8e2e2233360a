"""03 — tool calls during streaming.

The model asks for two tools in one reply; the window runs them (a plain function and an
async one), stores each call and output with its id, sends them back, and the conversation
goes on in the same Observable until the model answers without tools.

    python examples/03_tools.py
"""

from __future__ import annotations

import asyncio
from typing import Any

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, Tool
from rxcontext.providers.replay import ScriptedReply, replay_model

weather = Tool("weather", "Current weather for a city").string("city", "City name")
tides = Tool("tides", "Next high tide at a coastal town").string("town", "Town name")


def run_weather(args: dict[str, Any]) -> str:
    return f"{args['city']}: sunny, 21 °C, light wind"


async def run_tides(args: dict[str, Any]) -> str:
    await asyncio.sleep(0)  # an async runner: awaited on a loop of its own in the sync path
    return f"{args['town']}: high tide at 17:42"


class Printer:
    """Prints text deltas inline and tool activity on lines of its own."""

    def __init__(self) -> None:
        self.mid_line = False

    def __call__(self, chunk: Chunk) -> None:
        if chunk.kind is ChunkKind.TEXT:
            print(chunk.text, end="", flush=True)
            self.mid_line = True
        elif chunk.kind is ChunkKind.TOOL_CALL and chunk.name:
            self.note(f"[model calls {chunk.name} · id {chunk.id}]")
        elif chunk.kind is ChunkKind.TOOL_RESULT:
            self.note(f"[{chunk.name} answered: {chunk.text}]")

    def note(self, line: str) -> None:
        print(("\n" if self.mid_line else "") + line, flush=True)
        self.mid_line = False


def main() -> None:
    store = rxcontext.open(":memory:")
    model, transport = replay_model(
        [
            ScriptedReply(
                "Let me check both.",
                tool_calls=[
                    ("call_weather_1", "weather", {"city": "Porto"}),
                    ("call_tides_1", "tides", {"town": "Porto"}),
                ],
                usage=(80, 20),
            ),
            ScriptedReply(
                "Sunny and 21 °C in Porto, and high tide is at 17:42: walk along the Douro "
                "before five and you will see the river at its fullest.",
                usage=(140, 30),
            ),
        ],
        delay=0.01,
    )
    cw = ContextWindow(store, model, context="tools")
    cw.add_tool(weather, run_weather)
    cw.add_tool(tides, run_tides)
    cw.add_prompt("Is this afternoon good for a riverside walk in Porto?")

    cw.stream().subscribe(on_next=Printer(), on_error=lambda e: print(f"\nerror: {e}"))
    print()

    print("\nstored records:")
    for r in cw.live_records():
        ident = f" id={r.tool_call_id}" if r.tool_call_id else ""
        print(f"  {r.type.name:<11}{ident} {r.content[:60]!r}")

    # The second request carried the calls and outputs back, ids included.
    second = transport.requests[1]["messages"]
    sent = [m for m in second if m["role"] == "tool"]
    print(f"sent back to the model: {[(m['tool_call_id'], m['content']) for m in sent]}")
    store.close()


if __name__ == "__main__":
    main()
