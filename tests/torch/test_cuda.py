"""CUDA only (skipped without a GPU): a training step captured in a CUDA graph and replayed.

Capture fails on any host-device sync, so this is the GPU form of the meta-device check in
test_residual.py; replays must advance the state exactly as eager steps do.
"""

import pytest
import torch

from aion_pytorch import AionBlock

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(*[AionBlock(torch.nn.Linear(64, 64), 64) for _ in range(3)]).cuda()


def _step(model, opt, x):
    opt.zero_grad(set_to_none=False)
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    return loss


def test_training_step_captures_in_a_cuda_graph_and_replays_like_eager():
    x = torch.randn(8, 16, 64, device="cuda")
    graphed, eager = _model(), _model()
    opt_g = torch.optim.SGD(graphed.parameters(), lr=0.05)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(3):
            _step(graphed, opt_g, x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # raises on a host sync inside the step
        _step(graphed, opt_g, x)
    for _ in range(4):
        graph.replay()
    for _ in range(3 + 4):
        _step(eager, opt_e, x)
    torch.cuda.synchronize()
    assert int(graphed[0].aion.step_count) == 7
    for (name, got), want in zip(graphed.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
