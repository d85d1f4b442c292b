"""``python -m aion_conformance.stability``: depth stability, the crash test as a benchmark.

    python -m aion_conformance.stability                 # default size: minutes on 2 CPU cores
    python -m aion_conformance.stability --full          # 100, 600 and 1000 layers: for a GPU
    python -m aion_conformance.stability --depths 8 64 --seeds 5 --backends torch flax-nnx

The sweeping backend (the registry's ``sweeps``) trains every variant at every depth for
every seed; the other backends train seed 0 at the check depths for ``--check-steps`` steps,
and their loss, gradient-norm and alpha curves must match its curves to float32 tolerance
over the first steps. Writes
``stability.md``, ``stability.json`` and ``stability_*.png`` into ``--out``; exits non-zero
when the cross-backend check fails (a variant that fails to train is a result, not an error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from aion_conformance import registry
from aion_conformance.stability import problem
from aion_conformance.stability.report import cross_table, plot, summarize, table
from aion_conformance.registry import SWEEPS
from aion_conformance.stability.runner import COMPARE_STEPS, TOLERANCE, cross_backend, run_sweep

BACKENDS = registry.with_problem("stability")
DEFAULT_DEPTHS, FULL_DEPTHS = [8, 32], [100, 600, 1000]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aion_conformance.stability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", nargs="+", type=int, help=f"{SWEEPS}'s depths (default {DEFAULT_DEPTHS}; "
                   f"--full: {FULL_DEPTHS})")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    p.add_argument("--steps", type=int, default=problem.STEPS)
    p.add_argument("--variants", nargs="+", default=list(problem.VARIANTS), choices=list(problem.VARIANTS))
    p.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS,
                   help=f"{SWEEPS} runs the sweep, the others the cross-backend check")
    p.add_argument("--check-depths", nargs="+", type=int, help="the other backends' depths (default: "
                   f"{SWEEPS}'s smallest; --full: 16)")
    p.add_argument("--check-steps", type=int, help="the other backends' steps (default 20; --full: all); "
                   f"the first {COMPARE_STEPS} are checked")
    p.add_argument("--threshold", type=float, default=0.01, help="the loss 'steps to' counts to")
    p.add_argument("--jobs", type=int, help="backend processes at a time, one CPU thread each "
                   "(default: the CPU count; --full: 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help=f"the device of the backends that read ${registry.DEVICE_ENV}")
    p.add_argument("--full", action="store_true", help=f"the original's depths {FULL_DEPTHS}, "
                   "meant for a GPU")
    p.add_argument("--out", type=Path, default=Path("reports"))
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    depths = args.depths or (FULL_DEPTHS if args.full else DEFAULT_DEPTHS)
    check_depths = args.check_depths or ([16] if args.full else [min(depths)])
    check_steps = args.check_steps or (args.steps if args.full else min(20, args.steps))
    jobs = args.jobs or (1 if args.full else os.cpu_count() or 1)
    os.environ[registry.DEVICE_ENV] = args.device
    seeds = list(range(args.seeds))
    groups = [(SWEEPS, s, d, args.variants, args.steps, s == 0) for d in depths for s in seeds]
    groups += [(SWEEPS, 0, d, args.variants, check_steps, True) for d in check_depths if d not in depths]
    checked = [b for b in args.backends if b != SWEEPS]
    groups += [(b, 0, d, args.variants, check_steps, True) for b in checked for d in check_depths]
    # The sweeping backend's twin runs: its own sensitivity to rounding, the check's bound where larger.
    groups += [(SWEEPS, 0, d, args.variants, COMPARE_STEPS, True, True) for d in check_depths if checked]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    runs = run_sweep(groups, jobs)
    wall = time.perf_counter() - start
    # The sweeping backend's own check-depth runs (not part of the sweep) serve the comparison only.
    sweep = [r for r in runs if r["backend"] == SWEEPS and r["depth"] in depths and not r.get("nudged")]
    rows = summarize(sweep, args.threshold)
    checks = cross_backend(runs)
    passed = all(c["passed"] for c in checks)
    devices = sorted({f"{r['backend']}: {r['device']}" for r in runs})
    meta = {"depths": depths, "seeds": seeds, "steps": args.steps, "variants": args.variants,
            "check_depths": check_depths, "check_steps": check_steps, "compare_steps": COMPARE_STEPS,
            "threshold": args.threshold, "jobs": jobs, "wall_seconds": wall, "cpu_count": os.cpu_count(),
            "load_average_at_start": load, "devices": devices,
            "protocol": {"dim": problem.DIM, "seq": problem.SEQ, "batch": problem.BATCH,
                         "vocab": problem.VOCAB, "lr": problem.LR, "crash_lr": problem.CRASH_LR,
                         "betas": problem.BETAS, "adam_eps": problem.ADAM_EPS, "clip_norm": problem.CLIP_NORM,
                         "ln_eps": problem.LN_EPS, "scale": problem.SCALE, "aion_beta": problem.AION_BETA}}
    lines = [f"{len(sweep)} {SWEEPS} runs and {len(runs) - len(sweep)} others (checks and twins) in "
             f"{wall / 60:.1f} min "
             f"({jobs} processes at a time, {os.cpu_count()} CPUs, load average at start "
             f"{'/'.join(f'{v:.1f}' for v in load) if load else 'n/a'}; {', '.join(devices)})", "",
             "Variants:", "", *[f"- `{v.name}` ({v.setting}): {v.doc}" for v in problem.VARIANTS.values()
                                if v.name in args.variants], "",
             *table(rows, args.threshold), "",
             f"Cross-backend check: seed 0, depth {', '.join(map(str, check_depths))}, every variant; worst "
             f"relative deviation from {SWEEPS} over the first {COMPARE_STEPS} steps", "",
             *cross_table(checks, TOLERANCE)]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stability.md").write_text("# Depth stability\n\n" + "\n".join(lines) + "\n")
    (args.out / "stability.json").write_text(json.dumps(
        {"meta": meta, "table": rows, "cross_backend": checks,
         "runs": [{**r, "scale": r["scale"] if r["seed"] == 0 else None} for r in runs]}))
    written = plot(sweep, args.out)
    print(f"wrote {args.out / 'stability.md'}, stability.json" + "".join(f", {p.name}" for p in written))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
