"""Drivers for the Flax adapters: ``NnxDriver`` ("flax-nnx") and ``LinenDriver`` ("flax-linen").

Every call is compiled: ``jax.jit`` over a pure function of the variables (Linen
``apply``, NNX ``split``/``merge``), and for NNX also ``nnx.jit`` on the module itself.
The ``dtype=...`` executions build the layer with a computation dtype and give it float32
inputs, which it casts (as Flax layers do). float64 cases need 64-bit jax, which the
drivers switch on for their process when built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import aion_core as core
import aion_flax
import aion_flax.linen as aion_linen
from aion_conformance.drivers.base import (BuiltinDriver, all_floating, convert_inputs, driver_result, loss_dtype,
                                           loss_scale, unscaled)
from aion_conformance.drivers.protocol import Execution
from aion_conformance.frameworks.flax import arrays, autodiff

#: The computation-dtype executions, shared by both flavours.
_DTYPE_EXECUTIONS = (Execution("dtype=bfloat16", ("float32",), "bfloat16"),
                     Execution("dtype=float16, loss scaling", ("float32",), "float16"))


def _dtype_kwargs(execution: Execution) -> dict:
    return {"dtype": getattr(jnp, execution.compute_dtype)} if execution.compute_dtype else {}


def _inputs(execution: Execution, values, dtype: str):
    # A computation dtype: float32 inputs (already representable in it), cast by the layer.
    return convert_inputs(arrays.from_numpy, values,
                          "float32" if execution.compute_dtype and all_floating(dtype) else dtype)


def _run(forward, params, inputs, cotangent, dtype):
    """``forward(params, x, y, x_norm) -> (out, aux)`` jitted, with gradients when asked."""
    if cotangent is None:
        out, aux = jax.jit(forward)(params, *inputs)
        return out, aux, None

    def loss(params, x, y, x_norm, cotangent):
        out, aux = forward(params, x, y, x_norm)
        return jnp.sum(out.astype(cotangent.dtype) * cotangent), (out, aux)

    cot = arrays.from_numpy(cotangent, loss_dtype(dtype))
    _, (out, aux), g_params, (gx, gy, gxn) = autodiff.value_and_grad(loss)(params, inputs, [cot])
    return out, aux, {"x": gx, "y": gy, "x_norm": gxn, "alpha0": g_params["alpha0"], "beta": g_params["beta"]}


class _FlaxDriver(BuiltinDriver):
    def __init__(self):
        jax.config.update("jax_enable_x64", True)

    def versions(self):
        return arrays.versions()

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        # Loss scaling (float16 executions): the cotangent scaled, the gradients unscaled.
        scale = loss_scale(self.execution)
        return unscaled(self._call(layer, mode, x, y, x_norm, None if cotangent is None else cotangent * scale,
                                   dtype), scale)


class NnxDriver(_FlaxDriver):
    """``aion_flax.AionResidual`` (flax.nnx)."""

    name = "flax-nnx"
    executions = (Execution("jax.jit (split/merge)", errors=True), Execution("nnx.jit", errors=True),
                  *_DTYPE_EXECUTIONS)
    execution = executions[0]

    def make(self, config):
        return aion_flax.AionResidual(**config, **_dtype_kwargs(self.execution))

    def set_params(self, layer, alpha0, beta):
        layer.alpha0[...] = jnp.asarray(alpha0, jnp.float32)
        layer.beta[...] = jnp.asarray(beta, jnp.float32)

    def set_state(self, layer, state):
        for name, value in core.portable.state_entries(state).items():
            getattr(layer, name)[...] = jnp.asarray(value)

    def get_state(self, layer):
        return {name: getattr(layer, name)[...].item() for name in core.STATE_SPEC}

    def load_portable(self, layer, entries):
        """Through ``aion_flax.nnx_from_portable``, as a user loads a portable checkpoint."""
        aion_flax.nnx_from_portable(layer, entries)

    def _call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        inputs = _inputs(self.execution, (x, y, x_norm), dtype)
        if self.execution.name == "nnx.jit":
            return _nnx_jit_call(layer, mode, inputs, cotangent, dtype)
        graphdef, params, stats = nnx.split(layer, nnx.Param, aion_flax.AionStat)

        def forward(params, x, y, x_norm):
            model = nnx.merge(graphdef, params, stats, copy=True)
            out, step_stats = model(x, y, x_norm, deterministic=mode == "eval", return_stats=True)
            return out, (step_stats, nnx.state(model, aion_flax.AionStat))

        out, (step_stats, new_stats), grads = _run(forward, params, inputs, cotangent, dtype)
        nnx.update(layer, new_stats)
        return driver_result(arrays.to_numpy, out, step_stats, grads)


def _nnx_forward(model, x, y, x_norm, deterministic):
    return model(x, y, x_norm, deterministic=deterministic, return_stats=True)


@nnx.jit(static_argnames="deterministic")
def _nnx_jit_forward(model, x, y, x_norm, deterministic):
    return _nnx_forward(model, x, y, x_norm, deterministic)


@nnx.jit(static_argnames="deterministic")
def _nnx_jit_value_and_grad(model, x, y, x_norm, cotangent, deterministic):
    def loss(model, x, y, x_norm):
        out, stats = _nnx_forward(model, x, y, x_norm, deterministic)
        return jnp.sum(out.astype(cotangent.dtype) * cotangent), (out, stats)

    (_, aux), grads = nnx.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(model, x, y, x_norm)
    return aux, grads


def _nnx_jit_call(layer, mode, inputs, cotangent, dtype):
    """The call as an NNX user writes it: ``nnx.jit`` and ``nnx.value_and_grad`` on the module."""
    deterministic = mode == "eval"
    if cotangent is None:
        return driver_result(arrays.to_numpy, *_nnx_jit_forward(layer, *inputs, deterministic))
    cot = arrays.from_numpy(cotangent, loss_dtype(dtype))
    (out, stats), (g_model, gx, gy, gxn) = _nnx_jit_value_and_grad(layer, *inputs, cot, deterministic)
    return driver_result(arrays.to_numpy, out, stats, {"x": gx, "y": gy, "x_norm": gxn,
                                                   "alpha0": g_model["alpha0"][...], "beta": g_model["beta"][...]})


class LinenDriver(_FlaxDriver):
    """``aion_flax.linen.AionResidual`` (flax.linen); the layer is ``[module, variables]``."""

    name = "flax-linen"
    executions = (Execution("jax.jit", errors=True), *_DTYPE_EXECUTIONS)
    execution = executions[0]

    def make(self, config):
        module = aion_linen.AionResidual(**config, **_dtype_kwargs(self.execution))
        probe = jnp.ones((1, 1), jnp.float32)
        return [module, module.init(jax.random.key(0), probe, probe, deterministic=True)]

    def set_params(self, layer, alpha0, beta):
        layer[1] = {**layer[1], "params": {"alpha0": jnp.asarray(alpha0, jnp.float32),
                                           "beta": jnp.asarray(beta, jnp.float32)}}

    def set_state(self, layer, state):
        layer[1] = {**layer[1], aion_linen.STATS_COLLECTION: {
            name: jnp.asarray(value) for name, value in core.portable.state_entries(state).items()}}

    def get_state(self, layer):
        stats = layer[1][aion_linen.STATS_COLLECTION]
        return {name: stats[name].item() for name in core.STATE_SPEC}

    def load_portable(self, layer, entries):
        """Through ``aion_flax.linen_from_portable`` (new variables; the old ones kept on failure)."""
        layer[1] = aion_flax.linen_from_portable(layer[1], entries)

    def _call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        module, variables = layer
        inputs = _inputs(self.execution, (x, y, x_norm), dtype)
        stats = variables[aion_linen.STATS_COLLECTION]
        mutable = [aion_linen.STATS_COLLECTION] if mode == "train" else False

        def forward(params, x, y, x_norm):
            result = module.apply({"params": params, aion_linen.STATS_COLLECTION: stats}, x, y,
                                  x_norm, deterministic=mode == "eval", return_stats=True,
                                  mutable=mutable)
            (out, step_stats), updates = result if mutable else (result, {})
            return out, (step_stats, updates.get(aion_linen.STATS_COLLECTION, stats))

        out, (step_stats, new_stats), grads = _run(forward, variables["params"], inputs, cotangent, dtype)
        layer[1] = {**variables, aion_linen.STATS_COLLECTION: new_stats}
        return driver_result(arrays.to_numpy, out, step_stats, grads)
