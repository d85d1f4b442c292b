"""The Flax Linen kit: the networks of :mod:`aion_conformance.frameworks.net` as ``flax.linen``
modules, with :class:`aion_flax.linen.AionResidual` and :class:`aion_flax.linen.AionBlock`.

Linen modules are descriptions: the network's (hollow) structure is the ``Net`` module's
one attribute, and its variables live outside it, ``params`` and AION's ``aion_stats``.
Their layout is checked against ``init`` (abstractly, by ``jax.eval_shape``); training
calls ``apply`` with ``aion_stats`` mutable inside the jitted step of :mod:`.train`.
Every residual kind is built, so flax-linen runs each problem as flax-nnx does.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import aion_flax.linen as aion_linen
from aion_conformance.frameworks import net
from aion_conformance.frameworks.flax import layout
from aion_conformance.frameworks.flax.arrays import device, from_numpy, to_numpy, versions
from aion_conformance.frameworks.flax.train import Model, evaluate, read, trainer

#: Residual kinds beyond the neutral ones: none in Flax.
EXTRA_RESIDUALS: dict = {}

__all__ = ["EXTRA_RESIDUALS", "build", "device", "evaluate", "from_numpy", "read", "to_numpy", "trainer", "versions"]

_STATS = aion_linen.STATS_COLLECTION


def _layer_norm(norm: net.Norm, name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch and AionBlock compute it.
    return nn.LayerNorm(epsilon=norm.eps, use_fast_variance=False, name=name)


class Branch(nn.Module):
    """The block's dense layers, each followed by its activation; named ``dense_<j>``."""

    denses: tuple

    @nn.compact
    def __call__(self, x):
        for j, dense in enumerate(self.denses):
            x = layout.ACTIVATIONS[dense.activation](nn.Dense(dense.w.shape[1], name=f"dense_{j}")(x))
        return x


class Attention(nn.Module):
    """:class:`~aion_conformance.frameworks.net.Attention`: its dense layers ``qkv`` and ``proj``."""

    spec: net.Attention

    @nn.compact
    def __call__(self, x):
        dim = self.spec.qkv.w.shape[0]
        return layout.attention(x, nn.Dense(3 * dim, name="qkv"), nn.Dense(dim, name="proj"), self.spec.heads)


def _branch(spec: net.Block, **kwargs) -> nn.Module:
    return Attention(spec.attention, **kwargs) if spec.attention is not None else Branch(spec.branch, **kwargs)


class Block(nn.Module):
    """A block other than AionBlock, its parts under AionBlock's names (``norm``, ``layer``,
    ``aion``) and LayerScale's ``gamma``; returns ``(out, scale)``. ``deterministic``: AION's
    eval mode (its state read, not advanced)."""

    spec: net.Block
    deterministic: bool = False

    @nn.compact
    def __call__(self, x):
        spec = self.spec
        norm = _layer_norm(spec.ln, "norm") if spec.ln is not None else None
        aion = None
        if spec.aion is not None:
            aion = aion_linen.AionResidual(spec.aion.alpha0, spec.aion.beta, k_update=spec.aion.k_update,
                                           name="aion")
        gamma = None
        if spec.residual == "layerscale":
            gamma = self.param("gamma", nn.initializers.zeros_init(), (spec.dim,))
        return net.wire(spec, x, None, _branch(spec, name="layer"), norm,
                        lambda x, y: aion(x, y, deterministic=self.deterministic, return_stats=True),
                        lambda y: (gamma * y, jnp.mean(gamma)))


class Net(nn.Module):
    """A :class:`~aion_conformance.frameworks.net.Net` (``spec``: :func:`.layout.hollow`'s);
    ``__call__`` returns ``(out, scales)``; ``deterministic``: AION's eval mode."""

    spec: net.Net
    deterministic: bool = False

    def _block(self, i: int, x):
        spec = self.spec.blocks[i]
        if spec.residual != "aion-block":
            return Block(spec, self.deterministic, name=f"blocks_{i}")(x)
        # parent=None: the branch becomes AionBlock's child "layer", not this module's.
        block = aion_linen.AionBlock(_branch(spec, parent=None), alpha0=spec.aion.alpha0,
                                     beta=spec.aion.beta, k_update=spec.aion.k_update, name=f"blocks_{i}")
        # AionBlock holds norm, branch and AION itself: wire needs none of them apart.
        return net.wire(spec, x, lambda x: block(x, deterministic=self.deterministic, return_stats=True),
                        None, None, None, None)

    @nn.compact
    def __call__(self, inputs):
        spec = self.spec

        def embed(tokens):
            pos = self.param("pos", nn.initializers.zeros_init(), spec.pos.shape)
            return nn.Embed(*spec.embed.shape, name="embed")(tokens) + pos

        return layout.forward(spec, inputs, embed, self._block, lambda h: _layer_norm(spec.final_norm, "norm")(h),
                              lambda h: nn.Dense(spec.head.w.shape[1], name="head")(h))


def _sample(spec: net.Net) -> jax.ShapeDtypeStruct:
    """An input of one row (``init`` only needs its shape): tokens, or ``h`` itself (a
    sequence of one where a block attends)."""
    if spec.embed is not None:
        return jax.ShapeDtypeStruct((1, spec.pos.shape[0]), jnp.int32)
    seq = (1,) if any(b.attention is not None for b in spec.blocks) else ()
    return jax.ShapeDtypeStruct((1, *seq, spec.blocks[0].dim), jnp.float32)


def build(spec: net.Net) -> Model:
    """``spec``'s network as a Linen module, its variables on JAX's default device, as a trainable :class:`Model`."""
    module = Net(layout.hollow(spec))
    shapes = jax.eval_shape(module.init, jax.random.key(0), _sample(spec))

    def forward(variables, inputs):
        params = {k: v for k, v in variables.items() if not layout.is_state(k)}
        stats = {k: v for k, v in variables.items() if layout.is_state(k)}
        out, updates = module.apply({"params": layout.unflatten(params), _STATS: layout.unflatten(stats)}, inputs,
                                    mutable=[_STATS])
        return out, layout.flatten(updates.get(_STATS, {}))

    def evaluate(variables, inputs):
        params = {k: v for k, v in variables.items() if not layout.is_state(k)}
        stats = {k: v for k, v in variables.items() if layout.is_state(k)}
        return Net(module.spec, deterministic=True).apply(
            {"params": layout.unflatten(params), _STATS: layout.unflatten(stats)}, inputs)

    return Model.of(spec, forward, {**layout.flatten(shapes["params"]), **layout.flatten(shapes.get(_STATS, {}))},
                    evaluate)
