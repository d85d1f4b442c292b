"""``keras.distribution.DataParallel`` on 2 host devices equals one device on the full batch.

On the JAX backend only (``KERAS_BACKEND=jax``), with 2 host devices (``conftest.py`` sets
``jax_num_cpu_devices`` before JAX starts). Under jit, the core's batch mean over a sharded
batch is the global mean: no explicit all-reduce is needed, and this test checks that it is so.
"""

from __future__ import annotations

import keras
import pytest

if keras.backend.backend() != "jax":
    pytest.skip("keras.distribution.DataParallel: the JAX backend only", allow_module_level=True)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from aion_keras import AionResidual  # noqa: E402
from models import DIM, build  # noqa: E402

pytestmark = [pytest.mark.distributed,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


def test_two_host_devices():
    assert len(jax.devices("cpu")) == 2


def test_fit_matches_single_device_full_batch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, DIM)).astype("float32")
    x[16:] *= 3.0  # the two shards differ, so a per-shard ratio would differ from the mean
    t = np.tanh(x @ rng.standard_normal((DIM, DIM)).astype("float32"))
    kw = {"batch_size": 16, "epochs": 2, "shuffle": False, "verbose": 0}
    keras.utils.set_random_seed(0)
    single = build()
    initial = single.get_weights()
    loss_single = single.fit(x, t, **kw).history["loss"]

    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices("cpu"))
    with distribution.scope():
        parallel = build(initial)
        loss_parallel = parallel.fit(x, t, **kw).history["loss"]
        ratio = [layer for layer in parallel._flatten_layers() if isinstance(layer, AionResidual)]
        sharding = ratio[0].ratio_ema.value.sharding
    assert len(sharding.device_set) == 2  # the state is replicated on both devices
    np.testing.assert_allclose(loss_parallel, loss_single, rtol=1e-5)
    for a, b in zip(single.weights, parallel.weights, strict=True):
        np.testing.assert_allclose(np.asarray(b.value), np.asarray(a.value), rtol=1e-5, atol=1e-6,
                                   err_msg=a.path)


def test_sync_ratio_false_still_takes_the_global_ratio():
    """One jitted program over the global batch: there is no per-device ratio to keep, so
    ``sync_ratio=False`` gives the whole batch's ratio here (as documented), not a shard's."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, DIM)).astype("float32")
    y = np.concatenate([rng.standard_normal((4, DIM)), 4.0 * rng.standard_normal((4, DIM))]).astype("float32")

    def ratio_ema(rows, sharded=False):
        distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices("cpu"))
        with distribution.scope():
            layer = AionResidual(ema_gamma=0.5, sync_ratio=False)
            a, b = x[rows], y[rows]
            if sharded:
                layout = distribution.get_data_layout(a.shape)
                a, b = (keras.distribution.distribute_tensor(t, layout) for t in (a, b))
                assert len(a.sharding.device_set) == 2
            trainable, non_trainable = ([v.value for v in vs] for vs in
                                        (layer.trainable_variables, layer.non_trainable_variables))
            _, new_state = jax.jit(lambda a, b: layer.stateless_call(trainable, non_trainable, a, b,
                                                                     training=True))(a, b)
        assert layer.non_trainable_variables[0].name == "ratio_ema"
        return float(new_state[0])

    whole = ratio_ema(slice(0, 8))
    np.testing.assert_allclose(ratio_ema(slice(0, 8), sharded=True), whole, rtol=1e-6)
    assert abs(ratio_ema(slice(0, 4)) - whole) > 0.1 and abs(ratio_ema(slice(4, 8)) - whole) > 0.1
