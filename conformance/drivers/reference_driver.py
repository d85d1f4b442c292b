"""The registry's ``numpy`` driver: ``aion_core`` on numpy in float64, held to the vectors like any implementation.

The forward is :func:`aion_core.train_step` / :func:`aion_core.eval_step`, the gradients
:mod:`aion_core.closed_form` (the hand-written backward the torch adapter runs). Inputs are
the vector files' values (rounded to their dtypes, held as float64) and every step runs in
float64: what this driver checks is ``aion_core``'s rules, against the independent float64
reference of :mod:`aion_conformance.spec.reference` that wrote the vectors. (The class keeps
its name from when ``aion_core`` was the reference.)
"""

from __future__ import annotations

import numpy as np

import aion_core as core
from aion_conformance.drivers.base import BuiltinDriver, out_dtype
from aion_core import closed_form


def state_numbers(state: core.AionState) -> dict:
    """The state as Python numbers, the form drivers exchange it in.

    The layer's own state, not a checkpoint: a counter that wrapped past ``2**31 - 1``
    (spec section 3) is kept, where the portable layout (section 9) refuses it.
    """
    return {name: np.asarray(getattr(state, name)).item() for name in core.STATE_SPEC}


def _state(numbers: dict) -> core.AionState:
    """:func:`state_numbers` back to an :class:`~aion_core.AionState` of the dtypes of spec section 3."""
    return core.AionState(*(np.asarray(numbers[name], dtype) for name, (dtype, _, _) in core.STATE_SPEC.items()))


def core_call(config: core.AionConfig, alpha0: float, beta: float, state: dict, mode: str, x, y, x_norm=None,
              cotangent=None):
    """One call of ``aion_core`` on numpy float64. Returns ``(result, new_state)`` in the driver format."""
    a0, b = np.asarray(np.float64(alpha0)), np.asarray(np.float64(beta))
    st = _state(state)
    update = mode == "train" and bool(core.is_update_step(int(st.step_count), config.k_update))
    with np.errstate(invalid="ignore", over="ignore"):
        if mode == "train":
            out, new, stats = core.train_step(x, y, x_norm, a0, b, st, config, xp=np, update=update)
        else:
            out, stats = core.eval_step(x, y, a0, b, st, x_norm=x_norm, xp=np)
            new = st
        result = {"out": np.asarray(out, np.float64), "stats": {k: float(v) for k, v in stats.items()}}
        if cotangent is not None:
            # Eval's gradients are a hold step's (alpha from the stored ratio, none through
            # the ratio); that step's state is dropped.
            *_, saved = closed_form.train_forward(x, y, x_norm, a0, b, st, config, xp=np, update=update)
            grads = closed_form.train_vjp(saved, np.asarray(cotangent, np.float64), xp=np)._asdict()
            if x_norm is not None and grads["x_norm"] is None:
                grads["x_norm"] = np.zeros_like(x_norm)  # no gradient reaches it: zero (spec section 10)
            result["grads"] = {k: np.asarray(v, np.float64) for k, v in grads.items() if v is not None}
    return result, state_numbers(new)


class ReferenceDriver(BuiltinDriver):
    name = "numpy"

    def versions(self):
        return {"numpy": np.__version__}

    def make(self, config):
        return {"config": core.AionConfig(**config), "alpha0": 0.1, "beta": 0.05,
                "state": state_numbers(core.initial_state(np))}

    def load_portable(self, layer, entries):
        """Spec section 9 as ``aion_core.portable`` reads a layer's entries: all checked, then written."""
        full = core.portable.layer_entries(entries)
        layer["alpha0"], layer["beta"] = float(full["alpha0"]), float(full["beta"])
        layer["state"] = state_numbers(core.portable.state_from_dict(full, np))

    def set_params(self, layer, alpha0, beta):
        layer["alpha0"], layer["beta"] = float(np.float32(alpha0)), float(np.float32(beta))

    def set_state(self, layer, state):
        layer["state"] = state_numbers(_state(state))

    def get_state(self, layer):
        return dict(layer["state"])

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        result, layer["state"] = core_call(layer["config"], layer["alpha0"], layer["beta"],
                                           layer["state"], mode, x, y, x_norm, cotangent)
        # float64 arithmetic on values of the input dtypes (spec section 10): the dtype the
        # spec gives the output is reported, as the numbers are those of that output.
        return {**result, "out_dtype": out_dtype(dtype)}
