"""The torch kit's training step (forward, loss, backward, clipping, optimizer step) and its
evaluation (an eval-mode forward's loss)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from aion_conformance.frameworks.kit import Step
from aion_conformance.frameworks.torch import arrays, autodiff, optim

PRECISIONS = (None, "bfloat16")


def objective(loss: str, out, target):
    """``"mse"``: ``mean((out - target)**2)``; ``"ce"``: the mean cross-entropy of the
    logits ``out[..., V]`` against integer ``target``, log-softmax in float32."""
    if loss == "mse":
        return torch.mean((out - target) ** 2)
    if loss == "ce":
        return F.cross_entropy(out.float().reshape(-1, out.shape[-1]), target.long().reshape(-1))
    raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")


def autocast(device: str, precision: str | None):
    """torch's mixed precision for ``precision`` (None: float32, nothing to enter)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return contextlib.nullcontext() if precision is None else torch.autocast(device, dtype=torch.bfloat16)


class Trainer:
    """``trainer(inputs, target)``: one training step of ``model`` on ``loss`` (see
    :func:`objective`).

    ``compiled``: the model under ``torch.compile`` (forward and backward; the optimizer
    step stays eager); None means eager. ``observe``: return the :class:`Step` (loss,
    gradient norm, scales; waits for the device); otherwise return None on the CPU, or on
    CUDA the step's device time from CUDA events. ``precision="bfloat16"``: the forward and
    loss under ``torch.autocast`` (parameters, gradients and optimizer state stay float32).
    """

    def __init__(self, model, optimizer, clip: float | None = None, compiled: bool | None = None,
                 observe: bool = True, loss: str = "mse", precision: str | None = None):
        self.model, self.clip, self.observe = model, clip, observe
        self.loss, self.precision = loss, precision
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optim.make(optimizer, self.params)
        self.scheduler = optim.scheduler(optimizer, self.optimizer)
        if compiled:
            # One process compiles many models from the kit's one Block.forward (every variant
            # and width of a benchmark): past Dynamo's default limit of 8 it runs them eagerly.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.forward = torch.compile(model) if compiled else model
        self.device = next(model.parameters()).device.type
        autocast(self.device, precision)  # refuses an unknown precision now, not at the first step
        self.label = f"{self.device} {'compile' if compiled else 'eager'}"
        if self.device == "cuda":
            self.label = f"{torch.cuda.get_device_name()} {'compile' if compiled else 'eager'}"
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]

    def _loss(self, inputs, target):
        with autocast(self.device, self.precision):
            out, scales = self.forward(inputs)
            return objective(self.loss, out, target), scales

    def __call__(self, inputs, target):
        timed = not self.observe and self.device == "cuda"
        if timed:
            self._events[0].record()
        loss, scales, _, _ = autodiff.value_and_grad(lambda: self._loss(inputs, target), [], self.params)
        norm = optim.clip(self.params, self.clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if timed:
            self._events[1].record()
            self._events[1].synchronize()
            return self._events[0].elapsed_time(self._events[1]) / 1e3
        if not self.observe:
            return None
        return Step(loss.item(), None if norm is None else norm.item(),
                    [float(arrays.to_numpy(s)) for s in scales])


trainer = Trainer


def evaluate(model, inputs, target, loss: str = "mse", precision: str | None = None) -> float:
    """The loss of an eval-mode forward of ``model``: no gradient, no AION state written
    (the model's training mode is put back after)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device.type
        with torch.no_grad(), autocast(device, precision):
            out, _ = model(inputs)
            return objective(loss, out, target).item()
    finally:
        model.train(was_training)
