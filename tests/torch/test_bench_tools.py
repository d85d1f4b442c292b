"""The eager floor (conformance/frameworks/torch/floor.py) computes what the torch adapter computes, so its time is a bound."""

import pytest

torch = pytest.importorskip("torch")

from aion_conformance.frameworks.torch.floor import FloorResidual  # noqa: E402
from aion_pytorch import AionResidual  # noqa: E402


def test_floor_matches_the_adapter_over_training_steps():
    torch.manual_seed(0)
    floor, aion = FloorResidual(alpha0=0.2, beta=0.7), AionResidual(alpha0=0.2, beta=0.7)
    for step in range(3):
        x, y, xn, dout = (torch.randn(4, 5, 16) * s for s in (1.0, 2.0 + step, 1.0, 1.0))
        results = []
        for layer in (floor, aion):
            inputs = [t.clone().requires_grad_() for t in (x, y, xn)]
            out = layer(*inputs[:2], inputs[2]) if layer is floor else layer(*inputs[:2], x_norm=inputs[2])
            out.backward(dout)
            results.append([out.detach(), *(t.grad for t in inputs), layer.alpha0.grad.clone(),
                            layer.beta.grad.clone(), layer.ratio_ema.clone()])
            layer.alpha0.grad = layer.beta.grad = None
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-7)


def test_layer_profile_runs_every_variant(capsys):
    from aion_conformance.frameworks.torch import original
    from aion_conformance.frameworks.torch import bench_layer as layer

    assert layer.main(["--widths", "8", "--batch", "2", "--seq", "3", "--seconds", "0"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    expected = ["x + y", "empty autograd.Function", "aion-floor", "aion"]
    expected += ["aion-torch-1.0.2"] if original.load() is not None else []
    assert [r[1] for r in rows] == expected
    assert all(float(r[2]) > 0 for r in rows)
    assert rows[0][3] == "+0 |"
