"""Driver for ``aion_keras`` on the Keras backend this process was started with.

The backend is fixed when Keras is imported (``KERAS_BACKEND``), so each backend is a
separate driver run: ``keras-tensorflow``, ``keras-jax``, ``keras-torch``.
"""

from __future__ import annotations

from keras import ops

import aion_core as core
from aion_conformance.drivers.base import (BuiltinDriver, all_floating, convert_inputs, driver_result, loss_dtype,
                                           loss_scale, out_dtype, unscaled)
from aion_conformance.drivers.protocol import Execution
from aion_conformance.frameworks.keras import arrays as fw
from aion_conformance.frameworks.keras.autodiff import value_and_grad
from aion_keras import AionResidual, from_portable

if fw.BACKEND == "jax":
    import jax

    # float64 cases need 64-bit JAX arrays (Keras otherwise truncates them to float32).
    jax.config.update("jax_enable_x64", True)


def _executions() -> tuple[Execution, ...]:
    """Dtype policies x ``jit_compile`` off and on.

    "policy = input dtype": a layer whose policy is the case's dtype (no cast). The mixed
    policies get float32 inputs, which Keras casts to the compute dtype (spec section 10):
    the expected values are the reference's on the inputs rounded to it.
    """
    out = []
    for jit in (False, True):
        suffix = ", jit_compile" if jit else ""
        out += [Execution("policy = input dtype" + suffix, errors=True, casts_inputs=True),
                Execution("mixed_bfloat16" + suffix, ("float32",), "bfloat16"),
                Execution("mixed_float16, loss scaling" + suffix, ("float32",), "float16")]
    return tuple(out)


def _policy(execution: Execution) -> str | None:
    return {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}.get(execution.compute_dtype)


class _Slot:
    """The driver's layer handle: the Keras layer of the dtype of the last call.

    A Keras layer casts floating inputs to its compute dtype, so under "policy = input
    dtype" each case dtype needs a layer of that dtype policy; the handle swaps layers,
    carrying the weights over. A mixed policy keeps its one layer.
    """

    def __init__(self, layer: AionResidual, execution: Execution):
        self.layer = layer
        self.execution = execution

    def for_dtype(self, dtype) -> AionResidual:
        # Mixed inputs: the policy of the output's dtype (Keras casts every floating input to it).
        policy = out_dtype(dtype)
        if _policy(self.execution) is None and all_floating(dtype) and self.layer.dtype_policy.compute_dtype != policy:
            fresh = AionResidual.from_config({**self.layer.get_config(), "dtype": policy})
            fresh.set_weights(self.layer.get_weights())
            self.layer = fresh
        return self.layer


def _loss(training: bool):
    def loss(call, x, y, x_norm, cotangent):
        out, stats = call(x, y, x_norm=x_norm, training=training, return_stats=True)
        return ops.sum(ops.cast(out, cotangent.dtype) * cotangent), (out, stats)
    return loss


#: One loss function per mode, defined once (the JAX program is cached per function).
_LOSSES = {"train": _loss(True), "eval": _loss(False)}


class KerasDriver(BuiltinDriver):
    executions = _executions()
    execution = executions[0]

    def __init__(self):
        self.name = f"keras-{fw.BACKEND}"

    def versions(self):
        return fw.versions()

    def make(self, config):
        policy = _policy(self.execution)
        return _Slot(AionResidual(**config, **({"dtype": policy} if policy else {})), self.execution)

    def set_params(self, slot, alpha0, beta):
        slot.layer.alpha0.assign(alpha0)
        slot.layer.beta.assign(beta)

    def set_state(self, slot, state):
        for name, value in core.portable.state_entries(state).items():
            getattr(slot.layer, name).assign(value)

    def load_portable(self, slot, entries):
        """Through ``aion_keras.from_portable``, as a user loads a portable checkpoint."""
        from_portable(slot.layer, entries)

    def get_state(self, slot):
        return {name: ops.convert_to_numpy(getattr(slot.layer, name).value).item()
                for name in core.STATE_SPEC}

    def call(self, slot, mode, x, y, x_norm, cotangent, dtype):
        layer = slot.for_dtype(dtype)
        mixed = _policy(slot.execution) is not None
        # Mixed policies: float32 inputs (already representable in the compute dtype), cast by Keras.
        inputs = convert_inputs(fw.from_numpy, (x, y, x_norm), "float32" if mixed and all_floating(dtype) else dtype)
        if cotangent is None:
            out, stats = layer(*inputs[:2], x_norm=inputs[2], training=mode == "train", return_stats=True)
            return driver_result(fw.to_numpy, out, stats)
        scale = loss_scale(slot.execution)
        cot = fw.from_numpy(cotangent * scale, loss_dtype(dtype))
        _, (out, stats), (gx, gy, gxn), grads = value_and_grad(
            layer, _LOSSES[mode], inputs, [cot], jit=slot.execution.name.endswith("jit_compile"))
        by_name = dict(zip((v.name for v in layer.trainable_variables), grads))
        return unscaled(driver_result(fw.to_numpy, out, stats, {
            "x": gx, "y": gy, "x_norm": gxn, "alpha0": by_name["alpha0"], "beta": by_name["beta"]}), scale)
