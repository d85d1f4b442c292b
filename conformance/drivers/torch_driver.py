"""Driver for :mod:`aion_torch`."""

from __future__ import annotations

import numpy as np
import torch

from aion_torch import AionResidual
from conformance.driver import as_f64
from conformance.dtypes import RTOL
from conformance.oracle import load_oracle, training_parity
from conformance.runner import Result


class TorchDriver:
    name = "torch"
    dtypes = ("float64", "float32", "float16", "bfloat16")

    def versions(self):
        return {"torch": torch.__version__}

    def make(self, config):
        return AionResidual(**config)

    def set_params(self, layer, alpha0, beta):
        with torch.no_grad():
            layer.alpha0.fill_(alpha0)
            layer.beta.fill_(beta)

    def set_state(self, layer, state):
        layer.load_state_dict({"alpha0": layer.alpha0.detach(), "beta": layer.beta.detach(),
                               **{k: torch.tensor(v) for k, v in state.items()}})

    def get_state(self, layer):
        return {"ratio_ema": float(layer.ratio_ema), "step_count": int(layer.step_count),
                "nonfinite_count": int(layer.nonfinite_count)}

    def call(self, layer, mode, x, y, x_norm, cotangent, dtype):
        dt = getattr(torch, dtype)

        def tensor(a):
            if a is None:
                return None
            t = torch.from_numpy(np.asarray(a)).to(dt)
            return t.requires_grad_(cotangent is not None)

        tx, ty, tn = tensor(x), tensor(y), tensor(x_norm)
        layer.train(mode == "train")
        layer.zero_grad()
        out, stats = layer(tx, ty, x_norm=tn, return_stats=True)
        result = {"out": as_f64(out), "stats": {k: float(v) for k, v in stats.items()}}
        if cotangent is not None:
            out.backward(torch.from_numpy(cotangent).to(dt))
            named = {"x": tx, "y": ty, "x_norm": tn}
            # A gradient that does not reach an input (eval, non-update steps) is zero.
            result["grads"] = {k: as_f64(t.grad) if t.grad is not None else np.zeros(t.shape)
                               for k, t in named.items() if t is not None}
            result["grads"].update(alpha0=float(layer.alpha0.grad), beta=float(layer.beta.grad))
        return result

    def extra_checks(self):
        """Multi-step SGD training against aion-torch 1.0.2 itself, in float32."""
        results = []
        for gamma in (0.99, 1.0):
            for use_xnorm in (True, False):
                case = f"8 SGD steps, ema_gamma={gamma}, x_norm={'given' if use_xnorm else 'None'}"
                res = Result(self.name, "aion-torch 1.0.2", case, "float32", "pass")
                if load_oracle() is None:
                    res.status, res.messages = "skip", ["aion-torch 1.0.2 not installed in .oracle/"]
                else:
                    worst = training_parity(ema_gamma=gamma, use_xnorm=use_xnorm)
                    if worst.pop("step_count_mismatches"):
                        res.messages.append("step_count differs")
                    res.max_abs = res.max_rel = max(worst.values())
                    res.messages += [f"{k}: {v:.2e}" for k, v in worst.items() if v > RTOL["float32"]]
                    res.status = "fail" if res.messages else "pass"
                results.append(res)
        return results
