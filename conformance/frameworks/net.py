"""The networks every problem trains, described once with numpy weights.

A problem (trajectory, stability, bench) says *what* network it trains as a :class:`Net`;
each framework's kit (``aion_conformance.frameworks.<framework>``) builds it from these
numpy arrays with its own layers (``build``) and reads the trained weights back into the
same description (``read``). So no problem defines a model per framework, and every
framework starts from the same weights.

A network is ``h = embed[tokens] + pos`` (or the float input itself, without ``embed``);
then each :class:`Block`; then ``final_norm`` and ``head`` where given. Its forward
returns ``(out, scales)``: ``scales`` holds each block's branch scale of this forward
(AION's alpha, LayerScale's mean gamma), for the blocks that have one.

Kernels are ``[in, out]`` (Keras' and Flax's layout; torch transposes). A branch is a
sequence of :class:`Dense` layers, or one :class:`Attention` (causal self-attention, the
language-model problems' attention sublayer).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: LayerNorm's epsilon in every problem (torch's default; AionBlock's in every framework).
LN_EPS = 1e-5

#: How a block adds its branch ``y`` to the stream ``x``.
RESIDUALS = {
    "sum": "x + y",
    "aion": "AionResidual(x, y): ratio on x",
    "aion-block": "AionBlock: x + alpha y, the ratio on LN(x) (pre-norm only)",
    "layerscale": "x + gamma y, gamma per channel, trained",
    "deepnorm": "skip_gain x + y",
}
#: Where a block's LayerNorm sits: before the branch, after the sum, or nowhere.
NORMS = ("pre", "post", "none")


@dataclass(frozen=True)
class Dense:
    """``activation(x @ w + b)``; ``activation`` one of None, ``"tanh"``, ``"gelu"`` (exact, erf)."""

    w: np.ndarray
    b: np.ndarray
    activation: str | None = None


def dense_init(rng: np.random.Generator, fan_in: int, fan_out: int, activation: str | None = None) -> Dense:
    """A dense layer drawn as ``torch.nn.Linear`` draws it: weight, then bias, uniform in
    ``+-1/sqrt(fan_in)``, float32.

    >>> dense_init(np.random.default_rng(0), 3, 2).w.shape
    (3, 2)
    """
    bound = fan_in ** -0.5
    w = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)
    return Dense(w, rng.uniform(-bound, bound, fan_out).astype(np.float32), activation)


@dataclass(frozen=True)
class Attention:
    """Causal multi-head self-attention over ``x`` of shape ``[B, T, D]``.

    ``q, k, v = split(x @ qkv.w + qkv.b, 3, axis=-1)`` (``qkv.w`` is ``[D, 3D]``, q first);
    head ``h`` takes channels ``h*dh:(h+1)*dh`` of each (``dh = D // heads``);
    ``a = softmax(q k^T / sqrt(dh) + mask)`` with ``mask`` ``-inf`` above the diagonal (a
    position sees itself and earlier ones), computed in the compute dtype with the softmax
    in float32; the heads' ``a v`` concatenated back in head order, then ``proj``. Neither
    Dense has an activation.
    """

    qkv: Dense
    proj: Dense
    heads: int

    def __post_init__(self):
        dim = self.qkv.w.shape[0]
        if self.qkv.w.shape != (dim, 3 * dim) or self.proj.w.shape != (dim, dim) or dim % self.heads:
            raise ValueError(f"attention needs qkv [D, 3D], proj [D, D] and heads dividing D; got "
                             f"{self.qkv.w.shape}, {self.proj.w.shape}, heads={self.heads}")


def attention_init(rng: np.random.Generator, dim: int, heads: int) -> Attention:
    """An attention sublayer drawn as two ``torch.nn.Linear`` (qkv, then proj)."""
    return Attention(dense_init(rng, dim, 3 * dim), dense_init(rng, dim, dim), heads)


@dataclass(frozen=True)
class Norm:
    """LayerNorm over the last axis with a per-channel ``scale`` and ``bias``."""

    scale: np.ndarray
    bias: np.ndarray
    eps: float = LN_EPS

    @classmethod
    def fresh(cls, dim: int) -> Norm:
        return cls(np.ones(dim, np.float32), np.zeros(dim, np.float32))


@dataclass(frozen=True)
class Aion:
    """One AION layer: its parameters, schedule and (portable) running state.

    ``trainable`` False freezes ``alpha0`` and ``beta`` (the fixed-scale baseline);
    ``state`` holds the :data:`aion_core.STATE_SPEC` entries, or None for a fresh layer.
    """

    alpha0: float
    beta: float
    k_update: int = 1
    trainable: bool = True
    state: dict[str, Any] | None = None


@dataclass(frozen=True)
class Block:
    """One residual block: ``norm`` placement, ``residual`` kind, the branch's dense layers.

    ``ln`` is the block's LayerNorm (None with ``norm="none"``); ``aion`` is set for the
    ``"aion"`` and ``"aion-block"`` residuals; ``gamma`` is LayerScale's initial value;
    ``skip_gain`` DeepNorm's ``a``. A kit may offer residual kinds of its own beyond
    :data:`RESIDUALS` (its ``EXTRA_RESIDUALS``, e.g. another implementation to time).
    """

    residual: str
    norm: str
    branch: tuple[Dense, ...] | tuple[Attention]
    ln: Norm | None = None
    aion: Aion | None = None
    gamma: float = 0.1
    skip_gain: float = 1.0

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if (self.ln is None) != (self.norm == "none"):
            raise ValueError(f"a block with norm={self.norm!r} needs ln {'None' if self.norm == 'none' else 'set'}")
        if self.residual == "aion-block" and (self.norm != "pre" or self.ln.eps != LN_EPS):
            raise ValueError(f"an aion-block is pre-norm with AionBlock's LayerNorm epsilon {LN_EPS}")
        if self.aion is None and self.residual in ("aion", "aion-block"):
            raise ValueError(f"residual {self.residual!r} needs aion")
        if self.aion is not None and self.residual in ("sum", "layerscale", "deepnorm"):
            raise ValueError(f"residual {self.residual!r} takes no aion")
        if any(isinstance(d, Attention) for d in self.branch) and len(self.branch) != 1:
            raise ValueError("an attention branch is one Attention alone")

    @property
    def dim(self) -> int:
        first = self.branch[0]
        return (first.qkv if isinstance(first, Attention) else first).w.shape[0]

    @property
    def attention(self) -> Attention | None:
        """The branch's attention sublayer, or None for a dense branch."""
        return self.branch[0] if isinstance(self.branch[0], Attention) else None


@dataclass(frozen=True)
class Net:
    """A residual stack: optional embeddings, the blocks, optional final norm and head."""

    blocks: tuple[Block, ...]
    embed: np.ndarray | None = None
    pos: np.ndarray | None = None
    final_norm: Norm | None = None
    head: Dense | None = None

    def with_blocks(self, blocks) -> Net:
        return replace(self, blocks=tuple(blocks))


def wire(block: Block, x, aion_block, branch, norm, aion, layerscale):
    """A block's ``(out, scale)`` from a framework's parts, wired as ``block`` says.

    ``aion_block(x) -> (out, stats)`` (the ``"aion-block"`` residual only); ``branch(x)``
    and ``norm(x)``: the dense layers and the LayerNorm; ``aion(x, y) -> (out, stats)``;
    ``layerscale(y) -> (gamma * y, mean gamma)``. ``scale`` is AION's alpha, LayerScale's
    mean gamma, or None.
    """
    if block.residual == "aion-block":
        out, stats = aion_block(x)
        return out, stats["alpha"]
    y = branch(norm(x) if block.norm == "pre" else x)
    scale = None
    if block.residual == "aion":
        out, stats = aion(x, y)
        scale = stats["alpha"]
    elif block.residual == "layerscale":
        scaled, scale = layerscale(y)
        out = x + scaled
    elif block.residual == "deepnorm":
        out = block.skip_gain * x + y
    else:
        out = x + y
    return (norm(out) if block.norm == "post" else out), scale


def stack(h, blocks, norm=None, head=None):
    """A network's ``(out, scales)`` from its embedded input ``h`` and a framework's parts.

    ``blocks``: callables ``block(h) -> (h, scale)`` (a block's :func:`wire`); ``norm`` and
    ``head``: the final LayerNorm and dense layer, or None. ``scales`` holds the scale of
    each block that has one, in order.
    """
    scales = []
    for block in blocks:
        h, scale = block(h)
        if scale is not None:
            scales.append(scale)
    if norm is not None:
        h = norm(h)
    return (head(h) if head is not None else h), scales
