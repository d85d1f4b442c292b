"""AION adaptive residual scaling for Flax.

``aion_flax.AionResidual`` / ``aion_flax.AionBlock`` are :mod:`flax.nnx` modules;
``aion_flax.linen`` holds the :mod:`flax.linen` versions. The math is :mod:`aion_core`.
"""

from aion_core import __version__ as __version__
from aion_flax import linen
from aion_flax.checkpoint import (linen_from_portable, load_npz, nnx_from_portable, save_npz,
                                  to_portable)
from aion_flax.functional import aion_apply
from aion_flax.nnx import AionBlock, AionResidual, AionScale, AionStat

__all__ = [
    "AionBlock",
    "AionResidual",
    "AionScale",
    "AionStat",
    "aion_apply",
    "linen",
    "linen_from_portable",
    "load_npz",
    "nnx_from_portable",
    "save_npz",
    "to_portable",
]
