"""The driver protocol: what an implementation must offer to run the conformance suite.

A driver wraps one implementation (a framework adapter, or anything behind a Python
shim). The suite speaks to it only in numpy float64 arrays, Python numbers and dtype
names; the driver converts to and from its own arrays. Every attribute the runner reads
is declared here; the optional ones have the defaults of :class:`DriverDefaults`.

The protocol has a version of its own (:data:`PROTOCOL_VERSION`), raised when a field a
driver must read or return is added or changed; the spec version the suite tests is
:data:`aion_conformance.spec.SPEC_VERSION`. A driver MAY declare the spec version it was
written for (``spec_version``): the runner reports a mismatch as a note beside the results,
not as a failure (the failures' labels say which rule each broken check is from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

#: The driver protocol's version. 1: the calls of spec version 1 (one dtype name per call);
#: 2 (spec 1.1): ``dtype`` may be a dict by input (mixed-dtype cases), ``out_dtype`` in
#: every result, error cases with 0-d, bool, complex and integer inputs, the optional
#: ``executions``, ``extra_checks``, ``trajectory``, ``load_portable``, ``spec_version`` and
#: ``has_complex``.
PROTOCOL_VERSION = 2
#: Names of the input dtypes a case can ask for.
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
#: The array arguments of a call, in the order of :meth:`Driver.call`.
INPUTS = ("x", "y", "x_norm")
#: Error classes a case can demand, by name.
ERROR_CLASSES = {"ValueError": ValueError, "TypeError": TypeError}


@dataclass(frozen=True)
class Execution:
    """One way a user runs the implementation: eager, compiled, a precision policy, a device.

    The suite runs the golden vectors once per execution a driver lists (spec section 10):
    an execution matrix of outputs, state and gradients, train and eval.
    """

    name: str
    #: The case dtypes it runs (others are not its cells).
    dtypes: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")
    #: The dtype the implementation casts floating inputs to before AION sees them (a Keras
    #: mixed policy); None: the case's own dtype. Expected values are then the reference's
    #: on the inputs rounded to it, at its tolerance.
    compute_dtype: str | None = None
    #: Whether the call-error cases run under it too (compilers must keep the error class).
    errors: bool = False
    #: Whether the implementation casts every floating input to the output's dtype (a Keras
    #: layer's policy): a mixed-dtype case is then held to the reference on its inputs
    #: rounded to that dtype, at its tolerance (spec section 4a), its inputs still passed
    #: in their own dtypes.
    casts_inputs: bool = False
    #: Empty if it can run here; otherwise why not (shown as "not run (...)").
    unavailable: str = ""


#: The execution of a driver that lists none: the one way it runs.
DEFAULT_EXECUTION = Execution("default", errors=True)


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
    execution: str = DEFAULT_EXECUTION.name
    #: Per part of a vector check ("train fwd", "train bwd", "eval fwd", "eval bwd"):
    #: ``[max_rel, failures]``; fwd is the output, stats and state, bwd the gradients.
    parts: dict[str, list] = field(default_factory=dict)


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
    executions : tuple of Execution
        The ways it runs (optional; default one, :data:`DEFAULT_EXECUTION`). Before each
        case the runner sets ``execution`` to the one in force; :meth:`make` and
        :meth:`call` follow it.
    spec_version : str
        The spec version the implementation was written for, e.g. ``"1.1"`` (optional;
        default None, not declared). A mismatch with the suite's is reported as a note.
    has_complex : bool
        Whether the framework has complex dtypes (optional; default True). Without them the
        complex-input error cases are reported as skipped (spec section 12).
    """

    name: str
    dtypes: tuple[str, ...]
    has_grads: bool
    executions: tuple[Execution, ...]
    execution: Execution

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

        ``dtype`` is a dtype name for every input, or (mixed-dtype cases) a dict of names
        by input, ``{"x": ..., "y": ..., "x_norm": ...}``; :func:`input_dtype` reads either.
        Floating inputs arrive as float64 numpy arrays holding values of their dtype. In
        error cases an input may be a 0-d array, or an integer, bool or complex numpy array
        whose dtype name is given: the driver passes it on in that dtype of its framework.
        ``cotangent`` holds values of the output's dtype.

        Returns ``{"out": ndarray, "out_dtype": str, "stats": {"alpha", "ratio",
        "ratio_ema": float}, "grads": {"x", "y", "x_norm", "alpha0", "beta": ndarray or
        float}}``, numbers as float64; ``out_dtype`` is the name of the output's dtype as
        the implementation returned it (``"bfloat16"``, ...); ``grads`` is the gradient of
        ``sum(out * cotangent)`` and is left out when ``cotangent`` is None (``x_norm`` left
        out when not given).
        """

    def load_portable(self, layer: Any, entries: dict[str, Any]) -> None:
        """Load one layer's portable checkpoint entries (spec section 9) into ``layer`` (optional).

        ``entries`` maps the entry names without the layer's path (``alpha0``, ``beta``,
        ``ratio_ema``, ``step_count``, ``nonfinite_count``, maybe ``alpha_cached`` or an
        unknown name) to Python numbers, 0-d or 1-d numpy arrays, numpy complex scalars or
        strings, as a checkpoint file may hold them. The driver loads them through the
        implementation's own checkpoint loader; on an entry section 9 refuses it raises and
        leaves the layer as it was. Without this method the section-9 cases are not run.
        """

    def extra_checks(self) -> list[CheckResult]:
        """Checks of the driver's own, run after the shared ones (optional; default none)."""

    def trajectory(self, problem: dict, steps: int) -> dict:
        """Train the trajectory problem ``steps`` SGD steps (optional; without it, not run).

        ``problem`` is :func:`aion_conformance.trajectory.problem.make_problem`'s dict, or one
        resumed from a portable checkpoint (its blocks then carry AION entries). Returns
        ``{"loss": [per step], "alpha": [per step, per block], "checkpoint": flat portable
        dict}``, like a registry backend's trajectory model (``conformance/trajectory/``);
        the suite checks parity with the float64 reference and both checkpoint directions
        (:func:`aion_conformance.trajectory.parity.hook_checks`).
        """


class DriverDefaults:
    """Base class giving a driver the optional attributes of :class:`Driver`."""

    has_grads = True
    has_complex = True
    spec_version: str | None = None
    executions = (DEFAULT_EXECUTION,)
    execution = DEFAULT_EXECUTION

    def extra_checks(self) -> list[CheckResult]:
        return []


def input_dtype(dtype, name: str) -> str:
    """The dtype name of input ``name`` ("x", "y", "x_norm") from :meth:`Driver.call`'s ``dtype``.

    >>> input_dtype("float16", "y"), input_dtype({"x": "float32", "y": "bfloat16"}, "y")
    ('float16', 'bfloat16')
    """
    return dtype.get(name) if isinstance(dtype, dict) else dtype


def dtype_name(dtype) -> str:
    """The name of a numpy, torch, JAX, TensorFlow or array-api-strict dtype: ``"float32"``.

    >>> dtype_name(np.dtype("float16"))
    'float16'
    """
    return getattr(dtype, "name", None) or str(dtype).rsplit(".", 1)[-1]


def executions(driver) -> tuple[Execution, ...]:
    """The driver's ``executions``; the default one for an outside driver that lists none."""
    return tuple(getattr(driver, "executions", DriverDefaults.executions))


def spec_version_note(driver, suite_version: str) -> str | None:
    """A note when the driver declares a ``spec_version`` other than the suite's (None otherwise).

    >>> class Old(DriverDefaults):
    ...     name, spec_version = "old", "1"
    >>> print(spec_version_note(Old(), "1.1"))
    old declares spec version 1; the suite tests spec version 1.1 (docs/spec.md, Changes, lists what changed)
    """
    declared = getattr(driver, "spec_version", None)
    if declared is None or str(declared) == suite_version:
        return None
    return (f"{driver.name} declares spec version {declared}; the suite tests spec version {suite_version} "
            "(docs/spec.md, Changes, lists what changed)")


def has_complex(driver) -> bool:
    """The driver's ``has_complex``; True for an outside driver that does not declare it."""
    return getattr(driver, "has_complex", DriverDefaults.has_complex)


def has_grads(driver) -> bool:
    """The driver's ``has_grads``; True for an outside driver that does not declare it."""
    return getattr(driver, "has_grads", DriverDefaults.has_grads)


def extra_checks(driver) -> list[CheckResult]:
    """The driver's ``extra_checks()``; none for an outside driver that does not declare it."""
    method = getattr(driver, "extra_checks", None)
    return method() if method is not None else []
