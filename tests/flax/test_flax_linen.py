"""aion_flax.linen: one smoke step against the float64 reference, then what only Linen has (the
aion_stats collection under init/apply/mutable, the deterministic field and flag, a block's
param tree, dtype/param_dtype, checks when built). Values, gradients, the state rules and the
error classes are the conformance vectors' (``python -m aion_conformance``)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import smoke

from aion_flax.linen import STATS_COLLECTION, AionBlock, AionResidual

RNG = np.random.default_rng(3)


def _f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def test_smoke_one_training_step_equals_the_float64_reference():
    """``init``, then ``apply`` with ``aion_stats`` mutable in a jitted ``jax.value_and_grad``:
    output, stats, gradients and new state against the float64 reference (the vectors check the rest)."""
    x, y, xn, cot = smoke.inputs(3)
    layer = AionResidual(**smoke.CONFIG)
    variables = layer.init(jax.random.key(0), x, y, xn, deterministic=True)
    params = variables["params"]

    def loss(params, x, y, x_norm):
        (out, stats), updates = layer.apply({**variables, "params": params}, x, y, x_norm, deterministic=False,
                                            return_stats=True, mutable=[STATS_COLLECTION])
        return jnp.sum(out * cot), (out, stats, updates[STATS_COLLECTION])

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    (_, (out, stats, new)), (g_params, gx, gy, gxn) = step(params, *map(jnp.asarray, (x, y, xn)))
    got = {"out": out, **{f"stats.{k}": v for k, v in stats.items()}, "state.ratio_ema": new["ratio_ema"],
           "grads.x": gx, "grads.y": gy, "grads.x_norm": gxn,
           "grads.alpha0": g_params["alpha0"], "grads.beta": g_params["beta"]}
    smoke.check_step(got, new, x, y, xn, cot)


def test_init_does_not_update_and_mutable_train_does():
    layer = AionResidual(alpha0=0.2, beta=0.5)
    x, y, xn = _f32(4, 8), _f32(4, 8, scale=2.0), _f32(4, 8)
    variables = layer.init(jax.random.key(0), x, y, xn, deterministic=False)
    assert {k: float(v) for k, v in variables[STATS_COLLECTION].items()} == \
        {"ratio_ema": 1.0, "step_count": 0.0, "nonfinite_count": 0.0}
    assert variables["params"]["alpha0"].dtype == jnp.float32

    out, updates = layer.apply(variables, x, y, xn, deterministic=False, mutable=[STATS_COLLECTION])
    new = updates[STATS_COLLECTION]
    assert int(new["step_count"]) == 1 and new["step_count"].dtype == jnp.int32
    assert float(new["ratio_ema"]) != 1.0

    # Train mode with an immutable collection: same output, nothing to write back.
    out_ro = layer.apply(variables, x, y, xn, deterministic=False)
    np.testing.assert_array_equal(out_ro, out)

    # Eval: stored ratio, no update even if the collection is mutable.
    _, unchanged = layer.apply({**variables, STATS_COLLECTION: new}, x, y, deterministic=True,
                               mutable=[STATS_COLLECTION])
    assert jax.tree.map(float, unchanged[STATS_COLLECTION]) == jax.tree.map(float, new)


def test_deterministic_from_field_or_call_but_not_both():
    x = _f32(2, 4)
    variables = AionResidual(deterministic=True).init(jax.random.key(0), x, x)
    _, updates = AionResidual(deterministic=False).apply(variables, x, x, mutable=[STATS_COLLECTION])
    assert int(updates[STATS_COLLECTION]["step_count"]) == 1
    with pytest.raises(ValueError):
        AionResidual(deterministic=True).apply(variables, x, x, deterministic=False)
    with pytest.raises(ValueError):
        AionResidual().apply(variables, x, x)


def test_block_param_tree_and_grad():
    block = AionBlock(nn.Dense(8))
    x = _f32(3, 8)
    variables = block.init(jax.random.key(1), x, deterministic=False)
    assert set(variables["params"]) == {"norm", "layer", "aion"}

    def loss(params):
        out, upd = block.apply({"params": params, STATS_COLLECTION: variables[STATS_COLLECTION]}, x,
                               deterministic=False, mutable=[STATS_COLLECTION])
        return jnp.mean(out ** 2), upd

    (value, upd), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    eager_grads = jax.grad(lambda p: loss(p)[0])(variables["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), eager_grads, grads)
    assert float(grads["aion"]["alpha0"]) != 0.0 and int(upd[STATS_COLLECTION]["aion"]["step_count"]) == 1



def test_block_dtype_and_param_dtype_aion_stays_float32():
    block = AionBlock(nn.Dense(8, dtype=jnp.bfloat16), 8, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    x = jnp.asarray(_f32(2, 8))
    variables = block.init(jax.random.key(0), x, deterministic=False)
    out, _ = block.apply(variables, x, deterministic=False, mutable=[STATS_COLLECTION])
    assert out.dtype == jnp.bfloat16
    assert variables["params"]["norm"]["scale"].dtype == jnp.bfloat16
    assert variables["params"]["aion"]["alpha0"].dtype == jnp.float32
    assert variables[STATS_COLLECTION]["aion"]["ratio_ema"].dtype == jnp.float32


def test_linen_block_checks_its_config_and_dim_when_built():
    with pytest.raises(ValueError, match="alpha0"):
        AionBlock(nn.Dense(4), alpha0=-1.0)
    block = AionBlock(nn.Dense(4), 4, beta=0.3)
    assert block.config.beta == pytest.approx(0.3)
    with pytest.raises(ValueError, match="dim=4"):
        block.init(jax.random.key(0), jnp.ones((2, 3)), deterministic=True)
