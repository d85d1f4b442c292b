"""aion_flax (NNX): one smoke step against the float64 reference, then what only NNX has (the
module's mode, nnx.view, AionStat, nnx.grad/jit/remat of a block, dtype/param_dtype). Values,
gradients, the state rules, the k_update schedule and the error classes are the conformance
vectors' (``python -m aion_conformance``)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import smoke

import aion_core as core
from aion_flax import AionBlock, AionResidual, AionStat

RNG = np.random.default_rng(7)


def _f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _state_np(layer):
    return {k: np.asarray(getattr(layer, k)[...]) for k in core.AionState._fields}


def test_smoke_one_training_step_equals_the_float64_reference():
    """The layer as a user trains it, one ``nnx.jit`` of ``nnx.value_and_grad``: output, stats,
    gradients and new state against the float64 reference (the vectors check the rest)."""
    x, y, xn, cot = smoke.inputs(7)
    layer = AionResidual(**smoke.CONFIG)

    def loss(m, x, y, x_norm):
        out, stats = m(x, y, x_norm, return_stats=True)
        return jnp.sum(out * cot), (out, stats)

    step = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    (_, (out, stats)), (g_layer, gx, gy, gxn) = step(layer, *map(jnp.asarray, (x, y, xn)))
    got = {"out": out, **{f"stats.{k}": v for k, v in stats.items()}, "state.ratio_ema": layer.ratio_ema[...],
           "grads.x": gx, "grads.y": gy, "grads.x_norm": gxn,
           "grads.alpha0": g_layer["alpha0"][...], "grads.beta": g_layer["beta"][...]}
    smoke.check_step(got, _state_np(layer), x, y, xn, cot)


def test_eval_and_train_set_deterministic_and_a_call_flag_overrides_it():
    """The module's mode (``.eval()``, ``.train()``) and the per-call flag, which wins."""
    layer = AionResidual()
    x, y = jnp.asarray(_f32(4, 8)), jnp.asarray(_f32(4, 8, scale=2.0))
    layer(x, y)
    assert int(layer.step_count[...]) == 1
    layer.eval()
    assert layer.deterministic is True
    before = _state_np(layer)
    layer(x, y)
    assert _state_np(layer) == before
    layer(x, y, deterministic=False)
    assert int(layer.step_count[...]) == 2
    layer.train()
    assert layer.deterministic is False
    layer(x, y, deterministic=True)
    assert int(layer.step_count[...]) == 2
    layer(x, y)
    assert int(layer.step_count[...]) == 3


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
