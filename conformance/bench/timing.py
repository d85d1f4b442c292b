"""Throughput: training-step time of AION vs the plain residual, per backend and width.

Each backend runs in its own process (:func:`aion_conformance.registry.call`), every width
in that one process, on its framework kit. Within it the variants (plain, aion, aion-k4,
and the kit's own residual kinds) are timed in rounds of one step each, in an order rotated
every round, so drift of the machine and the cache left by the previous variant hit all
alike; rounds go on until a time budget is spent. The overhead is the median of the
per-round ratios to the plain model, ± half their interquartile range: one slow round
(another process on the core) moves neither. GPU when the framework sees one; a kit that
measures device time itself (CUDA events) reports it. Model: :mod:`aion_conformance.bench.problem`.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path

from aion_conformance import registry
from aion_conformance.bench.problem import OP_PATH, VARIANTS, data, make_net
from aion_conformance.frameworks.optimizers import AdamW
from aion_conformance.plotting import pyplot

#: Backends that run the benchmark, in registry order.
BACKENDS = registry.with_problem("bench")
#: Every kit's own residual kinds, in registry order.
EXTRAS = list(dict.fromkeys(e for name in BACKENDS for e in registry.BACKENDS[name].extras))


def _buildable(kit, variant: str, compiled, backend: str = "") -> bool:
    if variant == OP_PATH:  # aion_pytorch's op path: eager torch only (compiled, aion is standard ops already)
        return backend == "torch" and not compiled
    if variant not in kit.EXTRA_RESIDUALS:
        return True
    cls = kit.EXTRA_RESIDUALS[variant]()
    return cls is not None and not (compiled and getattr(cls, "eager_only", False))


def bench_backend(backend: str, widths: list[int], variants: list[str], seconds: float, warmup: int,
                  batch: int, seq: int, compiled: bool = True) -> list[dict]:
    """Every width of one backend in this process: one row per width and bench mode.

    ``variants`` may name residual kinds of any kit: those this kit lacks, or cannot build
    here (not installed; eager-only under compilation), are left out. ``compiled`` False
    keeps the backend's first bench mode only.
    """
    kit = registry.kit(backend)
    modes = registry.BACKENDS[backend].bench_modes
    rows = []
    for width in widths:
        x, target = (kit.from_numpy(a, "float32") for a in data(batch, seq, width))
        for mode in modes if compiled else modes[:1]:
            made = {}
            for v in variants:
                if (v in VARIANTS or v in kit.EXTRA_RESIDUALS or v == OP_PATH) and _buildable(kit, v, mode, backend):
                    train = kit.trainer(kit.build(make_net(width, v)), AdamW(), compiled=mode, observe=False)
                    step = functools.partial(train, x, target)
                    made[v] = (_torch_tools().op_path(step) if v == OP_PATH else step, train.label)
            # Bytes saved for the backward pass (eager torch), measured on one step of each variant.
            saved = ({v: _torch_tools().saved_bytes(step) for v, (step, _) in made.items()}
                     if backend == "torch" and not mode else {})
            row = _time_variants(backend, width, made, seconds, warmup)
            if saved:
                row["saved_bytes"], row["activation_bytes"] = saved, batch * seq * width * 4
            rows.append(row)
    return rows


def _torch_tools():
    # The torch kit's bench helpers (the op path, saved-tensor bytes): imported in torch's process only.
    from aion_conformance.frameworks.torch import bench_layer

    return bench_layer


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
            device_seconds = made[v][0]()  # a kit that times the device itself returns it; else None
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


def run_benchmarks(backends, widths, seconds, warmup, batch, seq, variants=VARIANTS, compiled=True) -> list[dict]:
    """Every backend, each in a process of its own running all its widths; progress shown as it comes."""
    rows = []
    for i, backend in enumerate(backends, 1):
        print(f"  bench [{i}/{len(backends)}] {backend} D={','.join(map(str, widths))}: {warmup} warm-up "
              f"steps, then rounds of {', '.join(variants)} for {seconds:g} s per width", flush=True)
        try:
            rows += registry.call(f"{__name__}:bench_backend", backend, widths, list(variants), seconds, warmup,
                                  batch, seq, compiled, backend=backend, echo=True)
        except registry.BackendError as e:
            print(f"    {backend} failed: {e}", flush=True)
    return rows


def expected_rows(backends, widths, compiled=True) -> int:
    """How many rows :func:`run_benchmarks` gives when every backend runs."""
    return sum(len(widths) * (len(registry.BACKENDS[b].bench_modes) if compiled else 1) for b in backends)


def _shown(rows: list[dict]) -> list[str]:
    return [v for v in (*VARIANTS[1:], OP_PATH, *EXTRAS) if any(v in r["overhead"] for r in rows)]


def memory_table(rows: list[dict]) -> list[str]:
    """Bytes saved for backward per step, in activations (``B * T * D`` float32), where measured."""
    rows = [r for r in rows if r.get("saved_bytes")]
    if not rows:
        return []
    shown = ["plain", *(v for v in _shown(rows) if any(v in r["saved_bytes"] for r in rows))]
    lines = ["Saved for backward per training step (saved_tensors_hooks, distinct storages), in activations "
             "(B x T x D float32); MB in brackets", "",
             "| backend | device | D | " + " | ".join(shown) + " |", "|---" * (3 + len(shown)) + "|"]
    for r in rows:
        act, b = r["activation_bytes"], r["saved_bytes"]
        lines.append(f"| {r['backend']} | {r['device']} | {r['width']} | " + " | ".join(
            f"{b[v] / act:.2f} ({b[v] / 2**20:.1f})" if v in b else "-" for v in shown) + " |")
    return lines


def table(rows: list[dict]) -> list[str]:
    shown = _shown(rows)
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
    shown = _shown(rows)
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
