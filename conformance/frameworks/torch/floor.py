"""The eager floor: AION's update step as the fewest torch ops one autograd node can take.

Not an implementation: float32, ``k_update = 1``, finite inputs, no non-finite guard, no
input checks, no counters, no stats, not traceable by ``torch.compile``. It computes what
``aion_pytorch.AionResidual`` computes there (spec sections 4, 5 and 7;
``tests/test_bench.py`` holds them to each other), in about 30 ops against the adapter's
60-odd, so its time bounds from below what any eager ``autograd.Function`` written in
Python can reach. ``python -m aion_conformance.bench --variants aion aion-floor`` times it
in the benchmark model beside the adapter; the gap between the two is the price of the
guard, the checks, ``k_update`` and the shared, framework-neutral core.
"""

from __future__ import annotations

import torch


class _FloorStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, x_norm, alpha0, beta, ratio_ema, gamma: float, epsilon: float):
        width = x.shape[-1]
        denominator = torch.linalg.vector_norm(x_norm, dim=-1).square_().div_(width).add_(epsilon)
        per_row = torch.linalg.vector_norm(y, dim=-1).square_().div_(width).div_(denominator)
        r_s = torch.lerp(per_row.mean(), ratio_ema, gamma)  # gamma * ema + (1 - gamma) * r
        q = (beta * r_s).add_(1.0)
        alpha = alpha0 / q
        ratio_ema.copy_(r_s)
        ctx.save_for_backward(y, x_norm, denominator, per_row, alpha, q, r_s, beta)
        ctx.slope = 2.0 * (1.0 - gamma) / y.numel()
        ctx.set_materialize_grads(False)
        return torch.addcmul(x, alpha, y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        y, x_norm, denominator, per_row, alpha, q, r_s, beta = ctx.saved_tensors
        g_alpha0 = (dout * y).sum().div_(q)
        d_q = -g_alpha0 * alpha
        scale = (d_q * beta * ctx.slope).div(denominator)  # d L / d E[y] per row, over D
        dy = torch.addcmul(dout * alpha, scale.unsqueeze(-1), y)
        dx_norm = (scale.mul_(per_row).neg_()).unsqueeze(-1) * x_norm
        return dout, dy, dx_norm, g_alpha0, d_q * r_s, None, None, None


class FloorResidual(torch.nn.Module):
    """``x + alpha * y`` by :class:`_FloorStep`, with AionResidual's parameters and ratio."""

    def __init__(self, alpha0: float = 0.1, beta: float = 0.05, ema_gamma: float = 0.99, epsilon: float = 1e-8):
        super().__init__()
        self.alpha0 = torch.nn.Parameter(torch.tensor(alpha0))
        self.beta = torch.nn.Parameter(torch.tensor(beta))
        self.register_buffer("ratio_ema", torch.tensor(1.0))
        self.gamma, self.epsilon = ema_gamma, epsilon

    def forward(self, x, y, x_norm):
        return _FloorStep.apply(x, y, x_norm, self.alpha0, self.beta, self.ratio_ema, self.gamma, self.epsilon)


class FloorBlock(torch.nn.Module):
    """AionBlock's structure (``x + alpha * layer(LayerNorm(x))``) around :class:`FloorResidual`."""

    eager_only = True  # a bound for eager execution, not traceable by torch.compile

    def __init__(self, layer: torch.nn.Module, dim: int):
        super().__init__()
        self.layer, self.norm, self.aion = layer, torch.nn.LayerNorm(dim), FloorResidual()

    def forward(self, x):
        x_norm = self.norm(x)
        return self.aion(x, self.layer(x_norm), x_norm)
