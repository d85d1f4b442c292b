"""aion_mlx checkpoints: MLX's save_weights files (.npz, .safetensors) with the AION state,
aion_mlx.load_weights checking the AION entries before anything is written, a resumed run,
and the portable AION entries exchanged with numpy files."""

import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest

import aion_core
import aion_mlx
from aion_core import portable
from mlx_reference import DIM, STATE_NAMES, aion_entries, data, flat, make_model, mse

FORMATS = ["npz", "safetensors"]


def _trained(seed=0, steps=2, k_updates=(1, 3)):
    """A model whose AION entries all differ from a fresh one's (nonfinite_count included)."""
    model = make_model(seed, k_updates=k_updates)
    loss_and_grad = nn.value_and_grad(model, mse)
    optimizer = optim.SGD(0.05)
    for x, target in data(seed + 10, steps):
        _, grads = loss_and_grad(model, mx.array(x), mx.array(target))
        optimizer.update(model, grads)
    bad = np.full((4, DIM), np.nan, np.float32)
    model(mx.array(bad))  # a non-finite batch: counted, nothing else
    mx.eval(model.parameters())
    return model


def _numbers(model) -> dict:
    return {k: v.tolist() for k, v in flat(model.parameters()).items()}


def _fresh():
    return make_model(5)  # other weights than _trained's: everything must come from the file


@pytest.mark.parametrize("fmt", FORMATS)
def test_save_weights_round_trip_carries_the_state(tmp_path, fmt):
    model = _trained()
    assert model.layers[0].aion.nonfinite_count.item() == 1 and model.layers[1].aion.step_count.item() == 3
    path = tmp_path / f"model.{fmt}"
    model.save_weights(str(path))
    saved = {k: np.array(v) for k, v in mx.load(str(path)).items()}
    assert {k: (v.dtype.name, v.shape) for k, v in saved.items() if k.startswith("layers.0.aion.")} == {
        "layers.0.aion.alpha0": ("float32", ()), "layers.0.aion.beta": ("float32", ()),
        "layers.0.aion.ratio_ema": ("float32", ()), "layers.0.aion.step_count": ("int32", ()),
        "layers.0.aion.nonfinite_count": ("int32", ())}
    for load in (lambda m: aion_mlx.load_weights(m, path), lambda m: aion_mlx.load_weights(m, str(path)),
                 lambda m: m.load_weights(str(path))):
        restored = _fresh()
        assert load(restored) is restored
        assert _numbers(restored) == _numbers(model)
        assert {k: v.dtype for k, v in aion_entries(restored).items()} == {
            k: v.dtype for k, v in aion_entries(model).items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_resumed_run_follows_the_same_trajectory(tmp_path, fmt):
    batches = data(20, 6)

    def train(model, optimizer, part):
        loss_and_grad = nn.value_and_grad(model, mse)
        losses = []
        for x, target in part:
            loss, grads = loss_and_grad(model, mx.array(x), mx.array(target))
            optimizer.update(model, grads)
            mx.eval(model.parameters(), optimizer.state)
            losses.append(loss.item())
        return losses

    reference = make_model(0, k_updates=(3, 2))
    want = train(reference, optim.SGD(0.05), batches)
    model = make_model(0, k_updates=(3, 2))
    first = train(model, optim.SGD(0.05), batches[:4])
    model.save_weights(str(tmp_path / f"m.{fmt}"))
    resumed = aion_mlx.load_weights(make_model(5, k_updates=(3, 2)), tmp_path / f"m.{fmt}")
    rest = train(resumed, optim.SGD(0.05), batches[4:])
    assert first + rest == want  # the schedule restarts at step 4, from the file's counter
    assert _numbers(resumed) == _numbers(reference)


#: A fault put into the saved weights, and the error aion_mlx.load_weights raises.
_BAD = {
    "negative step_count": (lambda w: {**w, "layers.1.aion.step_count": mx.array(-1)}, ValueError,
                            "'layers.1.aion.step_count' must be an integer in [0, 2147483647], got -1"),
    "fractional step_count": (lambda w: {**w, "layers.1.aion.step_count": mx.array(2.5)}, ValueError,
                              "'layers.1.aion.step_count' must be an integer"),
    "nan ratio_ema": (lambda w: {**w, "layers.1.aion.ratio_ema": mx.array(float("nan"))}, ValueError,
                      "'layers.1.aion.ratio_ema' must be finite and >= 0 in float32, got nan"),
    "inf ratio_ema": (lambda w: {**w, "layers.1.aion.ratio_ema": mx.array(float("inf"))}, ValueError,
                      "'layers.1.aion.ratio_ema' must be finite"),
    "negative ratio_ema": (lambda w: {**w, "layers.1.aion.ratio_ema": mx.array(-2.0)}, ValueError,
                           "'layers.1.aion.ratio_ema' must be finite and >= 0"),
    "inf alpha0": (lambda w: {**w, "layers.1.aion.alpha0": mx.array(float("inf"))}, ValueError,
                   "'layers.1.aion.alpha0' must be finite"),
    "not 0-d": (lambda w: {**w, "layers.1.aion.beta": mx.ones((2,))}, ValueError,
                "'layers.1.aion.beta' must be 0-d, got shape (2,)"),
    "missing entry": (lambda w: {k: v for k, v in w.items() if k != "layers.1.aion.ratio_ema"}, KeyError,
                      "checkpoint has no entry 'layers.1.aion.ratio_ema'"),
    "missing layer": (lambda w: {k: v for k, v in w.items() if not k.startswith("layers.1.aion.")}, KeyError,
                      "checkpoint has no entry 'layers.1.aion.alpha0'"),
    # MLX's own checks, on the other weights, come after AION's and write nothing either.
    "misshapen weight": (lambda w: {**w, "layers.2.weight": mx.ones((3, 3))}, ValueError, "layers.2.weight"),
    "unknown weight": (lambda w: {**w, "layers.9.weight": mx.ones((3, 3))}, ValueError, "layers.9.weight"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", _BAD)
def test_load_weights_refuses_bad_aion_entries_and_writes_nothing(tmp_path, case, fmt):
    fault, error, message = _BAD[case]
    path = tmp_path / f"bad.{fmt}"
    weights = fault({k: v for k, v in mx.load(_saved(tmp_path, fmt)).items()})
    if fmt == "npz":
        mx.savez(str(path), **weights)
    else:
        mx.save_safetensors(str(path), weights)
    model = _trained(seed=1)
    before = _numbers(model)
    with pytest.raises(error, match=re.escape(message)):
        aion_mlx.load_weights(model, path)
    assert _numbers(model) == before


def _saved(tmp_path: Path, fmt: str) -> str:
    path = tmp_path / f"good.{fmt}"
    _trained().save_weights(str(path))
    return str(path)


def test_mlx_alone_loads_bad_entries_aion_mlx_does_not(tmp_path):
    # Why aion_mlx.load_weights exists: MLX checks names and shapes, not values.
    weights = dict(mx.load(_saved(tmp_path, "npz")))
    weights["layers.0.aion.step_count"] = mx.array(-5)
    model = _fresh()
    model.load_weights(list(weights.items()))
    assert model.layers[0].aion.step_count.item() == -5
    with pytest.raises(ValueError, match="step_count"):
        aion_mlx.load_weights(_fresh(), list(weights.items()))


def test_older_layouts_missing_nonfinite_count_and_alpha_cached(tmp_path):
    source = _trained()
    weights = dict(mx.load(_saved(tmp_path, "safetensors")))
    # aion-torch 1.0.2's layout: no nonfinite_count, a derived alpha_cached beside the entries.
    del weights["layers.0.aion.nonfinite_count"]
    weights["layers.0.aion.alpha_cached"] = mx.array(123.0)
    model = _trained(seed=1)
    assert model.layers[0].aion.nonfinite_count.item() == 1
    with pytest.raises(ValueError, match="alpha_cached"):  # MLX alone refuses both
        model.load_weights(list(weights.items()))
    aion_mlx.load_weights(model, list(weights.items()))
    assert model.layers[0].aion.nonfinite_count.item() == 0  # read as 0
    assert "alpha_cached" not in model.layers[0].aion
    want = _numbers(source)
    want["layers.0.aion.nonfinite_count"] = 0
    assert _numbers(model) == want


def test_strict_false_keeps_layers_without_entries_and_checks_the_others():
    source = _trained()
    weights = {k: v for k, v in flat(source.parameters()).items() if not k.startswith("layers.1.")}
    model = _trained(seed=1)
    before = _numbers(model)
    aion_mlx.load_weights(model, [(k, mx.array(v)) for k, v in weights.items()], strict=False)
    got = _numbers(model)
    assert {k: v for k, v in got.items() if k.startswith("layers.1.")} == {
        k: v for k, v in before.items() if k.startswith("layers.1.")}
    assert {k: v for k, v in got.items() if not k.startswith("layers.1.")} == {
        k: v.tolist() for k, v in weights.items()}
    partial = {"layers.0.aion.ratio_ema": mx.array(2.0)}  # a layer with some entries: all are needed
    with pytest.raises(KeyError, match="layers.0.aion.alpha0"):
        aion_mlx.load_weights(model, list(partial.items()), strict=False)
    assert _numbers(model) == got


def test_portable_round_trip_and_exchange_with_numpy_files(tmp_path):
    model = _trained()
    flat_entries = aion_mlx.to_portable(model)
    assert sorted(flat_entries) == sorted(f"layers.{i}.aion.{n}" for i in range(2) for n in portable.ENTRY_DTYPES)
    assert all(isinstance(v, np.ndarray) and v.shape == () and v.dtype.name == portable.ENTRY_DTYPES[k.rsplit(".")[-1]]
               for k, v in flat_entries.items())
    # MLX's own .npz holds the same AION entries, readable by numpy alone.
    model.save_weights(str(tmp_path / "model.npz"))
    from_mlx = portable.load_npz(tmp_path / "model.npz")
    assert {k: v.tolist() for k, v in from_mlx.items() if k in flat_entries} == {
        k: v.tolist() for k, v in flat_entries.items()}
    # Written by aion_core with numpy, read into another model.
    portable.save_npz(tmp_path / "aion.npz", flat_entries)
    other = _fresh()
    weights_before = {k: v for k, v in _numbers(other).items() if k not in flat_entries}
    aion_mlx.from_portable(other, portable.load_npz(tmp_path / "aion.npz"))
    got = _numbers(other)
    assert {k: got[k] for k in flat_entries} == {k: v.tolist() for k, v in flat_entries.items()}
    assert {k: v for k, v in got.items() if k not in flat_entries} == weights_before  # AION entries only
    # A portable file is also a strict=False load_weights source.
    third = _fresh()
    aion_mlx.load_weights(third, str(tmp_path / "aion.npz"), strict=False)
    assert {k: v.tolist() for k, v in aion_entries(third).items()} == {k: v.tolist() for k, v in flat_entries.items()}


def test_a_file_written_elsewhere_loads_in_any_numeric_dtype(tmp_path):
    # Another framework's file: python numbers and float64 / int64 values, one layer at the top.
    layer = aion_mlx.AionResidual()
    portable.save_npz(tmp_path / "torch.npz", {"alpha0": np.float64(0.25), "beta": 0.125, "ratio_ema": 3.5,
                                               "step_count": np.int64(9), "nonfinite_count": 2.0})
    aion_mlx.from_portable(layer, portable.load_npz(tmp_path / "torch.npz"))
    assert {n: (layer[n].item(), layer[n].dtype) for n in portable.ENTRY_DTYPES} == {
        "alpha0": (0.25, mx.float32), "beta": (0.125, mx.float32), "ratio_ema": (3.5, mx.float32),
        "step_count": (9, mx.int32), "nonfinite_count": (2, mx.int32)}
    assert aion_core.STATE_SPEC.keys() == set(STATE_NAMES)


def test_from_portable_refuses_missing_and_unknown_entries_and_writes_nothing():
    model = _trained()
    entries = aion_mlx.to_portable(model)
    target = _trained(seed=1)
    before = _numbers(target)
    with pytest.raises(KeyError, match="layers.1.aion.beta"):
        aion_mlx.from_portable(target, {k: v for k, v in entries.items() if k != "layers.1.aion.beta"})
    with pytest.raises(ValueError, match="match no AION layer"):
        aion_mlx.from_portable(target, {**entries, "layers.7.aion.beta": np.float32(1.0)})
    with pytest.raises(ValueError, match="match no AION layer"):
        aion_mlx.from_portable(target, {**entries, "layers.2.weight": np.ones((4, DIM), np.float32)})
    with pytest.raises(ValueError, match="ratio_ema"):
        aion_mlx.from_portable(target, {**entries, "layers.1.aion.ratio_ema": np.float32(-1.0)})
    assert _numbers(target) == before
