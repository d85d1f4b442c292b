"""Driver for the float64 numpy reference (``aion_core`` on numpy)."""

from __future__ import annotations

import numpy as np

import aion_core as core
from conformance.reference import reference_call


class NumpyDriver:
    name = "numpy"
    dtypes = ("float64", "float32", "float16", "bfloat16")

    def versions(self):
        return {"numpy": np.__version__}

    def make(self, config):
        return {"config": core.AionConfig(**config), "alpha0": 0.1, "beta": 0.05,
                "state": {"ratio_ema": 1.0, "step_count": 0, "nonfinite_count": 0}}

    def set_params(self, layer, alpha0, beta):
        layer["alpha0"], layer["beta"] = float(np.float32(alpha0)), float(np.float32(beta))

    def set_state(self, layer, state):
        layer["state"] = {"ratio_ema": float(np.float32(state["ratio_ema"])),
                          "step_count": int(state["step_count"]),
                          "nonfinite_count": int(state["nonfinite_count"])}

    def get_state(self, layer):
        return dict(layer["state"])

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        result, layer["state"] = reference_call(layer["config"], layer["alpha0"], layer["beta"],
                                                layer["state"], mode, x, y, x_norm, cotangent)
        return result
