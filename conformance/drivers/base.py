"""What the built-in drivers share: optional attributes, the result dict, the loss dtype."""

from __future__ import annotations

from aion_conformance.drivers.protocol import (DEFAULT_EXECUTION, FLOAT_DTYPES, INPUTS, CheckResult, dtype_name,
                                               input_dtype)
from aion_conformance.frameworks.optimizers import FLOAT16_LOSS_SCALE
from aion_conformance.spec.cases import output_dtype_name


class BuiltinDriver:
    """Base of the built-in drivers: every input dtype, gradients, no checks of their own."""

    dtypes = FLOAT_DTYPES
    has_grads = True
    executions = (DEFAULT_EXECUTION,)
    execution = DEFAULT_EXECUTION

    def extra_checks(self) -> list[CheckResult]:
        return []


def out_dtype(dtype) -> str:
    """The output dtype name (spec section 4) for :meth:`Driver.call`'s ``dtype`` argument."""
    return output_dtype_name(input_dtype(dtype, "x"), input_dtype(dtype, "y"))


def loss_dtype(dtype) -> str:
    """The dtype ``sum(out * cotangent)`` is formed in: float64 for float64 outputs, else float32.

    The cotangent is already rounded to the output's dtype, so the gradient reaching ``out``
    is the cotangent itself whatever the loss dtype.
    """
    return "float64" if out_dtype(dtype) == "float64" else "float32"


def convert_inputs(from_numpy, arrays, dtype) -> list:
    """``x``, ``y``, ``x_norm`` as framework arrays, each in its dtype (None stays None)."""
    return [from_numpy(a, input_dtype(dtype, name)) for name, a in zip(INPUTS, arrays)]


def all_floating(dtype) -> bool:
    """Whether every input dtype of ``dtype`` (a name or a dict) is a floating one."""
    return all(d in FLOAT_DTYPES for d in (dtype.values() if isinstance(dtype, dict) else [dtype]))




def loss_scale(execution) -> float:
    """The loss scale of ``execution``: :data:`FLOAT16_LOSS_SCALE` if it computes in float16, else 1."""
    return FLOAT16_LOSS_SCALE if execution.compute_dtype == "float16" else 1.0


def unscaled(result: dict, scale: float) -> dict:
    """``result`` with its gradients divided by the loss ``scale`` (an exact power of two)."""
    if scale != 1.0 and "grads" in result:
        result["grads"] = {k: g / scale for k, g in result["grads"].items()}
    return result


def driver_result(to_numpy, out, stats, grads=None) -> dict:
    """The protocol's result dict from framework arrays; ``grads`` maps names to arrays or None."""
    result = {"out": to_numpy(out), "out_dtype": dtype_name(out.dtype),
              "stats": {k: float(to_numpy(v)) for k, v in stats.items()}}
    if grads is not None:
        result["grads"] = {k: to_numpy(g) for k, g in grads.items() if g is not None}
    return result
