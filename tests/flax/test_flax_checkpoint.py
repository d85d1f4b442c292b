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
    with pytest.raises(ValueError, match="match no AION layer"):
        nnx_from_portable(_Net(0), {**flat, "blocks.7.aion.beta": np.float32(1.0)})


def _shifted(flat):
    """``flat`` with every AION value changed (so that a write would show)."""
    return {key: (value + 3 + i).astype(value.dtype) for i, (key, value) in enumerate(sorted(flat.items()))}


def _source():
    return _shifted(to_portable(_Net(0)))


#: A fault in the last layer (``last`` is its key prefix: a loader meets it after the others),
#: the error it raises and the key its message names.
_BAD = {
    "missing entry": (lambda f, last: {k: v for k, v in f.items() if k != last + "beta"}, KeyError, "beta"),
    "extra entry": (lambda f, last: {**f, "blocks.7.aion.beta": np.float32(1.0)}, ValueError, None),
    "not 0-d": (lambda f, last: {**f, last + "ratio_ema": np.ones(2, np.float32)}, ValueError, "ratio_ema"),
    "complex": (lambda f, last: {**f, last + "ratio_ema": np.asarray(2 + 1j)}, TypeError, "ratio_ema"),
    "string": (lambda f, last: {**f, last + "step_count": np.asarray("3")}, TypeError, "step_count"),
    # Values the cast to the entry's dtype would change (spec section 9).
    "fractional counter": (lambda f, last: {**f, last + "step_count": np.asarray(3.7)}, ValueError, "step_count"),
    "counter beyond int32": (lambda f, last: {**f, last + "nonfinite_count": np.asarray(2**40)}, ValueError,
                             "nonfinite_count"),
    "negative counter": (lambda f, last: {**f, last + "step_count": np.asarray(-1)}, ValueError, "step_count"),
    "NaN ratio": (lambda f, last: {**f, last + "ratio_ema": np.asarray(np.nan)}, ValueError, "ratio_ema"),
    "ratio beyond float32": (lambda f, last: {**f, last + "ratio_ema": np.asarray(1e300)}, ValueError, "ratio_ema"),
    "negative ratio": (lambda f, last: {**f, last + "ratio_ema": np.asarray(-0.5)}, ValueError, "ratio_ema"),
    "infinite alpha0": (lambda f, last: {**f, last + "alpha0": np.asarray(np.inf)}, ValueError, "alpha0"),
}


def _assert_same(after, before):
    assert sorted(after) == sorted(before)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)


@pytest.mark.parametrize("fault", list(_BAD))
def test_a_failed_nnx_load_changes_nothing(fault):
    corrupt, error, name = _BAD[fault]
    model = _Net(0)
    before = to_portable(model)
    with pytest.raises(error, match=f"blocks.1.aion.{name}" if name else "blocks.7.aion.beta"):
        nnx_from_portable(model, corrupt(_source(), "blocks.1.aion."))
    _assert_same(to_portable(model), before)


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic):
        for i in range(2):
            x = aion_linen.AionBlock(nn.Dense(DIM), name=f"blocks_{i}")(x, deterministic=deterministic)
        return x


@pytest.mark.parametrize("fault", list(_BAD))
def test_a_failed_linen_load_raises_and_changes_nothing(fault):
    corrupt, error, name = _BAD[fault]
    variables = _LinenNet().init(jax.random.key(0), X, deterministic=True)
    before = to_portable(variables)
    with pytest.raises(error, match=f"blocks_1.aion.{name}" if name else "blocks.7.aion.beta"):
        linen_from_portable(variables, corrupt(_shifted(before), "blocks_1.aion."))
    _assert_same(to_portable(variables), before)


def test_an_aion_torch_1_0_2_checkpoint_loads():
    """Spec section 9: no nonfinite_count (it starts at 0), alpha_cached ignored."""
    flat = {k: v for k, v in _source().items() if not k.endswith("nonfinite_count")}
    flat["blocks.0.aion.alpha_cached"] = np.float32(0.09)
    model = _Net(0)
    model.blocks[1].aion.nonfinite_count[...] = jnp.asarray(5, jnp.int32)
    nnx_from_portable(model, flat)
    got = to_portable(model)
    for key, value in flat.items():
        if not key.endswith("alpha_cached"):
            np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert [int(got[f"blocks.{i}.aion.nonfinite_count"]) for i in range(2)] == [0, 0]

    module = aion_linen.AionResidual()
    variables = module.init(jax.random.key(0), X, X, deterministic=True)
    restored = linen_from_portable(variables, {"alpha0": 0.2, "beta": 0.3, "ratio_ema": 1.5, "step_count": 7,
                                               "alpha_cached": 0.1})
    assert float(restored["aion_stats"]["ratio_ema"]) == 1.5 and int(restored["aion_stats"]["step_count"]) == 7
    assert int(restored["aion_stats"]["nonfinite_count"]) == 0


def test_stacked_layers_load_defaults_per_layer_or_nothing():
    @nnx.vmap(in_axes=0, out_axes=0)
    def make(seed):
        return aion_flax.AionResidual(beta=0.5)
    flat = to_portable(make(jnp.arange(3)))
    flat.update({f"{i}.ratio_ema": np.float32(i + 1.5) for i in range(3)})
    stack = make(jnp.arange(3))
    stack.nonfinite_count[...] = jnp.asarray([4, 5, 6], jnp.int32)
    nnx_from_portable(stack, {k: v for k, v in flat.items() if k != "1.nonfinite_count"})
    np.testing.assert_array_equal(stack.nonfinite_count[...], [0, 0, 0])
    np.testing.assert_array_equal(stack.ratio_ema[...], [1.5, 2.5, 3.5])
    with pytest.raises(TypeError, match="2.ratio_ema"):
        nnx_from_portable(stack, {**flat, "0.ratio_ema": np.float32(9.0), "2.ratio_ema": np.asarray(1j)})
    np.testing.assert_array_equal(stack.ratio_ema[...], [1.5, 2.5, 3.5])


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
