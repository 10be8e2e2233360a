"""06 — what replies cost, and a budget that refuses the request that would overspend.

Runs offline: the replies come through the real ``openai`` SDK from a replay transport,
under the name of a real model (``gpt-4o-mini``), so ``genai-prices`` prices their usage
(``pip install 'rxcontext[prices]'``). Nothing is sent anywhere.

    python examples/08_cost.py
"""

from __future__ import annotations

import rxcontext
from rxcontext import Budget, BudgetExceeded, ContextWindow, RecordType
from rxcontext.cost import context_cost, format_usd, reply_cost
from rxcontext.providers.replay import ScriptedReply, replay_model


def main() -> None:
    replies = [
        ScriptedReply("The Tagus, the Douro and the Ebro.", usage=(180_000, 2_000)),
        ScriptedReply("The Tagus is the longest, about 1,007 km.", usage=(190_000, 1_500)),
        ScriptedReply("(never sent)", usage=(200_000, 1_000)),
    ]
    model, transport = replay_model(replies, model_name="gpt-4o-mini")
    # 5 cents for this conversation, checked before every request.
    cw = ContextWindow(rxcontext.open(":memory:"), model, budget=Budget(max_usd="0.05"))

    for prompt in ("Name three rivers of Iberia.", "Which is longest?", "And the widest?"):
        cw.add_prompt(prompt)
        try:
            reply = cw.call()
        except BudgetExceeded as refused:
            print(f"refused before sending: {refused}")
            break
        record = [r for r in cw.records() if r.type is RecordType.MODEL_RESP][-1]
        print(f"{reply.text}  [{format_usd(reply_cost(record))}]")

    total = context_cost(cw.records())
    print(f"context total: {total.describe()} over {total.priced} replies")
    print(f"requests sent: {len(transport.requests)}")


if __name__ == "__main__":
    main()
