"""The Keras kit's training step: an observed step by the kit's own value-and-grad, or Keras' own.

Observed (trajectory, stability): gradients from :func:`~.autodiff.value_and_grad`, then
the Keras optimizer's ``apply_gradients``, so the loss, the gradient norm and the scales
of that very forward come back. Timed (the bench): ``model.compile`` and
``train_on_batch``, the step a Keras user runs.
"""

from __future__ import annotations

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


def _loss(call, inputs, target):
    # Defined once: the kit's value-and-grad caches its compiled program per loss function.
    out, scales = call(inputs, training=True)
    return ops.mean(ops.square(out - target)), scales


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
    """``trainer(inputs, target)``: one training step of ``model`` on an MSE loss.

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
                 observe: bool = True):
        self.model, self.spec, self.clip, self.observe = model, optimizer, clip, observe
        self.optimizer = optim.make(optimizer, clip)
        if observe:
            self.jit = BACKEND == "jax" if compiled is None else compiled
        else:
            self.jit = BACKEND != "torch" if compiled is None else compiled
            self.timed = _Output(model)
            self.timed.compile(self.optimizer, "mse", jit_compile=self.jit)
        self.label = f"{arrays.device()} {mode(self.jit, graph=not observe)}"

    def __call__(self, inputs, target):
        if not self.observe:
            self.timed.train_on_batch(inputs, target)
            return None
        loss, scales, _, grads = value_and_grad(self.model, _loss, [], [inputs, target], jit=self.jit)
        grads = optim.dense(grads)
        norm = None if self.clip is None else optim.global_norm(grads)
        optim.apply(self.optimizer, self.spec, grads, self.model.trainable_variables)
        return Step(float(arrays.to_numpy(loss)), norm, [float(arrays.to_numpy(s)) for s in scales])


trainer = Trainer
