"""Per provider and path: bare SDK iteration vs rxcontext on the same replayed bytes.

Roles, each timed on the same synthetic stream (``RXCONTEXT_BENCH_EVENTS`` events):

- ``sdk``: the provider SDK's own streaming iteration, reading each event's text delta.
- ``floor``: the same HTTP response split into SSE events and ``json.loads`` per event.
- ``adapter_sdk`` / ``adapter_fast``: rxcontext's provider model alone
  (``model.iter_chunks``), with ``wire="sdk"`` / ``wire="fast"``.
- ``pipeline_sdk`` / ``pipeline_fast``: ``cw.stream()`` (``cw.astream()`` for async) with
  a middleware hook, the persister folding every chunk and storing the reply in SQLite.

Two tests time them. ``bench_stream`` gives each role its own pytest-benchmark entry
(absolute CPU times). ``bench_paired`` runs all roles of one provider and path in
interleaved rounds (the order rotating each round) and reports each role's ratio to the
bare SDK as the median of the per-round ratios: drift on a shared machine (other jobs
starting and stopping) hits both sides of every ratio alike, so these are the ratios the
report uses. CPU time (``time.process_time``) throughout.

Correctness is asserted (the text read, or the reply stored, is exactly the stream's);
timing is not.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import _harness as h
import pytest
from _wire import make_stream
from conftest import EVENTS, ROUNDS, record

from rxcontext.providers.base import Request

ROLES = ("sdk", "adapter_sdk", "pipeline_sdk", "floor", "adapter_fast", "pipeline_fast")
PATHS = ("sync", "async")
CASES = [(path, role) for path in PATHS for role in ROLES]


@cache
def provider_for(name: str) -> h.Provider:
    return h.BUILDERS[name](make_stream(name, EVENTS))


@pytest.fixture(scope="module", params=list(h.BUILDERS))
def provider(request: pytest.FixtureRequest) -> h.Provider:
    return provider_for(request.param)


@dataclass
class Role:
    """One timed consumer: ``setup()`` (untimed) gives the argument ``run`` takes."""

    run: Callable[[Any], Any]
    setup: Callable[[], Any]
    expect: Callable[[Any], bool]
    windows: list[Any]

    def verify(self, text: str) -> None:
        for cw in self.windows:
            assert h.stored_text(cw) == text
            assert not cw.checkpoints()


def make_role(
    provider: h.Provider, path: str, role: str, store: Any, loop: asyncio.AbstractEventLoop
) -> Role | str:
    """The consumer for ``role``, or why it cannot run (a skip reason)."""
    stream = provider.stream
    sync = path == "sync"

    def none() -> None:
        return None

    def is_text(result: Any) -> bool:
        return bool(result == stream.text)

    if role == "sdk":
        if sync:
            return Role(lambda _: provider.sdk_sync(), none, is_text, [])
        return Role(lambda _: loop.run_until_complete(provider.sdk_async()), none, is_text, [])
    if role == "floor":

        def all_events(n: Any) -> bool:
            return bool(n >= stream.events - 1)

        if sync:
            return Role(lambda _: h.floor_sync(provider.http), none, all_events, [])
        return Role(
            lambda _: loop.run_until_complete(h.floor_async(provider.async_http)),
            none,
            all_events,
            [],
        )

    wire = role.rsplit("_", 1)[1]
    why = h.wire_supported(provider.make_model, wire)
    if why is not None:
        return why
    model = provider.model(wire)

    if role.startswith("adapter"):
        request = Request(records=h.fresh_window(store, model).live_records())
        if sync:
            return Role(lambda _: h.adapter_sync(model, request), none, is_text, [])
        return Role(
            lambda _: loop.run_until_complete(h.adapter_async(model, request)), none, is_text, []
        )

    windows: list[Any] = []

    def fresh() -> Any:
        cw = h.fresh_window(store, model)
        windows.append(cw)
        return cw

    if sync:
        return Role(h.pipeline_sync, fresh, is_text, windows)
    return Role(lambda cw: loop.run_until_complete(h.pipeline_async(cw)), fresh, is_text, windows)


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize(("path", "role"), CASES, ids=[f"{p}-{r}" for p, r in CASES])
def bench_stream(
    benchmark: Any,
    provider: h.Provider,
    path: str,
    role: str,
    store: Any,
    loop: asyncio.AbstractEventLoop,
) -> None:
    stream = provider.stream
    benchmark.group = f"stream {provider.name} {path}"
    benchmark.extra_info.update(
        kind="stream", provider=provider.name, path=path, role=role, events=stream.events
    )
    made = make_role(provider, path, role, store, loop)
    if isinstance(made, str):
        pytest.skip(made)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (made.setup(),), {}

    result = benchmark.pedantic(made.run, setup=setup, rounds=ROUNDS, warmup_rounds=2)
    assert made.expect(result)
    made.verify(stream.text)


@pytest.mark.parametrize("path", PATHS)
def bench_paired(
    provider: h.Provider, path: str, store: Any, loop: asyncio.AbstractEventLoop
) -> None:
    stream = provider.stream
    roles: dict[str, Role] = {}
    skipped: dict[str, str] = {}
    for role in ROLES:
        made = make_role(provider, path, role, store, loop)
        if isinstance(made, str):
            skipped[role] = made
        else:
            roles[role] = made
    times: dict[str, list[float]] = {role: [] for role in roles}
    order = list(roles)
    for n in range(ROUNDS + 2):
        shift = n % len(order)
        for role in order[shift:] + order[:shift]:
            made = roles[role]
            arg = made.setup()
            start = time.process_time()
            result = made.run(arg)
            elapsed = time.process_time() - start
            assert made.expect(result), role
            if n >= 2:  # two warm-up rounds
                times[role].append(elapsed)
    for made in roles.values():
        made.verify(stream.text)
    sdk = times["sdk"]
    record(
        "paired",
        f"{provider.name} {path}",
        {
            "provider": provider.name,
            "path": path,
            "events": stream.events,
            "rounds": ROUNDS,
            "median_s": {role: statistics.median(t) for role, t in times.items()},
            # Per-round ratios to the bare SDK of the same round, then their median.
            "vs_sdk": {
                role: statistics.median(a / b for a, b in zip(t, sdk, strict=True))
                for role, t in times.items()
            },
            "skipped": skipped,
        },
    )
