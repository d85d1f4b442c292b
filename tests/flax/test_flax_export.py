"""aion_flax under deployment transforms: jax.export (eval and training step), remat, Orbax.

Each test compares against the same model without the transformation: the eager module,
the model without remat, the model that was never saved. (Scan over layers is covered by
``test_flax_transforms.py``.)
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import export

import aion_flax.linen as aion_linen
from aion_flax import AionBlock, AionStat

DIM = 8
RNG = np.random.default_rng(23)
#: float32 rounding: jit / export / remat may fuse or reorder a few float32 operations.
RTOL, ATOL = 1e-6, 1e-6


def _x(batch, scale=1.0):
    return (RNG.standard_normal((batch, DIM)) * scale).astype(np.float32)


class _Net(nnx.Module):
    """Two AionBlocks (the second with k_update=2), each optionally under ``nnx.remat``."""

    def __init__(self, seed=0, remat=False):
        rngs = nnx.Rngs(seed)
        self.remat = remat
        self.blocks = nnx.List([AionBlock(nnx.Linear(DIM, DIM, rngs=rngs), DIM, beta=0.5, k_update=k)
                                for k in (1, 2)])

    def __call__(self, x):
        for block in self.blocks:
            x = nnx.remat(lambda b, h: b(h))(block, x) if self.remat else block(x)
        return x


def _stats(model):
    return [{k: np.asarray(getattr(b.aion, k)[...]) for k in ("ratio_ema", "step_count", "nonfinite_count")}
            for b in model.blocks]


def _assert_trees_close(got, want, rtol=RTOL, atol=ATOL):
    got_leaves, got_def = jax.tree.flatten(got)
    want_leaves, want_def = jax.tree.flatten(want)
    assert got_def == want_def
    worst = 0.0
    for a, b in zip(got_leaves, want_leaves, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        if np.issubdtype(b.dtype, np.integer):
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))))
    return worst


# ---------------------------------------------------------------- jax.export


def _pure(model):
    """``(leaves, treedef, graphdef)``: the model as a flat list of arrays.

    An Exported serialises plain pytrees only (not nnx.State's Variable nodes), so the
    exported functions take and return the state's leaves.
    """
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    return leaves, treedef, graphdef


def _roundtrip(fn, *args):
    exported = export.export(jax.jit(fn))(*args)
    return export.deserialize(exported.serialize())


def test_exported_eval_model_with_symbolic_batch_matches_eager():
    model = _Net()
    model(jnp.asarray(_x(4)))  # a training call: a non-initial state is exported
    model.eval()
    leaves, treedef, graphdef = _pure(model)

    def forward(leaves, x):
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(x)

    b, = export.symbolic_shape("b")
    exported = _roundtrip(forward, leaves, jax.ShapeDtypeStruct((b, DIM), jnp.float32))
    assert str(exported.out_avals[0].shape) == "(b, 8)"
    before = _stats(model)
    for batch in (3, 17):
        x = _x(batch, scale=2.0)
        got = exported.call(leaves, x)
        want = model(jnp.asarray(x))
        assert got.shape == (batch, DIM)
        dev = _assert_trees_close(got, want)
        print(f"exported eval, batch {batch}: max |exported - eager| = {dev:.2e}")
    jax.tree.map(np.testing.assert_array_equal, _stats(model), before)  # eval never advanced the state


def test_exported_training_step_returns_the_eager_state():
    """The training forward as ``(state, x) -> (out, new AION state)``, chained three steps."""
    eager, model = _Net(), _Net()
    leaves, treedef, graphdef = _pure(model)
    stat_def = jax.tree.structure(nnx.state(model, AionStat))

    def train_forward(leaves, x):
        net = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        out = net(x)
        return out, jax.tree.leaves(nnx.state(net, AionStat)), jax.tree.leaves(nnx.state(net))

    b, = export.symbolic_shape("b")
    exported = _roundtrip(train_forward, leaves, jax.ShapeDtypeStruct((b, DIM), jnp.float32))
    worst = 0.0
    for step, batch in enumerate((4, 9, 4)):  # the k_update=2 block updates on steps 1 and 3
        x = _x(batch, scale=1.5)
        out, new_stats, leaves = exported.call(leaves, x)
        want = eager(jnp.asarray(x))
        worst = max(worst, _assert_trees_close(out, want))
        worst = max(worst, _assert_trees_close(jax.tree.unflatten(stat_def, new_stats),
                                               jax.tree.map(lambda v: v[...], nnx.state(eager, AionStat))))
        assert [int(s["step_count"]) for s in _stats(eager)] == [step + 1] * 2
    print(f"exported training step x3: max |exported - eager| (outputs and state) = {worst:.2e}")
    # The k_update=2 block skipped an update: its ratio differs from the every-step block's.
    ema = [float(s["ratio_ema"]) for s in _stats(eager)]
    assert ema[0] != ema[1] and all(e != 1.0 for e in ema)


# ---------------------------------------------------------------- remat


def _nnx_train(model, steps=3):
    optimizer = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - 0.5) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    return [float(step(model, optimizer, jnp.asarray(_X_STEPS[i]))) for i in range(steps)]


_X_STEPS = [(np.random.default_rng(i).standard_normal((6, DIM)) * (i + 1)).astype(np.float32) for i in range(3)]


def _all_state(model):
    return jax.tree.map(lambda v: np.asarray(v[...]), nnx.state(model, nnx.Param, AionStat),
                        is_leaf=lambda v: isinstance(v, nnx.Variable))


def _has_remat(fn, *args):
    jaxpr = str(jax.make_jaxpr(fn)(*args))
    return "checkpoint" in jaxpr or "remat" in jaxpr


def test_nnx_remat_trains_like_the_model_without_remat():
    plain, remat = _Net(remat=False), _Net(remat=True)
    for model, want in ((plain, False), (remat, True)):  # the transform is (not) there
        graphdef, state = nnx.split(model)
        assert _has_remat(lambda s, x: nnx.merge(graphdef, s, copy=True)(x), state, _X_STEPS[0]) is want
    want_losses, got_losses = _nnx_train(plain), _nnx_train(remat)
    np.testing.assert_allclose(got_losses, want_losses, rtol=RTOL)
    dev = _assert_trees_close(_all_state(remat), _all_state(plain))
    print(f"nnx.remat, 3 SGD steps: max |remat - plain| over params and AionStat = {dev:.2e}")
    assert [int(s["step_count"]) for s in _stats(remat)] == [3, 3]
    # The parameters did move (the comparison is not between two untouched models).
    assert not np.allclose(remat.blocks[0].layer.kernel[...], _Net().blocks[0].layer.kernel[...])
    assert float(remat.blocks[1].aion.alpha0[...]) != np.float32(0.1)


def test_jax_checkpoint_of_a_pure_step_matches_without():
    tx = optax.sgd(0.05)
    graphdef, params, stats = nnx.split(_Net(), nnx.Param, AionStat)

    def make_step(checkpoint):
        def forward(params, stats, x):
            net = nnx.merge(graphdef, params, stats, copy=True)
            return net(x), nnx.state(net, AionStat)
        forward = jax.checkpoint(forward) if checkpoint else forward

        def loss(params, stats, x):
            out, new_stats = forward(params, stats, x)
            return jnp.mean((out - 0.5) ** 2), new_stats

        @jax.jit
        def step(params, stats, opt_state, x):
            (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params, stats, x)
            updates, opt_state = tx.update(grads, opt_state)
            return optax.apply_updates(params, updates), stats, opt_state, value
        return step

    results = []
    for checkpoint in (False, True):
        step, p, s, o = make_step(checkpoint), params, stats, tx.init(params)
        for x in _X_STEPS:
            p, s, o, _ = step(p, s, o, jnp.asarray(x))
        results.append((p, s))
        assert _has_remat(step, params, stats, tx.init(params), _X_STEPS[0]) is checkpoint
    dev = _assert_trees_close(results[1], results[0])
    print(f"jax.checkpoint, 3 SGD steps: max |checkpoint - plain| over params and AionStat = {dev:.2e}")
    assert results[1][1]["blocks"][1]["aion"]["step_count"][...] == 3


class _LinenNet(nn.Module):
    remat: bool

    @nn.compact
    def __call__(self, x):
        block = nn.remat(aion_linen.AionBlock) if self.remat else aion_linen.AionBlock
        for i, k in enumerate((1, 2)):
            # The mode as a field: nn.remat would trace a call-time keyword (Linen's usual rule).
            x = block(nn.Dense(DIM), DIM, beta=0.5, k_update=k, deterministic=False, name=f"blocks_{i}")(x)
        return x


def test_linen_remat_trains_like_the_model_without_remat():
    tx = optax.sgd(0.05)
    results = []
    for remat in (False, True):
        module = _LinenNet(remat)
        variables = module.init(jax.random.key(0), jnp.asarray(_X_STEPS[0]))
        assert _has_remat(lambda v, x: module.apply(v, x, mutable=["aion_stats"]), variables, _X_STEPS[0]) is remat

        def loss(params, stats, x, module=module):
            out, updates = module.apply({"params": params, "aion_stats": stats}, x, mutable=["aion_stats"])
            return jnp.mean((out - 0.5) ** 2), updates["aion_stats"]

        @jax.jit
        def step(params, stats, opt_state, x, loss=loss):
            (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params, stats, x)
            updates, opt_state = tx.update(grads, opt_state)
            return optax.apply_updates(params, updates), stats, opt_state

        params, stats = variables["params"], variables["aion_stats"]
        opt_state = tx.init(params)
        for x in _X_STEPS:
            params, stats, opt_state = step(params, stats, opt_state, jnp.asarray(x))
        results.append({"params": params, "aion_stats": stats})
    plain, remat = results
    assert jax.tree.structure(plain) == jax.tree.structure(remat)  # same variable names
    dev = _assert_trees_close(remat, plain)
    print(f"nn.remat (Linen), 3 SGD steps: max |remat - plain| over params and aion_stats = {dev:.2e}")
    assert [int(remat["aion_stats"][f"blocks_{i}"]["aion"]["step_count"]) for i in range(2)] == [3, 3]
    assert float(remat["params"]["blocks_0"]["aion"]["alpha0"]) != np.float32(0.1)


# ---------------------------------------------------------------- Orbax


def test_orbax_round_trip_resumes_the_same_training_step(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    original = _Net(0)
    _nnx_train(original, steps=3)  # the k_update=2 block: step 4 reuses the stored ratio
    state = nnx.state(original)

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", state)
        checkpointer.wait_until_finished()
        restored_model = _Net(1)  # other weights, fresh AION state: all must come from the file
        assert [int(s["step_count"]) for s in _stats(restored_model)] == [0, 0]
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(restored_model))
        restored = checkpointer.restore(tmp_path / "ckpt", abstract)
    nnx.update(restored_model, restored)
    jax.tree.map(np.testing.assert_array_equal, _all_state(restored_model), _all_state(original))
    assert [int(s["step_count"]) for s in _stats(restored_model)] == [3, 3]

    # One more training step on each (fresh SGD optimizers: plain SGD has no state) is bitwise equal.
    x = jnp.asarray(_x(6, scale=2.0))
    losses = []
    for model in (original, restored_model):
        optimizer = nnx.Optimizer(model, optax.sgd(0.05), wrt=nnx.Param)
        loss, grads = nnx.jit(nnx.value_and_grad(lambda m: jnp.mean((m(x) - 0.5) ** 2)))(model)
        optimizer.update(model, grads)
        losses.append(float(loss))
    assert losses[0] == losses[1]
    jax.tree.map(np.testing.assert_array_equal, _all_state(restored_model), _all_state(original))
    assert [int(s["step_count"]) for s in _stats(restored_model)] == [4, 4]
