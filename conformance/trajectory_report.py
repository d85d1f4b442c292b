"""Trajectory parity: the small AION network trained on every backend vs the float64 reference.

Each backend trains :func:`conformance.trajectory.make_problem` for ``STEPS`` SGD steps in its
own process; loss and per-block alpha are compared step by step with
:func:`conformance.trajectory.run_reference`, and the alpha trajectories are plotted.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conformance.dtypes import RTOL

STEPS = 20
RESUME_AT = 10  # checkpoints are exported after this many steps and training resumes elsewhere
#: backend -> ("module:function", environment)
RUNNERS = {
    "torch": ("conformance.trajectory:run_torch", {}),
    "keras-tensorflow": ("conformance.trajectory_keras:run_keras", {"KERAS_BACKEND": "tensorflow"}),
    "keras-jax": ("conformance.trajectory_keras:run_keras", {"KERAS_BACKEND": "jax"}),
    "keras-torch": ("conformance.trajectory_keras:run_keras", {"KERAS_BACKEND": "torch"}),
    "flax-nnx": ("conformance.trajectory_flax:run_nnx", {}),
    "flax-linen": ("conformance.trajectory_flax:run_linen", {}),
}


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """A network checkpoint as ``.npz`` in the portable dtypes (float32 weights, spec section 9)."""
    from conformance.trajectory import AION_DTYPES

    np.savez(path, **{k: np.asarray(v, AION_DTYPES.get(k.rsplit(".", 1)[1], np.float32))
                      for k, v in checkpoint.items()})


def load_checkpoint(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def run_one(backend: str, out: Path, starts: list[Path]) -> None:
    """In this process: ``backend``'s full run and its checkpoint at RESUME_AT, or, given
    checkpoints to start from, the remaining steps from each of them."""
    from conformance.trajectory import make_problem, resume

    module, _, name = RUNNERS[backend][0].partition(":")
    train = getattr(importlib.import_module(module), name)
    problem = make_problem()
    if not starts:
        save_checkpoint(train(problem, RESUME_AT)["checkpoint"], out.with_suffix(".npz"))
        result = train(problem, STEPS)
    else:
        result = {p.stem.removeprefix("trajectory-"): train(resume(problem, load_checkpoint(p)), STEPS - RESUME_AT)
                  for p in starts}
    out.write_text(json.dumps(result))


def _spawn(backend: str, out: Path, starts: list[Path]) -> str | None:
    env = dict(os.environ, **RUNNERS[backend][1])
    proc = subprocess.run([sys.executable, "-m", "conformance.trajectory_report", backend, str(out),
                           *map(str, starts)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return None


def deviation(got: dict, ref: dict) -> dict:
    """Worst relative deviation per step of loss and alpha from the reference."""
    out = {}
    for key in ("loss", "alpha"):
        g, r = np.asarray(got[key], np.float64), np.asarray(ref[key], np.float64)
        out[key] = float(np.max(np.abs(g - r) / np.maximum(np.abs(r), 1e-12)))
    return out


def run_trajectories(backends: list[str], outdir: Path) -> tuple[bool, list[str]]:
    """Trajectory parity and the checkpoint matrix; prints progress, returns (ok, report lines).

    Writes ``trajectories.json``, ``alpha_trajectories.png`` and one portable checkpoint per
    backend (``trajectory-<backend>.npz``) into ``outdir``.
    """
    from conformance.trajectory import make_problem, resume, run_reference

    tol = RTOL["float32"]
    problem = make_problem()
    ref = run_reference(problem, STEPS)
    save_checkpoint(run_reference(problem, RESUME_AT)["checkpoint"], outdir / "trajectory-reference.npz")
    runs, crashed, ok = {"reference (numpy float64)": ref}, {}, True
    lines = [f"Trajectory parity ({STEPS} SGD steps, 3 AION blocks, float32 vs float64 reference; "
             f"pass: <= {tol:g})", "", "| backend | max rel dev. loss | max rel dev. alpha | status |",
             "|---|---|---|---|"]
    for i, backend in enumerate(backends, 1):
        print(f"  trajectory [{i}/{len(backends)}] {backend} ...", flush=True)
        path = outdir / f"trajectory-{backend}.json"
        crashed[backend] = _spawn(backend, path, [])
        if crashed[backend]:
            ok = False
            lines.append(f"| {backend} | - | - | CRASHED: {crashed[backend]} |")
            continue
        runs[backend] = json.loads(path.read_text())
        dev = deviation(runs[backend], ref)
        passed = max(dev.values()) <= tol
        ok &= passed
        lines.append(f"| {backend} | {dev['loss']:.1e} | {dev['alpha']:.1e} | {'pass' if passed else '**FAIL**'} |")
    (outdir / "trajectories.json").write_text(json.dumps(runs))
    _plot(runs, outdir / "alpha_trajectories.png")

    # Checkpoint matrix: export after RESUME_AT steps on one backend, resume on another.
    sources = ["reference"] + [b for b in backends if not crashed[b]]
    starts = [outdir / f"trajectory-{b}.npz" for b in sources]
    want = {"loss": ref["loss"][RESUME_AT:], "alpha": ref["alpha"][RESUME_AT:]}
    resumed = {"reference": {s: run_reference(resume(problem, load_checkpoint(p)), STEPS - RESUME_AT)
                             for s, p in zip(sources, starts)}}
    for i, backend in enumerate(sources[1:], 1):
        print(f"  checkpoints [{i}/{len(sources) - 1}] resume on {backend} ...", flush=True)
        path = outdir / f"resume-{backend}.json"
        err = _spawn(backend, path, starts)
        resumed[backend] = json.loads(path.read_text()) if not err else {}
    lines += ["", f"Portable checkpoints: exported after {RESUME_AT} steps (rows), resumed for "
              f"{STEPS - RESUME_AT} more (columns); max rel deviation of loss and alpha from the "
              "uninterrupted float64 reference", "",
              "| from \\ to | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for src in sources:
        cells = []
        for dst in sources:
            run = resumed.get(dst, {}).get(src)
            if run is None:
                ok, cell = False, "CRASHED"
            else:
                worst = max(deviation(run, want).values())
                ok &= worst <= tol
                cell = f"{worst:.1e}" + ("" if worst <= tol else " **FAIL**")
            cells.append(cell)
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    return ok, lines


def _plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


if __name__ == "__main__":
    run_one(sys.argv[1], Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
