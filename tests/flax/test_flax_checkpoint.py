"""The portable AION checkpoint (.npz of 0-d arrays): layout, NNX and Linen round trips, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import aion_core
import aion_flax
import aion_flax.linen as aion_linen
from aion_flax import AionBlock, AionStat, linen_from_portable, load_npz, nnx_from_portable, save_npz, to_portable

DIM = 8
X = np.random.default_rng(5).standard_normal((4, DIM)).astype(np.float32)


class _Net(nnx.Module):
    def __init__(self, seed):
        rngs = nnx.Rngs(seed)
        self.blocks = nnx.List([AionBlock(nnx.Linear(DIM, DIM, rngs=rngs), DIM, beta=0.5, k_update=2)
                                for _ in range(2)])

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return x


@nnx.jit
def _train_step(model, optimizer, x):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
    optimizer.update(model, grads)
    return loss


def _train(model, optimizer, steps, start=0):
    return [float(_train_step(model, optimizer, jnp.asarray(X * (i + 1)))) for i in range(start, start + steps)]


def _other_params(model):
    """Non-AION weights, for the test only (AION entries go through the portable format)."""
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
            if p[-2] != "aion"}


def test_portable_layout():
    flat = to_portable(_Net(0))
    assert sorted(flat) == sorted(f"blocks.{i}.aion.{n}" for i in range(2) for n in
                                  ("alpha0", "beta", "ratio_ema", "step_count", "nonfinite_count"))
    assert {k.rsplit(".", 1)[1]: (v.dtype.name, v.shape) for k, v in flat.items()} == {
        "alpha0": ("float32", ()), "beta": ("float32", ()), "ratio_ema": ("float32", ()),
        "step_count": ("int32", ()), "nonfinite_count": ("int32", ())}


def test_nnx_resume_follows_the_same_trajectory(tmp_path):
    reference = _Net(0)
    want = _train(reference, nnx.Optimizer(reference, optax.sgd(0.05), wrt=nnx.Param), 6)

    model = _Net(0)
    first = _train(model, nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param), 3)
    save_npz(tmp_path / "aion.npz", to_portable(model))
    np.savez(tmp_path / "other.npz", **_other_params(model))

    resumed = _Net(1)  # different weights: everything must come from the files
    nnx_from_portable(resumed, load_npz(tmp_path / "aion.npz"))
    other = dict(np.load(tmp_path / "other.npz"))
    for path, variable in nnx.to_flat_state(nnx.state(resumed, nnx.Param)):
        if path[-2] != "aion":
            variable[...] = jnp.asarray(other[".".join(map(str, path))])
    assert int(resumed.blocks[0].aion.step_count[...]) == 3
    rest = _train(resumed, nnx.Optimizer(resumed, optax.sgd(0.05), wrt=nnx.Param), 3, start=3)
    np.testing.assert_allclose(first + rest, want, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 nnx.state(reference, AionStat), nnx.state(resumed, AionStat))


def test_nnx_stacked_layers_get_one_entry_per_layer():
    @nnx.vmap(in_axes=0, out_axes=0)
    def make(seed):
        return aion_flax.AionResidual(beta=0.5)
    stack = make(jnp.arange(3))
    stack.ratio_ema[...] = jnp.asarray([1.5, 2.5, 3.5], jnp.float32)
    flat = to_portable(stack)
    assert float(flat["1.ratio_ema"]) == 2.5 and flat["2.step_count"].shape == ()
    fresh = make(jnp.arange(3))
    nnx_from_portable(fresh, flat)
    np.testing.assert_array_equal(fresh.ratio_ema[...], [1.5, 2.5, 3.5])


def test_loading_refuses_missing_and_unknown_entries():
    flat = to_portable(_Net(0))
    with pytest.raises(KeyError, match="blocks.1.aion.beta"):
        nnx_from_portable(_Net(0), {k: v for k, v in flat.items() if k != "blocks.1.aion.beta"})
    with pytest.raises(ValueError, match="match no AionResidual"):
        nnx_from_portable(_Net(0), {**flat, "blocks.7.aion.beta": np.float32(1.0)})


def test_linen_round_trip_and_resume(tmp_path):
    module = aion_linen.AionBlock(nn.Dense(DIM), beta=0.5, k_update=2)
    variables = module.init(jax.random.key(0), X, deterministic=True)
    tx = optax.sgd(0.05)

    @jax.jit
    def step(params, stats, opt_state, x):
        def loss(params):
            out, upd = module.apply({"params": params, "aion_stats": stats}, x, deterministic=False,
                                    mutable=["aion_stats"])
            return jnp.mean((out - 1.0) ** 2), upd["aion_stats"]
        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), stats, opt_state, value

    def train(variables, steps, start):
        params, stats, opt_state, losses = variables["params"], variables["aion_stats"], None, []
        opt_state = tx.init(params)
        for i in range(start, start + steps):
            params, stats, opt_state, value = step(params, stats, opt_state, jnp.asarray(X * (i + 1)))
            losses.append(float(value))
        return {"params": params, "aion_stats": stats}, losses

    _, want = train(variables, 6, 0)
    halfway, first = train(variables, 3, 0)
    save_npz(tmp_path / "aion.npz", to_portable(halfway))
    assert set(to_portable(halfway)) == {f"aion.{n}" for n in aion_core.portable.ENTRY_DTYPES}
    # Only the AION entries come from the file; the rest of the params are carried over.
    restored = linen_from_portable(variables | {"params": halfway["params"]}, load_npz(tmp_path / "aion.npz"))
    assert int(restored["aion_stats"]["aion"]["step_count"]) == 3
    _, rest = train(restored, 3, 3)
    np.testing.assert_allclose(first + rest, want, rtol=1e-6)
