"""``python -m aion_conformance``: run drivers, print the table, write the report.

    python -m aion_conformance                       # every built-in backend
    python -m aion_conformance --only torch numpy    # some of them
    python -m aion_conformance --driver pkg.mod:Cls  # an outside implementation too
    python -m aion_conformance --only mine --driver pkg.mod:Cls   # the outside one alone

Each driver runs in its own process. Exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aion_conformance import registry
from aion_conformance.registry import DEVICE_ENV
from aion_conformance.bench import timing
from aion_conformance.report import write_report
from aion_conformance.trajectory.parity import run_trajectories


def run_all(selected: list[tuple[str, str | None]]) -> list[dict]:
    runs = []
    for i, (spec, backend) in enumerate(selected, 1):
        print(f"[{i}/{len(selected)}] {spec} ...", flush=True)
        try:
            runs.append(registry.call("aion_conformance.runner:run_spec", spec, backend=backend))
        except registry.BackendError as e:
            print(f"    {spec} crashed:\n      " + str(e).replace("\n", "\n      "), flush=True)
            runs.append({"driver": spec, "versions": {}, "crashed": str(e), "results": []})
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aion_conformance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NAME", help="drivers to run, by name (built-in or outside)")
    p.add_argument("--driver", action="append", default=[], metavar="MODULE:CLASS",
                   help="an outside driver to run as well (repeatable)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="report folder")
    p.add_argument("--no-bench", action="store_true", help="skip the throughput benchmark")
    p.add_argument("--bench-seconds", type=float, default=5.0,
                   help="timing budget per backend and width (default 5; `nox -s bench` is the long run)")
    p.add_argument("--bench-widths", type=int, nargs="+", default=[128])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="torch executions on the CPU, on CUDA (required then), or both when CUDA is "
                        f"present (auto, the default; or ${DEVICE_ENV})")
    args = p.parse_args(argv)
    if args.device:
        os.environ[DEVICE_ENV] = args.device  # read in each backend's process
    selected = registry.select_for_cli(p, args.only, args.driver)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = run_all(selected)
    extra, ok = [], True
    names = [backend for _, backend in selected if backend]
    with_trajectory = [b for b in names if "trajectory" in registry.BACKENDS[b].problems]
    if with_trajectory:
        print(f"trajectories: {', '.join(with_trajectory)} ...", flush=True)
        ok, extra = run_trajectories(with_trajectory, args.out)
    with_bench = [b for b in names if "bench" in registry.BACKENDS[b].problems]
    if not args.no_bench and with_bench:
        print(f"throughput: {', '.join(with_bench)} ...", flush=True)
        rows = timing.run_benchmarks(with_bench, args.bench_widths, args.bench_seconds, 3, 8, 128,
                                     variants=("plain", "aion"), compiled=False)
        (args.out / "bench.json").write_text(json.dumps(rows, indent=1))
        timing.plot(rows, args.out / "bench.png")
        extra += ["", f"Throughput (B=8, T=128, 4 pre-norm FF blocks, AdamW; interleaved rounds for "
                  f"{args.bench_seconds:g} s per row; ratio: median of the per-round ratios to the plain "
                  "residual ± half their IQR; `nox -s bench` for all variants, torch.compile and longer runs)",
                  "", *timing.table(rows)]
    return 0 if write_report(runs, args.out, extra=extra) and ok else 1


if __name__ == "__main__":
    sys.exit(main())
