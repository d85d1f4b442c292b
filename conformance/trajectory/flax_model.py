"""The trajectory problem (:mod:`~aion_conformance.trajectory.problem`) trained with Flax.

:func:`run_nnx` and :func:`run_linen` build the same network from the problem's numpy
weights out of :class:`aion_flax.AionBlock` (``LayerNorm -> tanh(Dense) -> AionResidual``)
and train it with the jitted gradients and SGD of :mod:`aion_conformance.frameworks.jax`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import aion_flax
import aion_flax.linen as aion_linen
from aion_conformance.frameworks import jax as fw
from aion_conformance.trajectory.problem import LN_EPS, block_aion, to_checkpoint
from aion_core import portable


def _check_eps(problem: dict) -> None:
    if problem["ln_eps"] != LN_EPS:
        raise ValueError(f"problem['ln_eps'] must be {LN_EPS} (AionBlock's), got {problem['ln_eps']}")


def _train(loss_fn, params, stats, problem: dict, steps: int):
    """SGD on ``loss_fn(params, stats) -> (loss, (alphas, new stats))``; returns the history."""
    program = fw.value_and_grad(loss_fn)
    losses, alphas = [], []
    for _ in range(steps):
        loss, (step_alphas, stats), grads, _ = program(params, [], [stats])
        params = fw.sgd(params, grads, problem["lr"])
        losses.append(float(loss))
        alphas.append([float(a) for a in step_alphas])
    return params, stats, losses, alphas


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
    """Train the problem with ``aion_flax.AionBlock`` (NNX); loss, alpha and checkpoint."""
    _check_eps(problem)
    graphdef, params, stats = nnx.split(_NnxNet(problem), nnx.Param, aion_flax.AionStat)
    x, target = jnp.asarray(problem["x"]), jnp.asarray(problem["target"])

    def loss_fn(params, stats):
        model = nnx.merge(graphdef, params, stats, copy=True)
        out, alphas = model(x)
        return jnp.mean((out - target) ** 2), (alphas, nnx.state(model, aion_flax.AionStat))

    params, stats, losses, alphas = _train(loss_fn, params, stats, problem, steps)
    model = nnx.merge(graphdef, params, stats)
    final = [{"ln_scale": b.norm.scale[...], "ln_bias": b.norm.bias[...],
              "w": b.layer.linear.kernel[...], "b": b.layer.linear.bias[...],
              **{k: getattr(b.aion, k)[...] for k in portable.ENTRY_DTYPES}} for b in model.blocks]
    return {"loss": losses, "alpha": alphas, "checkpoint": to_checkpoint(final)}


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
            block = aion_linen.AionBlock(branch, alpha0=self.alpha0, beta=self.beta, name=f"block_{i}")
            x, stats = block(x, deterministic=False, return_stats=True)
            alphas.append(stats["alpha"])
        return x, jnp.stack(alphas)


def run_linen(problem: dict, steps: int = 20) -> dict:
    """Train the problem with ``aion_flax.linen.AionBlock``; loss, alpha and checkpoint."""
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
        block["aion"] = {k: jnp.asarray(aion[k]) for k in portable.PARAM_NAMES}
    if jax.tree.structure(params) != jax.tree.structure(dict(variables["params"])):
        raise RuntimeError("the problem's weights do not cover the Linen parameter tree")
    stats = {f"block_{i}": {"aion": {k: jnp.asarray(v) for k, v in block_aion(problem, p).items()
                                     if k not in portable.PARAM_NAMES}}
             for i, p in enumerate(problem["blocks"])}

    def loss_fn(params, stats):
        (out, alphas), updates = model.apply({"params": params, aion_linen.STATS_COLLECTION: stats}, x,
                                             mutable=[aion_linen.STATS_COLLECTION])
        return jnp.mean((out - target) ** 2), (alphas, updates[aion_linen.STATS_COLLECTION])

    params, stats, losses, alphas = _train(loss_fn, params, stats, problem, steps)
    final = [{"ln_scale": params[f"block_{i}"]["norm"]["scale"], "ln_bias": params[f"block_{i}"]["norm"]["bias"],
              "w": params[f"block_{i}"]["layer"]["dense"]["kernel"], "b": params[f"block_{i}"]["layer"]["dense"]["bias"],
              **params[f"block_{i}"]["aion"], **stats[f"block_{i}"]["aion"]} for i in range(len(problem["blocks"]))]
    return {"loss": losses, "alpha": alphas, "checkpoint": to_checkpoint(final)}
