"""aion_core runs unchanged on numpy, array-api-strict, torch and jax, and agrees with itself."""

import numpy as np
import pytest

import aion_core as core
from aion_conformance.spec.reference import reference_call

NAMESPACES = ["numpy", "array_api_strict", "torch", "jax"]


def _ns(name):
    if name == "numpy":
        import array_api_compat.numpy as xp

        return xp, lambda a: np.asarray(a, np.float64)
    if name == "array_api_strict":
        import array_api_strict as xp

        return xp, lambda a: xp.asarray(a, dtype=xp.float64)
    if name == "torch":
        import array_api_compat.torch as xp
        import torch

        return xp, lambda a: torch.from_numpy(np.asarray(a, np.float64))
    import jax.numpy as xp

    return xp, lambda a: xp.asarray(a, dtype=xp.float64)


@pytest.fixture
def jax_x64():
    """float64 in jax for this test only (the flag is process-wide)."""
    import jax

    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("k_update,ema_gamma", [(1, 0.99), (2, 1.0), (3, 0.0)])
def test_same_results_on_every_namespace(name, k_update, ema_gamma, request):
    if name == "jax":
        request.getfixturevalue("jax_x64")
    xp, arr = _ns(name)
    cfg = core.AionConfig(alpha0=0.2, beta=0.3, ema_gamma=ema_gamma, k_update=k_update)
    rng = np.random.default_rng(0)
    state = core.initial_state(xp, dtype=xp.float32)
    ref_state = {"ratio_ema": 1.0, "step_count": 0, "nonfinite_count": 0}
    a0, b = arr(np.float32(0.2)), arr(np.float32(0.3))
    for step in range(5):
        x, y, xn = (rng.standard_normal((3, 4, 8)) for _ in range(3))
        if step == 2:
            y[0, 0, 0] = np.nan
        update = bool(core.is_update_step(step, k_update))
        out, state, stats = core.train_step(arr(x), arr(y), arr(xn), a0, b, state, cfg, xp=xp, update=update)
        want, ref_state = reference_call(cfg, float(np.float32(0.2)), float(np.float32(0.3)),
                                         ref_state, "train", x, y, xn)
        np.testing.assert_allclose(np.asarray(out), want["out"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(float(stats["alpha"]), want["stats"]["alpha"], rtol=1e-12)
        assert float(state.ratio_ema) == ref_state["ratio_ema"]
        assert int(state.step_count) == ref_state["step_count"] == step + 1
        assert int(state.nonfinite_count) == ref_state["nonfinite_count"]
    out, stats = core.eval_step(arr(x), arr(y), a0, b, state, xp=xp)
    want, _ = reference_call(cfg, float(np.float32(0.2)), float(np.float32(0.3)), ref_state, "eval", x, y)
    np.testing.assert_allclose(np.asarray(out), want["out"], rtol=1e-12, atol=1e-12)


def test_nonfinite_batch_leaves_ratio_and_counts():
    cfg = core.AionConfig()
    state = core.initial_state(np)
    x = np.ones((2, 4), np.float32)
    y = np.full((2, 4), np.inf, np.float32)
    with np.errstate(invalid="ignore"):
        _, new, stats = core.train_step(x, y, None, np.float32(0.1), np.float32(0.05), state, cfg, xp=np)
    assert float(new.ratio_ema) == 1.0 and int(new.nonfinite_count) == 1 and int(new.step_count) == 1
    assert np.isinf(float(stats["ratio"]))
    # alpha fell back to the stored ratio
    assert float(stats["alpha"]) == pytest.approx(0.1 / (1 + 0.05 * 1.0), rel=1e-6)


def test_float16_energy_does_not_overflow():
    x = np.full((2, 8), 300.0, np.float16)  # x*x = 90000 > float16 max 65504
    e = core.energy(np, x)
    assert e.dtype == np.float32 and np.allclose(e, 90000.0)
    r = core.batch_ratio(np, np.zeros((2, 8), np.float16), np.zeros((2, 8), np.float16), 1e-8)
    assert float(r) == 0.0  # epsilon is added in float32: no 0/0


@pytest.mark.parametrize("bad,err", [
    ({"x": np.ones((2, 3)), "y": np.ones((3, 2))}, ValueError),
    ({"x": np.ones((0, 3)), "y": np.ones((0, 3))}, ValueError),
    ({"x": np.ones(()), "y": np.ones(())}, ValueError),
    ({"x": np.ones((2, 3), np.int64), "y": np.ones((2, 3))}, TypeError),
    ({"x": np.ones((2, 3)), "y": np.ones((2, 3)), "x_norm": np.ones((2, 2))}, ValueError),
])
def test_check_inputs_names_the_argument(bad, err):
    with pytest.raises(err, match="x|y|x_norm"):
        core.check_inputs(np, bad["x"], bad["y"], bad.get("x_norm"))
