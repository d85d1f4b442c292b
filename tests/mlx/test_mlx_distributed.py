"""Data parallelism with mx.distributed: 2 processes on MLX's ring backend (``mlx.launch``),
each holding half of every batch, against single-process runs.

* ``sync_ratio=True``: the ratio is averaged over the processes, so each process's stats and
  state, the averaged parameter gradients and its input gradients are those of one process
  holding the whole batch;
* ``sync_ratio=False``: each process keeps its own batch ratio, as one process holding its
  half alone (the parameter gradients still averaged, as for any layer);
* the ``sync_ratio=True`` step compiled with ``mx.compile`` equals the eager one.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from mlx.utils import tree_map
import numpy as np
import pytest

from mlx_reference import PARALLEL_K_UPDATES, STEPS, global_batches, lockstep, make_model, rank_rows

HERE = Path(__file__).resolve().parent
#: Seconds for the launch: it takes about 3 s on 2 CPU cores.
TIMEOUT = 120


def _free_ports(count: int = 2) -> int:
    """A port ``p`` with ``p .. p + count - 1`` free (the ring backend listens on one per rank)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            start = probe.getsockname()[1]
        if start + count > 65535:
            continue
        try:
            held = []
            for port in range(start, start + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free ports")


def _launcher() -> str:
    launcher = Path(sys.executable).with_name("mlx.launch")
    assert launcher.is_file(), f"mlx.launch is not beside {sys.executable}"
    return str(launcher)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the 2 ranks recorded: ``{(sync, step): {key: array}}`` per rank."""
    outdir = tmp_path_factory.mktemp("ring")
    cmd = [_launcher(), "-n", "2", "--python", sys.executable, "--starting-port", str(_free_ports()),
           str(HERE / "ring_equivalence.py"), str(outdir)]
    # Its own session, so that a hung run is ended with every process it started.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=outdir, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mlx.launch took more than {TIMEOUT} s:\n{out[-2000:]}\n{err[-3000:]}")
    print(out)
    assert proc.returncode == 0, err[-3000:]
    files = [outdir / f"rank{r}.npz" for r in range(2)]
    assert all(f.is_file() for f in files), (out[-2000:], err[-3000:])
    result = []
    for f in files:
        with np.load(f) as z:
            saved = {key: z[key] for key in z.files}
        steps = {}
        for key, value in saved.items():
            if key.startswith("sync="):
                sync, step, name = key.split(".", 2)
                steps.setdefault((sync == "sync=True", int(step.split("=")[1])), {})[name] = value
        result.append({"all_sum": saved["all_sum"], "steps": steps,
                       "compiled": {k.split(".", 1)[1]: v for k, v in saved.items() if k.startswith("compiled.")}})
    return result


def _close(got, want, rtol, what):
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol,
                               atol=rtol * float(np.max(np.abs(want), initial=0.0)), err_msg=what)


#: float32 sums in another order (two halves, then the all-reduce): measured within 1.2e-6 of the
#: largest magnitude (gradients; stats 7e-8); without sync_ratio, bit-identical.
RTOL = 1e-5
STAT_KEYS = [f"block{i}.{k}" for i in range(len(PARALLEL_K_UPDATES))
             for k in ("alpha", "ratio", "ratio_ema", "step_count", "nonfinite_count")]


def _halves():
    return [[(x[rank_rows(r)], t[rank_rows(r)]) for x, t in global_batches()] for r in range(2)]


@pytest.mark.distributed
def test_two_processes_run(ranks):
    assert [float(r["all_sum"]) for r in ranks] == [3.0, 3.0]
    assert all(len(r["steps"]) == 2 * STEPS for r in ranks)


@pytest.mark.distributed
def test_sync_ratio_equals_one_process_holding_the_whole_batch(ranks):
    whole = lockstep([make_model(0, k_updates=PARALLEL_K_UPDATES)], [global_batches()], lambda g: g)[0]
    for step, want in enumerate(whole):
        for rank, got in enumerate(r["steps"][True, step] for r in ranks):
            where = f"step {step}, rank {rank}"
            for key in STAT_KEYS:
                _close(got[key], want[key], RTOL, f"{where}: {key}")
            # The averaged gradients are the whole batch's, every parameter's.
            params = sorted(k.split(".", 1)[1] for k in got if k.startswith("applied."))
            assert params == sorted(k.split(".", 1)[1] for k in want if k.startswith("grad."))
            for key in params:
                _close(got["applied." + key], want["grad." + key], RTOL, f"{where}: gradient of {key}")
            # A rank's loss is the mean over its 4 rows, which the whole batch's mean weighs
            # by 1/2: its input gradient is twice the whole batch's on those rows.
            _close(got["x_grad"], 2.0 * want["x_grad"][rank_rows(rank)], RTOL, f"{where}: x_grad")
        _close(np.mean([r["steps"][True, step]["loss"] for r in ranks]), want["loss"], RTOL, f"step {step}: loss")
    for key in (k for k in whole[-1] if k.startswith("final.")):
        for r in ranks:
            _close(r["steps"][True, STEPS - 1][key], whole[-1][key], RTOL, key)
    # Not trivially so: each half alone has another ratio (the sync_ratio=False runs).
    alone = [r["steps"][False, 0]["block0.ratio"] for r in ranks]
    assert abs(float(alone[0]) / float(alone[1]) - 1) > 1e-3, alone


@pytest.mark.distributed
def test_without_sync_ratio_each_process_keeps_its_own_ratio(ranks):
    # Two models in one process, each on its half, their gradients averaged: nothing but the
    # gradients crosses between them.
    def average(grads):
        mean = tree_map(lambda a, b: (a + b) / 2, grads[0], grads[1])
        return [mean, mean]
    models = [make_model(0, k_updates=PARALLEL_K_UPDATES, sync_ratio=False) for _ in range(2)]
    alone = lockstep(models, _halves(), average)
    for rank in range(2):
        for step, want in enumerate(alone[rank]):
            got = ranks[rank]["steps"][False, step]
            assert sorted(got) == sorted(want)
            for key in want:
                _close(got[key], want[key], RTOL, f"step {step}, rank {rank}: {key}")
    for step in range(STEPS):
        a, b = (r["steps"][False, step]["block0.ratio_ema"] for r in ranks)
        assert a != b, step  # the two processes' states differ


@pytest.mark.distributed
def test_a_compiled_data_parallel_step_equals_the_eager_one(ranks):
    # mx.compile(inputs=[model.state, optimizer.state], ...) around nn.value_and_grad, the
    # ratio's all_sum and nn.average_gradients: measured bit-identical to the eager run.
    for r in ranks:
        eager = r["steps"]
        _close(r["compiled"]["loss"], [eager[True, step]["loss"] for step in range(STEPS)], 1e-6, "loss")
        finals = sorted(k for k in eager[True, STEPS - 1] if k.startswith("final."))
        assert finals == sorted(k for k in r["compiled"] if k.startswith("final."))
        for key in finals:
            _close(r["compiled"][key], eager[True, STEPS - 1][key], 1e-6, key)
