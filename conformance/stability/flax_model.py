"""The stability problem (:mod:`~aion_conformance.stability.problem`) trained with :mod:`aion_flax` (NNX).

One jitted step over the split model state; optax's ``clip_by_global_norm`` and ``adamw``.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import aion_flax
from aion_conformance.stability.problem import (ADAM_EPS, AION_BETA, BETAS, CLIP_NORM, LN_EPS, SCALE, SCALED,
                                                VARIANTS, Variant, branch_weights, deepnorm_constants, make_problem,
                                                wire)


def _linear(w, b) -> nnx.Linear:
    layer = nnx.Linear(*w.shape, rngs=nnx.Rngs(0))
    layer.kernel[...] = jnp.asarray(w)  # flax kernels are [in, out], like the problem's
    layer.bias[...] = jnp.asarray(b)
    return layer


def _layer_norm(dim: int) -> nnx.LayerNorm:
    # Two-pass variance, as torch and AionBlock compute it.
    return nnx.LayerNorm(dim, epsilon=LN_EPS, use_fast_variance=False, rngs=nnx.Rngs(0))


class FeedForward(nnx.Module):
    """``Linear(D, 4D)``, exact GELU, ``Linear(4D, D)`` from the problem's weights."""

    def __init__(self, weights: dict):
        self.inner = _linear(weights["w1"], weights["b1"])
        self.outer = _linear(weights["w2"], weights["b2"])

    def __call__(self, x):
        return self.outer(jax.nn.gelu(self.inner(x), approximate=False))


class StabilityBlock(nnx.Module):
    """One residual block wired as ``variant`` says; returns ``(out, scale)`` (``scale``:
    AION's alpha, LayerScale's mean gamma, or None)."""

    def __init__(self, variant: Variant, weights: dict, depth: int):
        self.variant = variant
        self.skip_gain = deepnorm_constants(depth)[0] if variant.residual == "deepnorm" else 1.0
        dim = weights["w1"].shape[0]
        ff = FeedForward(weights)
        if variant.residual == "aion-block":
            self.block = aion_flax.AionBlock(ff, dim, alpha0=SCALE, beta=AION_BETA)
            return
        self.ff = ff
        self.norm = _layer_norm(dim) if variant.norm != "none" else None
        if variant.residual in ("fixed", "aion"):
            # The fixed variant's alpha0 and beta are left out of the optimizer (see run).
            self.aion = aion_flax.AionResidual(SCALE, 0.0 if variant.residual == "fixed" else AION_BETA)
        elif variant.residual == "layerscale":
            self.gamma = nnx.Param(jnp.full((dim,), SCALE, jnp.float32))

    def __call__(self, x):
        return wire(self.variant, x, lambda x: self.block(x, return_stats=True), lambda x: self.ff(x),
                    lambda x: self.norm(x), lambda x, y: self.aion(x, y, return_stats=True),
                    lambda y: (self.gamma[...] * y, jnp.mean(self.gamma[...])), self.skip_gain)


class StabilityNet(nnx.Module):
    """Embeddings, the blocks, final LayerNorm and head; returns ``(out, scales)``."""

    def __init__(self, problem: dict, variant: Variant):
        vocab, dim = problem["embed"].shape
        self.embed = nnx.Embed(vocab, dim, rngs=nnx.Rngs(0))
        self.embed.embedding[...] = jnp.asarray(problem["embed"])
        self.pos = nnx.Param(jnp.asarray(problem["pos"]))
        self.blocks = nnx.List([StabilityBlock(variant, branch_weights(problem, variant, i), problem["depth"])
                                for i in range(problem["depth"])])
        self.norm = _layer_norm(dim)
        self.head = _linear(problem["head_w"], problem["head_b"])

    def __call__(self, tokens):
        h, scales = self.embed(tokens) + self.pos[...], []
        for block in self.blocks:
            h, scale = block(h)
            scales.append(scale)
        return self.head(self.norm(h)), [s for s in scales if s is not None]


def run(seed: int, depth: int, variant: str, steps: int, record_scale: bool = False) -> dict:
    """Train one variant; as :func:`aion_conformance.stability.torch_model.run`."""
    problem = make_problem(seed, depth)
    spec = VARIANTS[variant]
    # The fixed scale trains nothing of AION's: its alpha0 and beta stay with the frozen state.
    trainable = (nnx.All(nnx.Param, nnx.Not(nnx.PathContains("aion"))) if spec.residual == "fixed"
                 else nnx.Param)
    graphdef, params, stats, frozen = nnx.split(StabilityNet(problem, spec), trainable, aion_flax.AionStat, ...)
    tx = optax.chain(optax.clip_by_global_norm(CLIP_NORM),
                     optax.adamw(spec.lr, b1=BETAS[0], b2=BETAS[1], eps=ADAM_EPS, weight_decay=0.0))
    opt_state = tx.init(params)
    tokens, target = jnp.asarray(problem["tokens"]), jnp.asarray(problem["target"])

    @jax.jit
    def train_step(params, stats, opt_state):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, stats, frozen, copy=True)
            out, scales = model(tokens)
            return jnp.mean((out - target) ** 2), (scales, nnx.state(model, aion_flax.AionStat))

        (loss, (scales, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss, optax.global_norm(grads), scales

    record = record_scale and spec.residual in SCALED
    losses, norms, scales = [], [], []
    start = time.perf_counter()
    for _ in range(steps):
        params, stats, opt_state, loss, norm, step_scales = train_step(params, stats, opt_state)
        losses.append(float(loss))
        norms.append(float(norm))
        if record:
            scales.append([float(s) for s in step_scales])
        if not math.isfinite(losses[-1]):
            break
    return {"loss": losses, "grad_norm": norms, "scale": scales if record else None,
            "seconds": time.perf_counter() - start, "device": jax.devices()[0].platform}
