"""The networks of :mod:`aion_conformance.frameworks.net` as torch modules, and back."""

from __future__ import annotations

import torch
from torch import nn

from aion_conformance.frameworks import net
from aion_conformance.frameworks.torch import arrays
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
#: aion-torch 1.0.2 and the fewest-op eager bound (``eager_only``: torch.compile cannot trace it).
EXTRA_RESIDUALS = {"aion-torch-1.0.2": _original_block, "aion-floor": _floor_block}


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
        branch = Branch(spec.branch)
        if spec.residual == "aion-block" or spec.residual in EXTRA_RESIDUALS:
            cls = AionBlock if spec.residual == "aion-block" else EXTRA_RESIDUALS[spec.residual]()
            # The extras keep their own defaults (alpha0 0.1, beta 0.05, as AionBlock's).
            kwargs = ({"alpha0": spec.aion.alpha0, "beta": spec.aion.beta, "k_update": spec.aion.k_update}
                      if spec.residual == "aion-block" else {})
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
    return t.detach().cpu().numpy()


def _read_block(block: Block) -> net.Block:
    spec = block.spec
    inner = getattr(block, "block", block)
    linears = [m for m in (inner.layer if hasattr(inner, "layer") else block.branch) if isinstance(m, nn.Linear)]
    branch = tuple(net.Dense(_numpy(lin.weight).T, _numpy(lin.bias), d.activation)
                   for lin, d in zip(linears, spec.branch))
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
    return model.spec.with_blocks(_read_block(b) for b in model.blocks)
