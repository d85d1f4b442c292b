"""The torch kit (conformance/frameworks/torch/): its networks, and its eager floor, which computes what the
adapter computes (so its time is a bound)."""

import numpy as np
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
    expected = ["x + y", "empty autograd.Function", "aion-floor", "aion", "aion (op path)"]
    expected += ["aion-torch-1.0.2"] if original.load() is not None else []
    assert [r[1] for r in rows] == expected
    assert all(float(r[2]) > 0 for r in rows)
    assert rows[0][3] == "+0 |"


def test_the_kit_builds_each_stability_variant_from_the_problem_weights():
    from aion_conformance.frameworks.torch import blocks
    from aion_conformance.stability import problem

    prob = problem.make_problem(0, 2)
    models = {name: blocks.Net(problem.to_net(prob, v)) for name, v in problem.VARIANTS.items()}
    assert not any(p.requires_grad for p in models["fixed"].blocks[0].aion.parameters())
    with torch.no_grad():
        outs = {name: m(torch.from_numpy(prob["tokens"]))[0] for name, m in models.items()}
    assert not torch.equal(outs["standard"], outs["fixed"])  # the variants do differ
    # At initialisation LayerScale's gamma is the fixed scale's 0.1 on every channel.
    torch.testing.assert_close(outs["layerscale"], outs["fixed"], rtol=1e-6, atol=1e-6)
    # Read back, the network is the one built, its state advanced by the training forward above.
    read = blocks.read(models["aion-block"])
    assert np.array_equal(read.blocks[1].branch[0].w, prob["blocks"][1]["w1"])
    assert read.blocks[0].aion.state["step_count"] == 1 and read.blocks[0].aion.alpha0 == np.float32(problem.SCALE)
