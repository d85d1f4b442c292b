"""Portable checkpoints of Keras models (spec section 9): the keys torch gives the same model,
round trips through the numpy files, and loads that fail whole.

The per-entry rules for one layer run through the conformance driver's ``load_portable``
(``tests/test_conformance.py``); these are the whole-model cases.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from aion_core import portable
from aion_keras import AionBlock, AionResidual, from_portable, to_portable


class Stack(keras.Model):
    """Blocks in a list attribute, as a torch model keeps them in ``self.blocks``."""

    def __init__(self, depth=3, dim=8, k_update=1):
        super().__init__()
        self.blocks = [AionBlock(keras.layers.Dense(dim), dim, k_update=k_update) for _ in range(depth)]
        self.head = keras.layers.Dense(2)

    def call(self, x, training=None):
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(x)


def _trained(depth=3):
    model = Stack(depth)
    rng = np.random.default_rng(0)
    for _ in range(3):
        model(rng.standard_normal((4, 8)).astype("float32"), training=True)
    return model


def test_keys_are_the_attribute_paths_torch_would_give():
    flat = to_portable(_trained())
    assert sorted(flat) == sorted(f"blocks.{i}.aion.{n}" for i in range(3) for n in portable.ENTRY_DTYPES)
    assert {k: v.dtype.name for k, v in flat.items() if k.startswith("blocks.0.")} == {
        f"blocks.0.aion.{n}": d for n, d in portable.ENTRY_DTYPES.items()}


def test_functional_and_sequential_models_use_layer_names():
    x = keras.Input((4,))
    out = AionResidual(name="res0")(x, keras.layers.Dense(4)(x))
    assert sorted(to_portable(keras.Model(x, out)))[0] == "res0.alpha0"
    sequential = keras.Sequential([keras.Input((4,)), AionBlock(keras.layers.Dense(4), 4, name="b")])
    assert sorted(to_portable(sequential))[0] == "b.aion.alpha0"


def test_round_trip_through_the_numpy_file(tmp_path):
    source = _trained()
    portable.save_npz(tmp_path / "aion.npz", to_portable(source))
    target = Stack()
    target(np.zeros((1, 8), "float32"))
    from_portable(target, portable.load_npz(tmp_path / "aion.npz"))
    for a, b in zip(source.blocks, target.blocks):
        for name in portable.ENTRY_DTYPES:
            assert keras.ops.convert_to_numpy(getattr(a.aion, name).value).item() == \
                keras.ops.convert_to_numpy(getattr(b.aion, name).value).item()


@pytest.mark.parametrize("fault", ["bad entry in the last layer", "unknown entry", "missing entry"])
def test_a_failed_load_leaves_the_model_as_it_was(fault):
    model = _trained()
    before = to_portable(model)
    flat = {k: np.asarray(v) + 1 for k, v in before.items()}
    if fault == "bad entry in the last layer":
        flat["blocks.2.aion.step_count"] = np.asarray(2.5)
    elif fault == "unknown entry":
        flat["blocks.3.aion.beta"] = np.asarray(0.1, "float32")
    else:
        del flat["blocks.2.aion.beta"]
    error = {"bad entry in the last layer": ValueError, "unknown entry": ValueError, "missing entry": KeyError}
    with pytest.raises(error[fault], match="blocks."):
        from_portable(model, flat)
    after = to_portable(model)
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_an_aion_torch_1_0_2_layer_loads():
    layer = AionResidual()
    from_portable(layer, {"alpha0": 0.3, "beta": 0.1, "ratio_ema": 2.0, "step_count": 5, "alpha_cached": 0.25})
    state = {name: keras.ops.convert_to_numpy(getattr(layer, name).value).item() for name in portable.ENTRY_DTYPES}
    assert state == {"alpha0": pytest.approx(0.3), "beta": pytest.approx(0.1), "ratio_ema": 2.0, "step_count": 5,
                     "nonfinite_count": 0}
