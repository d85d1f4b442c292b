"""What the built-in drivers share: optional attributes, the result dict, the loss dtype."""

from __future__ import annotations

from aion_conformance.drivers.protocol import FLOAT_DTYPES, CheckResult


class BuiltinDriver:
    """Base of the built-in drivers: every input dtype, gradients, no checks of their own."""

    dtypes = FLOAT_DTYPES
    has_grads = True

    def extra_checks(self) -> list[CheckResult]:
        return []


def loss_dtype(dtype: str) -> str:
    """The dtype ``sum(out * cotangent)`` is formed in: float64 for float64 cases, else float32.

    The cotangent is already rounded to the case's dtype, so the gradient reaching ``out``
    is the cotangent itself whatever the loss dtype.
    """
    return "float64" if dtype == "float64" else "float32"


def driver_result(to_numpy, out, stats, grads=None) -> dict:
    """The protocol's result dict from framework arrays; ``grads`` maps names to arrays or None."""
    result = {"out": to_numpy(out), "stats": {k: float(to_numpy(v)) for k, v in stats.items()}}
    if grads is not None:
        result["grads"] = {k: to_numpy(g) for k, g in grads.items() if g is not None}
    return result
