"""MLX arrays: to and from numpy, the device the kit runs on, versions.

MLX places arrays on its default device itself (the GPU where its build has one: Metal on
macOS, CUDA with ``mlx[cuda]``; the CPU otherwise, as on Linux with ``mlx[cpu]``), so the
kit reports that device rather than choosing one. float64 exists on the CPU only.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

#: Dtype names whose MLX dtype is named otherwise (``mx.bool_``, as numpy's ``bool_``).
_RENAMED = {"bool": "bool_"}


def versions() -> dict[str, str]:
    """mlx's version, and the default device when it is not the CPU."""
    kind = device()
    return {"mlx": mx.__version__, **({kind: str(mx.default_device())} if kind != "cpu" else {})}


def device() -> str:
    """The kind of MLX's default device: ``cpu`` or ``gpu``."""
    return "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"


def dtype(name: str) -> mx.Dtype:
    """The MLX dtype of a dtype name (``"float32"``, ``"bool"``, ...).

    >>> dtype("bool")
    mlx.core.bool
    """
    return getattr(mx, _RENAMED.get(name, name))


def from_numpy(a, dtype_name: str):
    """A numpy array (or None) as an MLX array of dtype ``dtype_name`` ("float32", "int32", ...).

    >>> from_numpy(np.ones(2), "bfloat16").dtype
    mlx.core.bfloat16
    """
    return None if a is None else mx.array(np.asarray(a), dtype=dtype(dtype_name))


def to_numpy(t) -> np.ndarray:
    """Any MLX array as a float64 numpy array (bfloat16 included, which numpy lacks).

    >>> to_numpy(mx.array([1.5], mx.bfloat16))
    array([1.5])
    """
    t = mx.array(t) if not isinstance(t, mx.array) else t
    return np.asarray(t.astype(mx.float32) if t.dtype == mx.bfloat16 else t, np.float64)


def numpy_of(t) -> np.ndarray:
    """An MLX array as a numpy array in its own dtype (a float32 weight read back as float32)."""
    return np.array(t, copy=True)
