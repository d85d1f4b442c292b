"""PyTorch arrays: to and from numpy, the device the kit runs on, versions."""

from __future__ import annotations

import os

import numpy as np
import torch

from aion_conformance.registry import DEVICE_ENV


def versions() -> dict[str, str]:
    """torch's version, and the CUDA device's name when there is one."""
    gpu = {"cuda": torch.cuda.get_device_name(0)} if torch.cuda.is_available() else {}
    return {"torch": torch.__version__, **gpu}


def device() -> str:
    """``AION_CONFORMANCE_DEVICE``: ``cpu``, ``cuda``, or ``auto`` (CUDA when torch sees one)."""
    wanted = os.environ.get(DEVICE_ENV, "auto")
    return ("cuda" if torch.cuda.is_available() else "cpu") if wanted == "auto" else wanted


def from_numpy(a, dtype: str, device_: str | None = None):
    """A numpy array (or None) as a tensor of ``dtype`` ("float32", "int32", ...) on
    ``device_`` (default: :func:`device`)."""
    if a is None:
        return None
    return torch.from_numpy(np.asarray(a)).to(device_ or device(), getattr(torch, dtype))


def to_numpy(t) -> np.ndarray:
    """Any tensor as a float64 numpy array (bfloat16 included)."""
    t = torch.as_tensor(t).detach()
    return np.asarray((t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy(), np.float64)
