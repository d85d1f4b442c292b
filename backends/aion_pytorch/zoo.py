"""AION on the residuals of blocks that add the residual themselves (Hugging Face, timm, torchvision).

Such a block writes ``h = h + branch(norm(h))``; :class:`AionScaledBranch` replaces
``branch`` with ``alpha * branch(norm(h))``, the ratio taken against ``norm(h)`` (the
branch's input), so the block computes what :class:`~aion_pytorch.AionBlock` computes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aion_pytorch.residual import AionScale


class AionScaledBranch(nn.Module):
    """``branch`` with its output scaled by AION: ``alpha * branch(x_norm, ...)``.

    Parameters
    ----------
    branch : nn.Module
        The residual branch; its input (first positional argument, else the keyword
        ``input_name``) is the normalised block input. When it returns a tuple (attention
        layers returning their weights too), the first element is scaled and the rest
        passed through.
    input_name : str
        The keyword the block passes the branch input by, when not positionally
        (``"hidden_states"`` in Hugging Face Llama-style blocks).
    feature_dim : int
        The axis of the features (``-1``; ``1`` for NCHW convolution branches).
    **aion_kwargs
        ``alpha0``, ``beta``, ``ema_gamma``, ``epsilon``, ``k_update``, ``sync_ratio``:
        passed to :class:`~aion_pytorch.AionScale` (the attribute ``aion``).

    Examples
    --------
    >>> block_mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    >>> scaled = AionScaledBranch(block_mlp, alpha0=0.1)
    >>> h = torch.randn(2, 5, 8)
    >>> h = h + scaled(torch.nn.functional.layer_norm(h, (8,)))
    >>> h.shape, int(scaled.aion.step_count)
    (torch.Size([2, 5, 8]), 1)
    """

    def __init__(self, branch: nn.Module, *, input_name: str = "hidden_states", feature_dim: int = -1,
                 **aion_kwargs: Any):
        super().__init__()
        self.branch = branch
        self.input_name = input_name
        self.feature_dim = feature_dim
        self.aion = AionScale(**aion_kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        x_norm = args[0] if args else kwargs[self.input_name]
        out = self.branch(*args, **kwargs)
        y, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
        scaled = self._scale(y, x_norm)
        return scaled if rest is None else (scaled, *rest)

    def _scale(self, y: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
        if self.feature_dim in (-1, y.dim() - 1):
            return self.aion(y, x_norm)
        # Features on another axis (NCHW): AION's energies are over the last one.
        return torch.movedim(self.aion(torch.movedim(y, self.feature_dim, -1),
                                       torch.movedim(x_norm, self.feature_dim, -1)), -1, self.feature_dim)


def scale_branches(model: nn.Module, names: tuple[str, ...], **kwargs: Any) -> list[AionScaledBranch]:
    """Wrap every submodule whose attribute name is in ``names`` in an :class:`AionScaledBranch`.

    ``scale_branches(gpt2, ("attn", "mlp"))`` puts AION on both residuals of every GPT-2
    block; ``("self_attn", "mlp")`` on a Llama's. Returns the new wrappers (one
    :class:`~aion_pytorch.AionScale` each). Call it before moving the model to its device
    and before creating the optimiser.
    """
    found = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
             if name in names and not isinstance(parent, AionScaledBranch) and not isinstance(child, AionScaledBranch)]
    if not found:
        raise ValueError(f"names: no submodule of the model is called any of {names}")
    wrappers = []
    for parent, name in found:
        wrapper = AionScaledBranch(getattr(parent, name), **kwargs)
        setattr(parent, name, wrapper)
        wrappers.append(wrapper)
    return wrappers
