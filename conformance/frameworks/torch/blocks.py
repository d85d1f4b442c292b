"""The networks of :mod:`aion_conformance.frameworks.net` as torch modules, and back."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from aion_conformance.frameworks import net
from aion_conformance.frameworks.torch import arrays
from aion_conformance.frameworks.torch.evidence_residuals import LOADERS as EVIDENCE_RESIDUALS
from aion_core import portable
from aion_pytorch import AionBlock, AionResidual


def _original_block():
    from aion_conformance.frameworks.torch import original

    module = original.load()
    return None if module is None else module.AionBlock


def _floor_block():
    from aion_conformance.frameworks.torch.floor import FloorBlock

    return FloorBlock


#: Residual kinds beyond the neutral ones: name -> a loader of an AionBlock-like class
#: ``cls(branch, dim)`` (alpha0 0.1, beta 0.05), None when not installed: the original
#: aion-torch 1.0.2, the fewest-op eager bound (``eager_only``: torch.compile cannot trace it)
#: and the evidence benchmark's controls (torch only).
EXTRA_RESIDUALS = {"aion-torch-1.0.2": _original_block, "aion-floor": _floor_block, **EVIDENCE_RESIDUALS}


def _set(param: torch.Tensor, value) -> None:
    with torch.no_grad():
        param.copy_(torch.from_numpy(value))


def _linear(dense: net.Dense) -> nn.Linear:
    layer = nn.Linear(*dense.w.shape)
    _set(layer.weight, dense.w.T)  # torch keeps [out, in]
    _set(layer.bias, dense.b)
    return layer


def _layer_norm(norm: net.Norm, into: nn.LayerNorm | None = None) -> nn.LayerNorm:
    layer = into if into is not None else nn.LayerNorm(norm.scale.shape[0], eps=norm.eps)
    _set(layer.weight, norm.scale)
    _set(layer.bias, norm.bias)
    return layer


_ACTIVATIONS = {None: nn.Identity, "tanh": nn.Tanh, "gelu": nn.GELU}


class Branch(nn.Sequential):
    """The block's dense layers, each followed by its activation."""

    def __init__(self, denses):
        super().__init__(*[m for d in denses for m in (_linear(d), _ACTIVATIONS[d.activation]())])
        self.activations = [d.activation for d in denses]


class Attention(nn.Module):
    """:class:`~aion_conformance.frameworks.net.Attention` in plain ops, as its docstring says:
    scores in the compute dtype, the causal mask and the softmax in float32."""

    def __init__(self, spec: net.Attention):
        super().__init__()
        self.heads = spec.heads
        self.qkv, self.proj = _linear(spec.qkv), _linear(spec.proj)

    def forward(self, x):
        batch, seq, dim = x.shape
        dh = dim // self.heads

        def heads(t):  # [B, T, D] -> [B, H, T, dh]: head h holds channels h*dh:(h+1)*dh
            return t.reshape(batch, seq, self.heads, dh).transpose(1, 2)

        q, k, v = (heads(t) for t in self.qkv(x).split(dim, dim=-1))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(dh)
        future = torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu(1)
        a = torch.softmax(scores.float().masked_fill(future, -math.inf), dim=-1).to(v.dtype)
        return self.proj((a @ v).transpose(1, 2).reshape(batch, seq, dim))


def _branch(spec: net.Block) -> nn.Module:
    return Attention(spec.attention) if spec.attention is not None else Branch(spec.branch)


def _aion(spec: net.Aion, layer: AionResidual | None = None) -> AionResidual:
    """``layer`` (or a new AionResidual) with ``spec``'s parameters, state and trainability."""
    layer = layer if layer is not None else AionResidual(spec.alpha0, spec.beta, k_update=spec.k_update)
    if spec.state is not None:
        layer.load_state_dict({k: torch.from_numpy(v) for k, v in portable.layer_entries(
            {"alpha0": spec.alpha0, "beta": spec.beta, **spec.state}).items()})
    layer.requires_grad_(spec.trainable)
    return layer


class Block(nn.Module):
    """One :class:`~aion_conformance.frameworks.net.Block`; ``forward`` returns ``(out, scale)``."""

    def __init__(self, spec: net.Block):
        super().__init__()
        self.spec = spec
        branch = _branch(spec)
        if spec.residual == "aion-block" or spec.residual in EXTRA_RESIDUALS:
            cls = AionBlock if spec.residual == "aion-block" else EXTRA_RESIDUALS[spec.residual]()
            # The timing extras keep their own defaults (alpha0 0.1, beta 0.05, as AionBlock's);
            # the evidence controls take the spec's alpha0, beta and norm placement.
            kwargs = {}
            if spec.residual == "aion-block":
                kwargs = {"alpha0": spec.aion.alpha0, "beta": spec.aion.beta, "k_update": spec.aion.k_update}
            elif spec.residual in EVIDENCE_RESIDUALS:
                kwargs = {"alpha0": spec.aion.alpha0, "beta": spec.aion.beta, "post": spec.norm == "post"}
            self.block = cls(branch, spec.dim, **kwargs)
            _layer_norm(spec.ln, self.block.norm)
            if spec.residual == "aion-block":
                _aion(spec.aion, self.block.aion)
            return
        self.branch = branch
        self.norm = _layer_norm(spec.ln) if spec.ln is not None else None
        if spec.residual == "aion":
            self.aion = _aion(spec.aion)
        elif spec.residual == "layerscale":
            self.gamma = nn.Parameter(torch.full((spec.dim,), spec.gamma))

    def forward(self, x):
        if self.spec.residual in EXTRA_RESIDUALS:
            return self.block(x), None
        return net.wire(self.spec, x, lambda x: self.block(x, return_stats=True), lambda x: self.branch(x),
                        lambda x: self.norm(x), lambda x, y: self.aion(x, y, return_stats=True),
                        lambda y: (self.gamma * y, self.gamma.mean()))


class Net(nn.Module):
    """A :class:`~aion_conformance.frameworks.net.Net`; ``forward`` returns ``(out, scales)``."""

    def __init__(self, spec: net.Net):
        super().__init__()
        self.spec = spec
        if spec.embed is not None:
            self.embed = nn.Embedding.from_pretrained(torch.from_numpy(spec.embed).clone(), freeze=False)
            self.pos = nn.Parameter(torch.from_numpy(spec.pos).clone())
        self.blocks = nn.ModuleList(Block(b) for b in spec.blocks)
        self.norm = _layer_norm(spec.final_norm) if spec.final_norm is not None else None
        self.head = _linear(spec.head) if spec.head is not None else None

    def forward(self, inputs):
        h = self.embed(inputs.long()) + self.pos if self.spec.embed is not None else inputs
        return net.stack(h, self.blocks, self.norm, self.head)


def build(spec: net.Net) -> Net:
    """The network on the kit's device."""
    return Net(spec).to(arrays.device())


def _numpy(t: torch.Tensor):
    # A copy: on the CPU .numpy() shares the parameter's memory, which later steps overwrite.
    return t.detach().cpu().numpy().copy()


def _read_dense(layer: nn.Linear, activation: str | None = None) -> net.Dense:
    return net.Dense(_numpy(layer.weight).T, _numpy(layer.bias), activation)


def _read_block(block: Block) -> net.Block:
    spec = block.spec
    inner = getattr(block, "block", block)
    layer = inner.layer if hasattr(inner, "layer") else block.branch
    if isinstance(layer, Attention):
        branch: tuple = (net.Attention(_read_dense(layer.qkv), _read_dense(layer.proj), layer.heads),)
    else:
        branch = tuple(_read_dense(lin, d.activation)
                       for lin, d in zip((m for m in layer if isinstance(m, nn.Linear)), spec.branch))
    norm = inner.norm if spec.ln is not None else None
    ln = None if norm is None else net.Norm(_numpy(norm.weight), _numpy(norm.bias), spec.ln.eps)
    aion = getattr(inner, "aion", None)
    if spec.aion is not None and isinstance(aion, AionResidual):
        state = {k: _numpy(v) for k, v in aion.state_dict().items()}
        aion = net.Aion(float(state.pop("alpha0")), float(state.pop("beta")), spec.aion.k_update,
                        spec.aion.trainable, state)
    else:
        aion = spec.aion
    return net.Block(spec.residual, spec.norm, branch, ln, aion, spec.gamma, spec.skip_gain)


def read(model: Net) -> net.Net:
    """The trained weights and AION entries of ``model`` as a numpy description."""
    spec = model.spec
    embed = {} if spec.embed is None else {"embed": _numpy(model.embed.weight), "pos": _numpy(model.pos)}
    return replace(spec, blocks=tuple(_read_block(b) for b in model.blocks), **embed,
                   final_norm=None if spec.final_norm is None else net.Norm(
                       _numpy(model.norm.weight), _numpy(model.norm.bias), spec.final_norm.eps),
                   head=None if spec.head is None else _read_dense(model.head, spec.head.activation))
