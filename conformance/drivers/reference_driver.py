"""Driver for the float64 reference (:mod:`aion_conformance.spec.reference`), the spec's truth."""

from __future__ import annotations

import numpy as np

import aion_core as core
from aion_conformance.drivers.base import BuiltinDriver, out_dtype
from aion_conformance.spec.reference import reference_call, state_numbers


class ReferenceDriver(BuiltinDriver):
    name = "numpy"

    def versions(self):
        return {"numpy": np.__version__}

    def make(self, config):
        return {"config": core.AionConfig(**config), "alpha0": 0.1, "beta": 0.05,
                "state": state_numbers(core.initial_state(np))}

    def set_params(self, layer, alpha0, beta):
        layer["alpha0"], layer["beta"] = float(np.float32(alpha0)), float(np.float32(beta))

    def set_state(self, layer, state):
        layer["state"] = state_numbers(core.portable.state_from_dict(state, np))

    def get_state(self, layer):
        return dict(layer["state"])

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        result, layer["state"] = reference_call(layer["config"], layer["alpha0"], layer["beta"],
                                                layer["state"], mode, x, y, x_norm, cotangent)
        # float64 arithmetic on values of the input dtypes (spec section 10): the dtype the
        # spec gives the output is reported, as the numbers are those of that output.
        return {**result, "out_dtype": out_dtype(dtype)}
