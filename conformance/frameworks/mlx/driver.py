"""Driver for :mod:`aion_mlx`: eager, :func:`mlx.core.compile`, 16-bit models, activation checkpointing.

The executions are the ways an MLX user runs a layer: op by op (MLX's default); under
``mx.compile`` with the module's state as the compiled function's ``inputs`` and
``outputs`` (MLX's documented pattern for a function that updates a module, which is how
AION's running state leaves the compiled program); a model cast with
``model.set_dtype(...)`` to bfloat16, or to float16 trained with a loss scale, which a user
feeds inputs of that dtype (MLX layers do not cast their inputs); and the layer under
:func:`aion_mlx.checkpoint`, whose recomputation in the backward must reproduce the first
run and leave the state advanced once (spec section 6a). The cast must leave AION's
parameters and state in their spec dtypes (float32, int32): :meth:`MlxDriver.get_state`
checks it on every read.
"""

from __future__ import annotations

import mlx.core as mx

import aion_core as core
from aion_conformance.drivers.base import (BuiltinDriver, convert_inputs, driver_result, loss_dtype, loss_scale,
                                           unscaled)
from aion_conformance.drivers.protocol import FLOAT_DTYPES, Execution
from aion_conformance.frameworks.mlx import arrays, autodiff
from aion_core import portable
from aion_mlx import AionResidual, checkpoint, from_portable

COMPILED = "mx.compile"
CHECKPOINT = "aion_mlx.checkpoint"

EXECUTIONS = (
    Execution("eager", errors=True),
    # No call-error cases under mx.compile: MLX (0.32.4) swaps a compiled function's captured
    # inputs for tracers while it traces and swaps them back only when the function returns,
    # so one that raises (AION's input checks raise while tracing) leaves the module holding
    # tracers, and every later read of its state fails ("Attempting to eval an array without
    # a primitive"). The error class itself is the eager one: raised before anything runs.
    Execution(COMPILED),
    Execution("set_dtype(bfloat16)", ("float32", "bfloat16"), "bfloat16"),
    Execution("set_dtype(float16), loss scaling", ("float32", "float16"), "float16"),
    Execution(CHECKPOINT, errors=True),
)


class Layer:
    """The driver's layer handle: the module, and how this execution calls it.

    One program per kind of call, built on first use: the module's forward (through
    :func:`aion_mlx.checkpoint` under that execution), with its value-and-grad when a
    cotangent is given. Kinds are the mode (``module.training`` is read while tracing) and
    whether ``x_norm`` and a cotangent are given (a compiled function takes arrays only).
    Under ``mx.compile`` each is traced once and reused by every later call of its kind,
    so the ``k_update`` schedule must be followed from the state the trace is given.
    """

    def __init__(self, module: AionResidual, execution: Execution):
        self.module = module
        self.compiled = execution.name == COMPILED
        self.checkpointed = execution.name == CHECKPOINT
        if execution.compute_dtype is not None:
            module.set_dtype(arrays.dtype(execution.compute_dtype))
        self._programs: dict[tuple, object] = {}

    def run(self, mode: str, inputs: list, cotangent):
        """``(out, stats, grads or None)`` of one call; the module's state advanced in training."""
        self.module.train(mode == "train")
        kind = (mode, inputs[2] is not None, cotangent is not None)
        program = self._programs.get(kind)
        if program is None:
            program = self._programs[kind] = self._program(kind[1], kind[2])
        args = [t for t in (*inputs, cotangent) if t is not None]
        result = program(*args)
        mx.eval(result, self.module.state)
        return result

    def _program(self, has_x_norm: bool, has_cotangent: bool):
        module = self.module

        def split(args):
            x, y, *rest = args
            return x, y, (rest.pop(0) if has_x_norm else None), (rest.pop(0) if has_cotangent else None)

        def call(x, y, *x_norm):
            return module(x, y, *x_norm, return_stats=True)

        recomputed = checkpoint(module, call) if self.checkpointed else call

        def forward(x, y, x_norm):
            # x_norm as a variadic argument: mx.checkpoint takes arrays only, never None.
            return recomputed(x, y, *(() if x_norm is None else (x_norm,)))

        def loss(x, y, x_norm, cotangent):
            out, stats = forward(x, y, x_norm)
            return mx.sum(out.astype(cotangent.dtype) * cotangent), (out, stats)

        grad = autodiff.value_and_grad(module, loss)

        def program(*args):
            x, y, x_norm, cotangent = split(args)
            if cotangent is None:
                out, stats = forward(x, y, x_norm)
                return out, stats, {}
            _, (out, stats), g_params, (gx, gy, gxn) = grad([x, y, x_norm], [cotangent])
            grads = {"x": gx, "y": gy, "alpha0": g_params["alpha0"], "beta": g_params["beta"]}
            return out, stats, grads if gxn is None else {**grads, "x_norm": gxn}

        if not self.compiled:
            return program
        return mx.compile(program, inputs=module.state, outputs=module.state)


def check_spec_dtypes(module: AionResidual) -> None:
    """Raise if a cast moved AION's parameters or state off their spec dtypes (float32, int32)."""
    for name, dtype in portable.ENTRY_DTYPES.items():
        got = module[name].dtype
        if got != arrays.dtype(dtype):
            raise AssertionError(f"{name} is {got} after the module cast, the spec keeps it {dtype}")


class MlxDriver(BuiltinDriver):
    """``aion_mlx.AionResidual`` (mlx.nn)."""

    name = "mlx"
    executions = EXECUTIONS
    execution = EXECUTIONS[0]

    def __init__(self):
        # float64 exists on MLX's CPU only: on a GPU its cases are skipped, saying so.
        self.dtypes = FLOAT_DTYPES if arrays.device() == "cpu" else tuple(d for d in FLOAT_DTYPES
                                                                        if d != "float64")

    def versions(self):
        return arrays.versions()

    def make(self, config):
        return Layer(AionResidual(**config), self.execution)

    def set_params(self, layer, alpha0, beta):
        layer.module.alpha0 = mx.array(alpha0, mx.float32)
        layer.module.beta = mx.array(beta, mx.float32)

    def set_state(self, layer, state):
        # Written by hand, as a user may do: the layer must follow a step_count it did not write.
        for name, value in core.portable.state_entries(state).items():
            setattr(layer.module, name, mx.array(value))

    def load_portable(self, layer, entries):
        """Through ``aion_mlx.from_portable``, as a user loads a portable checkpoint."""
        from_portable(layer.module, entries)

    def get_state(self, layer):
        check_spec_dtypes(layer.module)
        return {name: layer.module[name].item() for name in core.STATE_SPEC}

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        # Loss scaling (float16 model): the cotangent scaled, the gradients unscaled.
        scale = loss_scale(self.execution)
        inputs = convert_inputs(arrays.from_numpy, (x, y, x_norm), dtype)
        cot = None if cotangent is None else arrays.from_numpy(cotangent * scale, loss_dtype(dtype))
        out, stats, grads = layer.run(mode, inputs, cot)
        return unscaled(driver_result(arrays.to_numpy, out, stats, grads if cot is not None else None), scale)
