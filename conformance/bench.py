"""Throughput: median training-step time of AION vs the plain residual, same run, interleaved.

The model is the original's overhead benchmark: 4 pre-norm feed-forward blocks
(LayerNorm, Linear(D, 4D), GELU, Linear(4D, D)), B=8, T=128, AdamW(lr 1e-3, betas
0.9/0.95), MSE to a random target. Variants are timed in alternation, step by step, so
drift of the machine hits both alike; the overhead is the ratio of medians.

    python -m conformance.bench [--widths 64 128 512] [--steps 30] [--out reports]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _torch_step(width: int, variant: str, batch: int, seq: int):
    import torch

    from aion_torch import AionResidual

    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(width)
            self.ff = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                          torch.nn.Linear(4 * width, width))
            self.aion = AionResidual() if variant != "plain" else None
            self.k = 4 if variant == "aion-k4" else 1
            if self.aion is not None and self.k > 1:
                self.aion = AionResidual(k_update=self.k)

        def forward(self, x):
            xn = self.norm(x)
            y = self.ff(xn)
            return x + y if self.aion is None else self.aion(x, y, x_norm=xn)

    model = torch.nn.Sequential(*[Block() for _ in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    x, target = torch.randn(batch, seq, width), torch.randn(batch, seq, width)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), target).backward()
        opt.step()

    return step


BACKENDS = {"torch": _torch_step}
VARIANTS = ("plain", "aion", "aion-k4")


def bench(backend: str, width: int, steps: int, warmup: int, batch: int, seq: int) -> dict:
    fns = {v: BACKENDS[backend](width, v, batch, seq) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    for i in range(warmup + steps):
        for v in VARIANTS:  # interleaved
            t0 = time.perf_counter()
            fns[v]()
            if i >= warmup:
                times[v].append(time.perf_counter() - t0)
        if (i + 1) % 10 == 0:
            print(f"    {backend} D={width}: step {i + 1}/{warmup + steps}", flush=True)
    med = {v: statistics.median(t) * 1e3 for v, t in times.items()}
    return {"backend": backend, "width": width, "median_ms": med,
            "overhead": {v: med[v] / med["plain"] for v in VARIANTS if v != "plain"}}


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['backend']}\nD={r['width']}" for r in rows]
    for j, v in enumerate(VARIANTS[1:]):
        ax.bar([i + 0.4 * j for i in range(len(rows))], [r["overhead"][v] for r in rows], 0.4, label=v)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + 0.2 for i in range(len(rows))], labels)
    ax.set_ylabel("step time / plain residual")
    ax.set_title("AION overhead per training step (median, interleaved)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    p.add_argument("--widths", nargs="+", type=int, default=[64, 128, 512])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("reports"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for backend in args.backends:
        for width in args.widths:
            print(f"[{backend} D={width}] {args.warmup} warm-up + {args.steps} timed steps per variant", flush=True)
            rows.append(bench(backend, width, args.steps, args.warmup, args.batch, args.seq))
    lines = ["| backend | D | plain ms | aion ms | aion-k4 ms | aion / plain | aion-k4 / plain |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m, o = r["median_ms"], r["overhead"]
        lines.append(f"| {r['backend']} | {r['width']} | {m['plain']:.2f} | {m['aion']:.2f} | "
                     f"{m['aion-k4']:.2f} | {o['aion']:.3f} | {o['aion-k4']:.3f} |")
    print("\n".join(lines))
    (args.out / "bench.md").write_text("# AION throughput (CPU)\n\n" + "\n".join(lines) + "\n")
    (args.out / "bench.json").write_text(json.dumps(rows, indent=1))
    _plot(rows, args.out / "bench.png")
    print(f"wrote {args.out / 'bench.md'}, bench.json, bench.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
