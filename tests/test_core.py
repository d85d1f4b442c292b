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


def test_float64_ratio_beyond_float32_is_guarded():
    # r ~ 1e208: finite in float64, inf once stored in float32. Unguarded, ratio_ema became
    # inf, and with ema_gamma 0 the next step stored 0 * inf = NaN.
    cfg = core.AionConfig(ema_gamma=0.0)
    state = core.initial_state(np)
    x, y = np.full((2, 4), 1e-100), np.full((2, 4), 1e100)
    with np.errstate(over="ignore"):
        _, state, stats = core.train_step(x, y, None, np.float32(0.1), np.float32(0.05), state, cfg, xp=np)
    assert float(stats["ratio"]) == pytest.approx(1e208)
    assert float(state.ratio_ema) == 1.0 and int(state.nonfinite_count) == 1
    assert float(stats["alpha"]) == pytest.approx(0.1 / 1.05, rel=1e-6)
    _, state, _ = core.train_step(np.ones((2, 4)), np.ones((2, 4)), None, np.float32(0.1),
                                  np.float32(0.05), state, cfg, xp=np)
    assert float(state.ratio_ema) == pytest.approx(1.0, rel=1e-6) and int(state.nonfinite_count) == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_ema_of_finite_float32_values_is_a_finite_float32(dtype):
    """The comment of the guard in aion_core.step: its worst case, for many gammas.

    ratio_ema is the largest float32; r is the largest value of the accumulation dtype
    whose float32 rounding is finite (float32: the largest float32; float64: just below
    2**128 - 2**103). r reaches the EMA through the replica_mean hook.
    """
    big = np.finfo(np.float32).max
    r = np.float32(big) if dtype == "float32" else np.nextafter(2.0**128 - 2.0**103, 0.0)
    assert np.isfinite(np.float32(r)) and (dtype == "float32" or r > big)
    state = core.AionState(np.asarray(big, np.float32), np.asarray(0, np.int32), np.asarray(0, np.int32))
    x = np.ones((1, 2), dtype)
    rng = np.random.default_rng(0)
    gammas = np.concatenate([rng.uniform(0, 1, 3000), 1 - rng.uniform(0, 1e-3, 500), rng.uniform(0, 1e-6, 500),
                             2.0 ** -np.arange(1, 60), 1 - 2.0 ** -np.arange(1, 54)])
    for gamma in gammas:
        cfg = core.AionConfig(ema_gamma=float(gamma))
        _, new, _ = core.train_step(x, x, None, np.float32(0.1), np.float32(0.05), state, cfg, xp=np,
                                    replica_mean=lambda _: np.asarray(r, dtype))
        assert np.isfinite(new.ratio_ema) and int(new.nonfinite_count) == 0, gamma


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
