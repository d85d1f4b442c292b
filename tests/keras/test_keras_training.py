"""AION layers inside Keras models on the current backend: fit, jit_compile, saving.

Runs on the process's Keras backend (``KERAS_BACKEND``; nox runs it on each).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from aion_keras import AionBlock, AionResidual

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DIM, SAMPLES, BATCH = 8, 24, 8
STEPS_PER_EPOCH = SAMPLES // BATCH
# jit_compile=True under PyTorch means torch.compile: minutes on a small CPU, so it is
# exercised in the slow run only; TensorFlow (XLA) and JAX (always jitted) run it here.
JIT = keras.backend.backend() != "torch"


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((SAMPLES, DIM)).astype("float32")
    return x, np.tanh(x @ rng.standard_normal((DIM, DIM)).astype("float32") / 3.0)


def state_of(layer) -> dict:
    return {n: ops.convert_to_numpy(getattr(layer, n)).item()
            for n in ("ratio_ema", "step_count", "nonfinite_count")}


def aion_layers(model):
    return [layer for layer in model._flatten_layers() if isinstance(layer, AionResidual)]


def block_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((DIM,)),
        AionBlock(keras.layers.Dense(DIM), DIM, beta=0.3),
        AionBlock(keras.layers.Dense(DIM, activation="tanh"), DIM, beta=0.3, k_update=2),
    ])


def fit(model, epochs, jit_compile):
    x, t = data()
    return model.fit(x, t, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0).history["loss"]


def test_functional_model_fit_jit_compile():
    inputs = keras.Input((DIM,))
    residual = AionResidual(beta=0.3)
    outputs = residual(inputs, keras.layers.Dense(DIM)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=JIT)
    alpha0_before = float(ops.convert_to_numpy(residual.alpha0))
    losses = fit(model, 2, JIT)
    state = state_of(residual)
    assert state["step_count"] == 2 * STEPS_PER_EPOCH and state["nonfinite_count"] == 0
    assert state["ratio_ema"] != 1.0 and np.isfinite(losses).all()
    assert float(ops.convert_to_numpy(residual.alpha0)) != alpha0_before  # alpha0 is trained
    model.predict(data()[0], batch_size=BATCH, verbose=0)
    model.evaluate(*data(), batch_size=BATCH, verbose=0)
    assert state_of(residual) == state  # inference never assigns


def test_sequential_blocks_fit_with_k_update():
    model = block_model()
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=JIT)
    fit(model, 2, JIT)
    every, every_other = (state_of(layer) for layer in aion_layers(model))
    assert every["step_count"] == every_other["step_count"] == 2 * STEPS_PER_EPOCH
    assert every["ratio_ema"] != every_other["ratio_ema"]  # k_update=2 skipped half the updates


def test_block_checks_dim():
    with pytest.raises(ValueError, match="dim=4"):
        AionBlock(keras.layers.Dense(4), 4)(np.ones((2, 3), "float32"))
    with pytest.raises(TypeError, match="dim"):
        AionBlock(keras.layers.Dense(4), 4.0)


def test_save_load_resumes_the_same_trajectory(tmp_path):
    """A loaded model holds the running state and trains on exactly as the original does."""
    model = block_model()
    model.compile(keras.optimizers.Adam(0.01), "mse", jit_compile=JIT)
    fit(model, 1, JIT)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for original, restored in zip(aion_layers(model), aion_layers(loaded), strict=True):
        assert state_of(restored) == state_of(original)
        assert restored.config == original.config
    # The loaded model is a separate object; its compile config came with it.
    losses_original = fit(model, 2, JIT)
    losses_loaded = fit(loaded, 2, JIT)
    np.testing.assert_allclose(losses_loaded, losses_original, rtol=1e-6)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_allclose(ops.convert_to_numpy(b), ops.convert_to_numpy(a), rtol=1e-6, atol=1e-7)
    assert state_of(aion_layers(loaded)[0])["step_count"] == 3 * STEPS_PER_EPOCH


@pytest.mark.parametrize("sync_ratio", [True, False])
def test_residual_config_round_trip(sync_ratio):
    layer = AionResidual(alpha0=0.2, beta=0.0, ema_gamma=1.0, epsilon=1e-6, k_update=4, sync_ratio=sync_ratio,
                         name="r")
    assert layer.get_config()["sync_ratio"] is sync_ratio
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is AionResidual and clone.config == layer.config and clone.name == "r"
    assert clone.config.sync_ratio is sync_ratio
    block = AionBlock(keras.layers.Dense(4), 4, k_update=2, sync_ratio=sync_ratio, name="b")
    assert block.get_config()["sync_ratio"] is sync_ratio
    clone = AionBlock.from_config(block.get_config())
    assert clone.config == block.config and clone.aion.config.sync_ratio is sync_ratio


def test_sync_ratio_must_be_a_bool():
    for bad in (1, "yes"):
        with pytest.raises(TypeError, match="^sync_ratio must be a bool"):
            AionResidual(sync_ratio=bad)
        with pytest.raises(TypeError, match="^sync_ratio must be a bool"):
            AionBlock(keras.layers.Dense(4), 4, sync_ratio=bad)
        # (Keras' from_config re-raises it as a TypeError of its own that quotes the message)
        with pytest.raises(TypeError, match="sync_ratio must be a bool, got"):
            AionResidual.from_config({**AionResidual().get_config(), "sync_ratio": bad})


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the other backends run jit_compile above")
def test_torch_compile_fit():
    model = block_model()
    model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=True)
    losses = fit(model, 1, True)
    assert np.isfinite(losses).all()
    assert all(state_of(layer)["step_count"] == STEPS_PER_EPOCH for layer in aion_layers(model))


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile: Keras on PyTorch only")
@pytest.mark.parametrize("k_update", [1, 2])
def test_torch_compile_fullgraph_matches_eager(k_update):
    # A graph break (the Keras dtype names once caused one in every layer; Keras' cond on torch
    # is a host `if`) would make fullgraph=True raise here; jit_compile=True would fall back to
    # eager for that layer silently.
    import torch

    rng = np.random.default_rng(k_update)
    eager, compiled = (AionResidual(beta=0.3, k_update=k_update) for _ in range(2))
    step = torch.compile(lambda layer, x, y: layer.call(x, y, training=True), fullgraph=True)
    for _ in range(3):
        x, y = (torch.tensor(rng.standard_normal((4, DIM)), dtype=torch.float32, requires_grad=True)
                for _ in range(2))
        outs, grads = [], []
        for layer, call in ((eager, lambda m, x, y: m.call(x, y, training=True)), (compiled, step)):
            out = call(layer, x, y)
            grads.append(torch.autograd.grad((out * out).sum(), [x, y, layer.alpha0.value]))
            outs.append(out.detach().numpy())
        np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-7)
        for g_compiled, g_eager in zip(grads[1], grads[0]):
            np.testing.assert_allclose(g_compiled.numpy(), g_eager.numpy(), rtol=1e-5, atol=1e-6)
        assert state_of(compiled) == state_of(eager)
    assert state_of(compiled)["step_count"] == 3


#: Keras' own full remat outside PyTorch, for its built-in layers too (measured with Keras 3.15):
#: on JAX every layer whose call takes ``training`` (Dropout, BatchNormalization, AION) fails,
#: ``jax.checkpoint`` making the flag a tracer; on TensorFlow every layer, ``tf.custom_gradient``
#: refusing keyword arguments outside eager execution. Flax users remat with nnx.remat.
REMAT_REFUSED = {"jax": "Keras' remat on JAX traces `training` (Dropout and BatchNormalization fail too)",
                 "tensorflow": "Keras' remat on TensorFlow refuses keyword arguments (Dense fails too)"}


@pytest.mark.skipif(keras.backend.backend() in REMAT_REFUSED,
                    reason=REMAT_REFUSED.get(keras.backend.backend(), ""))
@pytest.mark.parametrize("k_update", [1, 2])
def test_full_remat_trains_as_without(k_update):
    """keras.RematScope(mode="full") on torch (torch.utils.checkpoint, non-reentrant): the
    recomputation replays the state its forward read; every weight and state equal the plain
    model's after two epochs."""
    weights = []
    for remat in (False, True):
        keras.utils.set_random_seed(0)
        with keras.RematScope(mode="full" if remat else None):
            model = keras.Sequential([keras.Input((DIM,)),
                                      *(AionBlock(keras.layers.Dense(DIM, activation="tanh"), DIM, beta=0.3,
                                                  k_update=k_update) for _ in range(2)),
                                      keras.layers.Dense(DIM)])
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=False)
        fit(model, 2, False)
        weights.append([ops.convert_to_numpy(w) for w in model.weights])
        assert all(state_of(layer)["step_count"] == 2 * STEPS_PER_EPOCH for layer in aion_layers(model))
    for plain, remat in zip(*weights, strict=True):
        np.testing.assert_array_equal(remat, plain)
