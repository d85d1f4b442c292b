"""The ways PyTorch users run a layer, as conformance executions (spec section 10).

Each :class:`~aion_conformance.drivers.protocol.Execution` of the torch driver is a device
(CPU; CUDA when present) and one of: eager; ``torch.compile(fullgraph=True)``;
``torch.autocast`` bfloat16 (eager and compiled); ``torch.autocast`` float16 with a
``GradScaler`` (gradients scaled, then unscaled by the scaler); a module cast with
``.half()`` or ``.bfloat16()``, whose AION parameters and state must stay float32/int32;
activation checkpointing (``torch.utils.checkpoint``, both modes), whose recomputation in the
backward must reproduce the first run and leave the state advanced once (spec section 6a).

The device is chosen by ``AION_CONFORMANCE_DEVICE`` (``auto``, the default: CPU, and CUDA
too when torch sees one; ``cpu``; ``cuda``), which ``--device`` of the CLI sets.
"""

from __future__ import annotations

import contextlib
import os

import torch

import aion_core
from aion_conformance.drivers.protocol import Execution
from aion_conformance.frameworks.optimizers import FLOAT16_LOSS_SCALE
from aion_conformance.frameworks.torch import autodiff
from aion_conformance.registry import DEVICE_ENV

_ALL = ("float64", "float32", "float16", "bfloat16")
#: name -> (case dtypes, compiled, autocast dtype, GradScaler, module cast, checkpoint mode, call errors too)
_KINDS = {
    "eager": (_ALL, False, None, False, None, None, True),
    "compile fullgraph": (_ALL, True, None, False, None, None, True),
    "autocast bfloat16": (("float32", "bfloat16"), False, torch.bfloat16, False, None, None, False),
    "compile + autocast bfloat16": (("float32", "bfloat16"), True, torch.bfloat16, False, None, None, False),
    "autocast float16 + GradScaler": (("float32", "float16"), False, torch.float16, True, None, None, False),
    "module.half()": (("float16",), False, None, False, torch.float16, None, False),
    "module.bfloat16()": (("bfloat16",), False, None, False, torch.bfloat16, None, False),
    "checkpoint": (_ALL, False, None, False, None, "non-reentrant", False),
    "checkpoint reentrant": (_ALL, False, None, False, None, "reentrant", False),
}


def _unavailable(device: str) -> str:
    wanted = os.environ.get(DEVICE_ENV, "auto")
    if wanted not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV} must be auto, cpu or cuda, got {wanted!r}")
    if device == "cuda" and not torch.cuda.is_available():
        if wanted == "cuda":
            raise RuntimeError("--device cuda, but torch sees no CUDA device")
        return "no CUDA"
    return f"--device {wanted}" if wanted not in ("auto", device) else ""


def _executions() -> tuple[Execution, ...]:
    out = []
    for device in ("cpu", "cuda"):
        for kind, (dtypes, *_, errors) in _KINDS.items():
            name = kind if device == "cpu" else f"cuda {kind}"
            out.append(Execution(name, dtypes, errors=errors, unavailable=_unavailable(device)))
    return tuple(out)


EXECUTIONS = _executions()


def check_spec_dtypes(module: torch.nn.Module) -> None:
    """Raise if a cast moved AION's parameters or state off their spec dtypes (float32, int32)."""
    specs = {"alpha0": "float32", "beta": "float32",
             **{name: dtype for name, (dtype, _, _) in aion_core.STATE_SPEC.items()}}
    for name, dtype in specs.items():
        got = getattr(module, name).dtype
        if got != getattr(torch, dtype):
            raise AssertionError(f"{name} is {got} after the module cast, the spec keeps it {dtype}")


class Layer:
    """The driver's layer handle: the module, and how this execution calls it."""

    def __init__(self, module: torch.nn.Module, execution: Execution):
        kind = execution.name.removeprefix("cuda ")
        _, self.compiled, self._autocast, scaled, cast, self._checkpoint, _ = _KINDS[kind]
        self.device = "cuda" if execution.name.startswith("cuda ") else "cpu"
        self.module = module.to(self.device)
        if cast is not None:
            self.module.to(cast)
        if self.compiled:
            torch._dynamo.reset()  # a fresh cache per case: no silent eager fallback at the recompile limit
        self._call = torch.compile(self.module, fullgraph=True) if self.compiled else self.module
        self._scaler = torch.amp.GradScaler(self.device, init_scale=FLOAT16_LOSS_SCALE) if scaled else None
        self._optimizer = torch.optim.SGD([module.alpha0, module.beta], lr=0.0)  # what the scaler unscales

    def forward(self, x, y, x_norm):
        context = (torch.autocast(self.device, dtype=self._autocast) if self._autocast is not None
                   else contextlib.nullcontext())
        with context:
            if self._checkpoint is None:
                return self._call(x, y, x_norm=x_norm, return_stats=True)
            # Recomputed in the backward: (reentrant checkpointing takes positional tensors only)
            return torch.utils.checkpoint.checkpoint(
                lambda x, y, x_norm: self._call(x, y, x_norm=x_norm, return_stats=True), x, y, x_norm,
                use_reentrant=self._checkpoint == "reentrant")

    def value_and_grad(self, loss_fn, inputs):
        """``loss_fn(*inputs) -> (loss, aux)``: aux and the gradients (scaled and unscaled by a GradScaler here)."""
        # Through the scaler, the parameters' gradients are as an optimizer step sees them; it
        # refuses 16-bit gradients, so this also holds alpha0 and beta to float32.
        params = [self.module.alpha0, self.module.beta]
        _, aux, input_grads, param_grads = autodiff.value_and_grad(loss_fn, inputs, params, self._scaler,
                                                                   self._optimizer)
        grads = dict(zip(("x", "y", "x_norm"), input_grads))
        grads.update(alpha0=params[0].grad, beta=params[1].grad)
        return aux, grads
