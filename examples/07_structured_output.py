"""07 — structured output: a reply that is a pydantic object, watched as it grows.

``cw.stream(schema=Model)`` / ``cw.call(schema=Model)`` ask the provider for its native
structured output (here OpenAI Chat's ``response_format`` json_schema, strict);
``rxops.partial_objects()`` shows the object while its JSON streams (parsed incrementally,
each character once), and the validated object lands on ``Reply.parsed`` and, as JSON, in
the stored reply's metadata. A reply that does not validate is stored all the same and
raises ``SchemaValidationError`` with its text.

Runs offline: ``replay_model`` gives an ``OpenAIModel`` whose real ``openai`` SDK client
reads canned Chat Completions SSE. Swap in ``OpenAIModel("gpt-4o-mini")`` (or
``AnthropicModel``, ``GeminiModel``) for a real model.

    python examples/07_structured_output.py
"""

from __future__ import annotations

import json

from pydantic import BaseModel

import rxcontext
from rxcontext import ContextWindow, SchemaValidationError
from rxcontext import operators as rxops
from rxcontext.providers.replay import ScriptedReply, replay_model


class River(BaseModel):
    name: str
    length_km: int


class Rivers(BaseModel):
    country: str
    rivers: list[River]


ANSWER = json.dumps(
    {
        "country": "Portugal",
        "rivers": [
            {"name": "Tagus", "length_km": 1007},
            {"name": "Douro", "length_km": 897},
            {"name": "Guadiana", "length_km": 829},
        ],
    }
)
WRONG = '{"country": "Spain", "rivers": [{"name": "Ebro", "length_km": "long"}]}'


def main() -> None:
    store = rxcontext.open(":memory:")
    model, transport = replay_model([ScriptedReply(ANSWER), ScriptedReply(WRONG)])
    cw = ContextWindow(store, model, context="rivers")
    cw.add_prompt("The three longest rivers of Portugal, as JSON.")

    # Each partial object is a fresh dict: strings show as they grow, numbers once complete.
    cw.stream(schema=Rivers).pipe(rxops.partial_objects()).subscribe(
        on_next=lambda partial: print("partial:", json.dumps(partial)),
        on_completed=lambda: print("[completed]"),
    )
    sent = transport.requests[0]["response_format"]
    print(
        "asked for:",
        sent["type"],
        sent["json_schema"]["name"],
        "strict:",
        sent["json_schema"]["strict"],
    )

    stored = cw.live_records()[-1]
    print("stored parsed:", json.dumps(stored.metadata["parsed"]))
    parsed = Rivers.model_validate(stored.metadata["parsed"])
    print("longest:", max(parsed.rivers, key=lambda r: r.length_km).name)

    cw.add_prompt("And of Spain?")
    try:
        cw.call(schema=Rivers)
    except SchemaValidationError as error:
        print("not valid:", " / ".join(error.errors.splitlines()[:2]))
        print("kept text:", error.text)
        print("stored:", cw.live_records()[-1].content == error.text)
    store.close()


if __name__ == "__main__":
    main()
