"""Trajectory parity and the checkpoint matrix, over the backends of the registry.

Each backend trains :func:`~aion_conformance.trajectory.problem.make_problem` for ``STEPS``
SGD steps in its own process; loss and per-block alpha are compared step by step with the
float64 reference (:mod:`aion_conformance.trajectory.reference`). Each backend (and the
reference) exports a portable checkpoint after ``RESUME_AT`` steps, and every backend
resumes from every checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from aion_conformance import registry
from aion_conformance.drivers.protocol import CheckResult
from aion_conformance.plotting import pyplot
from aion_conformance.trajectory import reference
from aion_conformance.spec.musts import MUSTS
from aion_conformance.trajectory.problem import (TOLERANCE, deviation, load_checkpoint, make_problem,
                                                 resume, save_checkpoint)
from aion_conformance.trajectory.problem import run as train_on

STEPS = 20
RESUME_AT = 10  # checkpoints are exported after this many steps and training resumes elsewhere
REFERENCE = "reference"


def train(backend: str, checkpoint_out: str | None, starts: list[str]) -> dict:
    """In ``backend``'s process, on its kit: the full run (and its checkpoint at ``RESUME_AT``
    written to ``checkpoint_out``), or, given checkpoints to start from, the remaining steps
    from each, keyed by the checkpoint's file stem."""
    kit = registry.kit(backend)

    def run(problem, steps):
        return train_on(kit, problem, steps)

    problem = make_problem()
    if not starts:
        save_checkpoint(run(problem, RESUME_AT)["checkpoint"], checkpoint_out)
        return run(problem, STEPS)
    return {Path(p).stem: run(resume(problem, load_checkpoint(p)), STEPS - RESUME_AT) for p in starts}


def hook_checks(driver) -> list[CheckResult]:
    """Trajectory parity and checkpoints for a driver with a ``trajectory`` method (an outside one).

    ``driver.trajectory(problem, steps)`` trains :func:`make_problem` (or a problem resumed
    from a checkpoint) as a registry backend's trajectory model does and returns ``{"loss",
    "alpha", "checkpoint"}``. Checked: its run against the float64 reference; its checkpoint
    after ``RESUME_AT`` steps, through a portable ``.npz`` file, resumed on the reference; the
    reference's checkpoint resumed on it. None for a driver without the method.
    """
    train = getattr(driver, "trajectory", None)
    if train is None:
        return []
    problem = make_problem()
    ref = reference.run(problem, STEPS)
    want = {"loss": ref["loss"][RESUME_AT:], "alpha": ref["alpha"][RESUME_AT:]}
    results = []

    def check(check: str, case: str, label: str, run, expected) -> dict | None:
        res = CheckResult(driver.name, check, case, "float32", "pass")
        results.append(res)
        try:
            got = run()
            dev = deviation(got, expected)
        except Exception as e:  # noqa: BLE001 - a hook that crashes fails its check
            res.status, res.messages = "fail", [f"[{label}] raised {type(e).__name__}: {str(e)[:300]}"]
            return None
        res.max_rel = max(dev.values())
        if res.max_rel > TOLERANCE:
            res.status = "fail"
            res.messages = [f"[{label}] max rel deviation {dev} > {TOLERANCE:g}"]
        return got

    def through_file(checkpoint: dict) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(checkpoint, Path(tmp) / "checkpoint.npz")
            return load_checkpoint(Path(tmp) / "checkpoint.npz")

    check("trajectory", f"{STEPS} SGD steps vs the float64 reference", MUSTS["trajectory"],
          lambda: train(problem, STEPS), ref)
    ref_start = through_file(reference.run(problem, RESUME_AT)["checkpoint"])
    check("checkpoint", "the reference's checkpoint resumed here", MUSTS["checkpoint"],
          lambda: train(resume(problem, ref_start), STEPS - RESUME_AT), want)
    check("checkpoint", "this checkpoint resumed on the reference", MUSTS["checkpoint"],
          lambda: reference.run(resume(problem, through_file(train(problem, RESUME_AT)["checkpoint"])),
                                STEPS - RESUME_AT), want)
    return results


def _train_on(backend: str, *args):
    try:
        return registry.call(f"{__name__}:train", backend, *args, backend=backend), None
    except registry.BackendError as e:
        return None, " / ".join(str(e).splitlines()[-3:])


def run_trajectories(backends: list[str], outdir: Path) -> tuple[bool, list[str]]:
    """Trajectory parity and the checkpoint matrix; prints progress, returns (ok, report lines).

    Writes ``trajectories.json``, ``alpha_trajectories.png`` and one portable checkpoint per
    source (``<source>.npz``, under ``outdir/checkpoints``) into ``outdir``.
    """
    problem = make_problem()
    ref = reference.run(problem, STEPS)
    ckpt_dir = outdir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(reference.run(problem, RESUME_AT)["checkpoint"], ckpt_dir / f"{REFERENCE}.npz")
    runs, ok = {"reference (numpy float64)": ref}, True
    lines = [f"Trajectory parity ({STEPS} SGD steps, 3 AION blocks, float32 vs float64 reference; "
             f"pass: <= {TOLERANCE:g})", "", "| backend | max rel dev. loss | max rel dev. alpha | status |",
             "|---|---|---|---|"]
    for i, backend in enumerate(backends, 1):
        print(f"  trajectory [{i}/{len(backends)}] {backend} ...", flush=True)
        runs[backend], crash = _train_on(backend, str(ckpt_dir / f"{backend}.npz"), [])
        if crash:
            ok = False
            lines.append(f"| {backend} | - | - | CRASHED: {crash} |")
            continue
        dev = deviation(runs[backend], ref)
        passed = max(dev.values()) <= TOLERANCE
        ok &= passed
        lines.append(f"| {backend} | {dev['loss']:.1e} | {dev['alpha']:.1e} | {'pass' if passed else '**FAIL**'} |")
    (outdir / "trajectories.json").write_text(json.dumps(runs))
    _plot({k: v for k, v in runs.items() if v is not None}, outdir / "alpha_trajectories.png")

    sources = [REFERENCE] + [b for b in backends if runs.get(b) is not None]
    starts = [str(ckpt_dir / f"{s}.npz") for s in sources]
    want = {"loss": ref["loss"][RESUME_AT:], "alpha": ref["alpha"][RESUME_AT:]}
    resumed = {REFERENCE: {s: reference.run(resume(problem, load_checkpoint(p)), STEPS - RESUME_AT)
                           for s, p in zip(sources, starts)}}
    for i, backend in enumerate(sources[1:], 1):
        print(f"  checkpoints [{i}/{len(sources) - 1}] resume on {backend} ...", flush=True)
        resumed[backend] = _train_on(backend, None, starts)[0] or {}
    lines += ["", f"Portable checkpoints: exported after {RESUME_AT} steps (rows), resumed for "
              f"{STEPS - RESUME_AT} more (columns); max rel deviation of loss and alpha from the "
              "uninterrupted float64 reference", "",
              "| from \\ to | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for src in sources:
        cells = []
        for dst in sources:
            run = resumed[dst].get(src)
            if run is None:
                ok, cell = False, "CRASHED"
            else:
                worst = max(deviation(run, want).values())
                ok &= worst <= TOLERANCE
                cell = f"{worst:.1e}" + ("" if worst <= TOLERANCE else " **FAIL**")
            cells.append(cell)
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    return ok, lines


def _plot(runs: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    blocks = len(next(iter(runs.values()))["alpha"][0])
    fig, axes = plt.subplots(1, blocks, figsize=(4 * blocks, 3.2), sharey=False)
    for b, ax in enumerate(np.atleast_1d(axes)):
        for i, (name, run) in enumerate(runs.items()):
            style = {"lw": 3, "alpha": 0.35, "color": "k"} if i == 0 else {"lw": 1, "ls": "--" if i % 2 else "-"}
            ax.plot([a[b] for a in run["alpha"]], label=name, **style)
        ax.set_title(f"block {b}")
        ax.set_xlabel("SGD step")
    np.atleast_1d(axes)[0].set_ylabel("alpha")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.suptitle("AION alpha per block, every backend over the float64 reference")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
