"""Throughput: training-step time of AION vs the plain residual, per backend and width.

Each backend runs in its own process (:func:`aion_conformance.registry.call`). Within it
the variants (plain, aion, aion-k4) are timed in alternation, step by step, so drift of the
machine hits all alike; the overhead is the median of the per-round ratios. GPU when the
framework sees one, CPU otherwise. Model: see :mod:`aion_conformance.bench.models`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from aion_conformance import original, registry
from aion_conformance.plotting import pyplot

#: Backends with a benchmark step, in registry order.
BACKENDS = [name for name, b in registry.BACKENDS.items() if b.bench]
VARIANTS = ("plain", "aion", "aion-k4")
ORIGINAL = "aion-torch-1.0.2"  # timed beside ours on torch when installed


def bench_one(backend: str, width: int, steps: int, warmup: int, batch: int, seq: int) -> dict:
    """Time the variants of one backend and width in this process."""
    make = registry.load(registry.BACKENDS[backend].bench)
    variants = VARIANTS + ((ORIGINAL,) if backend == "torch" and original.load() is not None else ())
    made = {v: make(width, v, batch, seq) for v in variants}
    device = made["plain"][1]
    times = {v: [] for v in variants}
    for i in range(warmup + steps):
        for v in variants:
            t0 = time.perf_counter()
            made[v][0]()
            if i >= warmup:
                times[v].append(time.perf_counter() - t0)
        print(f"{backend} D={width}: step {i + 1}/{warmup + steps}", file=sys.stderr, flush=True)
    med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
    # Overhead: median over rounds of the paired ratio (same round, back to back), so drift
    # of the machine cancels; the spread is half the interquartile range of those ratios.
    paired = {v: [a / b for a, b in zip(times[v], times["plain"])] for v in variants if v != "plain"}
    return {"backend": backend, "width": width, "device": device, "median_ms": med,
            "overhead": {v: statistics.median(r) for v, r in paired.items()},
            "spread": {v: _half_iqr(r) for v, r in paired.items()}}


def _half_iqr(values: list[float]) -> float:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / 2


def run_benchmarks(backends, widths, steps, warmup, batch, seq) -> list[dict]:
    """Every backend and width, each in a process of its own; progress shown as it comes."""
    rows = []
    for i, backend in enumerate(backends, 1):
        for width in widths:
            print(f"  bench [{i}/{len(backends)}] {backend} D={width}: {warmup} warm-up + {steps} timed "
                  "steps per variant", flush=True)
            try:
                rows.append(registry.call(f"{__name__}:bench_one", backend, width, steps, warmup, batch, seq,
                                          backend=backend, echo=True))
            except registry.BackendError as e:
                print(f"    {backend} D={width} failed: {e}", flush=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = ["| backend | device | D | plain ms | aion ms | aion-k4 ms | aion / plain | aion-k4 / plain "
             f"| {ORIGINAL} / plain |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["median_ms"]

        def ratio(v):
            return f"{r['overhead'][v]:.3f} ± {r['spread'][v]:.3f}" if v in r["overhead"] else "-"

        lines.append(f"| {r['backend']} | {r['device']} | {r['width']} | {m['plain']:.2f} | {m['aion']:.2f} | "
                     f"{m['aion-k4']:.2f} | {ratio('aion')} | {ratio('aion-k4')} | {ratio(ORIGINAL)} |")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None or not rows:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 3.8))
    shown = [v for v in (*VARIANTS[1:], ORIGINAL) if any(v in r["overhead"] for r in rows)]
    width = 0.8 / len(shown)
    for j, v in enumerate(shown):
        ax.bar([i + width * j for i in range(len(rows))], [r["overhead"].get(v, 0.0) for r in rows], width,
               yerr=[r.get("spread", {}).get(v, 0.0) for r in rows], capsize=2, label=v)
    ax.axhline(1.0, color="k", lw=0.8)
    low = min(r["overhead"][v] for r in rows for v in shown if v in r["overhead"])
    ax.set_ylim(bottom=min(0.9, low - 0.05))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))],
                  [f"{r['backend']}\nD={r['width']}" for r in rows], fontsize=7)
    ax.set_ylabel("step time / plain residual")
    ax.set_title("AION overhead per training step (bars: ± half IQR)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
