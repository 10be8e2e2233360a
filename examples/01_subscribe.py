"""01 — subscribe to a reply and print its tokens as they arrive.

Runs offline: ``replay_model`` gives an ``OpenAIModel`` whose real ``openai`` SDK client talks
to a replay transport (canned Chat Completions SSE, paced like a live model) instead of the
network. Swap in ``OpenAIModel("gpt-4o-mini")`` (with OPENAI_API_KEY set) for the real thing.

    python examples/01_subscribe.py
"""

from __future__ import annotations

import rxcontext
from rxcontext import ContextWindow, RecordType
from rxcontext import operators as rxops
from rxcontext.providers.replay import ScriptedReply, replay_model

ANSWER = (
    "Three rivers of Iberia: the Tagus, the longest, reaching the sea at Lisbon; "
    "the Douro, through the port-wine valleys; and the Ebro, draining to the Mediterranean."
)


def main() -> None:
    store = rxcontext.open(":memory:")  # or a file: rxcontext.open("chat.db")
    model, _ = replay_model([ScriptedReply(ANSWER, usage=(24, 31))], delay=0.01)
    cw = ContextWindow(store, model, context="rivers")
    cw.set_system_prompt("You are a concise geography tutor.")
    cw.add_prompt("Name three rivers of the Iberian peninsula.")

    # stream() is cold: this subscription sends one request. On the calling thread it runs
    # to the end before subscribe() returns, and the reply is stored before on_completed.
    cw.stream().pipe(rxops.text()).subscribe(
        on_next=lambda delta: print(delta, end="", flush=True),
        on_error=lambda error: print(f"\ncut: {error}"),
        on_completed=lambda: print("\n[completed]"),
    )

    reply = cw.live_records()[-1]
    assert reply.type is RecordType.MODEL_RESP
    print(f"stored: record {reply.id}, {reply.type.name}, {len(reply.content)} characters")
    print(f"context tokens: {cw.token_usage().live_tokens} live (estimated)")
    store.close()


if __name__ == "__main__":
    main()
