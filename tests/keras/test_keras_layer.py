"""AionResidual on the current Keras backend: one smoke step against the float64 reference, then
what only Keras has (training=None, weights, stateless_call, dtype policies, weight files).
Values, gradients, the state rules and the error classes are the conformance vectors'.

Runs on the process's Keras backend (``KERAS_BACKEND``; nox runs it on each).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from aion_conformance.spec.reference import reference_call
from aion_conformance.spec.tolerance import RTOL, compare
from aion_keras import AionResidual

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

STATE = ("ratio_ema", "step_count", "nonfinite_count")


def state_of(layer) -> dict:
    return {n: ops.convert_to_numpy(getattr(layer, n)).item() for n in STATE}


def as_np(t) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(t))


def test_smoke_one_sgd_step_equals_the_float64_reference():
    """The layer in a functional model, one ``train_on_batch`` step (loss ``mean(out**2)``,
    SGD): the loss, alpha0 and beta after the step and the new state against the float64
    reference, then an eval call with them (the vectors check the rest)."""
    rng = np.random.default_rng(0)
    x, y, xn = (rng.standard_normal((3, 8)).astype("float32") * s for s in (1.0, 2.5, 1.0))
    lr = 0.5
    inputs = [keras.Input((8,)) for _ in range(3)]
    layer = AionResidual(alpha0=0.2, beta=0.3, ema_gamma=0.9)
    net = keras.Model(inputs, layer(inputs[0], inputs[1], x_norm=inputs[2]))
    net.compile(keras.optimizers.SGD(lr), "mse")
    a0, b = (float(as_np(v)) for v in (layer.alpha0, layer.beta))
    fresh = state_of(layer)
    f64 = [a.astype(np.float64) for a in (x, y, xn)]
    out, _ = reference_call(layer.config, a0, b, fresh, "train", *f64)
    want, want_state = reference_call(layer.config, a0, b, fresh, "train", *f64, cotangent=2 * out["out"] / x.size)

    loss = net.train_on_batch([x, y, xn], np.zeros_like(x))
    got = {"loss": loss, "alpha0": layer.alpha0, "beta": layer.beta, "state.ratio_ema": layer.ratio_ema}
    expected = {"loss": np.mean(out["out"] ** 2), "alpha0": a0 - lr * want["grads"]["alpha0"],
                "beta": b - lr * want["grads"]["beta"], "state.ratio_ema": want_state["ratio_ema"]}
    for name, value in got.items():
        ok, _, _, why = compare(as_np(value), expected[name], RTOL["float32"])
        assert ok, (name, why)
    assert state_of(layer)["step_count"] == want_state["step_count"] == 1
    assert state_of(layer)["nonfinite_count"] == want_state["nonfinite_count"]

    trained = (expected["alpha0"], expected["beta"])
    want_eval, _ = reference_call(layer.config, *trained, want_state, "eval", *f64)
    ok, _, _, why = compare(as_np(layer(x, y, x_norm=xn)), want_eval["out"], RTOL["float32"])
    assert ok, why


def test_state_assigned_only_in_training():
    layer = AionResidual()
    x, y = np.ones((2, 4), "float32"), np.full((2, 4), 3.0, "float32")
    fresh = state_of(layer)
    layer(x, y)  # training=None outside fit: an eval forward
    layer(x, y, training=False)
    assert state_of(layer) == fresh
    layer(x, y, training=True)
    trained = state_of(layer)
    assert trained["step_count"] == 1 and trained["ratio_ema"] == pytest.approx(0.99 + 0.01 * 9.0)
    layer(x, y, training=False)
    assert state_of(layer) == trained


def test_weights_are_float32_and_int32():
    layer = AionResidual()
    dtypes = {v.name: keras.backend.standardize_dtype(v.dtype) for v in layer.weights}
    assert dtypes == {"alpha0": "float32", "beta": "float32", "ratio_ema": "float32",
                      "step_count": "int32", "nonfinite_count": "int32"}
    assert [v.name for v in layer.trainable_weights] == ["alpha0", "beta"]


def test_stateless_call_returns_updated_state():
    """State comes back as new non-trainable values; the layer's own variables stay put."""
    layer = AionResidual()
    # stateless_call runs call() directly, without __call__'s conversion of numpy inputs.
    x, y = ops.ones((2, 4), "float32"), ops.full((2, 4), 2.0, "float32")
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    call = layer.stateless_call
    if keras.backend.backend() == "jax":
        import jax

        call = jax.jit(layer.stateless_call, static_argnames="training")
    out, new_non_trainable = call(trainable, non_trainable, x, y, training=True)
    new = dict(zip((v.name for v in layer.non_trainable_variables), map(as_np, new_non_trainable)))
    assert new["ratio_ema"] == pytest.approx(0.99 + 0.01 * 4.0)
    assert new["step_count"] == 1 and new["nonfinite_count"] == 0
    assert state_of(layer) == {"ratio_ema": 1.0, "step_count": 0, "nonfinite_count": 0}
    np.testing.assert_allclose(as_np(out), 1.0 + 2.0 * 0.1 / (1.0 + 0.05 * new["ratio_ema"]), rtol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_energies_do_not_overflow(policy):
    """RMS 300 inputs: x*x overflows float16 (max 65504), but the energies are float32."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = AionResidual()
        rng = np.random.default_rng(1)
        x = rng.standard_normal((4, 64)).astype("float32") * 300.0
        y = rng.standard_normal((4, 64)).astype("float32") * 300.0
        out, stats = layer(x, y, training=True, return_stats=True)
        half = policy.split("_")[1]
        assert keras.backend.standardize_dtype(out.dtype) == half
        assert {keras.backend.standardize_dtype(v.dtype) for v in layer.weights} == {"float32", "int32"}
        assert keras.backend.standardize_dtype(stats["ratio"].dtype) == "float32"
        ratio = float(as_np(stats["ratio"]))
        want = np.mean(np.mean(y.astype(np.float64) ** 2, -1) / np.mean(x.astype(np.float64) ** 2, -1))
        assert ratio == pytest.approx(want, rel=2e-2)  # inputs rounded to half precision
        assert np.isfinite(float(as_np(stats["alpha"]))) and np.isfinite(as_np(out).astype("float32")).all()
        assert np.isfinite(state_of(layer)["ratio_ema"])
    finally:
        keras.config.set_dtype_policy(previous)


class _Net(keras.Model):
    def __init__(self):
        super().__init__()
        self.aion = AionResidual()

    def call(self, x, training=None):
        return self.aion(x, 2 * x, training=training)


@pytest.mark.parametrize("index, value", [(2, np.nan), (3, 3.7), (4, -1.0), (0, np.inf)])
def test_a_weight_file_value_the_cast_would_change_is_refused(index, value, tmp_path):
    """Spec section 9 through Keras' own loading: nothing is written when one entry is bad."""
    net = _Net()
    net(np.ones((2, 4), np.float32), training=True)
    path = tmp_path / "aion.weights.h5"
    net.save_weights(path)
    before = state_of(net.aion)
    store = {str(i): np.asarray(v) for i, v in enumerate(net.aion.get_weights())}
    store[str(index)] = np.asarray(value)
    with pytest.raises(ValueError, match=["alpha0", "beta", "ratio_ema", "step_count", "nonfinite_count"][index]):
        net.aion.load_own_variables(store)
    assert state_of(net.aion) == before
    fresh = _Net()
    fresh(np.ones((2, 4), np.float32))
    fresh.load_weights(path)  # a good file still loads
    assert state_of(fresh.aion) == before
