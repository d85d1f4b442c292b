"""``python -m aion_conformance.bench``: AION's overhead per training step, every backend.

    python -m aion_conformance.bench [--backends torch flax-nnx] [--widths 64 128 512] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aion_conformance.bench.timing import BACKENDS, plot, run_benchmarks, table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aion_conformance.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    p.add_argument("--widths", nargs="+", type=int, default=[64, 128, 512])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("reports"))
    args = p.parse_args(argv)
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
    sys.exit(main())
