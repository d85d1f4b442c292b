"""The one value-and-grad of the Flax kits (the drivers' and the trainer's)."""

from __future__ import annotations

import jax


def value_and_grad(loss_fn):
    """``loss_fn(params, *inputs, *consts) -> (loss, aux)`` as one jitted program.

    Returns ``program(params, inputs, consts) -> (loss, aux, param_grads, input_grads)``,
    differentiating with respect to ``params`` (a pytree) and ``inputs`` (a list; None
    stays None); ``consts`` (a list) are not differentiated (integer arrays go there).
    Build it once and call it every step: each build traces anew. Called inside another
    ``jax.jit`` (the trainer's step) it is inlined into that one program.
    """
    def objective(params, inputs, consts):
        return loss_fn(params, *inputs, *consts)

    grad = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)

    @jax.jit
    def program(params, inputs, consts=()):
        (loss, aux), (g_params, g_inputs) = grad(params, list(inputs), list(consts))
        return loss, aux, g_params, g_inputs

    return program
