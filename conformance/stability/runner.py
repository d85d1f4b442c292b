"""Running the sweep: runs grouped per backend process, in parallel, with a progress bar.

A *run* is one ``(backend, depth, seed, variant)`` trained for some steps. Runs of one
``(backend, depth, seed)`` share a process (the problem is drawn once); groups run
``jobs`` at a time, each process on one CPU thread: small matrix products scale badly
over threads, and a shared machine's busy cores stall a multi-threaded process outright.
"""

from __future__ import annotations

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from aion_conformance import registry
from aion_conformance.spec.tolerance import RTOL, compare
from aion_conformance.stability.problem import VARIANTS, run

#: One CPU thread per backend process (torch, TensorFlow, XLA).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
              "TF_NUM_INTEROP_THREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
#: Steps over which every backend's curves must match the sweeping backend's. Later, float32
#: rounding amplified by training moves curves apart (post-LN at lr 1e-2 by ~1e-5 after 15-20
#: steps): the report gives that drift too, unchecked.
COMPARE_STEPS = 10
#: A variant's bound is float32's tolerance, or this many times the deviation of the sweeping
#: backend's own twin run (every block weight one ulp up), if larger: where training amplifies
#: rounding (plain post-LN at lr 1e-2: the twin's gradient norm moves 1.8e-5 in 10 steps at depth
#: 8), another framework's rounding, different at every op of every step, moves it as much.
TWIN_FACTOR = 10
#: A run's fixed cost (process share, tracing, compiling) in layer-steps, for the progress bar.
RUN_OVERHEAD = 1000
TOLERANCE = RTOL["float32"]


def train_group(backend: str, seed: int, depth: int, variants: list[str], steps: int,
                record_scale: bool, nudge: bool = False) -> list[dict]:
    """In the backend's own process: every variant of one ``(seed, depth)``, one after another
    (``nudge``: the twin runs, marked ``"nudged"``)."""
    kit = registry.kit(backend)
    results = []
    for variant in variants:
        result = run(kit, seed, depth, variant, steps, record_scale, nudge)
        results.append({"backend": backend, "depth": depth, "seed": seed, "variant": variant, **result,
                        **({"nudged": True} if nudge else {})})
        print(f"{backend}{' twin' if nudge else ''} depth {depth} seed {seed} {variant}: "
              f"loss {result['loss'][0]:.3g} -> "
              f"{result['loss'][-1]:.3g} in {result['seconds']:.1f} s", file=sys.stderr, flush=True)
    return results


class Progress:
    """A text progress bar on stderr, weighted by the work (layers x steps) of each group."""

    def __init__(self, total: float, width: int = 30):
        self.total, self.done, self.width, self.start = total, 0.0, width, time.perf_counter()

    def advance(self, work: float, label: str) -> None:
        self.done += work
        frac = self.done / self.total if self.total else 1.0
        elapsed = time.perf_counter() - self.start
        left = elapsed * (1 - frac) / frac if frac > 0 else math.inf
        bar = "#" * round(frac * self.width) + "." * (self.width - round(frac * self.width))
        print(f"[{bar}] {100 * frac:3.0f}%  {elapsed / 60:4.1f} min, ~{left / 60:.1f} min left  ({label})",
              file=sys.stderr, flush=True)


def run_sweep(groups: list[tuple], jobs: int, thread_env: bool = True) -> list[dict]:
    """Every group ``(backend, seed, depth, variants, steps, record_scale[, nudge])``, ``jobs`` at a time.

    Returns the runs, each ``{"backend", "depth", "seed", "variant", "loss", "grad_norm",
    "scale", "seconds", "device"}``. A backend process that fails raises
    :class:`~aion_conformance.registry.BackendError`.
    """
    def work(group):
        return (group[2] * group[4] + RUN_OVERHEAD) * len(group[3])

    progress = Progress(sum(work(g) for g in groups))
    runs = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        # The longest groups first, so the last ones to finish are short.
        futures = {pool.submit(registry.call, f"{__name__}:train_group", *group, backend=group[0],
                               env=ONE_THREAD if thread_env else None, echo=True): group
                   for group in sorted(groups, key=work, reverse=True)}
        for future in as_completed(futures):
            group = futures[future]
            runs.extend(future.result())
            progress.advance(work(group), f"{group[0]} depth {group[2]} seed {group[1]} done")
    return sorted(runs, key=lambda r: (r["backend"], r["depth"], r["seed"], list(VARIANTS).index(r["variant"])))


def cross_backend(runs: list[dict], reference: str = registry.SWEEPS, steps: int = COMPARE_STEPS) -> list[dict]:
    """Each other backend's runs against the reference's of the same depth, seed and variant.

    Loss, gradient norm and per-layer scale are compared step by step over the first
    ``steps`` steps with :func:`~aion_conformance.spec.tolerance.compare`, at float32's rtol
    or :data:`TWIN_FACTOR` times the reference's twin run's deviation (when the runs hold
    one), whichever is larger; one row per backend and depth with the worst relative
    deviation of each, the largest bound used, ``passed``, and ``loss_all_steps``: the
    loss's worst relative deviation over every step both ran.
    """
    ref = {(r["depth"], r["seed"], r["variant"]): r for r in runs if r["backend"] == reference and not r.get("nudged")}
    twins = {(r["depth"], r["seed"], r["variant"]): r for r in runs if r["backend"] == reference and r.get("nudged")}
    rows: dict[tuple, dict] = {}
    for r in runs:
        key = (r["depth"], r["seed"], r["variant"])
        want = ref.get(key)
        if r["backend"] == reference or want is None:
            continue
        row = rows.setdefault((r["backend"], r["depth"]), {
            "backend": r["backend"], "depth": r["depth"], "steps": steps, "runs": 0, "passed": True,
            "loss": 0.0, "grad_norm": 0.0, "scale": 0.0, "bound": TOLERANCE, "loss_all_steps": 0.0})
        row["runs"] += 1
        both = min(len(r["loss"]), len(want["loss"]))
        row["loss_all_steps"] = max(row["loss_all_steps"],
                                    compare(r["loss"][:both], want["loss"][:both], TOLERANCE)[2])
        for curve in ("loss", "grad_norm", "scale"):
            if r[curve] is None or want[curve] is None:
                continue
            n = min(steps, len(want[curve]))
            twin = twins.get(key, {}).get(curve)
            bound = TOLERANCE
            if twin is not None and len(twin) >= n:
                bound = max(bound, TWIN_FACTOR * compare(twin[:n], want[curve][:n], TOLERANCE)[2])
            got = r[curve][:n]
            ok, _, rel, _ = compare(got, want[curve][:n], bound) if len(got) == n else (False, 0, math.inf, "")
            row[curve] = max(row[curve], rel)
            row["bound"] = max(row["bound"], bound)
            row["passed"] &= ok
    return list(rows.values())
