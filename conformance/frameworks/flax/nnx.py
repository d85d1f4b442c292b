"""The Flax NNX kit: the networks of :mod:`aion_conformance.frameworks.net` as ``flax.nnx``
modules, with :class:`aion_flax.AionResidual` and :class:`aion_flax.AionBlock`.

The modules are built once, abstractly (``nnx.eval_shape``: the weights come from the
description, not from initialisers), and split into a graph definition; training merges
it with the flat variables of :mod:`.layout` inside the jitted step of :mod:`.train`, and
reads AION's updated state back as ``nnx.state(model, AionStat)``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

import aion_flax
from aion_conformance.frameworks import net
from aion_conformance.frameworks.flax import layout
from aion_conformance.frameworks.flax.arrays import device, from_numpy, to_numpy, versions
from aion_conformance.frameworks.flax.train import Model, evaluate, read, trainer

__all__ = ["EXTRA_RESIDUALS", "build", "device", "evaluate", "from_numpy", "read", "to_numpy", "trainer", "versions"]

#: No residual kinds beyond the neutral ones.
EXTRA_RESIDUALS: dict = {}


def _layer_norm(norm: net.Norm) -> nnx.LayerNorm:
    # Two-pass variance, as torch and AionBlock compute it.
    return nnx.LayerNorm(norm.scale.shape[0], epsilon=norm.eps, use_fast_variance=False, rngs=nnx.Rngs(0))


def _linear(dense: net.Dense) -> nnx.Linear:
    return nnx.Linear(*dense.w.shape, rngs=nnx.Rngs(0))


class Branch(nnx.Module):
    """The block's dense layers, each followed by its activation; named ``dense_<j>``."""

    def __init__(self, denses: tuple[net.Dense, ...]):
        self.activations = tuple(d.activation for d in denses)
        for j, dense in enumerate(denses):  # Linen's names for a list of children (see layout)
            setattr(self, f"dense_{j}", _linear(dense))

    def __call__(self, x):
        for j, activation in enumerate(self.activations):
            x = layout.ACTIVATIONS[activation](getattr(self, f"dense_{j}")(x))
        return x


class Attention(nnx.Module):
    """:class:`~aion_conformance.frameworks.net.Attention`: its dense layers ``qkv`` and ``proj``."""

    def __init__(self, spec: net.Attention):
        self.heads = spec.heads
        self.qkv, self.proj = _linear(spec.qkv), _linear(spec.proj)

    def __call__(self, x):
        return layout.attention(x, self.qkv, self.proj, self.heads)


def _branch(spec: net.Block) -> nnx.Module:
    return Attention(spec.attention) if spec.attention is not None else Branch(spec.branch)


class Block(nnx.Module):
    """A block other than AionBlock, holding its parts under AionBlock's names (``norm``,
    ``layer``, ``aion``) and LayerScale's ``gamma``."""

    def __init__(self, spec: net.Block):
        self.layer = _branch(spec)
        if spec.ln is not None:
            self.norm = _layer_norm(spec.ln)
        if spec.aion is not None:
            self.aion = aion_flax.AionResidual(spec.aion.alpha0, spec.aion.beta, k_update=spec.aion.k_update)
        if spec.residual == "layerscale":
            self.gamma = nnx.Param(jnp.zeros(spec.dim, jnp.float32))


def _block(spec: net.Block) -> nnx.Module:
    if spec.residual != "aion-block":
        return Block(spec)
    aion = spec.aion
    return aion_flax.AionBlock(_branch(spec), spec.dim, alpha0=aion.alpha0, beta=aion.beta,
                               k_update=aion.k_update)


class Net(nnx.Module):
    """A :class:`~aion_conformance.frameworks.net.Net`; ``__call__`` returns ``(out, scales)``."""

    def __init__(self, spec: net.Net):
        self.spec = layout.hollow(spec)
        if spec.embed is not None:
            self.embed = nnx.Embed(*spec.embed.shape, rngs=nnx.Rngs(0))
            self.pos = nnx.Param(jnp.zeros(spec.pos.shape, jnp.float32))
        for i, block in enumerate(spec.blocks):
            setattr(self, f"blocks_{i}", _block(block))
        if spec.final_norm is not None:
            self.norm = _layer_norm(spec.final_norm)
        if spec.head is not None:
            self.head = _linear(spec.head)

    def _block(self, i: int, x):
        m = getattr(self, f"blocks_{i}")
        return net.wire(self.spec.blocks[i], x, lambda x: m(x, return_stats=True), lambda x: m.layer(x),
                        lambda x: m.norm(x), lambda x, y: m.aion(x, y, return_stats=True),
                        lambda y: (m.gamma[...] * y, jnp.mean(m.gamma[...])))

    def __call__(self, inputs):
        return layout.forward(self.spec, inputs, lambda t: self.embed(t) + self.pos[...], self._block,
                              lambda h: self.norm(h), lambda h: self.head(h))


def build(spec: net.Net) -> Model:
    """``spec``'s network as NNX modules, on JAX's default device, as a trainable :class:`Model`."""
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: Net(spec)))

    def forward(variables, inputs):
        model = nnx.merge(graphdef, layout.unflatten(variables))
        return model(inputs), layout.flatten(nnx.to_pure_dict(nnx.state(model, aion_flax.AionStat)))

    def evaluate(variables, inputs):
        # AION's eval mode: its state read, not advanced (a network without AION has none to set).
        model = nnx.view(nnx.merge(graphdef, layout.unflatten(variables)), deterministic=True,
                         raise_if_not_found=False)
        return model(inputs)

    return Model.of(spec, forward, layout.flatten(nnx.to_pure_dict(shapes)), evaluate)
