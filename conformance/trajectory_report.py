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
#: backend -> ("module:function", environment)
RUNNERS = {
    "torch": ("conformance.trajectory:run_torch", {}),
    "keras-tensorflow": ("conformance.trajectory_keras:run_keras", {"KERAS_BACKEND": "tensorflow"}),
    "keras-jax": ("conformance.trajectory_keras:run_keras", {"KERAS_BACKEND": "jax"}),
    "keras-torch": ("conformance.trajectory_keras:run_keras", {"KERAS_BACKEND": "torch"}),
    "flax-nnx": ("conformance.trajectory_flax:run_nnx", {}),
    "flax-linen": ("conformance.trajectory_flax:run_linen", {}),
}


def run_one(backend: str, out: Path) -> None:
    from conformance.trajectory import make_problem

    module, _, fn = RUNNERS[backend][0].partition(":")
    result = getattr(importlib.import_module(module), fn)(make_problem(), STEPS)
    out.write_text(json.dumps(result))


def deviation(got: dict, ref: dict) -> dict:
    """Worst relative deviation per step of loss and alpha from the reference."""
    out = {}
    for key in ("loss", "alpha"):
        g, r = np.asarray(got[key], np.float64), np.asarray(ref[key], np.float64)
        out[key] = float(np.max(np.abs(g - r) / np.maximum(np.abs(r), 1e-12)))
    return out


def run_trajectories(backends: list[str], outdir: Path) -> tuple[bool, list[str]]:
    """Run every backend, print and return the table lines, write the JSON and the plot."""
    from conformance.trajectory import make_problem, run_reference

    ref = run_reference(make_problem(), STEPS)
    runs, lines, ok = {"reference (numpy float64)": ref}, [], True
    lines += [f"Trajectory parity ({STEPS} SGD steps, 3 AION blocks, float32 vs float64 reference; "
              f"pass: <= {RTOL['float32']:g})", "",
              "| backend | max rel dev. loss | max rel dev. alpha | status |", "|---|---|---|---|"]
    for backend in backends:
        path = outdir / f"trajectory-{backend}.json"
        env = dict(os.environ, **RUNNERS[backend][1])
        proc = subprocess.run([sys.executable, "-m", "conformance.trajectory_report", backend, str(path)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            ok = False
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            lines.append(f"| {backend} | - | - | CRASHED: {' / '.join(tail)} |")
            continue
        runs[backend] = json.loads(path.read_text())
        dev = deviation(runs[backend], ref)
        passed = max(dev.values()) <= RTOL["float32"]
        ok &= passed
        lines.append(f"| {backend} | {dev['loss']:.1e} | {dev['alpha']:.1e} | {'pass' if passed else '**FAIL**'} |")
    (outdir / "trajectories.json").write_text(json.dumps(runs))
    _plot(runs, outdir / "alpha_trajectories.png")
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
    run_one(sys.argv[1], Path(sys.argv[2]))
