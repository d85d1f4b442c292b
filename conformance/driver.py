"""The driver protocol: what an implementation must offer to run the conformance suite.

A driver wraps one implementation (a framework adapter, or anything behind a Python
shim). The suite speaks to it only in numpy float64 arrays, Python numbers and dtype
names; the driver converts to and from its own arrays.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

#: Names of the input dtypes a case can ask for.
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
ERROR_CLASSES = {"ValueError": ValueError, "TypeError": TypeError}


class Driver(Protocol):
    """One implementation under test.

    Attributes
    ----------
    name : str
        Shown in reports, e.g. ``"torch"``.
    dtypes : tuple of str
        The input dtypes it supports (a subset of :data:`FLOAT_DTYPES`); cases in other
        dtypes are skipped for it and the report says so.
    """

    name: str
    dtypes: tuple[str, ...]

    def versions(self) -> dict[str, str]:
        """Framework name -> version, for the report."""

    def make(self, config: dict[str, Any]) -> Any:
        """A fresh layer built from ``AionConfig`` arguments (may raise ValueError/TypeError)."""

    def set_params(self, layer: Any, alpha0: float, beta: float) -> None:
        """Set the trainable parameters (stored as float32)."""

    def set_state(self, layer: Any, state: dict[str, float]) -> None:
        """Set ``ratio_ema``, ``step_count``, ``nonfinite_count``."""

    def get_state(self, layer: Any) -> dict[str, float]:
        """The state as Python numbers."""

    def call(self, layer: Any, mode: str, x: np.ndarray, y: np.ndarray,
             x_norm: np.ndarray | None, cotangent: np.ndarray | None,
             dtype: str) -> dict[str, Any]:
        """Run one forward in ``mode`` ("train" or "eval") on inputs cast to ``dtype``.

        ``x``, ``y``, ``x_norm`` may also arrive as integer numpy arrays (error cases):
        the driver passes them on in the matching integer dtype of its framework.

        Returns ``{"out": ndarray, "stats": {"alpha", "ratio", "ratio_ema": float},
        "grads": {"x", "y", "x_norm", "alpha0", "beta": ndarray or float}}``, all as
        float64; ``grads`` is the gradient of ``sum(out * cotangent)`` and is left out
        when ``cotangent`` is None (``x_norm`` left out when not given).
        """


def as_f64(value) -> np.ndarray:
    """Any array-like (numpy, torch, jax, tf) to a numpy float64 array."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy() if str(value.dtype) == "torch.bfloat16" \
            else value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
