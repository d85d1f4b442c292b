"""``tf.distribute.MirroredStrategy`` over 2 logical CPUs equals one device on the full batch.

On the TensorFlow backend only (``KERAS_BACKEND=tensorflow``). The logical devices must exist
before TensorFlow initialises its runtime: ``conftest.py`` makes them, before any test module
is imported.
"""

from __future__ import annotations

import keras
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("tf.distribute.MirroredStrategy: the TensorFlow backend only", allow_module_level=True)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from aion_keras import AionResidual  # noqa: E402
from models import DIM, build  # noqa: E402

pytestmark = [pytest.mark.distributed,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

DEVICES = [d.name for d in tf.config.list_logical_devices("CPU")]


def state_of(layer):
    return {n: getattr(layer, n).numpy().item() for n in ("ratio_ema", "step_count", "nonfinite_count")}


def test_two_replicas():
    assert len(DEVICES) == 2


def test_replica_ratio_is_the_full_batch_mean():
    """Each replica sees half the batch; the stored ratio is that of the whole batch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, DIM)).astype("float32")
    # The halves differ strongly, so a replica-local ratio would be far from the mean.
    y = np.concatenate([rng.standard_normal((4, DIM)), 4.0 * rng.standard_normal((4, DIM))]).astype("float32")
    single = AionResidual(ema_gamma=0.5)
    single(x, y, training=True)

    strategy = tf.distribute.MirroredStrategy(DEVICES)
    with strategy.scope():
        mirrored = AionResidual(ema_gamma=0.5)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    strategy.run(tf.function(lambda a, b: mirrored(a, b, training=True)), args=batch)
    for replica_value in strategy.experimental_local_results(mirrored.ratio_ema.value):
        np.testing.assert_allclose(replica_value.numpy(), state_of(single)["ratio_ema"], rtol=1e-6)
    assert state_of(mirrored)["step_count"] == 1


def test_fit_matches_single_device_full_batch():
    """Forward (ratio), gradients through the ratio and state all match a single device."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, DIM)).astype("float32")
    x[16:] *= 3.0
    t = np.tanh(x @ rng.standard_normal((DIM, DIM)).astype("float32"))
    keras.utils.set_random_seed(0)
    single = build()
    initial = single.get_weights()
    with tf.distribute.MirroredStrategy(DEVICES).scope():
        mirrored = build(initial)
    kw = {"batch_size": 16, "epochs": 2, "shuffle": False, "verbose": 0}
    loss_single = single.fit(x, t, **kw).history["loss"]
    loss_mirrored = mirrored.fit(x, t, **kw).history["loss"]
    np.testing.assert_allclose(loss_mirrored, loss_single, rtol=1e-5)
    for a, b in zip(single.weights, mirrored.weights, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert int(mirrored.weights[-1].numpy()) == 0  # nonfinite_count of the last block


def _one_step(layer, x, y, cot):
    """Training forward and gradients of ``sum(out * cot)``: (out, ratio, d alpha0, d beta, dx, dy)."""
    with tf.GradientTape() as tape:
        tape.watch([x, y])
        out, stats = layer(x, y, training=True, return_stats=True)
        loss = tf.reduce_sum(out * cot)
    return (out, stats["ratio"], *tape.gradient(loss, [layer.alpha0, layer.beta, x, y]))


@pytest.mark.parametrize("k_update", [1, 2])
@pytest.mark.parametrize("sync_ratio", [True, False])
def test_sync_ratio_on_two_replicas(monkeypatch, sync_ratio, k_update):
    """True: the whole batch's ratio (one all-reduce forward, one backward). False: each replica
    is one device holding its half alone, with no all-reduce; the state kept is the first replica's."""
    calls = []
    all_reduce = tf.distribute.ReplicaContext.all_reduce

    def counting(self, *args, **kwargs):
        calls.append(args[0])
        return all_reduce(self, *args, **kwargs)

    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counting)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, DIM)).astype("float32")
    y = np.concatenate([rng.standard_normal((4, DIM)), 4.0 * rng.standard_normal((4, DIM))]).astype("float32")
    cot = rng.standard_normal((8, DIM)).astype("float32")
    kw = {"ema_gamma": 0.5, "beta": 0.5, "k_update": k_update, "sync_ratio": sync_ratio}

    strategy = tf.distribute.MirroredStrategy(DEVICES)
    with strategy.scope():
        mirrored = AionResidual(**kw)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, cot)).batch(8)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    results = strategy.run(tf.function(lambda a, b, c: _one_step(mirrored, a, b, c)), args=batch)
    replicas = [[t.numpy() for t in r] for r in zip(*(strategy.experimental_local_results(v) for v in results))]
    stored = [v.numpy() for v in strategy.experimental_local_results(mirrored.ratio_ema.value)]
    # Each replica traces the step: with sync_ratio one all-reduce forward, one backward, per replica.
    assert calls == ([tf.distribute.ReduceOp.MEAN] * 2 * 2 if sync_ratio else [])

    def single(rows):
        layer = AionResidual(**kw)
        got = [t.numpy() for t in _one_step(layer, *(tf.constant(a[rows]) for a in (x, y, cot)))]
        return got, state_of(layer)["ratio_ema"]

    close = {"rtol": 1e-5, "atol": 1e-6}
    halves = [slice(0, 4), slice(4, 8)]
    if sync_ratio:  # one device, whole batch: rows split, parameter gradients summed over replicas
        (out, ratio, d_alpha0, d_beta, dx, dy), ratio_ema = single(slice(0, 8))
        for rows, got in zip(halves, replicas):
            for g, w in zip((got[0], got[1], got[4], got[5]), (out[rows], ratio, dx[rows], dy[rows])):
                np.testing.assert_allclose(g, w, **close)
        np.testing.assert_allclose(replicas[0][2] + replicas[1][2], d_alpha0, **close)
        np.testing.assert_allclose(replicas[0][3] + replicas[1][3], d_beta, **close)
        np.testing.assert_allclose(stored, [ratio_ema] * 2, rtol=1e-6)
    else:  # each replica alone on its half
        wants = [single(rows) for rows in halves]
        for got, (want, _) in zip(replicas, wants):
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, **close)
        assert abs(float(replicas[0][1] - replicas[1][1])) > 0.1  # the two halves' ratios differ
        np.testing.assert_allclose(stored, [wants[0][1]] * 2, rtol=1e-6)  # the first replica's state
    assert state_of(mirrored)["step_count"] == 1
