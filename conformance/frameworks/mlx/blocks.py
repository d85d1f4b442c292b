"""The networks of :mod:`aion_conformance.frameworks.net` as :mod:`mlx.nn` modules, and back.

Every layer is built here from the description's numpy weights (MLX's ``Linear`` keeps
``[out, in]``: the description's kernels are transposed), and a model's ``__call__``
returns ``(out, scales)`` as the description says. AION's entries go in and come out
through the adapter's own checkpoint functions, :func:`aion_mlx.from_portable` and
:func:`aion_mlx.to_portable`, so every trajectory checkpoint crosses them.

Only arrays, modules and lists of modules are module attributes: MLX keeps those in the
module's tree (what :func:`mlx.core.compile` is given as the model's state), and a tuple of
names there would be no tree of arrays. A block's description is an ordinary attribute.
"""

from __future__ import annotations

import math
from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn

from aion_conformance.frameworks import net
from aion_conformance.frameworks.mlx.arrays import numpy_of
from aion_mlx import AionBlock, AionResidual, from_portable, to_portable
from aion_core import STATE_SPEC, portable

#: No residual kinds of its own: MLX has one implementation of AION, :mod:`aion_mlx`.
EXTRA_RESIDUALS: dict = {}

#: A dense layer's activation by description name (GELU exact, with erf, as torch's default).
_ACTIVATIONS = {None: lambda x: x, "tanh": mx.tanh, "gelu": nn.gelu}


def _linear(dense: net.Dense) -> nn.Linear:
    layer = nn.Linear(*dense.w.shape)
    layer.weight, layer.bias = mx.array(dense.w.T), mx.array(dense.b)
    return layer


def _layer_norm(norm: net.Norm, into: nn.LayerNorm | None = None) -> nn.LayerNorm:
    layer = into if into is not None else nn.LayerNorm(norm.scale.shape[0], eps=norm.eps)
    layer.weight, layer.bias = mx.array(norm.scale), mx.array(norm.bias)
    return layer


def _read_norm(layer: nn.LayerNorm, eps: float) -> net.Norm:
    return net.Norm(numpy_of(layer.weight), numpy_of(layer.bias), eps)


def _read_dense(layer: nn.Linear, activation: str | None) -> net.Dense:
    return net.Dense(numpy_of(layer.weight).T, numpy_of(layer.bias), activation)


class Branch(nn.Module):
    """The dense layers of block ``spec`` (``layers``), each followed by its activation."""

    def __init__(self, spec: net.Block):
        super().__init__()
        self.spec = spec  # a dataclass, so an ordinary attribute; its tuple of layers would not be
        self.layers = [_linear(d) for d in spec.branch]

    def __call__(self, x):
        for layer, dense in zip(self.layers, self.spec.branch):
            x = _ACTIVATIONS[dense.activation](layer(x))
        return x


class Attention(nn.Module):
    """:class:`~aion_conformance.frameworks.net.Attention` in plain ops, as its docstring says:
    scores in the compute dtype, the causal mask and the softmax in float32."""

    def __init__(self, spec: net.Block):
        super().__init__()
        self.spec = spec
        self.qkv, self.proj = _linear(spec.attention.qkv), _linear(spec.attention.proj)

    def __call__(self, x):
        batch, seq, dim = x.shape
        heads = self.spec.attention.heads
        dh = dim // heads

        def split(t):  # [B, T, D] -> [B, H, T, dh]: head h holds channels h*dh:(h+1)*dh
            return t.reshape(batch, seq, heads, dh).transpose(0, 2, 1, 3)

        q, k, v = (split(t) for t in mx.split(self.qkv(x), 3, axis=-1))
        scores = (q @ k.swapaxes(-1, -2)) / math.sqrt(dh)
        seen = mx.tril(mx.ones((seq, seq), mx.bool_))
        a = mx.softmax(mx.where(seen, scores.astype(mx.float32), -math.inf), axis=-1).astype(v.dtype)
        return self.proj((a @ v).transpose(0, 2, 1, 3).reshape(batch, seq, dim))


def _branch(spec: net.Block) -> nn.Module:
    return Attention(spec) if spec.attention is not None else Branch(spec)


def _aion(spec: net.Aion, layer: AionResidual | None = None) -> AionResidual:
    """``layer`` (or a new AionResidual) with ``spec``'s parameters, state and trainability."""
    layer = layer if layer is not None else AionResidual(spec.alpha0, spec.beta, k_update=spec.k_update)
    fresh = {name: value for name, (_, _, value) in STATE_SPEC.items()}
    from_portable(layer, portable.layer_entries({**fresh, **(spec.state or {}), "alpha0": spec.alpha0,
                                                 "beta": spec.beta}))
    if not spec.trainable:  # out of trainable_parameters(): neither differentiated nor updated
        layer.freeze(keys=["alpha0", "beta"], recurse=False)
    return layer


class Block(nn.Module):
    """One :class:`~aion_conformance.frameworks.net.Block`; ``__call__`` returns ``(out, scale)``.

    Every kind holds its norm and branch, as :class:`aion_mlx.AionBlock` does (the
    ``"aion-block"`` kind holds one): the plain ``"sum"`` block the bench times against
    AION is then the same structure doing the same work.
    """

    def __init__(self, spec: net.Block):
        super().__init__()
        self.spec = spec
        branch = _branch(spec)
        if spec.residual == "aion-block":
            aion = spec.aion
            self.block = AionBlock(branch, spec.dim, alpha0=aion.alpha0, beta=aion.beta, k_update=aion.k_update)
            _layer_norm(spec.ln, self.block.norm)
            _aion(aion, self.block.aion)
            return
        self.branch = branch
        if spec.ln is not None:
            self.norm = _layer_norm(spec.ln)
        if spec.residual == "aion":
            self.aion = _aion(spec.aion)
        elif spec.residual == "layerscale":
            self.gamma = mx.full((spec.dim,), spec.gamma, mx.float32)

    def parts(self) -> tuple[Branch | Attention, nn.LayerNorm | None, AionResidual | None]:
        """The branch, LayerNorm and AionResidual, wherever the wiring keeps them."""
        if self.spec.residual == "aion-block":
            return self.block.layer, self.block.norm, self.block.aion
        return self.branch, self.get("norm"), self.get("aion")

    def __call__(self, x):
        return net.wire(self.spec, x, lambda x: self.block(x, return_stats=True), lambda x: self.branch(x),
                        lambda x: self.norm(x), lambda x, y: self.aion(x, y, return_stats=True),
                        lambda y: (self.gamma * y, mx.mean(self.gamma)))


class Net(nn.Module):
    """A :class:`~aion_conformance.frameworks.net.Net`; ``__call__`` returns ``(out, scales)``."""

    def __init__(self, spec: net.Net):
        super().__init__()
        self.spec = spec
        if spec.embed is not None:
            self.embed = nn.Embedding(*spec.embed.shape)
            self.embed.weight, self.pos = mx.array(spec.embed), mx.array(spec.pos)
        self.blocks = [Block(b) for b in spec.blocks]
        if spec.final_norm is not None:
            self.norm = _layer_norm(spec.final_norm)
        if spec.head is not None:
            self.head = _linear(spec.head)

    def __call__(self, inputs):
        h = self.embed(inputs) + self.pos if self.spec.embed is not None else inputs
        return net.stack(h, self.blocks, self.get("norm"), self.get("head"))


def build(spec: net.Net) -> Net:
    """The network, on MLX's default device, in training mode (AION's state advances)."""
    return Net(spec)


def _read_block(block: Block) -> net.Block:
    spec = block.spec
    branch, norm, aion = block.parts()
    if isinstance(branch, Attention):
        denses: tuple = (replace(spec.attention, qkv=_read_dense(branch.qkv, None),
                                 proj=_read_dense(branch.proj, None)),)
    else:
        denses = tuple(_read_dense(layer, d.activation) for layer, d in zip(branch.layers, spec.branch))
    ln = None if norm is None else _read_norm(norm, spec.ln.eps)
    if aion is not None:
        state = to_portable(aion)
        aion = net.Aion(float(state.pop("alpha0")), float(state.pop("beta")), spec.aion.k_update,
                        spec.aion.trainable, state)
    return replace(spec, branch=denses, ln=ln, aion=aion)


def read(model: Net) -> net.Net:
    """The trained weights and AION entries of ``model`` as a numpy description."""
    spec = model.spec
    embed = {} if spec.embed is None else {"embed": numpy_of(model.embed.weight), "pos": numpy_of(model.pos)}
    return replace(spec, blocks=tuple(_read_block(b) for b in model.blocks), **embed,
                   final_norm=None if spec.final_norm is None else _read_norm(model.norm, spec.final_norm.eps),
                   head=None if spec.head is None else _read_dense(model.head, spec.head.activation))
