"""aion_mlx layers: semantics against aion_core on numpy, 16-bit inputs and models, non-finite
batches, and what bad inputs and hyper-parameters raise (with the state left as it was)."""

import re

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

import aion_core as core
from aion_conformance.spec.tolerance import RTOL
from aion_core import adapter
from aion_mlx import AionBlock, AionResidual, AionScale
from mlx_reference import STATE_NAMES, aion_entries, data, make_model, mse

RNG = np.random.default_rng(11)


def _f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _state(layer) -> core.AionState:
    return core.AionState(*(np.array(layer[name]) for name in STATE_NAMES))


def _entries(module) -> dict:
    """Every AION entry of ``module`` as Python numbers (to compare before and after a call)."""
    return {k: v.tolist() for k, v in aion_entries(module).items()}


def _close(got, want, rtol=1e-6):
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol,
                               atol=rtol * float(np.max(np.abs(want))))


@pytest.mark.parametrize("k_update", [1, 2])
def test_training_and_eval_match_aion_core(k_update):
    layer = AionResidual(alpha0=0.2, beta=0.5, ema_gamma=0.7, k_update=k_update)
    state = _state(layer)
    for _ in range(4):
        x, y, xn = _f32(3, 5, 8), _f32(3, 5, 8, scale=2.0), _f32(3, 5, 8)
        update = bool(core.is_update_step(int(state.step_count), k_update))
        want, state, want_stats = core.train_step(x.astype(np.float64), y.astype(np.float64), xn.astype(np.float64),
                                                  np.float64(0.2), np.float64(0.5), state, layer.config, xp=np,
                                                  update=update)
        out, stats = layer(mx.array(x), mx.array(y), mx.array(xn), return_stats=True)
        _close(out, want)
        assert sorted(stats) == ["alpha", "ratio", "ratio_ema"]
        for key in stats:
            _close(stats[key], want_stats[key])
        _close(layer.ratio_ema, state.ratio_ema)
        assert layer.step_count.item() == int(state.step_count)
    layer.eval()
    before = _entries(layer)
    x, y = _f32(4, 8), _f32(4, 8)
    want, _ = core.eval_step(x.astype(np.float64), y.astype(np.float64), np.float64(0.2), np.float64(0.5),
                             _state(layer), xp=np)
    _close(layer(mx.array(x), mx.array(y)), want)
    assert _entries(layer) == before


def test_scale_is_the_residual_without_x():
    scale, residual = AionScale(beta=0.5), AionResidual(beta=0.5)
    x, y, xn = _f32(4, 8), _f32(4, 8, scale=3.0), _f32(4, 8)
    out = scale(mx.array(y), mx.array(xn))
    full = residual(mx.array(x), mx.array(y), mx.array(xn))
    _close(out, np.array(full) - x)
    assert scale.ratio_ema.item() == residual.ratio_ema.item() and scale.step_count.item() == 1


# ---- 16-bit ---------------------------------------------------------------------------------

#: A 16-bit input rounds each value by at most 2**-11 (float16) or 2**-8 (bfloat16), relative;
#: the averaged ratio moves by far less (measured 3.2e-5 and 2.9e-4 after 3 steps).
INPUT_ROUNDING = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_inputs_keep_their_dtype_and_float32_energies(dtype):
    low = getattr(mx, dtype)
    x, y, xn = _f32(16, 64), _f32(16, 64, scale=2.0), _f32(16, 64)

    def run(cast):
        layer = AionResidual(beta=0.5, ema_gamma=0.5)
        for i in range(3):
            out, stats = layer(cast(x * (i + 1)), cast(y), cast(xn), return_stats=True)
        return layer, out, stats

    layer, out, stats = run(lambda a: mx.array(a).astype(low))
    assert out.dtype == low
    assert {k: v.dtype for k, v in stats.items()} == dict.fromkeys(stats, mx.float32)
    assert {name: layer[name].dtype for name in STATE_NAMES} == {
        "ratio_ema": mx.float32, "step_count": mx.int32, "nonfinite_count": mx.int32}
    # The same 16-bit values in float32 give the same ratio: the energies are float32.
    rounded, _, rounded_stats = run(lambda a: mx.array(a).astype(low).astype(mx.float32))
    _close(layer.ratio_ema, rounded.ratio_ema, 1e-6)
    _close(stats["alpha"], rounded_stats["alpha"], 1e-6)
    # And the float32 run on the unrounded inputs, within the inputs' rounding.
    exact, _, exact_stats = run(mx.array)
    _close(layer.ratio_ema, exact.ratio_ema, INPUT_ROUNDING[dtype])
    _close(stats["alpha"], exact_stats["alpha"], INPUT_ROUNDING[dtype])


def test_float16_inputs_whose_squares_overflow_float16_give_a_finite_ratio():
    x = mx.array(_f32(8, 64, scale=300.0)).astype(mx.float16)  # x * x reaches 9e4 > 65504
    assert not mx.isfinite(x * x).all().item()
    layer = AionResidual(beta=0.5)
    out, stats = layer(x, 2 * x, return_stats=True)
    assert stats["ratio"].item() == pytest.approx(4.0, rel=1e-6)
    assert layer.nonfinite_count.item() == 0 and layer.ratio_ema.item() == pytest.approx(1.03, rel=1e-6)
    assert out.dtype == mx.float16 and mx.isfinite(out).all().item()
    layer = AionResidual(beta=0.5)
    grads = nn.value_and_grad(layer, lambda a, b: (layer(a, b).astype(mx.float32) ** 2).mean())(x, 2 * x)[1]
    assert all(np.isfinite(np.array(g)) for g in grads.values())


def _aion_dtypes(model):
    """The mlx dtype of every AION entry (mlx's own: numpy would show a bfloat16 as float32)."""
    return {k: v.dtype for k, v in tree_flatten(model.parameters()) if ".aion." in k}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_model_trains_with_float32_aion_entries(dtype):
    low = getattr(mx, dtype)
    batches = data(6, 4)
    runs = {}
    for name, cast in (("float32", mx.float32), (dtype, low)):
        model = make_model(0)
        model.set_dtype(cast)
        entry_dtypes = _aion_dtypes(model)
        assert set(entry_dtypes.values()) == {mx.float32, mx.int32}, entry_dtypes
        assert model.layers[0].layer.layers[0].weight.dtype == cast
        optimizer = optim.SGD(0.05, momentum=0.9)
        loss_and_grad = nn.value_and_grad(model, mse)
        losses = []
        for x, target in batches:
            loss, grads = loss_and_grad(model, mx.array(x).astype(cast), mx.array(target).astype(cast))
            assert loss.dtype == cast and grads["layers"][0]["aion"]["alpha0"].dtype == mx.float32
            optimizer.update(model, grads)
            mx.eval(model.state, optimizer.state)
            losses.append(loss.item())
        assert model(mx.array(batches[0][0]).astype(cast)).dtype == cast
        assert _aion_dtypes(model) == entry_dtypes
        runs[name] = losses, aion_entries(model)
    # Measured after 4 steps (relative): bfloat16 losses 4.8e-3, alpha0 2.2e-3, ratio_ema
    # 8.1e-4; float16 4.8e-4, 3.4e-4, 6.9e-5. The conformance suite's tolerances:
    (losses, entries), (ref_losses, ref) = runs[dtype], runs["float32"]
    _close(losses, ref_losses, RTOL[dtype])
    for key, value in ref.items():
        if key.endswith(("alpha0", "beta", "ratio_ema")):
            _close(entries[key], value, RTOL[dtype])
        else:
            assert entries[key] == value, key


def test_loaded_or_updated_entries_keep_their_dtypes():
    layer = AionResidual()
    layer.update({"alpha0": mx.array(0.25, mx.bfloat16), "ratio_ema": mx.array(2.5, mx.float16),
                  "step_count": mx.array(7.0)})
    assert (layer.alpha0.dtype, layer.ratio_ema.dtype, layer.step_count.dtype) == (mx.float32, mx.float32, mx.int32)
    assert (layer.alpha0.item(), layer.ratio_ema.item(), layer.step_count.item()) == (0.25, 2.5, 7)


# ---- non-finite batches -------------------------------------------------------------------

def _poison(kind):
    y = _f32(4, 8, scale=2.0)
    y[1, 3] = {"nan": np.nan, "inf": np.inf, "overflow": 1e30}[kind]  # 1e30**2 overflows float32
    return y


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("kind", ["nan", "inf", "overflow"])
def test_nonfinite_batches_never_reach_the_state(kind, compiled):
    x, xn, good = _f32(4, 8), _f32(4, 8), [(_f32(4, 8), _f32(4, 8, scale=2.0)) for _ in range(2)]
    clean, layer = AionResidual(beta=0.5, ema_gamma=0.5), AionResidual(beta=0.5, ema_gamma=0.5)
    call = layer if not compiled else mx.compile(lambda *a: layer(*a, return_stats=True)[1]["ratio"],
                                                 inputs=layer.state, outputs=layer.state)
    clean(*map(mx.array, good[0]))
    call(*map(mx.array, good[0]))
    mx.eval(layer.state)
    before = _entries(layer)
    call(mx.array(x), mx.array(_poison(kind)), mx.array(xn))
    mx.eval(layer.state)
    assert layer.ratio_ema.item() == before["ratio_ema"]
    assert layer.nonfinite_count.item() == 1 and layer.step_count.item() == before["step_count"] + 1
    # The next finite batch continues as if the bad one had not been there.
    clean(*map(mx.array, good[1]))
    call(*map(mx.array, good[1]))
    mx.eval(layer.state)
    assert layer.ratio_ema.item() == clean.ratio_ema.item() and layer.nonfinite_count.item() == 1


def test_an_overflowing_batch_gives_finite_gradients():
    layer = AionResidual(beta=0.5, ema_gamma=0.5)
    x, y, xn = (mx.array(a) for a in (_f32(4, 8), _poison("overflow"), _f32(4, 8)))

    def loss(params, x, y, xn):
        layer.update(params)
        return (layer(x, y, xn) * 1e-20).sum()  # 1e-20: the output itself is finite (about 1e29)
    grads = mx.grad(loss, argnums=(0, 1, 2, 3))(layer.trainable_parameters(), x, y, xn)
    assert sorted(grads[0]) == ["alpha0", "beta"]
    for g in (*grads[0].values(), *grads[1:]):
        assert np.isfinite(np.array(g)).all()
    assert float(np.abs(np.array(grads[3])).max()) == 0.0  # the ratio was guarded: none through x_norm


def test_a_guarded_step_gives_no_nan_gradient_where_alpha0s_gradient_overflows():
    # The same batch with a large loss: sum(dout * y) overflows float32, alpha0's gradient is
    # inf, as it is everywhere; no gradient may reach x_norm through the guarded ratio, and
    # y's is alpha * dout (spec section 7).
    layer = AionResidual(beta=0.5, ema_gamma=0.5)
    x, y, xn = (mx.array(a) for a in (_f32(4, 8), _poison("overflow"), _f32(4, 8)))

    def loss(params, x, y, xn):
        layer.update(params)
        return (layer(x, y, xn) * 1e10).sum()
    grads = mx.grad(loss, argnums=(0, 1, 2, 3))(layer.trainable_parameters(), x, y, xn)
    assert grads[0]["alpha0"].item() == float("inf")
    assert np.isfinite(np.array(grads[1])).all()
    np.testing.assert_array_equal(np.array(grads[3]), 0.0)
    _close(grads[2], np.full((4, 8), 1e10 * 0.1 / (1 + 0.5 * 1.0)))  # alpha from the held ratio, 1.0


# ---- bad inputs ---------------------------------------------------------------------------

def _a(*shape, dtype=mx.float32):
    return mx.ones(shape, dtype=dtype)


#: (what is called, the arguments, the error, its message).
BAD_CALLS = {
    "x numpy": ("residual", lambda: (np.ones((2, 4), np.float32), _a(2, 4)), TypeError,
                "x must be an mlx.core.array, got numpy.ndarray"),
    "y list": ("residual", lambda: (_a(2, 4), [[1.0] * 4] * 2), TypeError,
               "y must be an mlx.core.array, got builtins.list"),
    "x_norm numpy": ("residual", lambda: (_a(2, 4), _a(2, 4), np.ones((2, 4))), TypeError,
                     "x_norm must be an mlx.core.array, got numpy.ndarray"),
    "x float": ("residual", lambda: (1.0, _a(2, 4)), TypeError, "x must be an mlx.core.array, got builtins.float"),
    "x int32": ("residual", lambda: (_a(2, 4, dtype=mx.int32), _a(2, 4)), TypeError,
                "x must have a floating dtype, got mlx.core.int32"),
    "y bool": ("residual", lambda: (_a(2, 4), _a(2, 4, dtype=mx.bool_)), TypeError, "y must have a floating dtype"),
    "shapes differ": ("residual", lambda: (_a(2, 4), _a(2, 5)), ValueError,
                      "Input shapes must match: y.shape (2, 5) != x.shape (2, 4)"),
    "x_norm shape": ("residual", lambda: (_a(2, 4), _a(2, 4), _a(3, 4)), ValueError, "Input shapes must match"),
    "empty": ("residual", lambda: (_a(0, 4), _a(0, 4)), ValueError, "Input tensor x cannot be empty"),
    "0-d": ("residual", lambda: (mx.array(1.0), mx.array(1.0)), ValueError, "x must have at least one axis"),
    "scale y numpy": ("scale", lambda: (np.ones((2, 4)), _a(2, 4)), TypeError, "y must be an mlx.core.array"),
    "scale x_norm int": ("scale", lambda: (_a(2, 4), _a(2, 4, dtype=mx.int32)), TypeError,
                         "x_norm must have a floating dtype"),
    "block width": ("block", lambda: (_a(2, 5),), ValueError, "x.shape[-1] must equal dim=4, got shape (2, 5)"),
    "block numpy": ("block", lambda: (np.ones((2, 4), np.float32),), TypeError,
                    "x must be an mlx.core.array, got numpy.ndarray"),
    "block int": ("block", lambda: (_a(2, 4, dtype=mx.int32),), TypeError, "x must have a floating dtype"),
    "block 0-d": ("block", lambda: (mx.array(1.0),), ValueError, "x must have at least one axis"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_inputs_raise_and_leave_the_state_as_it_was(case):
    which, args, error, message = BAD_CALLS[case]
    module = {"residual": AionResidual, "scale": AionScale,
              "block": lambda **kw: AionBlock(nn.Linear(4, 4), 4, **kw)}[which](beta=0.5)
    good = (_a(3, 4), _a(3, 4) * 2.0) if which != "block" else (_a(3, 4) * mx.arange(4),)
    module(*good)  # a state that is not the initial one
    mx.eval(module.parameters())
    before = _entries(module)
    with pytest.raises(error, match=re.escape(message)):
        module(*args())
    assert _entries(module) == before
    assert before[("aion." if which == "block" else "") + "step_count"] == 1


BAD_CONFIGS = [{"alpha0": 0.0}, {"alpha0": -1.0}, {"alpha0": 1e-300}, {"alpha0": float("nan")}, {"alpha0": "0.1"},
               {"alpha0": mx.array(0.1)}, {"beta": -0.5}, {"beta": 1e300}, {"ema_gamma": 1.5}, {"epsilon": 0.0},
               {"epsilon": 1e-45}, {"k_update": 0}, {"k_update": 2.0}, {"k_update": True}, {"k_update": 2**31},
               {"sync_ratio": 1}, {"sync_ratio": None}]


@pytest.mark.parametrize("kwargs", BAD_CONFIGS, ids=lambda kw: "-".join(f"{k}={v!r}" for k, v in kw.items()))
def test_bad_hyper_parameters_raise_as_aion_config(kwargs):
    with pytest.raises((TypeError, ValueError)) as want:
        core.AionConfig(**kwargs)
    for make in (AionResidual, AionScale, lambda **kw: AionBlock(nn.Linear(4, 4), 4, **kw)):
        with pytest.raises(want.type, match=f"^{re.escape(str(want.value))}$"):
            make(**kwargs)


@pytest.mark.parametrize("dim", [0, -3, 4.0, True, "4", None])
def test_bad_block_width_raises_as_check_dim(dim):
    with pytest.raises((TypeError, ValueError)) as want:
        adapter.check_dim(dim)
    with pytest.raises(want.type, match=f"^{re.escape(str(want.value))}$"):
        AionBlock(nn.Linear(4, 4), dim)
    assert AionBlock(nn.Linear(4, 4), np.int64(4)).dim == 4
