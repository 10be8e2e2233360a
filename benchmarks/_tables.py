"""Ratio tables from one benchmark run (pytest-benchmark results + the suite's own metrics).

Used by conftest.py (printed at the end of a run) and report.py (docs/benchmarks.md). Only
ratios between measurements of the same run are meaningful on a shared machine; absolute
times are shown for scale. Stream ratios are medians of per-round ratios (bench_paired);
others are ratios of medians.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PROVIDER_TITLES = {
    "openai_chat": "OpenAI Chat",
    "openai_responses": "OpenAI Responses",
    "anthropic": "Anthropic",
    "gemini": "Gemini",
}
# Issue 6's targets for the fast path (the Responses API has none).
FAST_TARGET: dict[str, float | None] = {
    "openai_chat": 10.0,
    "openai_responses": None,
    "anthropic": 3.0,
    "gemini": 10.0,
}
STAT = "median"


def _index(benchmarks: Iterable[Mapping[str, Any]]) -> dict[tuple[str, ...], Mapping[str, Any]]:
    out: dict[tuple[str, ...], Mapping[str, Any]] = {}
    for bench in benchmarks:
        info = bench.get("extra_info") or {}
        if "kind" in info:
            key = tuple(str(info.get(k, "")) for k in ("kind", "provider", "path", "role"))
            out[key] = bench
    return out


def _t(bench: Mapping[str, Any] | None) -> float | None:
    if bench is None:
        return None
    value = bench["stats"].get(STAT)
    return float(value) if value else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "×") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _stream_rows(
    benchmarks: Iterable[Mapping[str, Any]], metrics: Mapping[str, Any]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (provider, path): median seconds and ratio to the bare SDK, per role.

    The paired (interleaved) measurements are preferred; the separate pytest-benchmark
    entries are the fallback (their ratios are of medians taken at different times).
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for (kind, provider, path, role), bench in _index(benchmarks).items():
        if kind != "stream":
            continue
        row = rows.setdefault((provider, path), {"t": {}, "r": {}, "source": "separate"})
        row["events"] = int(bench["extra_info"].get("events", 1))
        t = _t(bench)
        if t is not None:
            row["t"][role] = t
    for row in rows.values():
        sdk = row["t"].get("sdk")
        row["r"] = {role: t / sdk for role, t in row["t"].items()} if sdk else {}
    for m in (metrics.get("paired") or {}).values():
        rows[(m["provider"], m["path"])] = {
            "t": dict(m["median_s"]),
            "r": dict(m["vs_sdk"]),
            "events": m["events"],
            "source": "paired",
        }
    return rows


def stream_table(
    benchmarks: Iterable[Mapping[str, Any]], metrics: Mapping[str, Any] | None = None
) -> list[str]:
    """Per provider and path: pipeline and fast-path ratios against bare SDK iteration."""
    rows_by_key = _stream_rows(benchmarks, metrics or {})
    rows = [
        "| provider | path | bare SDK µs/event | pipeline ÷ SDK (≤ 1.05) | adapter ÷ SDK "
        "| SDK ÷ fast adapter (Chat, Gemini ≥ 10; Anthropic ≥ 3) | SDK ÷ fast pipeline "
        "| fast adapter ÷ floor (≤ 2) | fast pipeline ÷ floor | floor µs/event |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for provider, title in PROVIDER_TITLES.items():
        for path in ("sync", "async"):
            row = rows_by_key.get((provider, path))
            if row is None or "sdk" not in row["t"]:
                continue
            r = row["r"]
            events = row["events"]
            floor = row["t"].get("floor")

            def inv(x: float | None) -> float | None:
                return 1 / x if x else None

            pipe = r.get("pipeline_sdk")
            fast = inv(r.get("adapter_fast"))
            target = FAST_TARGET[provider]
            fast_floor = _ratio(r.get("adapter_fast"), r.get("floor"))
            rows.append(
                f"| {title} | {path} | {row['t']['sdk'] / events * 1e6:.1f} "
                f"| {_fmt(pipe)}{_mark(None if pipe is None else pipe <= 1.05)} "
                f"| {_fmt(r.get('adapter_sdk'))} "
                f"| {_fmt(fast, '.1f')}"
                f"{_mark(None if fast is None or target is None else fast >= target)} "
                f"| {_fmt(inv(r.get('pipeline_fast')), '.1f')} "
                f"| {_fmt(fast_floor)}{_mark(None if fast_floor is None else fast_floor <= 2)} "
                f"| {_fmt(_ratio(r.get('pipeline_fast'), r.get('floor')))} "
                f"| {_fmt(None if floor is None else floor / events * 1e6, '.1f', '')} |"
            )
    return rows if len(rows) > 2 else []


def operator_table(benchmarks: Iterable[Mapping[str, Any]]) -> list[str]:
    """µs per chunk of each operator, and net of a bare Subject."""
    idx = _index(benchmarks)
    base_bench = idx.get(("operator", "", "", "subject"))
    if base_bench is None:
        return []
    base_n = int(base_bench["extra_info"]["chunks"])
    base = _t(base_bench)
    if base is None:
        return []
    base_per_chunk = base / base_n
    rows = [
        "| operator (chunks pushed through a Subject) | µs per chunk | net of the bare Subject |",
        "| --- | ---: | ---: |",
    ]
    ordered = sorted(
        (b for (kind, *_), b in idx.items() if kind == "operator"),
        key=lambda b: _t(b) or 0.0,
    )
    for bench in ordered:
        t = _t(bench)
        if t is None:
            continue
        info = bench["extra_info"]
        per_chunk = t / int(info["chunks"])
        net = "—" if info["role"] == "subject" else f"{(per_chunk - base_per_chunk) * 1e6:.2f}"
        rows.append(f"| {info.get('label', info['role'])} | {per_chunk * 1e6:.2f} | {net} |")
    return rows


def metric_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Persistence, concurrency, latency and memory results, one table each."""
    out: list[str] = []
    persist = metrics.get("persist")
    if persist:
        out += ["| persistence | result |", "| --- | ---: |"]
        out += [f"| {k} | {v} |" for k, v in persist.items()]
        every = metrics.get("checkpoint_every") or {}
        base = every.get("none")
        for key, label in (("none", "None"), ("1s", "1.0 (default)"), ("10ms", "0.01")):
            if key in every:
                ratio = (
                    f" = {every[key] / base:.3f}× the None run" if base and key != "none" else ""
                )
                out.append(
                    f"| per-chunk cost through cw.stream(), checkpoint_every={label} "
                    f"| {every[key]:.2f} µs{ratio} |"
                )
        out.append("")
    fanout = metrics.get("fanout") or {}
    base = fanout.get("none")
    if fanout and base:
        out += [
            "| publishing for watchers (cw.stream(), 20,000 chunks) | streaming thread CPU "
            "per chunk | ÷ fanout=None | whole process CPU per chunk | ÷ fanout=None |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for key in ("none", "memory", "redis"):
            if key in fanout:
                m = fanout[key]
                out.append(
                    f"| fanout={key} | {m['thread']:.2f} µs | {m['thread'] / base['thread']:.3f}× "
                    f"| {m['process']:.2f} µs | {m['process'] / base['process']:.3f}× |"
                )
        out.append("")
    attachments = metrics.get("attachments")
    if attachments:
        out += ["| attachments | result |", "| --- | ---: |"]
        out += [f"| {k} | {v} |" for k, v in attachments.items()]
        out.append("")
    conc = metrics.get("concurrency")
    if conc:
        out += [
            "| concurrency (asyncio, one SQLite file) | streams × events | checkpoint_every "
            "| checkpoint writes | CPU, concurrent | CPU, 1,000 × one stream alone "
            "| ratio (≤ 1.2) | all stored, exact |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, m in conc.items():
            ok = m["ratio"] <= 1.2 if m.get("checkpoint_every") is None else None
            out.append(
                f"| {name} | {m['streams']} × {m['events']} | {m.get('checkpoint_every')} "
                f"| {m.get('checkpoint_writes', '—')} | {m['cpu_s']:.2f} s "
                f"| {m['single_sum_s']:.2f} s | {m['ratio']:.2f}×{_mark(ok)} "
                f"| {'yes' if m['intact'] else 'NO'} ({m['stored']}/{m['streams']}) |"
            )
        out.append("")
    ttfc = metrics.get("ttfc")
    if ttfc:
        out += [
            "| CPU time to first text chunk | bare SDK | pipeline, SDK wire | added (≤ 100 µs) "
            "| pipeline, fast wire | added |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, m in ttfc.items():
            added = m.get("added_sdk_us")
            fast = m.get("pipeline_fast_us")
            fast_added = m.get("added_fast_us")
            out.append(
                f"| {name} | {m['bare_us']:.0f} µs | {m['pipeline_sdk_us']:.0f} µs "
                f"| {added:+.0f} µs{_mark(added <= 100)} "
                f"| {'—' if fast is None else f'{fast:.0f} µs'} "
                f"| {'—' if fast_added is None else f'{fast_added:+.0f} µs'} |"
            )
        out.append("")
    long_reply = metrics.get("long_reply")
    if long_reply:
        out += [
            "| long reply (own process, cw.call(), checkpoint_every=1.0) | UTF-8 size "
            "| peak RSS above the start | ÷ size (≤ 2.5) | checkpoints ÷ wall (≤ 10 %) "
            "| checkpoints' CPU ÷ CPU | ticks | exact |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, m in long_reply.items():
            ratio, share = m["peak_ratio"], m["checkpoint_share"]
            target = _mark(share <= 0.10) if m["mb"] >= 100 and m.get("every") else ""
            cpu_share = m.get("checkpoint_cpu_share")
            out.append(
                f"| {name} | {m['reply_bytes'] / 1e6:.0f} MB | {m['peak_bytes'] / 1e6:.0f} MB "
                f"| {ratio:.2f}×{_mark(ratio <= 2.5)} | {share:.1%}{target} "
                f"| {'—' if cpu_share is None else f'{cpu_share:.1%}'} | {m['ticks']} "
                f"| {'yes' if m['exact'] else 'NO'} |"
            )
        out.append("")
    many = metrics.get("many_streams")
    if many:
        out += [
            "| many streams (asyncio, one SQLite file, 200 events each) | checkpoint writes "
            "(transactions) | CPU, concurrent | CPU, one at a time × N | ratio (≤ 1.10) "
            "| 1 ms ticker lateness p50 / p99 / max | all stored, exact |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, m in many.items():
            ratio = m.get("ratio")
            single = m.get("single_s")
            alone = "—" if single is None else f"{single * m['streams']:.2f} s"
            out.append(
                f"| {name} | {m['checkpoint_drafts']} ({m['checkpoint_transactions']}) "
                f"| {m['cpu_s']:.2f} s "
                f"| {alone} "
                f"| {'—' if ratio is None else f'{ratio:.2f}×'}"
                f"{_mark(ratio <= 1.10) if ratio is not None and m['every'] else ''} "
                f"| {m['ticker_p50_ms']:.1f} / {m['ticker_p99_ms']:.1f} / "
                f"{m['ticker_max_ms']:.0f} ms | {'yes' if m['intact'] else 'NO'} |"
            )
        out.append("")
    memory = metrics.get("memory")
    if memory:
        out += [
            "| accumulating a reply | text | peak traced memory (tracemalloc, not RSS) "
            "| ÷ text (≤ 3) | time per MB |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, m in memory.items():
            ratio = m["peak_ratio"]
            out.append(
                f"| {name} | {m['text_mb']:.1f} MB | {m['peak_mb']:.1f} MB "
                f"| {ratio:.2f}×{_mark(ratio <= 3)} | {m['ms_per_mb']:.0f} ms |"
            )
        out.append("")
    return out


def peers_lines(peers: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> list[str]:
    """The peers run (its own virtual environment): ratios against its bare openai SDK.

    rxcontext's own OpenAI Chat ratios (sync, from the main run, same openai version when
    the peers venv resolves to it) are listed under them for comparison.
    """
    cases = peers.get("cases") or {}
    if not cases:
        return []
    paired = ((metrics or {}).get("paired") or {}).get("openai_chat sync")
    versions = ", ".join(f"{k} {v}" for k, v in (peers.get("versions") or {}).items())
    out = [
        f"| peer ({peers.get('events')} OpenAI Chat events; {versions}) | µs/event | ÷ bare SDK |",
        "| --- | ---: | ---: |",
    ]
    for name, m in cases.items():
        base = " (÷ the SDK's async iteration)" if m.get("baseline") == "openai_sdk_async" else ""
        out.append(f"| {name}{base} | {m['us_per_event']:.1f} | {m['ratio_vs_sdk']:.2f}× |")
    for name, err in (peers.get("errors") or {}).items():
        out.append(f"| {name} | not measured: {err} | |")
    if paired:
        events = paired["events"]
        for role, label in (
            ("pipeline_sdk", 'rxcontext cw.stream(), wire="sdk" (main run)'),
            ("pipeline_fast", 'rxcontext cw.stream(), wire="fast" (main run)'),
        ):
            if role in paired["vs_sdk"]:
                us = paired["median_s"][role] / events * 1e6
                out.append(f"| {label} | {us:.1f} | {paired['vs_sdk'][role]:.2f}× |")
    return out


def _added(ms: float | None) -> str:
    return "—" if ms is None else f"{ms:+.1f} ms"


def history_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Time to first chunk at 10 and 10,000 live records (bench_history.py)."""
    history = metrics.get("history")
    if not history:
        return []
    short, long = next(iter(history.values()))["records"]
    out = [
        f"CPU time to the first text chunk with {short:,} and {long:,} live records (medians of "
        f"{next(iter(history.values()))['rounds']} alternating samples each; see "
        "`benchmarks/bench_history.py` for the method). *Added* is the 10,000-record median "
        "minus the 10-record one; the target is ≤ 10 ms for the pipeline.",
        "",
        "| provider, wire | pipeline | added (≤ 10 ms) | store read, added | request alone "
        "| added | added, same record objects | first request (nothing encoded yet) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in history.items():
        p_short, p_long = m["pipeline_ms"]
        r_short, r_long = m["request_ms"]
        added = m["pipeline_added_ms"]
        out.append(
            f"| {name} | {p_short:.1f} → {p_long:.1f} ms | {added:+.1f} ms{_mark(added <= 10)} "
            f"| {m['store_added_ms']:+.1f} ms | {r_short:.1f} → {r_long:.1f} ms "
            f"| {m['request_added_ms']:+.1f} ms | {_added(m.get('reused_added_ms'))} "
            f"| {m['first_request_ms']:.0f} ms |"
        )
    return out


def render(
    benchmarks: Iterable[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    peers: Mapping[str, Any] | None = None,
) -> str:
    benchmarks = list(benchmarks)
    parts: list[tuple[str, list[str]]] = [
        ("Streams: the same bytes, against bare SDK iteration", stream_table(benchmarks, metrics)),
        ("Operators alone", operator_table(benchmarks)),
        ("Persistence, concurrency, time to first chunk, memory", metric_lines(metrics)),
        ("Long histories: time to first chunk at 10 and 10,000 records", history_lines(metrics)),
        ("Peers (their own virtual environment)", peers_lines(peers or {}, metrics)),
    ]
    return "\n\n".join(f"## {title}\n\n" + "\n".join(p).rstrip() for title, p in parts if p) + "\n"
