"""The Flax kits' model and training step: one jitted step over pure state, for NNX and Linen.

Each kit builds its module tree and turns it into a :class:`Model`: a pure ``forward`` over
the flat variables of :mod:`.layout` (NNX ``merge``, Linen ``apply``) and the variables as
plain arrays, split into what the optimizer trains and the rest (AION's running state, and
the frozen ``alpha0``/``beta`` of the fixed-scale baseline). The :class:`Trainer` then
runs forward, MSE, gradients, clipping and the optax update as one ``jax.jit`` program.

Plain arrays in flat dicts, not NNX ``Variable`` objects nor ``nnx.jit``: a step's Python
work is then flattening those dicts (in C++, as for Linen's), whereas ``nnx.jit`` walks the
module graph on every call and a ``State`` of Variables is flattened Variable by Variable in
Python, which AION's five variables per block would make the bench time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from aion_conformance.frameworks import net
from aion_conformance.frameworks.flax import arrays, autodiff, layout, optim
from aion_conformance.frameworks.kit import Step


@dataclass
class Model:
    """A built network as pure state.

    ``forward(variables, inputs) -> ((out, scales), state)``: the kit's module on the flat
    variables of :mod:`.layout`, returning its output, the blocks' scales and the updated
    AION state (flat). ``params``: the trained variables; ``rest``: the others. The trainer
    replaces both after each step, so :func:`read` sees the trained weights.
    """

    spec: net.Net
    forward: Callable
    params: dict
    rest: dict

    @classmethod
    def of(cls, spec: net.Net, forward: Callable, kit_variables: dict) -> Model:
        """``spec``'s weights as the variables ``kit_variables`` (the kit's module's, flat,
        shapes and dtypes) name, checked against them."""
        values = layout.variables(spec)
        layout.check(values, kit_variables)
        split = {True: {}, False: {}}
        for key, value in values.items():
            split[layout.trainable(spec, key)][key] = jnp.asarray(value)
        return cls(spec, forward, split[True], split[False])


def read(model: Model) -> net.Net:
    """The model's current weights and AION entries as a numpy :class:`~.net.Net`."""
    return layout.network(model.spec, {**model.params, **model.rest})


class Trainer:
    """``trainer(inputs, target)``: one training step of ``model`` on an MSE loss.

    Always compiled (``jax.jit``), whatever ``compiled`` says: op-by-op JAX would compile
    every primitive apart. ``observe``: return the :class:`Step` (loss, gradient norm
    before clipping, scales; waits for the device); otherwise wait for the step and
    return None (the bench times it from the host).
    """

    def __init__(self, model: Model, optimizer, clip: float | None = None, compiled: bool | None = None,
                 observe: bool = True):
        self.model, self.observe = model, observe
        self.label = f"{arrays.device()} jit"
        tx = optim.make(optimizer, clip)
        self.opt_state = tx.init(model.params)
        forward = model.forward

        def loss_fn(params, rest, inputs, target):
            (out, scales), state = forward({**params, **rest}, inputs)
            return jnp.mean((out - target) ** 2), (scales, {**rest, **state})

        grad = autodiff.value_and_grad(loss_fn)

        @jax.jit
        def step(params, rest, opt_state, inputs, target):
            # Full float32 matmuls, as torch's default: JAX's own on Ampere and newer GPUs is
            # TF32 (about 1e-3 relative), past the problems' tolerance. Read while tracing.
            with jax.default_matmul_precision("float32"):
                loss, (scales, rest), grads, _ = grad(params, [], [rest, inputs, target])
            norm = optim.grad_norm(grads, clip)
            params, opt_state = optim.step(tx, grads, opt_state, params)
            return params, rest, opt_state, loss, norm, scales

        self._step = step

    def __call__(self, inputs, target) -> Step | None:
        model = self.model
        model.params, model.rest, self.opt_state, loss, norm, scales = self._step(
            model.params, model.rest, self.opt_state, inputs, target)
        if not self.observe:
            loss.block_until_ready()
            return None
        loss, norm, scales = jax.device_get((loss, norm, scales))  # one transfer for all
        return Step(float(loss), None if norm is None else float(norm), [float(s) for s in scales])


trainer = Trainer
