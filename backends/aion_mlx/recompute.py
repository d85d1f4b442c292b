"""Activation checkpointing that keeps AION's running state right (spec section 6a).

:func:`mlx.nn.utils.checkpoint` re-runs the wrapped function in Python during the backward
pass. An AION layer's training forward reads its running state and writes the next one, so
that second run would read the state the first run wrote (another alpha, other gradients)
and advance it once more. :func:`checkpoint` hands the state to the recomputed function as
an input, as it does the parameters: the recomputation reads what the first run read, and
the state is written once, from the first run's outputs. Whatever a recomputation writes is
put back as it found it, so several checkpointed calls before one backward (micro-batches,
a block used twice) replay in any order.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

import mlx.core as mx
import mlx.nn as nn

import aion_core as core
from aion_mlx.layers import AionResidual, aion_layers

_STATE_NAMES = tuple(core.STATE_SPEC)


def _read(layers: list[AionResidual]) -> list[list[mx.array]]:
    return [[layer[name] for name in _STATE_NAMES] for layer in layers]


def _write(layers: list[AionResidual], states: list[list[mx.array]]) -> None:
    for layer, values in zip(layers, states):
        for name, value in zip(_STATE_NAMES, values):
            layer[name] = value


def checkpoint(module: nn.Module, fn: Callable | None = None) -> Callable:
    """:func:`mlx.nn.utils.checkpoint` for modules holding AION layers.

    Parameters
    ----------
    module : mlx.nn.Module
        The module whose trainable parameters, and whose AION layers' running state, the
        recomputation is given.
    fn : callable, optional
        The function to checkpoint (default: ``module`` itself).

    Returns
    -------
    callable
        Keeps the inputs and outputs of ``fn`` and recomputes the rest in the backward
        pass; the forward advances each AION layer's state once, in training mode.

    Examples
    --------
    >>> import mlx.core as mx
    >>> import mlx.nn as nn
    >>> from aion_mlx import AionBlock, checkpoint
    >>> block = AionBlock(nn.Linear(8, 8), 8)
    >>> loss = lambda params, x: checkpoint(block)(x).sum()
    >>> _ = mx.grad(loss)(block.trainable_parameters(), mx.ones((2, 8)))
    >>> block.aion.step_count.item()
    1
    """
    fn = module if fn is None else fn
    layers = [layer for _, layer in aion_layers(module)]

    def run(params, states, *args, **kwargs):
        found = _read(layers)  # another call's state, when this is a recomputation
        module.update(params)
        _write(layers, states)
        out = fn(*args, **kwargs)
        new = _read(layers)
        _write(layers, found)
        return out, new

    checkpointed = mx.checkpoint(run)

    @wraps(fn)
    def wrapped(*args, **kwargs):
        out, new = checkpointed(module.trainable_parameters(), _read(layers), *args, **kwargs)
        _write(layers, new)
        return out

    return wrapped
