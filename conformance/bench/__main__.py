"""``python -m aion_conformance.bench``: AION's overhead per training step, every backend.

    python -m aion_conformance.bench [--backends torch flax-nnx] [--widths 64 128 512] [--seconds 20]
    python -m aion_conformance.bench --original      # aion-torch 1.0.2's own benchmark: torch, D=512
    python -m aion_conformance.bench --device cuda   # torch on the GPU, timed with CUDA events

torch and Keras on torch run eagerly and under ``torch.compile`` (``--no-compile``: eagerly only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aion_conformance.bench.models import FLOOR
from aion_conformance.bench.timing import BACKENDS, ORIGINAL, VARIANTS, plot, run_benchmarks, table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aion_conformance.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    p.add_argument("--widths", nargs="+", type=int, default=[64, 128, 512])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, ORIGINAL, FLOOR],
                   help="plain is always timed: the ratios are to it")
    p.add_argument("--seconds", type=float, default=20.0, help="timing budget per backend, width and mode")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="torch's device")
    p.add_argument("--no-compile", action="store_true", help="torch, keras-torch: no torch.compile rows")
    p.add_argument("--original", action="store_true",
                   help=f"aion-torch 1.0.2's overhead benchmark: torch, 4 blocks, D=512, B=8, T=128, with {ORIGINAL}")
    p.add_argument("--out", type=Path, default=Path("reports"))
    args = p.parse_args(argv)
    if args.original:
        args.backends, args.widths, args.batch, args.seq = ["torch"], [512], 8, 128
        args.variants = ["aion", ORIGINAL]
    variants = ["plain", *(v for v in args.variants if v != "plain")]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_benchmarks(args.backends, args.widths, args.seconds, args.warmup, args.batch, args.seq,
                          variants, args.device, not args.no_compile)
    lines = table(rows)
    print("\n".join(lines))
    (args.out / "bench.md").write_text("# AION throughput\n\n" + "\n".join(lines) + "\n")
    (args.out / "bench.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "bench.png")
    print(f"wrote {args.out / 'bench.md'}, bench.json, bench.png")
    expected = sum(len(args.widths) * (2 if b in ("torch", "keras-torch") and not args.no_compile else 1)
                   for b in args.backends)
    return 0 if len(rows) == expected else 1


if __name__ == "__main__":
    sys.exit(main())
