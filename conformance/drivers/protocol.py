"""The driver protocol: what an implementation must offer to run the conformance suite.

A driver wraps one implementation (a framework adapter, or anything behind a Python
shim). The suite speaks to it only in numpy float64 arrays, Python numbers and dtype
names; the driver converts to and from its own arrays. Every attribute the runner reads
is declared here; the optional ones have the defaults of :class:`DriverDefaults`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

#: Names of the input dtypes a case can ask for.
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
#: Error classes a case can demand, by name.
ERROR_CLASSES = {"ValueError": ValueError, "TypeError": TypeError}


@dataclass
class CheckResult:
    """The outcome of one check of one driver (one row of the report's details)."""

    driver: str
    check: str  # "vector", "config_error", "call_error", or a driver's own check
    case: str
    dtype: str
    status: str  # "pass", "fail", "skip"
    max_abs: float = 0.0
    max_rel: float = 0.0
    messages: list[str] = field(default_factory=list)


class Driver(Protocol):
    """One implementation under test.

    Attributes
    ----------
    name : str
        Shown in reports and accepted by ``--only``, e.g. ``"torch"``.
    dtypes : tuple of str
        The input dtypes it supports (a subset of :data:`FLOAT_DTYPES`); cases in other
        dtypes are skipped for it and the report says so.
    has_grads : bool
        Whether :meth:`call` returns gradients (optional; default True).
    """

    name: str
    dtypes: tuple[str, ...]
    has_grads: bool

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

    def extra_checks(self) -> list[CheckResult]:
        """Checks of the driver's own, run after the shared ones (optional; default none)."""


class DriverDefaults:
    """Base class giving a driver the optional attributes of :class:`Driver`."""

    has_grads = True

    def extra_checks(self) -> list[CheckResult]:
        return []


def has_grads(driver) -> bool:
    """The driver's ``has_grads``; True for an outside driver that does not declare it."""
    return getattr(driver, "has_grads", DriverDefaults.has_grads)


def extra_checks(driver) -> list[CheckResult]:
    """The driver's ``extra_checks()``; none for an outside driver that does not declare it."""
    method = getattr(driver, "extra_checks", None)
    return method() if method is not None else []
