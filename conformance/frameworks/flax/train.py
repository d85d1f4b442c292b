"""The Flax kits' model and training step: one jitted step over pure state, for NNX and Linen.

Each kit builds its module tree and turns it into a :class:`Model`: a pure ``forward`` over
the flat variables of :mod:`.layout` (NNX ``merge``, Linen ``apply``) and the variables as
plain arrays, split into what the optimizer trains and the rest (AION's running state, and
the frozen ``alpha0``/``beta`` of the fixed-scale baseline). The :class:`Trainer` then
runs forward, loss, gradients, clipping and the optax update as one ``jax.jit`` program;
:func:`evaluate` the eval-mode forward (AION's state read, not advanced) and its loss.

Plain arrays in flat dicts, not NNX ``Variable`` objects nor ``nnx.jit``: a step's Python
work is then flattening those dicts (in C++, as for Linen's), whereas ``nnx.jit`` walks the
module graph on every call and a ``State`` of Variables is flattened Variable by Variable in
Python, which AION's five variables per block would make the bench time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
    AION state (flat); ``evaluate(variables, inputs) -> (out, scales)``: its eval-mode
    forward, which writes no state. ``params``: the trained variables; ``rest``: the
    others. The trainer replaces both after each step, so :func:`read` sees the trained weights.
    """

    spec: net.Net
    forward: Callable
    params: dict
    rest: dict
    evaluate: Callable | None = None
    programs: dict = field(default_factory=dict)  # evaluate()'s jitted programs

    @classmethod
    def of(cls, spec: net.Net, forward: Callable, kit_variables: dict, evaluate: Callable | None = None) -> Model:
        """``spec``'s weights as the variables ``kit_variables`` (the kit's module's, flat,
        shapes and dtypes) name, checked against them."""
        values = layout.variables(spec)
        layout.check(values, kit_variables)
        split = {True: {}, False: {}}
        for key, value in values.items():
            split[layout.trainable(spec, key)][key] = jnp.asarray(value)
        return cls(spec, forward, split[True], split[False], evaluate)


def read(model: Model) -> net.Net:
    """The model's current weights and AION entries as a numpy :class:`~.net.Net`."""
    return layout.network(model.spec, {**model.params, **model.rest})


PRECISIONS = {None: None, "bfloat16": jnp.bfloat16}


def objective(loss: str, out, target):
    """``"mse"``: ``mean((out - target)**2)``; ``"ce"``: the mean cross-entropy of the
    logits ``out[..., V]`` against integer ``target``, log-softmax in float32."""
    if loss == "mse":
        return jnp.mean((out - target) ** 2)
    if loss == "ce":
        logp = jax.nn.log_softmax(out.astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, target[..., None].astype(jnp.int32), axis=-1))
    raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")


def compute_dtype(precision: str | None):
    """The dtype ``precision`` computes in (None: the variables' own, float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def cast(variables: dict, inputs, dtype):
    """Mixed precision as Flax layers' ``dtype`` does it: the floating weights and inputs in
    ``dtype`` for the forward, float32 kept where they live (their gradients come back
    float32 through the cast). AION's own variables stay float32, as aion_flax keeps them."""
    if dtype is None:
        return variables, inputs

    def down(key, v):
        aion = "/aion/" in f"/{key}"
        return v.astype(dtype) if not aion and jnp.issubdtype(v.dtype, jnp.floating) else v

    inputs = inputs.astype(dtype) if jnp.issubdtype(inputs.dtype, jnp.floating) else inputs
    return {k: down(k, v) for k, v in variables.items()}, inputs


class Trainer:
    """``trainer(inputs, target)``: one training step of ``model`` on ``loss`` (see
    :func:`objective`).

    Always compiled (``jax.jit``), whatever ``compiled`` says: op-by-op JAX would compile
    every primitive apart. ``observe``: return the :class:`Step` (loss, gradient norm
    before clipping, scales; waits for the device); otherwise wait for the step and
    return None (the bench times it from the host). ``precision="bfloat16"``: the forward
    in bfloat16 (:func:`cast`), parameters and optimizer state float32.
    """

    def __init__(self, model: Model, optimizer, clip: float | None = None, compiled: bool | None = None,
                 observe: bool = True, loss: str = "mse", precision: str | None = None):
        self.model, self.observe = model, observe
        self.label = f"{arrays.device()} jit"
        tx = optim.make(optimizer, clip)
        self.opt_state = tx.init(model.params)
        forward, dtype = model.forward, compute_dtype(precision)

        def loss_fn(params, rest, inputs, target):
            variables, inputs = cast({**params, **rest}, inputs, dtype)
            (out, scales), state = forward(variables, inputs)
            return objective(loss, out, target), (scales, {**rest, **state})

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


def evaluate(model: Model, inputs, target, loss: str = "mse", precision: str | None = None) -> float:
    """The loss of ``model``'s eval-mode forward (AION's state read, not advanced; no
    gradient), jitted."""
    dtype = compute_dtype(precision)
    if (loss, precision) not in model.programs:  # traced once per model, loss and precision
        @jax.jit
        def program(variables, inputs, target):
            with jax.default_matmul_precision("float32"):
                out, _ = model.evaluate(*cast(variables, inputs, dtype))
                return objective(loss, out, target)

        model.programs[loss, precision] = program
    return float(model.programs[loss, precision]({**model.params, **model.rest}, inputs, target))
