"""aion_pytorch against aion-torch 1.0.2 itself: same training trajectory, same gradients.

Both are installed in one environment (import names ``aion_pytorch`` and ``aion_torch``).
"""

import copy

import pytest
import torch

import aion_pytorch
from aion_conformance.frameworks.torch import original

orig = original.load()
pytestmark = pytest.mark.skipif(orig is None, reason=original.MISSING)


@pytest.mark.parametrize("ema_gamma", [0.99, 0.5, 1.0])
@pytest.mark.parametrize("use_xnorm", [True, False])
@pytest.mark.parametrize("path", ["ops", "cpp"])
def test_multi_step_training_matches_original(ema_gamma, use_xnorm, path):
    from aion_pytorch import kernels

    if path == "cpp" and kernels.load() is None:
        pytest.skip("the C++ kernel cannot be built here")
    before = kernels.kernels_mode()
    kernels.set_kernels(path)
    try:
        worst = original.training_parity(steps=8, ema_gamma=ema_gamma, use_xnorm=use_xnorm)
    finally:
        kernels.set_kernels(before)
    assert worst.pop("failures") == []
    # float32 rounding: a few ulps of the largest value. The C++ kernel sums in float64 where
    # torch (and so the original) sums in float32: measured against a float64 run it is
    # within 2.2e-7 where the op path is within 1.7e-6, so here it differs from the original
    # by the original's rounding (up to 1.7e-6 seen).
    assert max(rel for _, rel in worst.values()) < (1e-6 if path == "ops" else 3e-6), worst


def test_loads_original_state_dict_and_continues_on_same_trajectory():
    torch.manual_seed(0)
    old_block = orig.AionBlock(torch.nn.Linear(16, 16), 16, alpha0=0.2, beta=0.4)
    opt = torch.optim.SGD(old_block.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        old_block(torch.randn(4, 16)).square().sum().backward()
        opt.step()
    sd = old_block.state_dict()
    assert "aion.alpha_cached" in sd
    new_block = aion_pytorch.AionBlock(torch.nn.Linear(16, 16), 16)
    new_block.load_state_dict(copy.deepcopy(sd))  # strict: every key accounted for
    assert int(new_block.aion.step_count) == 3 and int(new_block.aion.nonfinite_count) == 0
    x = torch.randn(4, 16)
    for _ in range(3):
        outs = []
        for m in (old_block, new_block):
            m.zero_grad()
            out = m(x)
            out.square().sum().backward()
            with torch.no_grad():
                for p in m.parameters():
                    p -= 0.05 * p.grad
            outs.append(out)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new_block.aion.ratio_ema, old_block.aion.ratio_ema)
