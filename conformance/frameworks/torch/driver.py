"""Driver for :mod:`aion_pytorch`: the execution matrix of :mod:`~aion_conformance.frameworks.torch.executions`,
with aion-torch 1.0.2 training parity as its own check."""

from __future__ import annotations

import torch

import aion_core as core
from aion_conformance.drivers.base import BuiltinDriver, convert_inputs, driver_result, loss_dtype
from aion_conformance.drivers.protocol import CheckResult
from aion_conformance.frameworks.torch import arrays as fw
from aion_conformance.frameworks.torch import executions as runs
from aion_conformance.frameworks.torch import original
from aion_conformance.spec.musts import MUSTS
from aion_pytorch import AionResidual


def _tensor(value):
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return value


class TorchDriver(BuiltinDriver):
    name = "torch"
    executions = runs.EXECUTIONS
    execution = runs.EXECUTIONS[0]

    def versions(self):
        return fw.versions()

    def make(self, config):
        return runs.Layer(AionResidual(**config), self.execution)

    def set_params(self, layer, alpha0, beta):
        with torch.no_grad():
            layer.module.alpha0.fill_(alpha0)
            layer.module.beta.fill_(beta)

    def set_state(self, layer, state):
        entries = {name: torch.from_numpy(value) for name, value in core.portable.state_entries(state).items()}
        # Written into the buffers by hand, as a user may do: the layer must follow a
        # step_count it did not write (the k_update schedule; compiled, read on the device).
        with torch.no_grad():
            for name, value in entries.items():
                getattr(layer.module, name).copy_(value)

    def load_portable(self, layer, entries):
        """Through the layer's ``load_state_dict``, as a user loads a checkpoint: each value as
        the tensor ``torch.as_tensor`` makes of it (a string as it is, which torch refuses)."""
        layer.module.load_state_dict({name: _tensor(value) for name, value in entries.items()})

    def get_state(self, layer):
        runs.check_spec_dtypes(layer.module)
        return {name: getattr(layer.module, name).item() for name in core.STATE_SPEC}

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        inputs = convert_inputs(lambda a, d: fw.from_numpy(a, d, layer.device), (x, y, x_norm), dtype)
        layer.module.train(mode == "train")
        if cotangent is None:
            return driver_result(fw.to_numpy, *layer.forward(*inputs))
        cot = fw.from_numpy(cotangent, loss_dtype(dtype), layer.device)

        def loss(x, y, x_norm):
            out, stats = layer.forward(x, y, x_norm)
            return torch.sum(out.to(cot.dtype) * cot), (out, stats)

        (out, stats), grads = layer.value_and_grad(loss, inputs)
        return driver_result(fw.to_numpy, out, stats, grads)

    def extra_checks(self):
        """Multi-step SGD training against aion-torch 1.0.2 itself, in float32."""
        results = []
        for gamma in (0.99, 1.0):
            for use_xnorm in (True, False):
                case = f"8 SGD steps, ema_gamma={gamma}, x_norm={'given' if use_xnorm else 'None'}"
                res = CheckResult(self.name, original.CHECK, case, "float32", "pass")
                if original.load() is None:
                    res.status, res.messages = "skip", [original.MISSING]
                else:
                    worst = original.training_parity(ema_gamma=gamma, use_xnorm=use_xnorm)
                    res.messages = [f"[{MUSTS['original']}] {m}" for m in worst.pop("failures")]
                    res.max_abs = max(v[0] for v in worst.values())
                    res.max_rel = max(v[1] for v in worst.values())
                    res.status = "fail" if res.messages else "pass"
                results.append(res)
        return results
