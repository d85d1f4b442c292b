"""Throughput: median training-step time of AION vs the plain residual, per backend.

Each backend runs in its own process (a Keras backend is fixed at import). Within it the
variants (plain, aion, aion-k4) are timed in alternation, step by step, so drift of the
machine hits all alike; the overhead is the ratio of medians. GPU when the framework
sees one, CPU otherwise. Model: see :mod:`conformance.bench_models`.

    python -m conformance.bench [--backends torch flax-nnx] [--widths 64 128 512] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from conformance import bench_models

#: backend -> (step factory, environment)
BACKENDS = {
    "torch": (bench_models.torch_step, {}),
    "keras-tensorflow": (bench_models.keras_step, {"KERAS_BACKEND": "tensorflow"}),
    "keras-jax": (bench_models.keras_step, {"KERAS_BACKEND": "jax"}),
    "keras-torch": (bench_models.keras_step, {"KERAS_BACKEND": "torch"}),
    "flax-nnx": (bench_models.flax_nnx_step, {}),
    "flax-linen": (bench_models.flax_linen_step, {}),
}
VARIANTS = ("plain", "aion", "aion-k4")
ORIGINAL = "aion-torch-1.0.2"  # timed beside ours on torch when the oracle is installed


def bench_one(backend: str, width: int, steps: int, warmup: int, batch: int, seq: int) -> dict:
    """Time the variants of one backend and width in this process."""
    from conformance.oracle import load_oracle

    variants = VARIANTS + ((ORIGINAL,) if backend == "torch" and load_oracle() is not None else ())
    made = {v: BACKENDS[backend][0](width, v, batch, seq) for v in variants}
    device = made["plain"][1]
    times = {v: [] for v in variants}
    for i in range(warmup + steps):
        for v in variants:
            t0 = time.perf_counter()
            made[v][0]()
            if i >= warmup:
                times[v].append(time.perf_counter() - t0)
        print(f"      {backend} D={width}: step {i + 1}/{warmup + steps}", file=sys.stderr, flush=True)
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
    rows = []
    for i, backend in enumerate(backends, 1):
        for width in widths:
            print(f"  bench [{i}/{len(backends)}] {backend} D={width}: {warmup} warm-up + {steps} timed "
                  "steps per variant", flush=True)
            env = dict(os.environ, **BACKENDS[backend][1])
            proc = subprocess.run([sys.executable, "-m", "conformance.bench", "--one", backend,
                                   "--widths", str(width), "--steps", str(steps), "--warmup", str(warmup),
                                   "--batch", str(batch), "--seq", str(seq)],
                                  env=env, stdout=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                print(f"    {backend} D={width} failed (exit {proc.returncode})", flush=True)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    p.add_argument("--widths", nargs="+", type=int, default=[64, 128, 512])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # for the child processes
    if args.one:
        print(json.dumps(bench_one(args.one, args.widths[0], args.steps, args.warmup, args.batch, args.seq)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_benchmarks(args.backends, args.widths, args.steps, args.warmup, args.batch, args.seq)
    lines = table(rows)
    print("\n".join(lines))
    (args.out / "bench.md").write_text("# AION throughput\n\n" + "\n".join(lines) + "\n")
    (args.out / "bench.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "bench.png")
    print(f"wrote {args.out / 'bench.md'}, bench.json, bench.png")
    return 0 if len(rows) == len(args.backends) * len(args.widths) else 1


if __name__ == "__main__":
    raise SystemExit(main())
