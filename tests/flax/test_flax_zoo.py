"""AionScale (``alpha * y``, the residual added by the model) against AionResidual, and in model recipes.

NNX and Linen scale-only modules equal ``AionResidual - x``; a pre-LN transformer block trained
with and without ``nnx.remat``; a CNN in NHWC, and in NCHW with the channel axis moved last
around AION.
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import aion_flax.linen as aion_linen
from aion_flax import AionResidual, AionScale, AionStat

RNG = np.random.default_rng(17)
CONFIG = dict(alpha0=0.2, beta=0.3, ema_gamma=0.9)
MODES = (False, False, False, True)  # deterministic: 3 training calls, then an eval call


def _f32(*shape, scale=1.0):
    return jnp.asarray((RNG.standard_normal(shape) * scale).astype(np.float32))


def _inputs():
    """x, y, x_norm and the loss weight w (loss = sum(out * w))."""
    return _f32(3, 5, 8), _f32(3, 5, 8, scale=2.5), _f32(3, 5, 8), _f32(3, 5, 8)


def _max_dev(a, b):
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _assert_close(got, want, rtol=1e-6, atol=1e-6):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), got, want)


def _assert_equal(got, want):
    jax.tree.map(np.testing.assert_array_equal, got, want)


def _nnx_combined(module, x, y, x_norm, deterministic):
    if isinstance(module, AionScale):
        out, stats = module(y, x_norm, deterministic=deterministic, return_stats=True)
        return x + out, stats
    return module(x, y, x_norm, deterministic=deterministic, return_stats=True)


@nnx.jit(static_argnames="deterministic")
def _nnx_step(module, x, y, x_norm, w, deterministic):
    """Output, stats and the gradients of sum(out * w): (alpha0/beta params, y, x_norm)."""
    def loss(module, y, x_norm):
        out, stats = _nnx_combined(module, x, y, x_norm, deterministic)
        return jnp.sum(out * w), (out, stats)

    (_, (out, stats)), grads = nnx.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(module, y, x_norm)
    return out, stats, grads


@pytest.mark.parametrize("k_update", [1, 2])
def test_nnx_scale_equals_residual_minus_x(k_update):
    """3 training calls and an eval call under nnx.jit: ``x + AionScale(y, x_norm)`` against
    ``AionResidual(x, y, x_norm)``: outputs, stats and gradients (alpha0, beta, y, x_norm) within
    float32 rounding, the AionStat state exactly equal, after every call."""
    scale, residual = AionScale(**CONFIG, k_update=k_update), AionResidual(**CONFIG, k_update=k_update)
    deviation = 0.0
    for deterministic in MODES:
        x, y, x_norm, w = _inputs()
        update = not deterministic and int(scale.step_count[...]) % k_update == 0
        got_out, got_stats, (got_params, *got_grads) = _nnx_step(scale, x, y, x_norm, w, deterministic)
        want_out, want_stats, (want_params, *want_grads) = _nnx_step(residual, x, y, x_norm, w, deterministic)
        _assert_close(got_out, want_out)
        _assert_close(got_stats, want_stats)
        got, want = (got_params, got_grads), (want_params, want_grads)
        _assert_close(got, want)
        _assert_equal(nnx.state(scale, AionStat), nnx.state(residual, AionStat))
        deviation = max(deviation, _max_dev((got_out, got), (want_out, want)))
        # y's and alpha0's gradients are never zero; x_norm's (through the ratio) on update steps only
        assert float(jnp.max(jnp.abs(got_grads[0]))) > 0 and float(got_params["alpha0"][...]) != 0
        assert (float(jnp.max(jnp.abs(got_grads[1]))) > 0) == update
    print(f"nnx k_update={k_update}: max |scale + x - residual| over outputs and grads {deviation:.3g}")
    assert int(scale.step_count[...]) == 3 and float(scale.ratio_ema[...]) != 1.0


@pytest.mark.parametrize("k_update", [1, 2])
def test_linen_scale_equals_residual_minus_x(k_update):
    """The same for Linen (jax.jit, jax.value_and_grad, "aion_stats" mutable): outputs, stats,
    gradients within float32 rounding, the aion_stats collection exactly equal."""
    scale = aion_linen.AionScale(**CONFIG, k_update=k_update)
    residual = aion_linen.AionResidual(**CONFIG, k_update=k_update)
    x, y, x_norm, _ = _inputs()
    variables = {"scale": scale.init(jax.random.key(0), y, x_norm, deterministic=True),
                 "residual": residual.init(jax.random.key(0), x, y, x_norm, deterministic=True)}
    _assert_equal(variables["scale"], variables["residual"])

    def apply(module, v, args, deterministic):
        return module.apply(v, *args, deterministic=deterministic, return_stats=True, mutable=["aion_stats"])

    def run(name, variables, x, y, x_norm, w, deterministic):
        module = scale if name == "scale" else residual

        def loss(params, y, x_norm):
            args = (y, x_norm) if name == "scale" else (x, y, x_norm)
            (out, stats), updates = apply(module, {**variables, "params": params}, args, deterministic)
            out = x + out if name == "scale" else out
            return jnp.sum(out * w), (out, stats, updates["aion_stats"])

        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(variables["params"], y, x_norm)

    run = jax.jit(run, static_argnums=(0, 6))
    deviation = 0.0
    for deterministic in MODES:
        x, y, x_norm, w = _inputs()
        update = not deterministic and int(variables["scale"]["aion_stats"]["step_count"]) % k_update == 0
        results = {}
        for name in ("scale", "residual"):
            (_, (out, stats, new_stats)), grads = run(name, variables[name], x, y, x_norm, w, deterministic)
            variables[name] = {**variables[name], "aion_stats": new_stats}
            results[name] = (out, stats, grads)
        (got_out, got_stats, got_grads), (want_out, want_stats, want_grads) = results["scale"], results["residual"]
        _assert_close(got_out, want_out)
        _assert_close(got_stats, want_stats)
        _assert_close(got_grads, want_grads)
        _assert_equal(variables["scale"]["aion_stats"], variables["residual"]["aion_stats"])
        deviation = max(deviation, _max_dev((got_out, got_grads), (want_out, want_grads)))
        assert float(jnp.max(jnp.abs(got_grads[1]))) > 0 and float(got_grads[0]["alpha0"]) != 0
        assert (float(jnp.max(jnp.abs(got_grads[2]))) > 0) == update
    print(f"linen k_update={k_update}: max |scale + x - residual| over outputs and grads {deviation:.3g}")
    stats = variables["scale"]["aion_stats"]
    assert int(stats["step_count"]) == 3 and float(stats["ratio_ema"]) != 1.0


# -- a pre-LN transformer block, AionScale on both residuals ---------------------------------

D, HEADS, SEQ = 16, 2, 8


class _Block(nnx.Module):
    """``x = x + AionScale()(attn(norm(x)), norm(x))``, then the same with a GELU MLP."""

    def __init__(self, rngs):
        self.norm1 = nnx.LayerNorm(D, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(HEADS, D, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(D, rngs=rngs)
        self.fc1, self.fc2 = nnx.Linear(D, 2 * D, rngs=rngs), nnx.Linear(2 * D, D, rngs=rngs)
        self.aion1, self.aion2 = AionScale(beta=0.3), AionScale(beta=0.3)

    def __call__(self, x):
        h = self.norm1(x)
        x = x + self.aion1(self.attn(h), h)
        h = self.norm2(x)
        return x + self.aion2(self.fc2(nnx.gelu(self.fc1(h))), h)


class _Transformer(nnx.Module):
    def __init__(self, remat=False):
        rngs = nnx.Rngs(0)
        self.embed = nnx.Linear(D, D, rngs=rngs)
        self.block = _Block(rngs)
        self.head = nnx.Linear(D, D, rngs=rngs)
        self.remat = remat

    def __call__(self, x):
        x = self.embed(x)
        # jax.checkpoint through nnx.remat: the block's activations are recomputed in the backward
        x = nnx.remat(lambda block, x: block(x))(self.block, x) if self.remat else self.block(x)
        return self.head(x)


@nnx.jit
def _train_step(model, optimizer, x, t):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - t) ** 2))(model)
    optimizer.update(model, grads)
    return loss


def _train_transformer(model, steps=3):
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((4, SEQ, D)).astype(np.float32))
    t = jnp.tanh(x[:, ::-1])
    return [float(_train_step(model, optimizer, x, t)) for _ in range(steps)]


def test_nnx_transformer_block_trains_the_same_under_remat():
    """3 adamw steps (nnx.jit, nnx.Optimizer): the block under nnx.remat (jax.checkpoint) gives the
    same losses, parameters and AionStat state as without."""
    plain, remat = _Transformer(), _Transformer(remat=True)
    _assert_equal(nnx.state(plain), nnx.state(remat))
    losses = {name: _train_transformer(model) for name, model in (("plain", plain), ("remat", remat))}
    assert np.isfinite(losses["plain"]).all() and losses["plain"][-1] < losses["plain"][0]
    # Measured equal to the bit on CPU (XLA recomputes the same expressions): compared exactly.
    print(f"transformer remat vs plain: losses {losses['remat']} vs {losses['plain']}, max deviation "
          f"params {_max_dev(nnx.state(remat, nnx.Param), nnx.state(plain, nnx.Param)):.3g}, "
          f"stats {_max_dev(nnx.state(remat, AionStat), nnx.state(plain, AionStat)):.3g}")
    assert losses["remat"] == losses["plain"]
    _assert_equal(nnx.state(remat, nnx.Param), nnx.state(plain, nnx.Param))
    _assert_equal(nnx.state(remat, AionStat), nnx.state(plain, AionStat))
    for aion in (plain.block.aion1, plain.block.aion2):
        assert int(aion.step_count[...]) == 3 and int(aion.nonfinite_count[...]) == 0
        assert float(aion.ratio_ema[...]) != 1.0

    # The remat model does recompute: its gradient's jaxpr holds a checkpoint (remat) of the block.
    def grad_primitives(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss = lambda p: jnp.sum(nnx.merge(graphdef, p, rest, copy=True)(jnp.ones((2, SEQ, D))))  # noqa: E731
        names = []

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                names.append(eqn.primitive.name)
                for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                    walk(sub)
        walk(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
        return names

    remat_names, plain_names = grad_primitives(remat), grad_primitives(plain)
    assert "remat2" in remat_names and "remat2" not in plain_names  # jax.checkpoint's primitive
    assert remat_names.count("exp") == 2 * plain_names.count("exp")  # the softmax, recomputed


# -- a CNN: NHWC, and NCHW with the channel axis moved last around AION -----------------------

C, H, W = 8, 6, 6


class _ConvNet(nnx.Module):
    """``x + AionScale()(conv(norm(x)), norm(x))``, the norm and the energies over the channels, then
    a linear head on the pooled map. ``channels_first``: the same parameters applied to NCHW arrays
    (convolution and norm on axis 1), the channel axis moved last for AION and back after."""

    def __init__(self, channels_first=False):
        rngs = nnx.Rngs(1)
        self.channels_first = channels_first
        axis = 1 if channels_first else -1
        self.norm = nnx.LayerNorm(C, reduction_axes=axis, feature_axes=axis, rngs=rngs)
        self.conv = nnx.Conv(C, C, (3, 3), padding="SAME", rngs=rngs)
        self.aion = AionScale(beta=0.3)
        self.head = nnx.Linear(C, 2, rngs=rngs)

    def branch(self, x_norm):
        if not self.channels_first:
            return nnx.relu(self.conv(x_norm))
        out = jax.lax.conv_general_dilated(x_norm, self.conv.kernel[...], (1, 1), "SAME",
                                           dimension_numbers=("NCHW", "HWIO", "NCHW"))
        return nnx.relu(out + self.conv.bias[...][:, None, None])

    def features(self, x):
        x_norm = self.norm(x)
        branch = self.branch(x_norm)
        if self.channels_first:  # AION reduces over the last axis: move the channels there and back
            return x + jnp.moveaxis(self.aion(jnp.moveaxis(branch, 1, -1), jnp.moveaxis(x_norm, 1, -1)), -1, 1)
        return x + self.aion(branch, x_norm)

    def __call__(self, x):
        return self.head(jnp.mean(self.features(x), axis=(2, 3) if self.channels_first else (1, 2)))


@nnx.jit
def _cnn_step(model, optimizer, x, t):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - t) ** 2))(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _cnn_probe(model, x):
    """The NHWC model's AION inputs, and a fresh AionScale's output and stats on them."""
    x_norm = model.norm(x)
    branch = model.branch(x_norm)
    out, stats = AionScale(beta=0.3)(branch, x_norm, return_stats=True)
    return branch, x_norm, out, stats


def test_cnn_nhwc_and_nchw_with_moveaxis():
    """NHWC: energies over the channel axis (the ratio equals numpy's mean over the pixels of
    E_c[y^2] / (E_c[x_norm^2] + eps)); NCHW with jnp.moveaxis around AION trains like NHWC on the
    transposed images (3 adamw steps) and gives the transposed feature map in eval."""
    rng = np.random.default_rng(9)
    images = rng.standard_normal((4, H, W, C)).astype(np.float32)
    target = jnp.asarray(rng.standard_normal((4, 2)).astype(np.float32))

    nhwc, nchw = _ConvNet(), _ConvNet(channels_first=True)
    _assert_equal(nnx.state(nhwc), nnx.state(nchw))
    branch, x_norm, out, stats = _cnn_probe(nhwc, jnp.asarray(images))
    assert branch.shape == out.shape == (4, H, W, C)
    e_y = np.mean(np.asarray(branch, np.float64) ** 2, -1)
    e_x = np.mean(np.asarray(x_norm, np.float64) ** 2, -1) + 1e-8
    np.testing.assert_allclose(float(stats["ratio"]), np.mean(e_y / e_x), rtol=1e-6)

    losses = {}
    for name, model, x in (("nhwc", nhwc, images), ("nchw", nchw, images.transpose(0, 3, 1, 2))):
        optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
        losses[name] = [float(_cnn_step(model, optimizer, jnp.asarray(x) * (1 + i / 2), target)) for i in range(3)]
    assert np.isfinite(losses["nhwc"]).all()
    assert int(nhwc.aion.step_count[...]) == 3 and float(nhwc.aion.ratio_ema[...]) != 1.0
    np.testing.assert_allclose(losses["nchw"], losses["nhwc"], rtol=1e-6)
    _assert_close(nnx.state(nchw, nnx.Param), nnx.state(nhwc, nnx.Param), rtol=1e-6, atol=1e-7)
    _assert_close(nnx.state(nchw, AionStat), nnx.state(nhwc, AionStat), rtol=1e-6, atol=1e-7)
    features = nnx.jit(lambda model, x: model.features(x))
    nhwc.eval()
    nchw.eval()
    want = np.asarray(features(nhwc, jnp.asarray(images))).transpose(0, 3, 1, 2)
    got = features(nchw, jnp.asarray(images.transpose(0, 3, 1, 2)))
    _assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert int(nchw.aion.step_count[...]) == 3  # eval left the state alone
    print(f"cnn nchw vs nhwc: losses {losses}, max deviation params "
          f"{_max_dev(nnx.state(nchw, nnx.Param), nnx.state(nhwc, nnx.Param)):.3g}, stats "
          f"{_max_dev(nnx.state(nchw, AionStat), nnx.state(nhwc, AionStat)):.3g}, eval features "
          f"{_max_dev(got, want):.3g}")
