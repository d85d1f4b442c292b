"""AION for PyTorch: a drop-in for aion-torch 1.0.2 built on :mod:`aion_core`.

>>> import torch
>>> from aion_pytorch import AionResidual
>>> layer = AionResidual(alpha0=0.1, beta=0.05)
>>> out = layer(torch.randn(8, 16, 32), torch.randn(8, 16, 32))
>>> out.shape, int(layer.step_count)
(torch.Size([8, 16, 32]), 1)
"""

from aion_core import __version__ as __version__
from aion_pytorch.checkpoint import from_portable, load_state_dict, to_portable
from aion_pytorch.distributed import fsdp_ignored_params, set_process_group
from aion_pytorch.functional import compute_alpha, energy
from aion_pytorch.residual import AionBlock, AionResidual, AionScale
from aion_pytorch.zoo import AionScaledBranch, scale_branches

__all__ = ["AionBlock", "AionResidual", "AionScale", "AionScaledBranch", "compute_alpha", "energy",
           "from_portable", "fsdp_ignored_params", "load_state_dict", "scale_branches", "set_process_group",
           "to_portable"]
