"""torch.func: functional_call with grad, jacrev, vmap (ensembles, per-sample gradients), against autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call, grad, jacrev, stack_module_state, vmap

from aion_pytorch import AionBlock

DIM = 8


def block(seed: int = 0, k_update: int = 1) -> AionBlock:
    torch.manual_seed(seed)
    return AionBlock(torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.Tanh()), dim=DIM, k_update=k_update)


def loss_of(model):
    def loss(params, buffers, x):
        return (functional_call(model, (params, buffers), (x,)) ** 2).mean()
    return loss


@pytest.mark.parametrize("k_update", [1, 2])
def test_grad_of_functional_call_equals_autograd_and_advances_the_given_state(k_update):
    """The state is functional_call's buffers: the training forward advances them once."""
    model, twin = block(k_update=k_update), block(k_update=k_update)
    params = dict(model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x = torch.randn(4, 5, DIM)
    for _ in range(3):
        grads = grad(loss_of(model))(params, buffers, x)
        twin.zero_grad()
        (twin(x) ** 2).mean().backward()
        for name, p in twin.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-6, atol=1e-8)
        for name, b in twin.named_buffers():
            torch.testing.assert_close(buffers[name], b, rtol=1e-6, atol=0)
    assert int(buffers["aion.step_count"]) == 3 and int(model.aion.step_count) == 0


def test_jacrev_of_the_input_equals_autograd():
    model, twin = block(), block()
    x = torch.randn(3, DIM)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    params = dict(model.named_parameters())
    jac = jacrev(lambda x, b: functional_call(model, (params, b), (x,)))(x, buffers)
    want = torch.autograd.functional.jacobian(twin, x)
    torch.testing.assert_close(jac, want, rtol=1e-5, atol=1e-7)
    # The state must come in as an input of the transformed function, not be captured: the
    # training forward writes it (torch.func refuses writes to captured tensors, and says so).
    with pytest.raises(RuntimeError, match="explicitly accept the mutated Tensor"):
        jacrev(lambda x: functional_call(model, (params, buffers), (x,)))(x)


def test_vmap_trains_an_ensemble_with_stacked_state():
    models = [block(seed) for seed in range(3)]
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")
    xs = torch.randn(3, 4, DIM)
    out = vmap(lambda p, b, x: functional_call(skeleton, (p, b), (x,)))(params, buffers, xs)
    for i, model in enumerate(models):
        torch.testing.assert_close(out[i], model(xs[i]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(buffers["aion.ratio_ema"][i], model.aion.ratio_ema, rtol=1e-6, atol=0)
    assert buffers["aion.step_count"].tolist() == [1, 1, 1]


def test_per_sample_gradients_in_training_mode_are_refused_with_what_to_do():
    model = block()
    params = dict(model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x = torch.randn(4, 1, DIM)
    with pytest.raises(RuntimeError, match="call model.eval\\(\\) first"):
        vmap(grad(loss_of(model)), in_dims=(None, None, 0))(params, buffers, x)
    assert torch.equal(buffers["aion.ratio_ema"], model.aion.ratio_ema)  # nothing was written
    assert int(buffers["aion.step_count"]) == 0


def test_per_sample_gradients_in_eval_mode_equal_one_example_at_a_time():
    model = block()
    model(torch.randn(8, DIM) * 3)  # a trained ratio
    model.eval()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    x = torch.randn(4, 1, DIM)
    per_sample = vmap(grad(loss_of(model)), in_dims=(None, None, 0))(params, buffers, x)
    for i in range(4):
        model.zero_grad()
        (model(x[i]) ** 2).mean().backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-5, atol=1e-8)
