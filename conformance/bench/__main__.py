"""``python -m aion_conformance.bench``: AION's overhead per training step, every backend.

    python -m aion_conformance.bench [--backends torch flax-nnx] [--widths 64 128 512] [--seconds 20]
    python -m aion_conformance.bench --original      # aion-torch 1.0.2's own benchmark: D=512, B=8, T=128
    python -m aion_conformance.bench --device cuda   # on the GPU (backends that take --device)

Each backend runs every bench mode its registry entry lists (eager and compiled where both
exist; ``--no-compile``: the first only), and beside plain, aion and aion-k4 the residual
kinds its kit adds (its registry ``extras``), where installed; eager torch also ``aion-ops``
(``aion_pytorch``'s op path, without its C++ kernel) and the bytes each variant saves for
its backward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aion_conformance import registry
from aion_conformance.bench.problem import OP_PATH
from aion_conformance.bench.timing import (BACKENDS, EXTRAS, VARIANTS, expected_rows, memory_table, plot,
                                           run_benchmarks, table)

ORIGINAL = "aion-torch-1.0.2"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aion_conformance.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    p.add_argument("--widths", nargs="+", type=int, help="default 64 128 512 (--original: 512)")
    p.add_argument("--variants", nargs="+", default=[*VARIANTS, OP_PATH, *EXTRAS],
                   choices=[*VARIANTS, OP_PATH, *EXTRAS],
                   help=f"plain is always timed: the ratios are to it (default: all; {OP_PATH}: eager torch "
                        "with aion_pytorch's op path instead of its C++ kernel)")
    p.add_argument("--seconds", type=float, default=20.0, help="timing budget per backend, width and mode")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, help="default 8")
    p.add_argument("--seq", type=int, help="default 128")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help=f"the device of the backends that read ${registry.DEVICE_ENV}")
    p.add_argument("--no-compile", action="store_true", help="each backend's first bench mode only")
    p.add_argument("--original", action="store_true",
                   help=f"aion-torch 1.0.2's overhead benchmark: 4 blocks, D=512, B=8, T=128, with {ORIGINAL}, "
                        "on the backends whose kit builds it")
    p.add_argument("--out", type=Path, default=Path("reports"))
    args = p.parse_args(argv)
    if args.original:
        args.backends = [b for b in args.backends if ORIGINAL in registry.BACKENDS[b].extras]
        # (sizes given explicitly are kept: a dry run's toy sizes)
        args.widths, args.variants = args.widths or [512], ["aion", OP_PATH, ORIGINAL]
    args.widths, args.batch, args.seq = args.widths or [64, 128, 512], args.batch or 8, args.seq or 128
    os.environ[registry.DEVICE_ENV] = args.device  # read in each backend's process
    variants = ["plain", *(v for v in args.variants if v != "plain")]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run_benchmarks(args.backends, args.widths, args.seconds, args.warmup, args.batch, args.seq,
                          variants, not args.no_compile)
    lines = table(rows)
    lines += ["", *memory_table(rows)] if memory_table(rows) else []
    print("\n".join(lines))
    (args.out / "bench.md").write_text("# AION throughput\n\n" + "\n".join(lines) + "\n")
    (args.out / "bench.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "bench.png")
    print(f"wrote {args.out / 'bench.md'}, bench.json, bench.png")
    return 0 if len(rows) == expected_rows(args.backends, args.widths, not args.no_compile) else 1


if __name__ == "__main__":
    sys.exit(main())
