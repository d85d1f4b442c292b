"""The per-adapter smoke test's check: one training step of a public ``AionResidual``
(``alpha0=0.2, beta=0.3, ema_gamma=0.9``, fresh state) against the float64 reference.

Each framework's folder runs the step the way its users do and hands the results here;
the conformance vectors check everything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import aion_core
from aion_conformance.spec.reference import reference_call
from aion_conformance.spec.tolerance import RTOL, compare

#: The layer's constructor arguments.
CONFIG = {"alpha0": 0.2, "beta": 0.3, "ema_gamma": 0.9}
#: The state a fresh layer holds.
FRESH = {name: value for name, (_, _, value) in aion_core.STATE_SPEC.items()}


def inputs(seed: int) -> tuple[np.ndarray, ...]:
    """``x, y, x_norm, cotangent``: float32 of shape (3, 8), ``y`` 2.5 times larger."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((3, 8)).astype(np.float32) * s for s in (1.0, 2.5, 1.0, 1.0))


def check_step(got: Mapping[str, Any], state: Mapping[str, Any], x, y, x_norm, cotangent) -> None:
    """Assert one training step's results equal the float64 reference's.

    Parameters
    ----------
    got
        ``out``, ``stats.<name>`` (alpha, ratio, ratio_ema), ``state.ratio_ema`` and
        ``grads.<name>`` (x, y, x_norm, alpha0, beta) of ``sum(out * cotangent)``, each an
        array numpy can convert.
    state
        The layer's ``step_count`` and ``nonfinite_count`` after the step.
    """
    config = aion_core.AionConfig(**CONFIG)
    want, want_state = reference_call(config, float(np.float32(config.alpha0)), float(np.float32(config.beta)),
                                      FRESH, "train", *(a.astype(np.float64) for a in (x, y, x_norm, cotangent)))
    expected = {"out": want["out"], **{f"stats.{k}": v for k, v in want["stats"].items()},
                "state.ratio_ema": want_state["ratio_ema"], **{f"grads.{k}": v for k, v in want["grads"].items()}}
    assert sorted(got) == sorted(expected)
    for name, value in got.items():
        scale = want["grad_scales"].get(name.removeprefix("grads."), 0.0)
        ok, _, _, why = compare(np.asarray(value, np.float64), expected[name], RTOL["float32"], magnitude=scale)
        assert ok, (name, why)
    assert (int(state["step_count"]), int(state["nonfinite_count"])) == (want_state["step_count"],
                                                                         want_state["nonfinite_count"])
    assert want_state["step_count"] == 1 and want_state["ratio_ema"] != FRESH["ratio_ema"]
