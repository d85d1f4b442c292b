"""aion_flax (NNX): train/eval semantics, state as its own Variable type, jit/grad/remat, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import aion_core as core
from aion_flax import AionBlock, AionResidual, AionStat

RNG = np.random.default_rng(7)


def _f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _state_np(layer):
    return {k: np.asarray(getattr(layer, k)[...]) for k in core.AionState._fields}


def _close(got, want, rtol=1e-6):
    """Elementwise rtol, plus rtol of the largest magnitude (out = x + alpha*y can cancel)."""
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol,
                               atol=rtol * float(np.max(np.abs(want))))


def _core_state(layer):
    return core.AionState(*(np.asarray(getattr(layer, k)[...]) for k in core.AionState._fields))


def test_train_matches_core_and_eval_leaves_state():
    layer = AionResidual(alpha0=0.2, beta=0.5)
    x, y, xn = _f32(4, 8), _f32(4, 8, scale=2.0), _f32(4, 8)
    want_out, want_state, want_stats = core.train_step(
        x, y, xn, np.float32(0.2), np.float32(0.5), _core_state(layer), layer.config, xp=np)
    out, stats = layer(jnp.asarray(x), jnp.asarray(y), jnp.asarray(xn), return_stats=True)
    _close(out, want_out)
    np.testing.assert_allclose(stats["alpha"], want_stats["alpha"], rtol=1e-6)
    np.testing.assert_allclose(layer.ratio_ema[...], want_state.ratio_ema, rtol=1e-6)
    assert int(layer.step_count[...]) == 1 and int(layer.nonfinite_count[...]) == 0

    layer.eval()
    assert layer.deterministic is True
    before = _state_np(layer)
    out, stats = layer(jnp.asarray(x), jnp.asarray(y), return_stats=True)
    want_out, want_stats = core.eval_step(x, y, np.float32(0.2), np.float32(0.5), _core_state(layer), xp=np)
    _close(out, want_out)
    assert _state_np(layer) == before
    # A per-call flag overrides the module mode.
    layer(jnp.asarray(x), jnp.asarray(y), deterministic=False)
    assert int(layer.step_count[...]) == 2
    layer.train()
    assert layer.deterministic is False


def test_nnx_view_gives_an_eval_view_sharing_state():
    block = AionBlock(nnx.Linear(8, 8, rngs=nnx.Rngs(0)), 8)
    evaluator = nnx.view(block, deterministic=True)
    x = jnp.asarray(_f32(2, 8))
    block(x)
    evaluator(x)
    assert int(block.aion.step_count[...]) == 1 and evaluator.aion.deterministic is True
    assert evaluator.aion.step_count is block.aion.step_count


def test_state_is_its_own_variable_type():
    block = AionBlock(nnx.Linear(8, 8, rngs=nnx.Rngs(0)), 8)
    stat_paths = sorted(".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(block, AionStat)))
    assert stat_paths == ["aion.nonfinite_count", "aion.ratio_ema", "aion.step_count"]
    param_paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(block, nnx.Param))}
    assert {"aion.alpha0", "aion.beta"} <= param_paths and not param_paths & set(stat_paths)
    dtypes = {k: v[...].dtype for k, v in vars(block.aion).items() if isinstance(v, nnx.Variable)}
    assert dtypes == {"alpha0": jnp.float32, "beta": jnp.float32, "ratio_ema": jnp.float32,
                      "step_count": jnp.int32, "nonfinite_count": jnp.int32}
    # nnx.grad differentiates parameters only; the running state carries no gradient.
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(_f32(2, 8)))))(block)
    assert not list(nnx.to_flat_state(nnx.state(grads, AionStat)))
    assert float(grads["aion"]["alpha0"][...]) != 0.0


@pytest.mark.parametrize("k_update", [1, 3])
def test_k_update_schedule_under_jit_matches_core(k_update):
    layer = AionResidual(k_update=k_update)
    config, state = layer.config, _core_state(layer)
    step = nnx.jit(lambda m, x, y: m(x, y, return_stats=True))
    for _ in range(7):
        x, y = _f32(3, 8), _f32(3, 8, scale=3.0)
        update = bool(core.is_update_step(int(state.step_count), k_update))
        want_out, state, want_stats = core.train_step(
            x, y, None, np.float32(0.1), np.float32(0.05), state, config, xp=np, update=update)
        out, stats = step(layer, jnp.asarray(x), jnp.asarray(y))
        _close(out, want_out)
        np.testing.assert_allclose(stats["ratio"], want_stats["ratio"], rtol=1e-6)
        np.testing.assert_allclose(layer.ratio_ema[...], state.ratio_ema, rtol=1e-6)
        assert int(layer.step_count[...]) == int(state.step_count)


def test_nonfinite_ratio_keeps_ema_and_counts():
    layer = AionResidual()
    y = _f32(2, 8)
    y[0, 1] = np.nan
    layer(jnp.asarray(_f32(2, 8)), jnp.asarray(y))
    assert float(layer.ratio_ema[...]) == 1.0 and int(layer.nonfinite_count[...]) == 1


def _block():
    return AionBlock(nnx.Linear(8, 8, rngs=nnx.Rngs(1)), 8, beta=0.5)


def _loss(model, x):
    return jnp.mean(model(x) ** 2)


def test_jit_grad_and_remat_agree_with_eager():
    x = jnp.asarray(_f32(4, 8))
    eager_model, jit_model, remat_model = _block(), _block(), _block()
    eager = nnx.grad(_loss)(eager_model, x)
    jitted = nnx.jit(nnx.grad(_loss))(jit_model, x)
    remat = nnx.jit(nnx.grad(lambda m, x: jnp.mean(nnx.remat(lambda m, x: m(x))(m, x) ** 2)))(remat_model, x)
    for got, model in ((jitted, jit_model), (remat, remat_model)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), eager, got)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                     nnx.state(eager_model, AionStat), nnx.state(model, AionStat))
    assert int(remat_model.aion.step_count[...]) == 1


def test_bfloat16_inputs_keep_float32_energies():
    x, y = _f32(16, 64), _f32(16, 64, scale=2.0)
    x16, y16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    ref = AionResidual(beta=0.5)
    _, stats32 = ref(jnp.asarray(x), jnp.asarray(y), return_stats=True)
    low = AionResidual(beta=0.5)
    out, stats16 = low(x16, y16, return_stats=True)
    assert out.dtype == jnp.bfloat16 and low.ratio_ema[...].dtype == jnp.float32
    assert stats16["alpha"].dtype == jnp.float32
    alpha_rel_err = abs(float(stats16["alpha"]) / float(stats32["alpha"]) - 1.0)
    print(f"bf16 vs f32 alpha relative error: {alpha_rel_err:.2e}")
    # Rounding the inputs to bf16 (rel. 2**-9 each) moves the averaged ratio by far less.
    assert alpha_rel_err < 2.0 ** -9


def test_block_dtype_casts_inputs_param_dtype_sets_the_norm_aion_stays_float32():
    block = AionBlock(nnx.Linear(8, 8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), 8,
                      dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    out = block(jnp.asarray(_f32(2, 8)))
    assert out.dtype == jnp.bfloat16 and block.norm.scale[...].dtype == jnp.bfloat16
    assert {k: getattr(block.aion, k)[...].dtype for k in ("alpha0", "beta", "ratio_ema", "step_count")} == {
        "alpha0": jnp.float32, "beta": jnp.float32, "ratio_ema": jnp.float32, "step_count": jnp.int32}
    # float32 inputs cast to bfloat16: the same output as bfloat16 inputs
    same = AionResidual(dtype=jnp.bfloat16)(jnp.ones((2, 4)), jnp.full((2, 4), 2.0))
    assert same.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(same, np.float32),
                                  np.asarray(AionResidual()(jnp.ones((2, 4), jnp.bfloat16),
                                                            jnp.full((2, 4), 2.0, jnp.bfloat16)), np.float32))
