"""Running the evidence sweep: groups of runs per backend process, in parallel, resumable.

A *run* is one ``(backend, depth, seed, variant, lr, precision)`` trained for some steps.
Runs of one ``(backend, seed, depth)`` and learning rate share a process (the corpus and
weights are built once); groups run ``jobs`` at a time, each process on one CPU thread
(small matrix products scale badly over threads). Each finished run is appended at once to
a JSON-lines log, and a run already in the log is not run again: an interrupted sweep
resumes where it stopped, and a partial one still gives tables.
"""

from __future__ import annotations

import fcntl
import json
import sys
from math import inf
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from aion_conformance import registry
from aion_conformance.evidence import problem
from aion_conformance.spec.tolerance import RTOL, compare
from aion_conformance.stability.runner import ONE_THREAD, Progress

#: Steps over which every backend's training loss must match torch's at float32 tolerance.
COMPARE_STEPS = 10
#: A run's fixed cost (building, the evaluations) in layer-steps, for the progress bar.
RUN_OVERHEAD = 200
TOLERANCE = RTOL["float32"]
#: What makes two runs the same run (the log's key).
KEY = ("backend", "depth", "seed", "variant", "lr", "precision", "steps", "batch")


def key(run: dict) -> tuple:
    return tuple(run[k] for k in KEY)


def append(log: str | None, result: dict) -> None:
    """One run as a line of the log (locked: two processes append at once)."""
    if log is None:
        return
    with open(log, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(result) + "\n")
        fcntl.flock(f, fcntl.LOCK_UN)


def read_log(log: Path) -> list[dict]:
    """Every complete run in the log (a line cut short by a kill is skipped)."""
    if not log.exists():
        return []
    runs = []
    for line in log.read_text().splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return runs


def train_group(backend: str, seed: int, depth: int, specs: list[dict], steps: int, batch: int,
                eval_every: int, train_cap: int, log: str | None) -> list[dict]:
    """In the backend's own process: each ``{"variant", "lr", "precision", "record"}`` of
    ``specs``, one after another, each appended to ``log`` when done."""
    kit = registry.kit(backend)
    results = []
    for s in specs:
        result = problem.run(kit, seed, depth, s["variant"], s["lr"], steps, s["precision"], batch,
                             s["record"], eval_every, train_cap)
        result = {"backend": backend, "depth": depth, "seed": seed, "variant": s["variant"], "lr": s["lr"],
                  "precision": s["precision"], "steps": steps, "batch": batch, "record": s["record"], **result}
        append(log, result)
        results.append(result)
        val = result["val"][-1][1] if result["val"] else float("nan")
        print(f"{backend} depth {depth} seed {seed} lr {s['lr']:g} {s['precision'] or 'float32'} {s['variant']}: "
              f"val {val:.4f} nats/byte in {result['seconds']:.1f} s", file=sys.stderr, flush=True)
    return results


def run_sweep(groups: list[dict], jobs: int, log: Path | None = None, thread_env: bool = True,
              run: bool = True) -> list[dict]:
    """Every group (``train_group``'s arguments as a dict), ``jobs`` at a time, in order;
    with ``log``, runs already there are skipped and returned from it (``run`` False: only
    those, nothing is trained).

    Returns every run of the groups, ``{"backend", "depth", "seed", "variant", "lr",
    "precision", "steps", "batch", ...}`` plus :func:`problem.run`'s curves.
    """
    done = {key(r): r for r in read_log(log)} if log is not None else {}
    todo, runs = [], []
    for g in groups:
        left = []
        for s in g["specs"]:
            k = (g["backend"], g["depth"], g["seed"], s["variant"], s["lr"], s["precision"], g["steps"], g["batch"])
            if k in done:
                runs.append(done[k])
            else:
                left.append(s)
        if left and run:
            todo.append({**g, "specs": left})

    def work(g):
        return (g["depth"] * g["steps"] + RUN_OVERHEAD) * len(g["specs"])

    if runs:
        print(f"{len(runs)} runs found in {log}, {sum(len(g['specs']) for g in todo)} to run", file=sys.stderr)
    progress = Progress(sum(work(g) for g in todo))
    args = ("backend", "seed", "depth", "specs", "steps", "batch", "eval_every", "train_cap")
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(registry.call, f"{__name__}:train_group", *(g[a] for a in args),
                               None if log is None else str(log), backend=g["backend"],
                               env=ONE_THREAD if thread_env else None, echo=True): g for g in todo}
        for future in as_completed(futures):
            g = futures[future]
            try:
                runs.extend(future.result())
            except registry.BackendError as error:
                print(f"{g['backend']} failed: {error}", file=sys.stderr, flush=True)
                runs.append({"backend": g["backend"], "depth": g["depth"], "seed": g["seed"], "error": str(error)})
            progress.advance(work(g), f"{g['backend']} depth {g['depth']} seed {g['seed']} done")
    return runs


def cross_backend(runs: list[dict], steps: int = COMPARE_STEPS, reference: str = registry.SWEEPS) -> list[dict]:
    """Each other backend's runs against torch's of the same depth, seed, variant, lr and
    steps: the training loss over the first ``steps`` steps at float32's rtol. One row per
    backend: worst relative and absolute deviation, ``passed``, or its ``error``."""
    ok = [r for r in runs if "error" not in r]
    ref = {(r["depth"], r["seed"], r["variant"], r["lr"], r["steps"]): r for r in ok if r["backend"] == reference}
    rows: dict[str, dict] = {}
    for r in runs:
        if r["backend"] == reference:
            continue
        row = rows.setdefault(r["backend"], {"backend": r["backend"], "steps": steps, "runs": 0, "passed": True,
                                             "loss_rel": 0.0, "loss_abs": 0.0, "variants": [], "error": None})
        if "error" in r:
            row["passed"], row["error"] = False, r["error"].splitlines()[-1][:200]
            continue
        want = ref.get((r["depth"], r["seed"], r["variant"], r["lr"], r["steps"]))
        if want is None:
            continue
        row["runs"] += 1
        row["variants"].append(r["variant"])
        n = min(steps, len(want["loss"]))
        got = r["loss"][:n]
        passed, dev, rel, _ = compare(got, want["loss"][:n], TOLERANCE) if len(got) == n else (False, inf, inf, "")
        row["loss_rel"], row["loss_abs"] = max(row["loss_rel"], rel), max(row["loss_abs"], dev)
        row["passed"] &= passed
    return list(rows.values())
