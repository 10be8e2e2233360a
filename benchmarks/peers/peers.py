"""llm, litellm, LangChain and pydantic-ai against the bare openai SDK, on the same
synthetic Chat Completions bytes.

Run by run_peers.sh inside its own virtual environment (llm, litellm, langchain-openai,
pydantic-ai-slim[openai] and the openai SDK they pull in); rxcontext is not installed there.
LangChain's ``ChatOpenAI.stream`` is given the replay client as its own; pydantic-ai streams
only on asyncio (``Agent.run_stream`` → ``stream_text(delta=True)``), so it is compared with
the bare SDK's async iteration over an ``AsyncOpenAI`` on the same bytes. Every consumer
gets an ``openai.OpenAI`` (or ``AsyncOpenAI``) client whose HTTP transport
(``MockTransport`` of httpx, or of httpx2 for openai>=3) answers with the same precomputed
SSE pieces, so only the Python on top differs. Rounds are interleaved (bare, llm, litellm,
..., bare, ...) so drift on a shared machine hits all alike; CPU time
(``time.process_time``) is measured and ratios are of medians.
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


def via_langchain(client: Any) -> Callable[[], str]:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model=MODEL,
        api_key="sk-bench",
        base_url="http://replay.invalid/v1",
        max_retries=0,
        stream_usage=True,
        client=client.chat.completions,  # the replay client, as the SDK's own
        root_client=client,
    )

    def run() -> str:
        return "".join(str(chunk.content) for chunk in chat.stream(PROMPT))

    return run


def make_async_client(stream: _wire.Stream) -> Any:
    import openai

    http = _http_module()
    pieces = stream.pieces

    class Pieces(http.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for piece in pieces:
                yield piece

    def handle(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "text/event-stream"}, stream=Pieces())

    return openai.AsyncOpenAI(
        api_key="sk-bench",
        base_url="http://replay.invalid/v1",
        max_retries=0,
        http_client=http.AsyncClient(transport=http.MockTransport(handle)),
    )


def bare_async(aclient: Any) -> Callable[[], str]:
    import asyncio

    loop = asyncio.new_event_loop()

    async def consume() -> str:
        parts = []
        async with await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        ) as s:
            async for event in s:
                if event.choices and event.choices[0].delta.content:
                    parts.append(event.choices[0].delta.content)
        return "".join(parts)

    return lambda: loop.run_until_complete(consume())


def via_pydantic_ai(aclient: Any) -> Callable[[], str]:
    import asyncio

    from pydantic_ai import Agent
    from pydantic_ai.providers.openai import OpenAIProvider

    try:
        from pydantic_ai.models.openai import OpenAIChatModel as ChatModel
    except ImportError:  # before pydantic-ai 1.0
        from pydantic_ai.models.openai import OpenAIModel as ChatModel  # type: ignore

    agent = Agent(ChatModel(MODEL, provider=OpenAIProvider(openai_client=aclient)))
    loop = asyncio.new_event_loop()

    async def consume() -> str:
        parts = []
        async with agent.run_stream(PROMPT) as result:
            async for delta in result.stream_text(delta=True, debounce_by=None):
                parts.append(delta)
        return "".join(parts)

    return lambda: loop.run_until_complete(consume())


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
    aclient = make_async_client(stream)
    cases: dict[str, Callable[[], str]] = {
        "openai_sdk": bare(client),
        "openai_sdk_async": bare_async(aclient),
    }
    errors: dict[str, str] = {}
    peers: tuple[tuple[str, Callable[[Any], Callable[[], str]], Any], ...] = (
        ("llm", via_llm, client),
        ("litellm", via_litellm, client),
        ("langchain", via_langchain, client),
        ("pydantic_ai", via_pydantic_ai, aclient),
    )
    for name, build, use in peers:
        try:
            run = build(use)
            got = run()  # warm-up, and the correctness check
        except Exception as exc:  # report, measure the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        if got != stream.text:
            errors[name] = f"wrong text: {len(got)} chars, expected {len(stream.text)}"
            continue
        cases[name] = run
    assert cases["openai_sdk"]() == stream.text
    assert cases["openai_sdk_async"]() == stream.text
    # Async consumers (pydantic-ai streams only on asyncio) are compared with the bare
    # SDK's async iteration, sync ones with its sync iteration.
    asynchronous = {"openai_sdk_async", "pydantic_ai"}

    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, run in cases.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)

    bases = {
        False: statistics.median(times["openai_sdk"]),
        True: statistics.median(times["openai_sdk_async"]),
    }
    result: dict[str, Any] = {
        "events": stream.events,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "versions": {
            p: _version(p)
            for p in (
                "openai",
                "llm",
                "litellm",
                "langchain-openai",
                "langchain-core",
                "pydantic-ai-slim",
                "httpx",
                "httpx2",
            )
        },
        "cases": {},
        "errors": errors,
    }
    print(
        f"{stream.events} events, {args.rounds} interleaved rounds; versions {result['versions']}"
    )
    for name, samples in times.items():
        median = statistics.median(samples)
        base = bases[name in asynchronous]
        result["cases"][name] = {
            "median_s": median,
            "min_s": min(samples),
            "us_per_event": median / stream.events * 1e6,
            "ratio_vs_sdk": median / base,
            "baseline": "openai_sdk_async" if name in asynchronous else "openai_sdk",
        }
        print(
            f"  {name:<16} {median * 1e3:8.1f} ms  {median / stream.events * 1e6:7.1f} µs/event"
            f"  {median / base:6.2f}x the bare SDK ({'async' if name in asynchronous else 'sync'})"
        )
    for name, error in errors.items():
        print(f"  {name:<11} not measured: {error}")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
