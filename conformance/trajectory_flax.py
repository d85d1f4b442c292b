"""The cross-framework trajectory problem (:mod:`conformance.trajectory`) trained with Flax.

:func:`run_nnx` and :func:`run_linen` build the same network from the problem's numpy
weights out of :class:`aion_flax.AionBlock` (``LayerNorm -> tanh(Dense) -> AionResidual``),
train it with plain SGD (``optax.sgd``, no momentum) under ``jax.jit``, and return the
loss and per-block alpha of every step's forward, like :func:`conformance.trajectory.run_torch`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import aion_flax
import aion_flax.linen as aion_linen
from conformance.trajectory import block_aion, to_checkpoint

#: The LayerNorm epsilon built into AionBlock (spec); the problem must use the same.
BLOCK_LN_EPS = 1e-5


def _check_eps(problem: dict) -> None:
    if problem["ln_eps"] != BLOCK_LN_EPS:
        raise ValueError(f"problem['ln_eps'] must be {BLOCK_LN_EPS} (AionBlock's), got {problem['ln_eps']}")


def _result(losses, alphas, final_blocks) -> dict:
    return {"loss": [float(v) for v in losses], "alpha": [[float(a) for a in row] for row in alphas],
            "checkpoint": to_checkpoint(final_blocks)}


class _TanhLinear(nnx.Module):
    def __init__(self, w, b):
        dim_in, dim_out = w.shape
        self.linear = nnx.Linear(dim_in, dim_out, rngs=nnx.Rngs(0))
        self.linear.kernel[...] = jnp.asarray(w)  # flax kernels are [in, out], like the problem
        self.linear.bias[...] = jnp.asarray(b)

    def __call__(self, x):
        return jnp.tanh(self.linear(x))


class _NnxNet(nnx.Module):
    def __init__(self, problem: dict):
        blocks = []
        for p in problem["blocks"]:
            block = aion_flax.AionBlock(_TanhLinear(p["w"], p["b"]), p["w"].shape[0],
                                        alpha0=problem["alpha0"], beta=problem["beta"])
            block.norm.scale[...] = jnp.asarray(p["ln_scale"])
            block.norm.bias[...] = jnp.asarray(p["ln_bias"])
            for name, value in block_aion(problem, p).items():
                getattr(block.aion, name)[...] = jnp.asarray(value)
            blocks.append(block)
        self.blocks = nnx.List(blocks)

    def __call__(self, x):
        alphas = []
        for block in self.blocks:
            x, stats = block(x, return_stats=True)
            alphas.append(stats["alpha"])
        return x, jnp.stack(alphas)


def run_nnx(problem: dict, steps: int = 20) -> dict:
    """Train the problem with ``aion_flax.AionBlock`` (NNX); returns ``{"loss", "alpha"}``."""
    _check_eps(problem)
    model = _NnxNet(problem)
    optimizer = nnx.Optimizer(model, optax.sgd(problem["lr"]), wrt=nnx.Param)
    x, target = jnp.asarray(problem["x"]), jnp.asarray(problem["target"])

    @nnx.jit
    def train_step(model, optimizer):
        def loss_fn(model):
            out, alphas = model(x)
            return jnp.mean((out - target) ** 2), alphas

        (loss, alphas), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, alphas

    history = [train_step(model, optimizer) for _ in range(steps)]
    final = [{"ln_scale": b.norm.scale[...], "ln_bias": b.norm.bias[...],
              "w": b.layer.linear.kernel[...], "b": b.layer.linear.bias[...],
              **{k: getattr(b.aion, k)[...] for k in ("alpha0", "beta", "ratio_ema", "step_count",
                                                       "nonfinite_count")}} for b in model.blocks]
    return _result([h[0] for h in history], [h[1] for h in history], final)


class _LinenTanhDense(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Dense(self.features, name="dense")(x))


class _LinenNet(nn.Module):
    dims: tuple
    alpha0: float
    beta: float

    @nn.compact
    def __call__(self, x):
        alphas = []
        for i, dim in enumerate(self.dims):
            # parent=None: the branch becomes the block's child "layer", not this module's.
            branch = _LinenTanhDense(dim, parent=None)
            block = aion_linen.AionBlock(branch, self.alpha0, self.beta, name=f"block_{i}")
            x, stats = block(x, deterministic=False, return_stats=True)
            alphas.append(stats["alpha"])
        return x, jnp.stack(alphas)


def run_linen(problem: dict, steps: int = 20) -> dict:
    """Train the problem with ``aion_flax.linen.AionBlock``; returns ``{"loss", "alpha"}``."""
    _check_eps(problem)
    model = _LinenNet(tuple(p["w"].shape[0] for p in problem["blocks"]), problem["alpha0"],
                      problem["beta"])
    x, target = jnp.asarray(problem["x"]), jnp.asarray(problem["target"])
    variables = model.init(jax.random.key(0), x)
    params = {name: dict(tree) for name, tree in variables["params"].items()}
    for i, p in enumerate(problem["blocks"]):
        block = params[f"block_{i}"]
        aion = block_aion(problem, p)
        block["norm"] = {"scale": jnp.asarray(p["ln_scale"]), "bias": jnp.asarray(p["ln_bias"])}
        block["layer"] = {"dense": {"kernel": jnp.asarray(p["w"]), "bias": jnp.asarray(p["b"])}}
        block["aion"] = {k: jnp.asarray(aion[k]) for k in ("alpha0", "beta")}
    if jax.tree.structure(params) != jax.tree.structure(dict(variables["params"])):
        raise RuntimeError("the problem's weights do not cover the Linen parameter tree")
    stats = {f"block_{i}": {"aion": {k: jnp.asarray(v) for k, v in block_aion(problem, p).items()
                                     if k not in ("alpha0", "beta")}}
             for i, p in enumerate(problem["blocks"])}
    tx = optax.sgd(problem["lr"])
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, stats, opt_state):
        def loss_fn(params):
            (out, alphas), updates = model.apply(
                {"params": params, aion_linen.STATS_COLLECTION: stats}, x,
                mutable=[aion_linen.STATS_COLLECTION])
            return jnp.mean((out - target) ** 2), (alphas, updates[aion_linen.STATS_COLLECTION])

        (loss, (alphas, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), stats, opt_state, loss, alphas

    losses, alphas = [], []
    for _ in range(steps):
        params, stats, opt_state, loss, step_alphas = train_step(params, stats, opt_state)
        losses.append(loss)
        alphas.append(step_alphas)
    final = [{"ln_scale": params[f"block_{i}"]["norm"]["scale"], "ln_bias": params[f"block_{i}"]["norm"]["bias"],
              "w": params[f"block_{i}"]["layer"]["dense"]["kernel"], "b": params[f"block_{i}"]["layer"]["dense"]["bias"],
              **params[f"block_{i}"]["aion"], **stats[f"block_{i}"]["aion"]} for i in range(len(problem["blocks"]))]
    return _result(losses, alphas, final)
