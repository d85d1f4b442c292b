"""The torch kit's training step: forward, MSE, backward, clipping, optimizer step."""

from __future__ import annotations

import torch

from aion_conformance.frameworks.kit import Step
from aion_conformance.frameworks.torch import arrays, autodiff, optim


class Trainer:
    """``trainer(inputs, target)``: one training step of ``model`` on an MSE loss.

    ``compiled``: the model under ``torch.compile`` (forward and backward; the optimizer
    step stays eager); None means eager. ``observe``: return the :class:`Step` (loss,
    gradient norm, scales; waits for the device); otherwise return None on the CPU, or on
    CUDA the step's device time from CUDA events.
    """

    def __init__(self, model, optimizer, clip: float | None = None, compiled: bool | None = None,
                 observe: bool = True):
        self.model, self.clip, self.observe = model, clip, observe
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optim.make(optimizer, self.params)
        self.forward = torch.compile(model) if compiled else model
        self.device = next(model.parameters()).device.type
        self.label = f"{self.device} {'compile' if compiled else 'eager'}"
        if self.device == "cuda":
            self.label = f"{torch.cuda.get_device_name()} {'compile' if compiled else 'eager'}"
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]

    def _loss(self, inputs, target):
        out, scales = self.forward(inputs)
        return torch.mean((out - target) ** 2), scales

    def __call__(self, inputs, target):
        timed = not self.observe and self.device == "cuda"
        if timed:
            self._events[0].record()
        loss, scales, _, _ = autodiff.value_and_grad(lambda: self._loss(inputs, target), [], self.params)
        norm = optim.clip(self.params, self.clip)
        self.optimizer.step()
        if timed:
            self._events[1].record()
            self._events[1].synchronize()
            return self._events[0].elapsed_time(self._events[1]) / 1e3
        if not self.observe:
            return None
        return Step(loss.item(), None if norm is None else norm.item(),
                    [float(arrays.to_numpy(s)) for s in scales])


trainer = Trainer
