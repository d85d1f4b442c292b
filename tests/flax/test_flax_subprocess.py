"""Checks that need a process of their own: 2 host devices (XLA_FLAGS before jax is imported)
and the conformance drivers (they switch on 64-bit jax for the whole process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args, **env):
    path = os.pathsep.join([str(ROOT / "backends"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path, **env}, timeout=300)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.distributed
def test_sharded_jit_and_shard_map_equal_single_device():
    out = _run([str(Path(__file__).with_name("sharded_equivalence.py"))],
               XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    for flavour in ("nnx", "linen"):
        assert f"{flavour} jit, batch sharded: matches single device" in out
        assert f"{flavour} shard_map axis_name: matches single device" in out


_CONFORMANCE = """
import json
from conformance.runner import run_driver
from conformance.drivers.flax_driver import LinenDriver, NnxDriver
for driver in (NnxDriver(), LinenDriver()):
    results = run_driver(driver)
    for r in results:
        print(json.dumps([driver.name, r.check, r.case, r.dtype, r.status, r.max_abs, r.max_rel, r.messages]))
"""


@pytest.mark.slow  # ~1 min on 2 cores; `python -m conformance --only flax-nnx flax-linen` runs the same
def test_conformance_drivers_pass_every_case():
    lines = [json.loads(line) for line in _run(["-c", _CONFORMANCE]).splitlines() if line]
    for name in ("flax-nnx", "flax-linen"):
        mine = [line for line in lines if line[0] == name]
        assert len(mine) >= 34 and {line[1] for line in mine} >= {"vector", "config_error", "call_error"}
        failed = [line for line in mine if line[4] != "pass"]
        assert not failed, failed


def test_trajectory_matches_torch():
    pytest.importorskip("torch")
    from conformance.trajectory import make_problem, run_torch
    from conformance.trajectory_flax import run_linen, run_nnx

    problem = make_problem()
    want = run_torch(problem, steps=20)
    for run in (run_nnx, run_linen):
        got = run(problem, steps=20)
        for key in ("loss", "alpha"):
            g, w = np.asarray(got[key]), np.asarray(want[key])
            assert g.shape == w.shape == ((20,) if key == "loss" else (20, 3))
            print(f"{run.__name__} {key}: max rel deviation from torch {np.max(np.abs(g - w) / np.abs(w)):.2e}")
            # float32 rounding (eps 1.2e-7) accumulated over 20 SGD steps stays within a few ulps.
            np.testing.assert_allclose(g, w, rtol=1e-6)
