"""The one value-and-grad of the MLX kit (the driver's and the trainer's)."""

from __future__ import annotations

import mlx.core as mx


def value_and_grad(model, loss_fn):
    """``loss_fn(*inputs, *consts) -> (loss, aux)`` and the gradients of ``loss``.

    Gradients are taken with respect to ``model.trainable_parameters()`` and ``inputs``
    (None stays None; an input the loss does not reach gets zeros), as :func:`mlx.nn.value_and_grad`
    does it: the parameters are given to ``model`` (``model.update``) inside the
    differentiated function, which calls the model. Frozen arrays (AION's running state)
    are neither differentiated nor updated here; the forward writes them itself. ``consts``
    (a list) are not differentiated (integer arrays, the target, a cotangent go there).

    Returns ``program(inputs, consts=()) -> (loss, aux, param_grads, input_grads)``;
    ``param_grads`` is the tree of ``model.trainable_parameters()``. Called inside
    :func:`mlx.core.compile` it is traced into that one program.
    """
    def objective(params, present, consts, holes):
        model.update(params)
        arrays = iter(present)
        # mx.value_and_grad differentiates trees of arrays only: absent inputs are put back here.
        inputs = [None if hole else next(arrays) for hole in holes]
        return loss_fn(*inputs, *consts)

    grad = mx.value_and_grad(objective, argnums=(0, 1))

    def program(inputs, consts=()):
        holes = tuple(t is None for t in inputs)
        (loss, aux), (g_params, g_present) = grad(model.trainable_parameters(), [t for t in inputs if t is not None],
                                                  list(consts), holes)
        g_present = iter(g_present)
        return loss, aux, g_params, [None if hole else next(g_present) for hole in holes]

    return program
