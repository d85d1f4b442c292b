"""Throughput: training-step time of AION vs the plain residual, per backend and width.

Each backend runs in its own process (:func:`aion_conformance.registry.call`), every width
in that one process. Within it the variants (plain, aion, aion-k4, ...) are timed in rounds
of one step each, in an order rotated every round, so drift of the machine and the cache
left by the previous variant hit all alike; rounds go on until a time budget is spent.
The overhead is the median of the per-round ratios to the plain model, ± half their
interquartile range: one slow round (another process on the core) moves neither.
GPU when the framework sees one (torch: ``device``), CPU otherwise; on CUDA a step is
timed with CUDA events. Model: see :mod:`aion_conformance.bench.models`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from aion_conformance import original, registry
from aion_conformance.bench.models import FLOOR
from aion_conformance.plotting import pyplot

#: Backends with a benchmark step, in registry order.
BACKENDS = [name for name, b in registry.BACKENDS.items() if b.bench]
VARIANTS = ("plain", "aion", "aion-k4")
ORIGINAL = "aion-torch-1.0.2"  # timed beside ours on torch when installed


def bench_backend(backend: str, widths: list[int], variants: list[str], seconds: float, warmup: int,
                  batch: int, seq: int, device: str = "auto", compiled: bool = False) -> list[dict]:
    """Every width of one backend in this process: one row per width (and per mode on torch)."""
    make = registry.load(registry.BACKENDS[backend].bench)
    variants = list(variants)
    if backend == "torch" and ORIGINAL not in variants and original.load() is not None:
        variants.append(ORIGINAL)
    # torch, and Keras on torch (jit_compile: torch.compile), also run compiled when asked.
    modes = [False, True] if backend in ("torch", "keras-torch") and compiled else [False]
    rows = []
    for width in widths:
        for mode in modes:
            extra = ({"device": device, "compiled": mode} if backend == "torch"
                     else {"jit": mode} if backend == "keras-torch" else {})
            # The floor is an eager bound: eager only. The original compiles with graph breaks
            # (it reads its ratio on the host, .item()), as its users' torch.compile(model) does.
            made = {v: make(width, v, batch, seq, **extra) for v in variants if not (mode and v == FLOOR)}
            rows.append(_time_variants(backend, width, made, seconds, warmup))
    return rows


def _time_variants(backend, width, made, seconds, warmup, min_rounds=10, max_rounds=2000) -> dict:
    variants = list(made)
    for _ in range(warmup):  # compiles (jit, torch.compile) and warms the caches
        for v in variants:
            made[v][0]()
    times = {v: [] for v in variants}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < seconds and rounds < max_rounds):
        k = rounds % len(variants)
        for v in variants[k:] + variants[:k]:
            t0 = time.perf_counter()
            device_seconds = made[v][0]()  # CUDA steps return their event time; others None
            times[v].append(device_seconds if device_seconds is not None else time.perf_counter() - t0)
        rounds += 1
    label = made["plain"][1]
    print(f"{backend} D={width} {label}: {rounds} rounds in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)
    # Overhead: median over rounds of the paired ratio (same round, back to back), so drift
    # of the machine cancels; the spread is half the interquartile range of those ratios.
    paired = {v: [a / b for a, b in zip(times[v], times["plain"])] for v in variants if v != "plain"}
    return {"backend": backend, "width": width, "device": label, "rounds": rounds,
            "median_ms": {v: statistics.median(t) * 1e3 for v, t in times.items()},
            "overhead": {v: statistics.median(r) for v, r in paired.items()},
            "spread": {v: _half_iqr(r) for v, r in paired.items()}}


def _half_iqr(values: list[float]) -> float:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / 2


def run_benchmarks(backends, widths, seconds, warmup, batch, seq, variants=VARIANTS, device="auto",
                   compiled=False) -> list[dict]:
    """Every backend, each in a process of its own running all its widths; progress shown as it comes."""
    rows = []
    for i, backend in enumerate(backends, 1):
        print(f"  bench [{i}/{len(backends)}] {backend} D={','.join(map(str, widths))}: {warmup} warm-up "
              f"steps, then rounds of {', '.join(variants)} for {seconds:g} s per width", flush=True)
        try:
            rows += registry.call(f"{__name__}:bench_backend", backend, widths, list(variants), seconds, warmup,
                                  batch, seq, device, compiled, backend=backend, echo=True)
        except registry.BackendError as e:
            print(f"    {backend} failed: {e}", flush=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    shown = [v for v in (*VARIANTS[1:], ORIGINAL, FLOOR) if any(v in r["overhead"] for r in rows)]
    lines = ["| backend | device | D | rounds | plain ms | " + " | ".join(f"{v} ms" for v in shown) + " | "
             + " | ".join(f"{v} / plain" for v in shown) + " |", "|---" * (5 + 2 * len(shown)) + "|"]
    for r in rows:
        m = r["median_ms"]

        def ratio(v):
            return f"{r['overhead'][v]:.3f} ± {r['spread'][v]:.3f}" if v in r["overhead"] else "-"

        lines.append(f"| {r['backend']} | {r['device']} | {r['width']} | {r['rounds']} | {m['plain']:.2f} | "
                     + " | ".join(f"{m[v]:.2f}" if v in m else "-" for v in shown) + " | "
                     + " | ".join(ratio(v) for v in shown) + " |")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None or not rows:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 3.8))
    shown = [v for v in (*VARIANTS[1:], ORIGINAL, FLOOR) if any(v in r["overhead"] for r in rows)]
    width = 0.8 / len(shown)
    for j, v in enumerate(shown):
        ax.bar([i + width * j for i in range(len(rows))], [r["overhead"].get(v, 0.0) for r in rows], width,
               yerr=[r.get("spread", {}).get(v, 0.0) for r in rows], capsize=2, label=v)
    ax.axhline(1.0, color="k", lw=0.8)
    low = min(r["overhead"][v] for r in rows for v in shown if v in r["overhead"])
    ax.set_ylim(bottom=min(0.9, low - 0.05))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))],
                  [f"{r['backend']}\n{r['device']}\nD={r['width']}" for r in rows], fontsize=7)
    ax.set_ylabel("step time / plain residual")
    ax.set_title("AION overhead per training step (bars: ± half IQR)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
