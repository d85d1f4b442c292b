"""aion_mlx in an MLX training loop: nn.value_and_grad with mlx.optimizers against a float64
numpy run, mx.compile with the model's state (MLX's BatchNorm pattern) against eager,
train()/eval(), and the running state kept out of gradients and optimizers."""

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

import aion_core as core
from aion_mlx import AionBlock, checkpoint
from mlx_reference import STATE_NAMES, aion_entries, data, flat, make_model, mse, reference_training

#: float32 against the float64 reference after 8 steps: measured within 6e-7 (relative to
#: each array's largest magnitude); the conformance suite's float32 tolerance.
RTOL32 = 1e-5


def _close(got, want, rtol):
    """Elementwise rtol, plus rtol of the largest magnitude (near-zero entries)."""
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol,
                               atol=rtol * float(np.max(np.abs(want), initial=0.0)))


def _train(model, optimizer, batches, *, compiled):
    """Losses of one step per batch: value_and_grad, then the optimizer, eager or compiled."""
    loss_and_grad = nn.value_and_grad(model, mse)

    def step(x, target):
        loss, grads = loss_and_grad(model, x, target)
        optimizer.update(model, grads)
        return loss

    if compiled:
        state = [model.state, optimizer.state]
        step = partial(mx.compile, inputs=state, outputs=state)(step)
    losses = []
    for x, target in batches:
        loss = step(mx.array(x), mx.array(target))
        mx.eval(loss, model.state, optimizer.state)
        losses.append(loss.item())
    return losses


def test_training_matches_a_float64_numpy_run():
    batches = data(1, 8)
    model = make_model(0, k_updates=(1, 3))
    want_losses, want = reference_training(model, batches, lr=0.05, momentum=0.9)
    losses = _train(model, optim.SGD(0.05, momentum=0.9), batches, compiled=False)
    _close(losses, want_losses, RTOL32)
    got = flat(model.parameters())
    assert sorted(got) == sorted(want)
    for key in want:
        _close(got[key], want[key], RTOL32)
    # The k_update=3 block measured the ratio on steps 0, 3, 6 only, the other on every step.
    assert int(got["layers.1.aion.step_count"]) == int(got["layers.0.aion.step_count"]) == 8
    assert got["layers.0.aion.ratio_ema"].dtype == np.float32 and got["layers.0.aion.step_count"].dtype == np.int32


@pytest.mark.parametrize("k_update", [1, 3])
@pytest.mark.parametrize("make_optimizer", [lambda: optim.SGD(0.05, momentum=0.9),
                                            lambda: optim.AdamW(1e-2, weight_decay=0.1)], ids=["sgd", "adamw"])
def test_compiled_training_step_equals_eager(k_update, make_optimizer):
    batches = data(2, 7)
    runs = {}
    for compiled in (False, True):
        model, optimizer = make_model(0, k_updates=(k_update, k_update)), make_optimizer()
        emas = []
        losses = []
        for batch in batches:
            losses += _train(model, optimizer, [batch], compiled=compiled)
            emas.append(model.layers[0].aion.ratio_ema.item())
        runs[compiled] = losses, flat(model.parameters()), flat(optimizer.state), emas
    (eager_losses, eager, eager_opt, eager_emas), (losses, got, got_opt, emas) = runs[False], runs[True]
    # Measured bit-identical on Linux CPU; the tolerance leaves room for a fused kernel.
    _close(losses, eager_losses, 1e-6)
    assert sorted(got) == sorted(eager) and sorted(got_opt) == sorted(eager_opt)
    for key in eager:
        _close(got[key], eager[key], 1e-6)
    for key in eager_opt:
        _close(got_opt[key], eager_opt[key], 1e-6)
    assert not any(f".aion.{name}." in key for key in got_opt for name in STATE_NAMES)
    assert emas == eager_emas
    # The schedule, chosen on the device inside the one compiled function: the ratio is
    # measured on steps 0, k, 2k, ... and held in between.
    changed = [i for i in range(len(emas)) if emas[i] != (emas[i - 1] if i else 1.0)]
    assert changed == list(range(0, len(emas), k_update))
    assert int(got["layers.0.aion.step_count"]) == len(batches)


def test_eval_mode_holds_the_state_eagerly_and_compiled():
    model = make_model(0)
    x = mx.array(data(3, 1)[0][0])
    _train(model, optim.SGD(0.05), data(4, 2), compiled=False)  # a state that is not the initial one
    before = aion_entries(model)
    model.eval()
    eager = model(x)
    compiled = mx.compile(lambda x: model(x), inputs=model.state, outputs=model.state)(x)
    mx.eval(eager, compiled, model.state)
    np.testing.assert_array_equal(np.array(compiled), np.array(eager))
    after = aion_entries(model)
    assert {k: v.tolist() for k, v in after.items()} == {k: v.tolist() for k, v in before.items()}
    # Eval uses the stored ratio: block 0's output is aion_core's eval step on numpy.
    block = model.layers[0]
    xn = block.norm(x)
    y = block.layer(xn)
    state = core.AionState(*(np.array(block.aion[name]) for name in STATE_NAMES))
    want, _ = core.eval_step(np.array(x, np.float64), np.array(y, np.float64), np.array(block.aion.alpha0),
                             np.array(block.aion.beta), state, xp=np)
    _close(block(x), want, 1e-6)

    model.train()
    step = mx.compile(lambda x: model(x), inputs=model.state, outputs=model.state)
    step(x)
    mx.eval(model.state)
    assert int(model.layers[0].aion.step_count.item()) == int(before["layers.0.aion.step_count"]) + 1
    assert model.layers[0].aion.ratio_ema.item() != before["layers.0.aion.ratio_ema"]


def test_a_compiled_function_keeps_the_mode_it_was_traced_in():
    # What docs/mlx.md tells users: compile one function per mode. MLX traces once, so
    # model.eval() after compiling a training step does not make it an eval step.
    model = make_model(0)
    x = mx.array(data(3, 1)[0][0])
    train_step = mx.compile(lambda x: model(x), inputs=model.state, outputs=model.state)
    train_step(x)
    model.eval()
    train_step(x)
    mx.eval(model.state)
    assert model.layers[0].aion.step_count.item() == 2
    model(x)  # an eager call sees the mode
    assert model.layers[0].aion.step_count.item() == 2


def _aion_keys(tree):
    return sorted(k for k, _ in tree_flatten(tree) if ".aion." in k)


def test_only_alpha0_and_beta_are_trainable_and_unfreeze_keeps_the_state_frozen():
    model = make_model(0)
    trainable = [f"layers.{i}.aion.{n}" for i in range(2) for n in ("alpha0", "beta")]
    everything = sorted(trainable + [f"layers.{i}.aion.{n}" for i in range(2) for n in STATE_NAMES])
    assert _aion_keys(model.trainable_parameters()) == trainable
    assert _aion_keys(model.parameters()) == everything
    # unfreeze() on the model, on a block, on the layer, with or without keys: the state
    # stays out (MLX's own BatchNorm statistics do not survive model.unfreeze()).
    for unfreeze in (lambda: model.unfreeze(), lambda: model.layers[0].unfreeze(),
                     lambda: model.layers[0].aion.unfreeze(), lambda: model.unfreeze(keys=["ratio_ema"]),
                     lambda: model.layers[1].aion.unfreeze(keys=list(STATE_NAMES), recurse=False)):
        model.freeze()
        assert _aion_keys(model.trainable_parameters()) == []
        unfreeze()
        assert not set(_aion_keys(model.trainable_parameters())) - set(trainable)
    model.unfreeze()
    assert _aion_keys(model.trainable_parameters()) == trainable
    # Freezing the parameters works as for any module: a fixed-scale layer.
    model.layers[0].aion.freeze(keys=["alpha0", "beta"])
    assert _aion_keys(model.trainable_parameters()) == trainable[2:]


def test_the_optimizer_never_touches_the_state():
    model = make_model(0, k_updates=(1, 1))
    model.unfreeze()  # as a fine-tuning script might
    model.layers[1].aion.freeze(keys=["alpha0", "beta"])  # a fixed-scale layer still advances its state
    optimizer = optim.AdamW(0.1, weight_decay=0.5)  # decay would shrink any array it was given
    loss_and_grad = nn.value_and_grad(model, mse)
    for x, target in data(5, 3):
        _, grads = loss_and_grad(model, mx.array(x), mx.array(target))
        assert _aion_keys(grads) == ["layers.0.aion.alpha0", "layers.0.aion.beta"]
        mx.eval(model.state)
        after_forward = aion_entries(model)
        optimizer.update(model, grads)
        mx.eval(model.state, optimizer.state)
        after_update = aion_entries(model)
        for key, value in after_forward.items():
            if key.endswith(STATE_NAMES) or key.startswith("layers.1."):
                assert after_update[key].tolist() == value.tolist(), key
            else:
                assert after_update[key].tolist() != value.tolist(), key
    assert model.layers[1].aion.step_count.item() == 3 and model.layers[1].aion.alpha0.item() == pytest.approx(0.2)
    # Its own state (AdamW's moments) exists for the trainable parameters only.
    assert sorted({k.rsplit(".", 1)[0] for k in _aion_keys(optimizer.state)}) == [
        "layers.0.aion.alpha0", "layers.0.aion.beta"]


class _Checkpointed(nn.Module):
    """A block whose activations are recomputed in the backward pass, applied ``times`` in a row."""

    def __init__(self, block, wrap=checkpoint, times=1):
        super().__init__()
        self.block, self.wrap, self.times = block, wrap, times

    def __call__(self, x):
        for _ in range(self.times):
            x = self.wrap(self.block)(x) if self.wrap else self.block(x)
        return x


def _checkpointed_run(wrap, times, compiled):
    model = make_model(0, k_updates=(1, 3))
    model.layers = [_Checkpointed(m, wrap, times) if isinstance(m, AionBlock) else m for m in model.layers]
    losses = _train(model, optim.SGD(0.05), data(7, 3), compiled=compiled)
    return losses, [m.block.aion.running_state() for m in model.layers[:-1]]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("times", [1, 2], ids=["once", "block-used-twice"])
def test_activation_checkpointing_leaves_training_unchanged(times, compiled):
    """aion_mlx.checkpoint against the same model without it (spec section 6a): the same losses
    and state; each use of a block advances its state once, in whatever order the backward
    recomputes the uses. MLX's own nn.utils.checkpoint does not (the reason for ours)."""
    losses, states = _checkpointed_run(None, times, compiled)
    checkpointed_losses, checkpointed_states = _checkpointed_run(checkpoint, times, compiled)
    for state, checkpointed in zip(states, checkpointed_states):
        assert checkpointed.step_count.item() == state.step_count.item() == 3 * times
        assert checkpointed.ratio_ema.item() == pytest.approx(state.ratio_ema.item(), rel=1e-6)
    _close(checkpointed_losses, losses, 1e-6)
    _, mlx_states = _checkpointed_run(nn.utils.checkpoint, times, compiled)
    assert [s.step_count.item() for s in mlx_states] != [s.step_count.item() for s in states]
