"""The Keras kit's training step (an observed step by the kit's own value-and-grad, or Keras'
own) and its evaluation (an eval-mode forward's loss).

Observed (trajectory, stability): gradients from :func:`~.autodiff.value_and_grad`, then
the Keras optimizer's ``apply_gradients``, so the loss, the gradient norm and the scales
of that very forward come back. Timed (the bench): ``model.compile`` and
``train_on_batch``, the step a Keras user runs.
"""

from __future__ import annotations

import contextlib
import functools

import keras
from keras import ops

from aion_conformance.frameworks.keras import arrays, optim
from aion_conformance.frameworks.keras.arrays import BACKEND
from aion_conformance.frameworks.keras.autodiff import value_and_grad
from aion_conformance.frameworks.kit import Step


def mode(jit: bool, graph: bool = False) -> str:
    """What a step runs as: ``jit`` (XLA), ``compile`` (``torch.compile``), ``graph`` (a
    ``tf.function`` without XLA, which ``graph`` asks for on TensorFlow) or ``eager``."""
    if jit:
        return "compile" if BACKEND == "torch" else "jit"
    return "graph" if graph and BACKEND == "tensorflow" else "eager"


PRECISIONS = {None: None, "bfloat16": "mixed_bfloat16"}


def objective(loss: str, out, target):
    """``"mse"``: ``mean((out - target)**2)``; ``"ce"``: the mean cross-entropy of the
    logits ``out[..., V]`` against integer ``target``, log-softmax in float32."""
    if loss == "mse":
        return ops.mean(ops.square(out - target))
    if loss == "ce":
        logp = ops.log_softmax(ops.cast(out, "float32"), axis=-1)
        return -ops.mean(ops.take_along_axis(logp, ops.expand_dims(ops.cast(target, "int32"), -1), axis=-1))
    raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")


@functools.cache
def _loss(loss: str = "mse", precision: str | None = None):
    # One function per loss and precision: the kit's value-and-grad caches its compiled
    # program per loss function, and a precision is read when the program is traced.
    def fn(call, inputs, target):
        out, scales = call(inputs, training=True)
        return objective(loss, out, target), scales

    return fn


@contextlib.contextmanager
def policy(model: keras.Model, precision: str | None):
    """``precision`` as Keras' dtype policy (``"bfloat16"``: ``mixed_bfloat16``, float32
    variables computed in bfloat16) on every layer of the built ``model``, for the calls
    and traces inside; each layer's own policy is put back after."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if precision is None:
        yield
        return
    layers = list(model._flatten_layers(include_self=True))
    kept = [layer.dtype_policy for layer in layers]
    for layer in layers:
        layer.dtype_policy = PRECISIONS[precision]
    try:
        yield
    finally:
        for layer, kept_policy in zip(layers, kept):
            layer.dtype_policy = kept_policy


class _Output(keras.Model):
    """The network's output alone, what ``compile``'s ``"mse"`` takes (the scales dropped)."""

    def __init__(self, model: keras.Model, **kwargs):
        # Named: the class's default name, "_output", is no valid TensorFlow name scope.
        super().__init__(**{"name": "timed", **kwargs})
        self.net = model
        self.built = True

    def call(self, inputs, training=None):
        return self.net(inputs, training=training)[0]


class Trainer:
    """``trainer(inputs, target)``: one training step of ``model`` on ``loss`` (see
    :func:`objective`), in ``precision`` (see :func:`policy`).

    ``observe`` True: returns the :class:`~aion_conformance.frameworks.kit.Step`.
    ``compiled`` True compiles the whole forward and backward (TensorFlow:
    ``tf.function(jit_compile=True)``; JAX: ``jax.jit``; torch: ``torch.compile``), False
    runs it op by op, None as each backend usually runs a short check: JAX jitted (op-by-op
    JAX compiles every primitive), TensorFlow and torch eager (compiling would take longer
    than the steps).

    ``observe`` False: ``model.compile(optimizer, "mse", jit_compile=compiled)`` and
    ``train_on_batch``, returning None once the step has finished (its loss, a Python
    float, waits for the device). None here is Keras' usual way: jit on TensorFlow and
    JAX, eager on torch (whose ``torch.compile`` takes a minute or more per model).
    Without jit TensorFlow still runs a ``tf.function`` graph.
    """

    def __init__(self, model, optimizer, clip: float | None = None, compiled: bool | None = None,
                 observe: bool = True, loss: str = "mse", precision: str | None = None):
        self.model, self.spec, self.clip, self.observe = model, optimizer, clip, observe
        self.loss, self.precision = _loss(loss, precision), precision
        with policy(model, precision):  # refuses an unknown precision now, not at the first step
            pass
        self.optimizer = optim.make(optimizer, clip, model.trainable_variables)
        if observe:
            self.jit = BACKEND == "jax" if compiled is None else compiled
        else:
            self.jit = BACKEND != "torch" if compiled is None else compiled
            self.timed = _Output(model)
            # Keras' own losses: its cross-entropy takes the logits in float32 (a Loss's dtype).
            keras_loss = {"mse": "mse", "ce": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}[loss]
            self.timed.compile(self.optimizer, keras_loss, jit_compile=self.jit)
        self.label = f"{arrays.device()} {mode(self.jit, graph=not observe)}"

    def __call__(self, inputs, target):
        if not self.observe:
            with policy(self.model, self.precision):
                self.timed.train_on_batch(inputs, target)
            return None
        with policy(self.model, self.precision):
            loss, scales, _, grads = value_and_grad(self.model, self.loss, [], [inputs, target], jit=self.jit)
        grads = optim.dense(grads)
        norm = None if self.clip is None else optim.global_norm(grads)
        optim.apply(self.optimizer, self.spec, grads, self.model.trainable_variables)
        return Step(float(arrays.to_numpy(loss)), norm, [float(arrays.to_numpy(s)) for s in scales])


trainer = Trainer


def evaluate(model, inputs, target, loss: str = "mse", precision: str | None = None) -> float:
    """The loss of an eval-mode forward of ``model`` (``training=False``: AION's state read,
    not advanced; no gradient taken), op by op."""
    no_grad = contextlib.nullcontext()
    if BACKEND == "torch":
        import torch

        no_grad = torch.no_grad()
    with policy(model, precision), no_grad:
        out, _ = model(inputs, training=False)
        return float(arrays.to_numpy(objective(loss, out, target)))
