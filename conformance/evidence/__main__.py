"""``python -m aion_conformance.evidence``: does AION help a real language model train?

    python -m aion_conformance.evidence                  # default size: ~10 min on 2 CPU cores
    python -m aion_conformance.evidence --full --device cuda   # deeper, longer, more seeds: a GPU
    python -m aion_conformance.evidence --depths 4 --lrs 3e-3 --seeds 3 --variants standard aion

A small GPT learns the Python standard library's own sources byte by byte (held-out files
for validation; :mod:`.data`, :mod:`.problem`). torch trains the sweep: every variant at
every depth, learning rate and seed in float32, and a set of variants in bfloat16
(autocast) at the ``--bf16-lrs``; the other backends train seed 0 of the neutral variants
at ``--check-depth`` for ``--check-steps`` steps from the same weights and batches, and
their losses must match torch's to float32 tolerance. Each finished run is appended to
``<out>/evidence_runs.jsonl``; a rerun with the same arguments resumes (``--fresh``: start
over). Writes ``evidence.md``, ``evidence.json`` and ``evidence_*.png`` into ``--out``;
exits non-zero when the cross-backend check fails (a variant that fails to train is a
result, not an error).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

from aion_conformance import registry
from aion_conformance.evidence import data, problem, runner
from aion_conformance.evidence.report import (best_table, cross_table, plot, rule, shared_table, summarize,
                                               versus_table)
from aion_conformance.evidence.runner import COMPARE_STEPS, TOLERANCE, cross_backend, run_sweep

SWEEPS = registry.SWEEPS
BACKENDS = [b for b in registry.with_problem("stability")]
#: The default: two depths, two learning rates, three seeds, 200 steps of 8 x 64 bytes (~10 min on 2 cores).
DEFAULT = {"depths": [2, 6], "lrs": [3e-3, 1e-2], "deep_lrs": [1e-2], "seeds": 3, "steps": 200, "batch": 8,
           "bf16_lrs": [1e-2], "bf16_depths": [6]}
FULL = {"depths": [8, 24], "lrs": [1e-3, 3e-3, 1e-2, 3e-2], "deep_lrs": None, "seeds": 5, "steps": 2000,
        "batch": 32, "bf16_lrs": [3e-3, 1e-2], "bf16_depths": [8, 24]}
#: The variants of every depth but the shallowest (default), and of the bfloat16 rows.
DEEP = list(problem.CORE)
BF16 = ["standard", "fixed-0.1", "aion", "post-standard", "post-aion"]
CHECK_VARIANTS = ["standard", "aion", "aion-block", "layerscale", "post-fixed-0.1", "post-deepnorm"]


def _parser() -> argparse.ArgumentParser:
    names = list(problem.VARIANTS)
    p = argparse.ArgumentParser(prog="python -m aion_conformance.evidence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", nargs="+", type=int, help=f"layers (default {DEFAULT['depths']}; --full "
                   f"{FULL['depths']})")
    p.add_argument("--lrs", nargs="+", type=float, help=f"peak learning rates (default {DEFAULT['lrs']})")
    p.add_argument("--seeds", type=int, help="seeds 0 .. N-1 (default 3; --full 5)")
    p.add_argument("--steps", type=int, help="training steps (default 200; --full 2000)")
    p.add_argument("--batch", type=int, help="sequences per step (default 8; --full 32)")
    p.add_argument("--variants", nargs="+", choices=names, default=names,
                   help="the variants of the shallowest depth (default: all)")
    p.add_argument("--deep-variants", nargs="+", choices=names, default=DEEP,
                   help=f"the variants of the other depths (default: {' '.join(DEEP)}); 'all' with --all-deep")
    p.add_argument("--all-deep", action="store_true", help="every --variants at every depth")
    p.add_argument("--deep-lrs", nargs="+", type=float, help="the learning rates of the other depths "
                   f"(default {DEFAULT['deep_lrs']}, or --lrs when given; --full: --lrs)")
    p.add_argument("--bf16-lrs", nargs="*", type=float, help="learning rates of the bfloat16 rows "
                   f"(default {DEFAULT['bf16_lrs']}; none: no bfloat16 rows)")
    p.add_argument("--bf16-depths", nargs="*", type=int, help=f"depths of the bfloat16 rows (default "
                   f"{DEFAULT['bf16_depths']})")
    p.add_argument("--bf16-variants", nargs="+", choices=names, default=BF16)
    p.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS,
                   help=f"{SWEEPS} runs the sweep, the others the cross-backend check")
    p.add_argument("--check-depth", type=int, default=2)
    p.add_argument("--check-steps", type=int, default=COMPARE_STEPS)
    p.add_argument("--check-variants", nargs="+", choices=names, default=CHECK_VARIANTS)
    p.add_argument("--record-lr", type=float, help="the lr of the AION run whose alpha and ratio are "
                   "plotted (default: the largest float32 lr), at the deepest depth, seed 0")
    p.add_argument("--train-cap", type=int, default=data.TRAIN_CAP, help="bytes of training text")
    p.add_argument("--jobs", type=int, help="backend processes at a time, one CPU thread each "
                   "(default: the CPU count; --full: 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help=f"the device of the backends that read ${registry.DEVICE_ENV}")
    p.add_argument("--full", action="store_true", help=f"depths {FULL['depths']}, {FULL['steps']} steps, "
                   f"lrs {FULL['lrs']}, {FULL['seeds']} seeds, every variant at every depth: for a GPU")
    p.add_argument("--fresh", action="store_true", help="ignore the runs already in the log")
    p.add_argument("--report-only", action="store_true", help="train nothing: the report of the runs of "
                   "these arguments already in the log (a sweep still running, or cut short)")
    p.add_argument("--out", type=Path, default=Path("reports"))
    return p


def plan(args) -> tuple[list[dict], dict]:
    """The groups to run, and the settings they come from."""
    size = FULL if args.full else DEFAULT
    depths = args.depths or size["depths"]
    lrs = args.lrs or size["lrs"]
    seeds = list(range(args.seeds or size["seeds"]))
    steps, batch = args.steps or size["steps"], args.batch or size["batch"]
    bf16_lrs = size["bf16_lrs"] if args.bf16_lrs is None else args.bf16_lrs
    bf16_depths = [d for d in (size["bf16_depths"] if args.bf16_depths is None else args.bf16_depths) if d in depths]
    if not bf16_depths and bf16_lrs and args.bf16_depths is None:
        bf16_depths = [max(depths)]
    all_deep = args.all_deep or args.full
    deep_lrs = args.deep_lrs or (lrs if args.lrs or not size["deep_lrs"] else size["deep_lrs"])
    record_lr = args.record_lr or max(deep_lrs)
    eval_every = max(1, min(problem.EVAL_EVERY * steps // problem.STEPS, steps))
    per_depth: list[list[dict]] = []
    common = {"steps": steps, "batch": batch, "eval_every": eval_every, "train_cap": args.train_cap}
    for depth in depths:
        groups: list[dict] = []
        per_depth.append(groups)
        variants = args.variants if depth == min(depths) or all_deep else \
            [v for v in args.deep_variants if v in args.variants]
        mine = lrs if depth == min(depths) else deep_lrs
        for lr in sorted(mine, reverse=True):  # the hardest setting first
            for seed in seeds:
                specs = [{"variant": v, "lr": lr, "precision": None,
                          "record": v == "aion" and seed == 0 and depth == max(depths) and lr == record_lr}
                         for v in variants]
                if depth in bf16_depths and lr in bf16_lrs:
                    specs += [{"variant": v, "lr": lr, "precision": "bfloat16", "record": False}
                              for v in args.bf16_variants if v in args.variants]
                groups.append({"backend": SWEEPS, "seed": seed, "depth": depth, "specs": specs, **common})
    # The depths interleaved, so that a sweep cut short has runs of each.
    groups = [g for row in itertools.zip_longest(*per_depth) for g in row if g is not None]
    check_lr = min(lrs, key=lambda lr: abs(lr - 3e-3))
    checks = [b for b in args.backends if b != SWEEPS]
    if checks:
        check = {"seed": 0, "depth": args.check_depth, "steps": args.check_steps, "batch": batch,
                 "eval_every": args.check_steps, "train_cap": args.train_cap}
        specs = [{"variant": v, "lr": check_lr, "precision": None, "record": False} for v in args.check_variants
                 if not problem.VARIANTS[v].torch_only]
        # The check first: its processes start while the sweep's long groups run.
        groups = [{"backend": b, "specs": specs, **check} for b in [SWEEPS, *checks]] + groups
    settings = {"depths": depths, "lrs": lrs, "deep_lrs": deep_lrs, "seeds": seeds, "steps": steps,
                "batch": batch,
                "bf16_lrs": bf16_lrs, "bf16_depths": bf16_depths, "check_backends": checks,
                "check_depth": args.check_depth, "check_steps": args.check_steps, "check_lr": check_lr,
                "record_lr": record_lr, "eval_every": eval_every}
    return groups, settings


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    os.environ[registry.DEVICE_ENV] = args.device
    groups, settings = plan(args)
    jobs = args.jobs or (1 if args.full else os.cpu_count() or 1)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "evidence_runs.jsonl"
    if args.fresh and log.exists():
        log.unlink()
    corpus = data.corpus(args.train_cap)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"corpus: Python {corpus['python']} standard library, {corpus['files']} files; train "
          f"{len(corpus['train']):,} bytes of {len(corpus['train_files'])} files, held out "
          f"{len(corpus['held_out']):,} bytes of {len(corpus['held_out_files'])} files", flush=True)
    start = time.perf_counter()
    runs = run_sweep(groups, jobs, log, run=not args.report_only)
    wall = time.perf_counter() - start
    steps = settings["steps"]
    # (The check's torch runs are the sweep's own where their settings coincide: each run once.)
    sweep = list({runner.key(r): r for r in runs if r["backend"] == SWEEPS and "error" not in r
                  and r["steps"] == steps and r["depth"] in settings["depths"]}.values())
    rows = summarize(sweep)
    checks = cross_backend([r for r in runs if r.get("steps", settings["check_steps"]) == settings["check_steps"]
                            and r.get("depth") == settings["check_depth"]])
    passed = all(c["passed"] for c in checks)
    devices = sorted({f"{r['backend']}: {r['device']}" for r in runs if "device" in r})
    meta = {**settings, "variants": args.variants, "jobs": jobs, "wall_seconds": wall, "cpu_count": os.cpu_count(),
            "load_average_at_start": load, "devices": devices, "python": corpus["python"],
            "corpus": {k: corpus[k] if k in ("files", "python", "root") else len(corpus[k])
                       for k in ("files", "python", "root", "train", "held_out", "train_files", "held_out_files")},
            "protocol": {"dim": problem.DIM, "heads": problem.HEADS, "seq": problem.SEQ, "vocab": data.VOCAB,
                         "betas": problem.BETAS, "adam_eps": problem.ADAM_EPS,
                         "weight_decay": problem.WEIGHT_DECAY, "clip_norm": problem.CLIP_NORM,
                         "warmup_fraction": problem.WARMUP_FRACTION, "final_lr": problem.FINAL_LR,
                         "aion_beta": problem.AION_BETA, "rise": problem.RISE, "degraded": problem.DEGRADED,
                         "held_out_every": data.HELD_OUT_EVERY, "val_windows": data.VAL_WINDOWS}}
    planned = len({(g["backend"], g["depth"], g["seed"], s["variant"], s["lr"], s["precision"], g["steps"])
                   for g in groups for s in g["specs"]})
    trained = sum(r.get("seconds", 0.0) for r in runs)
    how = ("report of the runs in the log, nothing trained" if args.report_only else
           f"in {wall / 60:.1f} min ({jobs} processes at a time, {os.cpu_count()} CPUs, load average at start "
           f"{'/'.join(f'{v:.1f}' for v in load) if load else 'n/a'})")
    meta.update(planned_runs=planned, done_runs=len(runs), training_seconds=trained, report_only=args.report_only)
    lines = [f"{len(sweep)} {SWEEPS} runs and {len(runs) - len(sweep)} others of {planned} planned, {how}; "
             f"{trained / 60:.1f} min of training summed over runs; {', '.join(devices)}", "",
             f"Corpus: Python {corpus['python']}'s standard library, {len(corpus['train']):,} training bytes, "
             f"{len(corpus['held_out']):,} held-out bytes ({data.VAL_WINDOWS} windows of {problem.SEQ} evaluated). "
             f"Model: D {problem.DIM}, {problem.HEADS} heads, context {problem.SEQ}; {steps} steps of "
             f"{settings['batch']} x {problem.SEQ} bytes; depths {settings['depths']}, lrs {settings['lrs']} (the "
             f"deeper depths: {settings['deep_lrs']}), "
             f"seeds {len(settings['seeds'])}.", "",
             *best_table(rows), *shared_table(rows), *versus_table(rows), rule(), ""]
    if checks:
        lines += [f"Cross-backend check: seed 0, depth {settings['check_depth']}, lr {settings['check_lr']:g}, "
                  f"{settings['check_steps']} steps; deviation of the training loss from {SWEEPS}", "",
                  *cross_table(checks, TOLERANCE)]
    print("\n".join(lines))
    (args.out / "evidence.md").write_text("# Evidence: a byte-level language model\n\n" + "\n".join(lines) + "\n")
    (args.out / "evidence.json").write_text(json.dumps(
        {"meta": meta, "table": rows, "cross_backend": checks,
         "runs": [{k: v for k, v in r.items() if k not in ("loss", "grad_norm") or r.get("seed") == 0}
                  for r in runs]}))
    written = plot(sweep, args.out)
    print(f"wrote {args.out / 'evidence.md'}, evidence.json, {log.name}" + "".join(f", {p.name}" for p in written))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
