"""AION adaptive residual scaling for MLX: ``AionResidual``, ``AionScale`` and ``AionBlock``
as :mod:`mlx.nn` modules, built on :mod:`aion_core`.

>>> import mlx.core as mx
>>> import mlx.nn as nn
>>> from aion_mlx import AionBlock
>>> block = AionBlock(nn.Linear(32, 32), dim=32)
>>> out = block(mx.ones((8, 32)))
>>> out.shape, block.aion.step_count.item()
((8, 32), 1)
"""

from aion_core import __version__ as __version__
from aion_mlx.checkpoint import from_portable, load_weights, to_portable
from aion_mlx.functional import aion_apply
from aion_mlx.layers import AionBlock, AionResidual, AionScale
from aion_mlx.recompute import checkpoint

__all__ = ["AionBlock", "AionResidual", "AionScale", "aion_apply", "checkpoint", "from_portable", "load_weights",
           "to_portable"]
