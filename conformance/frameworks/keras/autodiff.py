"""The one value-and-grad of the Keras kit (the driver's and the trainer's), on the backend
this process was started with (``KERAS_BACKEND``).

Gradients come from the backend's own autodiff: ``tf.GradientTape``, ``jax.value_and_grad``
over ``Layer.stateless_call`` (one jitted program per model and loss), and
``torch.autograd.grad``.
"""

from __future__ import annotations

import keras
from keras import ops

from aion_conformance.frameworks.keras.arrays import BACKEND


def value_and_grad(model, loss_fn, inputs, consts=(), jit: bool | None = None):
    """``loss_fn(call, *inputs, *consts) -> (loss, aux)`` and the gradients of ``loss``.

    ``call`` invokes ``model`` with the arguments given to it. Gradients are taken with
    respect to ``inputs`` (None stays None) and ``model.trainable_variables``; the
    non-trainable variables the call updates are assigned to ``model``.

    ``jit``: compile the whole step as Keras' ``jit_compile=True`` does (TensorFlow:
    ``tf.function(jit_compile=True)``, XLA; JAX: ``jax.jit``; torch: ``torch.compile``) or
    run it op by op; None: each backend's usual way here (JAX jitted, the others eager).
    A compiled program is cached per ``(model, loss_fn)``: pass a function defined once.

    Returns ``(loss, aux, input_grads, variable_grads)``; a gradient that does not reach
    an input is zero.
    """
    if jit is None:
        jit = BACKEND == "jax"
    return _BY_BACKEND[BACKEND](model, loss_fn, list(inputs), list(consts), jit)


def _split(grads, inputs):
    """Gradients over ``present inputs + variables`` back to one per input (None kept)."""
    grads, out = list(grads), []
    for t in inputs:
        g = None if t is None else grads.pop(0)
        out.append(ops.zeros_like(t) if t is not None and g is None else g)
    return out, grads


_PROGRAMS: dict = {}  # (id(model), loss_fn, jit) -> (model, program); keeps the model alive


def _program(model, loss_fn, jit, make):
    key = (id(model), loss_fn, jit)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = (model, make(model, loss_fn, jit))
    return _PROGRAMS[key][1]


def _tensorflow(model, loss_fn, inputs, consts, jit):
    return _program(model, loss_fn, jit, _tensorflow_program)(inputs, consts)


def _tensorflow_program(model, loss_fn, jit):
    import tensorflow as tf

    def step(inputs, consts):
        present = [t for t in inputs if t is not None]
        variables = [v.value for v in model.trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch(present)
            loss, aux = loss_fn(model, *inputs, *consts)
        input_grads, variable_grads = _split(tape.gradient(loss, present + variables), inputs)
        return loss, aux, input_grads, variable_grads

    return tf.function(step, jit_compile=True) if jit else step


def _torch(model, loss_fn, inputs, consts, jit):
    import torch

    inputs = [None if t is None else t.detach().requires_grad_() for t in inputs]
    present = [t for t in inputs if t is not None]
    variables = [v.value for v in model.trainable_variables]
    call = _program(model, loss_fn, jit, lambda m, f, jit: torch.compile(f) if jit else f)
    loss, aux = call(model, *inputs, *consts)
    grads = torch.autograd.grad(loss, present + variables, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, present + variables)]
    input_grads, variable_grads = _split(grads, inputs)
    return loss.detach(), aux, input_grads, variable_grads


def _jax(model, loss_fn, inputs, consts, jit):
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    with jax.disable_jit(not jit):
        loss, aux, new_non_trainable, input_grads, variable_grads = _program(
            model, loss_fn, True, lambda m, f, _: _jax_program(m, f))(trainable, non_trainable, inputs, consts)
    for variable, value in zip(model.non_trainable_variables, new_non_trainable):
        variable.assign(value)
    return loss, aux, input_grads, variable_grads


def _jax_program(model, loss_fn):
    # One XLA program per model and input signature: op-by-op JAX would compile every
    # primitive separately, which takes far longer than the whole program.
    import jax

    @jax.jit
    def program(trainable, non_trainable, inputs, consts):
        def objective(trainable, inputs):
            updated = [non_trainable]

            def call(*args, **kwargs):
                # What stateless_call does, but through __call__: a layer inside a model (as
                # Keras' own JAX trainer runs it) casts its inputs to its compute dtype, which
                # stateless_call, calling `call` directly, would skip for this outermost layer.
                mapping = [*zip(model.trainable_variables, trainable),
                           *zip(model.non_trainable_variables, updated[-1])]
                with keras.StatelessScope(state_mapping=mapping) as scope:
                    out = model(*args, **kwargs)
                updated.append([scope.get_current_value(v) for v in model.non_trainable_variables])
                return out

            loss, aux = loss_fn(call, *inputs, *consts)
            return loss, (aux, updated[-1])

        (loss, (aux, new_nt)), (g_vars, g_inputs) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True)(trainable, inputs)
        return loss, aux, new_nt, g_inputs, g_vars

    return program


_BY_BACKEND = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}
