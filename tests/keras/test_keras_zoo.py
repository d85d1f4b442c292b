"""AionScale (``alpha * y``, the residual added by the model) in model recipes, on the current backend.

The scale-only layer against AionResidual (same outputs, gradients and state), a pre-LN
transformer block and a channels-last CNN built with it. Runs on the process's Keras backend
(``KERAS_BACKEND``; nox runs it on each).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from aion_keras import AionResidual, AionScale

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BACKEND = keras.backend.backend()
# As in test_keras_training.py: jit_compile=True under PyTorch is torch.compile (minutes on CPU).
JIT = BACKEND != "torch"
STATE = ("ratio_ema", "step_count", "nonfinite_count")
GRADS = ("y", "x_norm", "alpha0", "beta")


def state_of(layer) -> dict:
    return {n: ops.convert_to_numpy(getattr(layer, n)).item() for n in STATE}


def as_np(t) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(t))


def combined(call, layer, x, y, x_norm, training):
    """``x + alpha * y`` from either layer: AionScale's output plus ``x``, or AionResidual's."""
    if isinstance(layer, AionScale):
        scaled, stats = call(y, x_norm, training=training, return_stats=True)
        return x + scaled, stats
    return call(x, y, x_norm, training=training, return_stats=True)


def forward_and_grads(layer, x, y, x_norm, weight, training, jax_steps):
    """Output, stats and the gradients of ``sum(out * weight)`` for y, x_norm, alpha0, beta.

    The state is assigned as a plain call does (JAX differentiates ``stateless_call``, jitted
    once per layer and mode and kept in ``jax_steps``, then the new state is written back).
    """
    if BACKEND == "torch":
        import torch

        x, y, x_norm, weight = (torch.tensor(a, requires_grad=True) for a in (x, y, x_norm, weight))
        out, stats = combined(layer, layer, x, y, x_norm, training)
        wrt = [y, x_norm, layer.alpha0.value, layer.beta.value]
        # x_norm is unused by eval calls: no gradient (None), as TensorFlow's tape says too
        grads = torch.autograd.grad((out * weight).sum(), wrt, allow_unused=True)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        x, y, x_norm, weight = (tf.constant(a) for a in (x, y, x_norm, weight))
        with tf.GradientTape() as tape:
            tape.watch([y, x_norm])
            out, stats = combined(layer, layer, x, y, x_norm, training)
            loss = tf.reduce_sum(out * weight)
        wrt = [y, x_norm, layer.alpha0.value, layer.beta.value]
        grads = tape.gradient(loss, wrt)
    else:
        import jax

        key = (id(layer), training)
        if key not in jax_steps:  # (jax.lax.cond outside jit compiles on every call)
            def loss(trainable, non_trainable, x, y, x_norm, weight):
                new = []

                def call(*args, **kwargs):
                    result, new_non_trainable = layer.stateless_call(trainable, non_trainable, *args, **kwargs)
                    new.extend(new_non_trainable)
                    return result

                out, stats = combined(call, layer, x, y, x_norm, training)
                return (out * weight).sum(), (out, stats, new)

            jax_steps[key] = jax.jit(jax.value_and_grad(loss, argnums=(0, 3, 4), has_aux=True))
        (_, (out, stats, new)), (g_params, g_y, g_xn) = jax_steps[key](
            [v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables],
            x, y, x_norm, weight)
        for variable, value in zip(layer.non_trainable_variables, new, strict=True):
            variable.assign(value)
        wrt, grads = [y, x_norm, *layer.trainable_variables], (g_y, g_xn, *g_params)
    grads = [np.zeros(ops.shape(w), "float32") if g is None else as_np(g) for g, w in zip(grads, wrt, strict=True)]
    return as_np(out), {k: as_np(v) for k, v in stats.items()}, dict(zip(GRADS, grads, strict=True))


@pytest.mark.parametrize("k_update", [1, 2])
def test_scale_equals_residual_minus_x(k_update):
    """3 training calls and an eval call: ``x + AionScale(y, x_norm)`` against
    ``AionResidual(x, y, x_norm)``: outputs, stats and gradients (y, x_norm, alpha0, beta) within
    float32 rounding, the state exactly equal, after every call."""
    rng = np.random.default_rng(k_update)
    config = dict(alpha0=0.2, beta=0.3, ema_gamma=0.9, k_update=k_update)
    scale, residual = AionScale(**config), AionResidual(**config)
    assert [v.name for v in scale.weights] == [v.name for v in residual.weights]
    deviations, jax_steps = [], {}
    for training in (True, True, True, False):
        x, y, x_norm, weight = (rng.standard_normal((3, 5, 8)).astype("float32") * s for s in (1.0, 2.5, 1.0, 1.0))
        update = training and state_of(scale)["step_count"] % k_update == 0  # the ratio is measured
        got, got_stats, got_grads = forward_and_grads(scale, x, y, x_norm, weight, training, jax_steps)
        want, want_stats, want_grads = forward_and_grads(residual, x, y, x_norm, weight, training, jax_steps)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        for k in want_stats:
            np.testing.assert_allclose(got_stats[k], want_stats[k], rtol=1e-6)
        for k in GRADS:
            np.testing.assert_allclose(got_grads[k], want_grads[k], rtol=1e-6, atol=1e-6, err_msg=k)
        assert state_of(scale) == state_of(residual)
        deviations.append(max(np.abs(got - want).max(), *(np.abs(got_grads[k] - want_grads[k]).max() for k in GRADS)))
        # every gradient takes part; x_norm's (through the ratio) on update steps only
        assert all(np.abs(got_grads[k]).max() > 0 for k in GRADS if k != "x_norm")
        assert (np.abs(got_grads["x_norm"]).max() > 0) == update
    print(f"{BACKEND} k_update={k_update}: max |scale + x - residual| over outputs and grads {max(deviations):.3g}")
    assert state_of(scale)["step_count"] == 3 and state_of(scale)["ratio_ema"] != 1.0


def test_scale_output_spec_and_required_x_norm():
    y = keras.Input((5, 8))
    assert AionScale()(y, keras.Input((5, 8))).shape == (None, 5, 8)
    ones = np.ones((2, 8), "float32")
    with pytest.raises(ValueError, match="[Ss]hape"):
        AionScale()(ones, np.ones((2, 4), "float32"), training=True)
    with pytest.raises(TypeError, match="x_norm"):
        AionScale()(ones, training=True)
    layer = AionScale()
    with pytest.raises(TypeError, match="x_norm is required"):
        layer(ones, None, training=True)
    assert state_of(layer)["step_count"] == 0


# -- a pre-LN transformer block with AionScale on both residuals ------------------------------

D, HEADS, SEQ, SAMPLES, BATCH = 16, 2, 8, 24, 8
STEPS_PER_EPOCH = SAMPLES // BATCH


def seq_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((SAMPLES, SEQ, D)).astype("float32")
    return x, np.tanh(x[:, ::-1] @ rng.standard_normal((D, D)).astype("float32") / 4.0)


def transformer(residual: str):
    """``x = x + AionScale()(branch(norm(x)), norm(x))`` twice (attention, MLP); or the same with
    ``AionResidual()(x, branch(norm(x)), norm(x))``."""

    def add(x, branch, x_norm):
        if residual == "scale":
            return x + AionScale(beta=0.3)(branch, x_norm)
        return AionResidual(beta=0.3)(x, branch, x_norm)

    inputs = keras.Input((SEQ, D))
    x = keras.layers.Dense(D)(inputs)
    x_norm = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    x = add(x, keras.layers.MultiHeadAttention(HEADS, D // HEADS)(x_norm, x_norm), x_norm)
    x_norm = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    mlp = keras.layers.Dense(D)(keras.layers.Dense(2 * D, activation="gelu")(x_norm))
    x = add(x, mlp, x_norm)
    return keras.Model(inputs, keras.layers.Dense(D)(keras.layers.LayerNormalization(epsilon=1e-5)(x)))


def aion_layers(model):
    return [layer for layer in model._flatten_layers() if isinstance(layer, AionResidual)]


def fit(model, x, t, epochs):
    return model.fit(x, t, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0).history["loss"]


def train_transformer(residual, initial=None):
    """The block built with seed 0 (or given ``initial`` weights), fit 2 epochs with Adam."""
    keras.utils.set_random_seed(0)
    model = transformer(residual)
    if initial is not None:
        model.set_weights(initial)
    initial = model.get_weights()
    model.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=JIT)
    return model, fit(model, *seq_data(), 2), initial


@pytest.fixture(scope="module")
def scaled_transformer():
    """(model, losses, initial weights) of the AionScale block, trained once for the tests below."""
    return train_transformer("scale")


def test_transformer_block_fit_and_round_trip(scaled_transformer, tmp_path):
    """A pre-LN self-attention + GELU-MLP block, both residuals ``x + AionScale()(...)``, fit 2
    epochs (Adam, jit_compile as per backend): each AionScale counted every step and moved its
    ratio; .keras save/load gives AionScale layers with the same state and the same predictions."""
    model, losses, _ = scaled_transformer
    scales = aion_layers(model)
    assert [type(layer) for layer in scales] == [AionScale, AionScale]
    for layer in scales:
        state = state_of(layer)
        assert state["step_count"] == 2 * STEPS_PER_EPOCH and state["nonfinite_count"] == 0
        assert state["ratio_ema"] != 1.0
    assert np.isfinite(losses).all() and losses[-1] < losses[0]

    path = tmp_path / "transformer.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [type(layer) for layer in aion_layers(loaded)] == [AionScale, AionScale]
    for original, restored in zip(scales, aion_layers(loaded), strict=True):
        assert state_of(restored) == state_of(original) and restored.config == original.config
    x = seq_data()[0]
    want = model.predict(x, batch_size=BATCH, verbose=0)
    np.testing.assert_array_equal(loaded.predict(x, batch_size=BATCH, verbose=0), want)
    assert [state_of(layer) for layer in scales] == [state_of(layer) for layer in aion_layers(loaded)]


def test_transformer_block_trains_as_with_aion_residual(scaled_transformer):
    """The same block written with ``AionResidual()(x, branch, x_norm)``, from the same initial
    weights: the same losses, weights and AION state after 2 epochs, within float32 rounding."""
    model, losses, initial = scaled_transformer
    reference, reference_losses, _ = train_transformer("residual", initial)
    assert [type(layer) for layer in aion_layers(reference)] == [AionResidual, AionResidual]
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-6)
    deviation = 0.0
    for variable, other in zip(model.weights, reference.weights, strict=True):
        a, b = as_np(variable), as_np(other)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=variable.path)
        deviation = max(deviation, float(np.abs(a.astype(np.float64) - b).max()))
    for scale, residual in zip(aion_layers(model), aion_layers(reference), strict=True):
        assert state_of(scale) == state_of(residual)
    print(f"{BACKEND}: transformer AionScale vs AionResidual, losses {losses}, max weight deviation {deviation:.3g}")


# -- a channels-last CNN ---------------------------------------------------------------------

H = W = 6
C = 8


def cnn(layer):
    """``x + AionScale()(conv(norm(x)), norm(x))`` on an NHWC map, then pooled to 2 outputs."""
    x = keras.Input((H, W, C))
    x_norm = keras.layers.LayerNormalization(axis=-1, epsilon=1e-5)(x)  # over the channels
    branch = keras.layers.Conv2D(C, 3, padding="same", activation="relu")(x_norm)
    features = x + layer(branch, x_norm)
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(features)))


def test_cnn_channels_last_energies_over_channels():
    """NHWC (Keras' default): ``x + AionScale()(conv(norm(x)), norm(x))``, energies over the last
    axis. The ratio equals the numpy mean over all B*H*W pixels of E_c[y^2] / (E_c[x_norm^2] + eps),
    and the layer gives the same output as on the (B*H*W, C) rows; fit 1 epoch."""
    rng = np.random.default_rng(3)
    y, x_norm = (rng.standard_normal((2, H, W, C)).astype("float32") * s for s in (2.0, 1.0))
    probe, rows = AionScale(beta=0.3), AionScale(beta=0.3)
    out, stats = probe(y, x_norm, training=True, return_stats=True)
    assert tuple(out.shape) == (2, H, W, C)
    e_y = np.mean(y.astype(np.float64) ** 2, -1)
    e_x = np.mean(x_norm.astype(np.float64) ** 2, -1) + 1e-8
    np.testing.assert_allclose(float(as_np(stats["ratio"])), np.mean(e_y / e_x), rtol=1e-6)
    out_rows = rows(y.reshape(-1, C), x_norm.reshape(-1, C), training=True)
    np.testing.assert_allclose(as_np(out), as_np(out_rows).reshape(out.shape), rtol=1e-6, atol=1e-7)
    assert state_of(probe) == state_of(rows)

    keras.utils.set_random_seed(0)
    scale = AionScale(beta=0.3)
    model = cnn(scale)
    assert model.get_layer(scale.name).output.shape == (None, H, W, C)
    model.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=JIT)
    images = rng.standard_normal((SAMPLES, H, W, C)).astype("float32")
    target = rng.standard_normal((SAMPLES, 2)).astype("float32")
    losses = fit(model, images, target, 1)
    assert model.predict(images, batch_size=BATCH, verbose=0).shape == (SAMPLES, 2)
    assert np.isfinite(losses).all()
    state = state_of(scale)
    assert state["step_count"] == STEPS_PER_EPOCH and state["nonfinite_count"] == 0 and state["ratio_ema"] != 1.0


# keras-hub (a TransformerEncoder from a small config) is not tested here: keras-hub 0.32.0
# requires tensorflow-text, which requires the `tensorflow` distribution (a 572 MB wheel)
# besides the pinned `tensorflow-cpu`, both writing the same `tensorflow/` package.
