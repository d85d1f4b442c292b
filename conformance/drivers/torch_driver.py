"""Driver for :mod:`aion_pytorch`, with aion-torch 1.0.2 training parity as its own check."""

from __future__ import annotations

import torch

import aion_core as core
from aion_conformance import original
from aion_conformance.drivers.base import BuiltinDriver, driver_result, loss_dtype
from aion_conformance.drivers.protocol import CheckResult
from aion_conformance.frameworks import torch as fw
from aion_pytorch import AionResidual


class TorchDriver(BuiltinDriver):
    name = "torch"

    def versions(self):
        return fw.versions()

    def make(self, config):
        return AionResidual(**config)

    def set_params(self, layer, alpha0, beta):
        with torch.no_grad():
            layer.alpha0.fill_(alpha0)
            layer.beta.fill_(beta)

    def set_state(self, layer, state):
        # Written into the buffers by hand, as a user may do: the layer must follow a
        # step_count it did not write (the k_update schedule). load_state_dict is tested
        # in tests/torch.
        with torch.no_grad():
            for name, value in core.portable.state_entries(state).items():
                getattr(layer, name).copy_(torch.from_numpy(value))

    def get_state(self, layer):
        return {name: getattr(layer, name).item() for name in core.STATE_SPEC}

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        inputs = [fw.from_numpy(a, dtype) for a in (x, y, x_norm)]
        layer.train(mode == "train")

        def forward(x, y, x_norm):
            return layer(x, y, x_norm=x_norm, return_stats=True)

        if cotangent is None:
            return driver_result(fw.to_numpy, *forward(*inputs))
        cot = fw.from_numpy(cotangent, loss_dtype(dtype))

        def loss(x, y, x_norm):
            out, stats = forward(x, y, x_norm)
            return torch.sum(out.to(cot.dtype) * cot), (out, stats)

        _, (out, stats), (gx, gy, gxn), (ga, gb) = fw.value_and_grad(loss, inputs, [layer.alpha0, layer.beta])
        return driver_result(fw.to_numpy, out, stats,
                             {"x": gx, "y": gy, "x_norm": gxn, "alpha0": ga, "beta": gb})

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
                    res.messages = worst.pop("failures")
                    res.max_abs = max(v[0] for v in worst.values())
                    res.max_rel = max(v[1] for v in worst.values())
                    res.status = "fail" if res.messages else "pass"
                results.append(res)
        return results
