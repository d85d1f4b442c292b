"""``tf.distribute.MirroredStrategy`` over 2 logical CPUs equals one device on the full batch.

Run by ``test_backends.py`` with ``KERAS_BACKEND=tensorflow``. The logical devices must
exist before TensorFlow initialises its runtime, hence the set-up at import.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import DIM, build
from aion_keras import AionResidual

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
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
