"""``python -m conformance``: run drivers, print the table, write the report.

    python -m conformance                      # every built-in driver, each in its own process
    python -m conformance --only torch numpy   # some of them
    python -m conformance --driver pkg.mod:Cls # an external implementation too
    python -m conformance --one NAME_OR_SPEC --json out.json   # (internal) one driver, here

Exits non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from conformance import bench
from conformance.drivers import DRIVERS
from conformance.report import write_report
from conformance.trajectory_report import RUNNERS, run_trajectories


def load_driver(spec: str):
    target = DRIVERS[spec][0] if spec in DRIVERS else spec
    module, _, cls = target.partition(":")
    if not cls:
        raise SystemExit(f"--driver wants 'package.module:Class', got {spec!r}")
    return getattr(importlib.import_module(module), cls)()


def run_one(spec: str, out: Path) -> None:
    from conformance.runner import run_driver

    driver = load_driver(spec)
    results = run_driver(driver)
    out.write_text(json.dumps({"driver": driver.name, "versions": driver.versions(),
                               "results": [asdict(r) for r in results]}))


def run_all(specs: list[str], outdir: Path) -> list[dict]:
    runs = []
    for i, spec in enumerate(specs, 1):
        env = dict(os.environ, **(DRIVERS[spec][1] if spec in DRIVERS else {}))
        out = outdir / f"driver-{i}.json"
        print(f"[{i}/{len(specs)}] {spec} ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "conformance", "--one", spec, "--json", str(out)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            runs.append({"driver": spec, "versions": {}, "crashed": "\n".join(tail), "results": []})
            print(f"    {spec} crashed:\n      " + "\n      ".join(tail), flush=True)
            continue
        runs.append(json.loads(out.read_text()))
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(DRIVERS), help="built-in drivers to run")
    p.add_argument("--driver", action="append", default=[], metavar="MODULE:CLASS",
                   help="an external driver to run as well (repeatable)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="report folder")
    p.add_argument("--no-bench", action="store_true", help="skip the throughput benchmark")
    p.add_argument("--bench-steps", type=int, default=10, help="timed steps per variant (default 10)")
    p.add_argument("--bench-widths", type=int, nargs="+", default=[64, 128, 512])
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # for the child processes
    if args.one:
        run_one(args.one, args.json)
        return 0
    specs = (args.only or list(DRIVERS)) + args.driver
    args.out.mkdir(parents=True, exist_ok=True)
    runs = run_all(specs, args.out)
    backends = [s for s in specs if s in RUNNERS]
    print(f"trajectories: {', '.join(backends) or 'none'} ...", flush=True)
    traj_ok, extra = run_trajectories(backends, args.out)
    bench_backends = [s for s in specs if s in bench.BACKENDS]
    if not args.no_bench and bench_backends:
        print(f"throughput: {', '.join(bench_backends)} ...", flush=True)
        rows = bench.run_benchmarks(bench_backends, args.bench_widths, args.bench_steps, 3, 8, 128)
        (args.out / "bench.json").write_text(json.dumps(rows, indent=1))
        bench.plot(rows, args.out / "bench.png")
        extra += ["", f"Throughput (B=8, T=128, 4 pre-norm FF blocks, AdamW; {args.bench_steps} interleaved "
                  "rounds; ratio: median of the per-round ratios to the plain residual ± half their IQR)",
                  "", *bench.table(rows)]
    return 0 if write_report(runs, args.out, extra=extra) and traj_ok else 1


if __name__ == "__main__":
    sys.exit(main())
