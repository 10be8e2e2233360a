"""llm and litellm against the bare openai SDK, on the same synthetic Chat Completions bytes.

Run by run_peers.sh inside its own virtual environment (llm, litellm and the openai SDK
they pull in); rxcontext is not installed there. Every consumer gets an ``openai.OpenAI``
client whose HTTP transport (``MockTransport`` of httpx, or of httpx2 for openai>=3)
answers with the same precomputed SSE pieces, so only the Python on top differs. Rounds
are interleaved (bare, llm, litellm, bare, ...) so drift on a shared machine hits all
three alike; CPU time (``time.process_time``) is measured and ratios are of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download
os.environ.setdefault("LITELLM_TELEMETRY", "False")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _wire

PROMPT = "Write a long answer about reactive streams."
MODEL = "gpt-4o-mini"


def _http_module() -> Any:
    import openai

    if int(openai.__version__.split(".")[0]) >= 3:
        import httpx2

        return httpx2
    import httpx

    return httpx


def make_client(stream: _wire.Stream) -> Any:
    import openai

    http = _http_module()
    pieces = stream.pieces

    class Pieces(http.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(pieces)

    def handle(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "text/event-stream"}, stream=Pieces())

    return openai.OpenAI(
        api_key="sk-bench",
        base_url="http://replay.invalid/v1",
        max_retries=0,
        http_client=http.Client(transport=http.MockTransport(handle)),
    )


def bare(client: Any) -> Callable[[], str]:
    def run() -> str:
        parts = []
        with client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        ) as s:
            for event in s:
                if event.choices and event.choices[0].delta.content:
                    parts.append(event.choices[0].delta.content)
        return "".join(parts)

    return run


def via_llm(client: Any) -> Callable[[], str]:
    import llm

    model = llm.get_model(MODEL)
    model.get_client = lambda key, *, async_=False: client  # the replay client

    def run() -> str:
        response = model.prompt(PROMPT, key="sk-bench", stream=True)
        return "".join(response)

    return run


def via_litellm(client: Any) -> Callable[[], str]:
    import litellm

    def run() -> str:
        parts = []
        for chunk in litellm.completion(
            model=f"openai/{MODEL}",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            client=client,
            api_key="sk-bench",
        ):
            content = chunk.choices[0].delta.content if chunk.choices else None
            if content:
                parts.append(content)
        return "".join(parts)

    return run


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=int(os.environ.get("EVENTS", 2000)))
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 12)))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    stream = _wire.openai_chat(args.events)
    client = make_client(stream)
    cases: dict[str, Callable[[], str]] = {"openai_sdk": bare(client)}
    errors: dict[str, str] = {}
    for name, build in (("llm", via_llm), ("litellm", via_litellm)):
        try:
            run = build(client)
            got = run()  # warm-up, and the correctness check
        except Exception as exc:  # report, measure the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        if got != stream.text:
            errors[name] = f"wrong text: {len(got)} chars, expected {len(stream.text)}"
            continue
        cases[name] = run
    assert cases["openai_sdk"]() == stream.text

    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)

    base = statistics.median(times["openai_sdk"])
    result: dict[str, Any] = {
        "events": stream.events,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("openai", "llm", "litellm", "httpx", "httpx2")},
        "cases": {},
        "errors": errors,
    }
    print(
        f"{stream.events} events, {args.rounds} interleaved rounds; versions {result['versions']}"
    )
    for name, samples in times.items():
        median = statistics.median(samples)
        result["cases"][name] = {
            "median_s": median,
            "min_s": min(samples),
            "us_per_event": median / stream.events * 1e6,
            "ratio_vs_sdk": median / base,
        }
        print(
            f"  {name:<11} {median * 1e3:8.1f} ms  {median / stream.events * 1e6:7.1f} µs/event"
            f"  {median / base:6.2f}x the bare SDK"
        )
    for name, error in errors.items():
        print(f"  {name:<11} not measured: {error}")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
