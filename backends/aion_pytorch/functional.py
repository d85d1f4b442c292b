"""aion-torch 1.0.2's helper functions, backed by :mod:`aion_core`."""

from __future__ import annotations

import array_api_compat.torch as xp
import torch

import aion_core


def energy(t: torch.Tensor, dim: int = -1, keepdim: bool = True) -> torch.Tensor:
    """Mean of squares over ``dim``, accumulated and returned in float32 (float64 stays float64).

    Unlike aion-torch 1.0.2 the result is not cast back to ``t``'s dtype: a float16
    energy overflows at an RMS of about 256.

    >>> energy(torch.tensor([[1.0, 3.0]]))
    tensor([[5.]])
    """
    e = aion_core.energy(xp, torch.movedim(t, dim, -1))
    return e.unsqueeze(dim) if keepdim else e


def compute_alpha(alpha0: torch.Tensor, beta: torch.Tensor, ratio_s: torch.Tensor) -> torch.Tensor:
    """aion-torch's ``compute_alpha``: the adaptive scale, by :func:`aion_core.compute_alpha`.

    Tensors broadcast and keep their dtype; Python floats work too (and give a float).

    >>> compute_alpha(torch.tensor(0.1), torch.tensor(0.05), torch.tensor(2.0))
    tensor(0.0909)
    """
    return aion_core.compute_alpha(alpha0, beta, ratio_s)
