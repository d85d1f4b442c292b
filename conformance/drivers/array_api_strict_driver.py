"""Driver running ``aion_core`` on array-api-strict: proves the core needs nothing beyond the standard.

array-api-strict has no autodiff and no float16/bfloat16, so this driver checks forward
outputs, stats and state in float32 and float64 only.
"""

from __future__ import annotations

import array_api_strict as xp
import numpy as np

import aion_core as core
from aion_conformance.drivers.base import BuiltinDriver, convert_inputs, driver_result


def _to_numpy(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _from_numpy(a, dtype: str):
    return None if a is None else xp.asarray(np.asarray(a), dtype=getattr(xp, dtype))


class ArrayApiStrictDriver(BuiltinDriver):
    name = "array-api-strict"
    dtypes = ("float64", "float32")
    has_grads = False

    def versions(self):
        return {"array-api-strict": xp.__version__}

    def make(self, config):
        return {"config": core.AionConfig(**config), "alpha0": xp.asarray(0.1, dtype=xp.float32),
                "beta": xp.asarray(0.05, dtype=xp.float32), "state": core.initial_state(xp)}

    def set_params(self, layer, alpha0, beta):
        layer["alpha0"] = xp.asarray(alpha0, dtype=xp.float32)
        layer["beta"] = xp.asarray(beta, dtype=xp.float32)

    # The layer's own state, not a checkpoint: a counter that wrapped (spec section 3) is kept,
    # where the portable layout (section 9) refuses it.
    def set_state(self, layer, state):
        layer["state"] = core.AionState(*(xp.asarray(state[name], dtype=getattr(xp, dtype))
                                          for name, (dtype, _, _) in core.STATE_SPEC.items()))

    def get_state(self, layer):
        return {name: np.asarray(getattr(layer["state"], name)).item() for name in core.STATE_SPEC}

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        tx, ty, tn = convert_inputs(_from_numpy, (x, y, x_norm), dtype)
        if mode == "train":
            update = bool(core.is_update_step(int(layer["state"].step_count), layer["config"].k_update))
            out, layer["state"], stats = core.train_step(tx, ty, tn, layer["alpha0"], layer["beta"],
                                                         layer["state"], layer["config"], xp=xp, update=update)
        else:
            out, stats = core.eval_step(tx, ty, layer["alpha0"], layer["beta"], layer["state"], x_norm=tn, xp=xp)
        return driver_result(_to_numpy, out, stats)
