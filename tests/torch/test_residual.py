"""aion_pytorch.AionResidual / AionBlock: one smoke step against the float64 reference, then what
only torch has (state_dict, buffers written by hand, module casts, compile, autocast, no host
sync, the original wording of errors). Values, gradients, the state rules, the k_update schedule
and the error classes are the conformance vectors' (``python -m aion_conformance``)."""

import pytest
import torch

import smoke

import aion_core
from aion_conformance.spec.reference import reference_call
from aion_conformance.spec.tolerance import RTOL, compare
from aion_pytorch import AionBlock, AionResidual, compute_alpha, energy


@pytest.fixture
def fresh_dynamo():
    # Each test's compiles start from an empty cache: the tests before it compiled the same
    # forward for other shapes and dtypes, and fullgraph fails hard at the recompile limit.
    torch._dynamo.reset()


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_smoke_one_training_step_equals_the_float64_reference():
    """The layer as a user calls it, one training forward and backward: output, stats,
    gradients and new state against the float64 reference (the vectors check the rest)."""
    x, y, xn, cot = smoke.inputs(0)
    m = AionResidual(**smoke.CONFIG)
    xt, yt, xnt = (torch.from_numpy(a).requires_grad_() for a in (x, y, xn))
    out, stats = m(xt, yt, x_norm=xnt, return_stats=True)
    (out * torch.from_numpy(cot)).sum().backward()
    got = {"out": out, **{f"stats.{k}": v for k, v in stats.items()}, "state.ratio_ema": m.ratio_ema,
           "grads.x": xt.grad, "grads.y": yt.grad, "grads.x_norm": xnt.grad,
           "grads.alpha0": m.alpha0.grad, "grads.beta": m.beta.grad}
    smoke.check_step({k: v.detach().double().numpy() for k, v in got.items()},
                     {"step_count": m.step_count, "nonfinite_count": m.nonfinite_count}, x, y, xn, cot)


def _by_hand(kind, value):
    """A way to write step_count from outside the layer: (description, m -> None)."""
    def write(m):
        if kind == "fill_":
            m.step_count.fill_(value)
        elif kind == "copy_":
            with torch.no_grad():
                m.step_count.copy_(torch.tensor(value))
        elif kind == "new buffer":
            m.step_count = torch.tensor(value, dtype=torch.int32)
        else:
            m.load_state_dict({**m.state_dict(), "step_count": torch.tensor(value)})
    return write


def test_step_count_written_by_hand_moves_the_k_update_schedule():
    """After step_count is written from outside, the next training step follows it
    (update iff step_count % k_update == 0), as aion_core on numpy (the reference) does."""
    torch.manual_seed(0)
    config = aion_core.AionConfig(k_update=3)
    m = AionResidual(k_update=3)
    a0, b = float(m.alpha0.detach()), float(m.beta.detach())
    ref = {"ratio_ema": 1.0, "step_count": 0, "nonfinite_count": 0}
    # Before step i, write step_count = value; each write changes the phase the layer had.
    writes = {1: ("fill_", 3), 3: ("copy_", 8), 4: ("new buffer", 4), 6: ("load_state_dict", 9),
              8: ("fill_", 2), 9: ("fill_", 2)}
    kinds = []
    for i in range(11):
        if i in writes:
            kind, value = writes[i]
            _by_hand(kind, value)(m)
            ref["step_count"] = value
        x, y = torch.randn(4, 8), (1 + i) * torch.randn(4, 8)
        update = ref["step_count"] % 3 == 0
        kinds.append("U" if update else "h")
        _, stats = m(x, y, return_stats=True)
        want, ref = reference_call(config, a0, b, ref, "train", x.double().numpy(), y.double().numpy())
        for k, v in want["stats"].items():
            assert float(stats[k]) == pytest.approx(v, rel=1e-6), (i, k)
        got = {k: getattr(m, k).item() for k in aion_core.STATE_SPEC}
        assert got == pytest.approx(ref, rel=1e-6), i
    assert "".join(kinds) == "UUhhhhUhhhU"  # an untouched layer: UhhUhhUhhUh


def test_compile_fullgraph_train_and_eval_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = AionBlock(torch.nn.Linear(16, 16), 16, k_update=2)
    compiled_mod = AionBlock(torch.nn.Linear(16, 16), 16, k_update=2)
    compiled_mod.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_mod, fullgraph=True)  # any graph break raises
    x = torch.randn(4, 8, 16)
    for mode in ("train", "train", "train", "eval"):
        eager.train(mode == "train")
        compiled_mod.train(mode == "train")
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        oe, oc = eager(xe), compiled(xc)
        oe.square().sum().backward()
        oc.square().sum().backward()
        torch.testing.assert_close(oc, oe)
        torch.testing.assert_close(xc.grad, xe.grad)
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(compiled_mod.state_dict()[k], v)


def test_training_step_reads_no_value_on_host():
    # On the meta device tensors have no data: any .item(), bool(tensor) or copy to host
    # inside forward/backward raises. A full training step with AdamW runs there.
    with torch.device("meta"):
        model = torch.nn.Sequential(*[AionBlock(torch.nn.Linear(32, 32), 32, k_update=2) for _ in range(2)])
        opt = torch.optim.AdamW(model.parameters())
        x = torch.randn(4, 8, 32)
    for _ in range(3):
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert model[0].aion.step_count.device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_no_overflow_and_alpha_close_to_float32(dtype):
    torch.manual_seed(0)
    x, y = 300 * torch.randn(4, 64), 300 * torch.randn(4, 64)  # energies ~9e4 > float16 max
    ref, low = AionResidual(), AionResidual()
    _, s32 = ref(x, y, x_norm=x, return_stats=True)
    out, s = low(x.to(dtype), y.to(dtype), x_norm=x.to(dtype), return_stats=True)
    assert out.dtype == dtype and torch.isfinite(out).all() and torch.isfinite(s["alpha"])
    rel = abs(float(s["alpha"]) - float(s32["alpha"])) / float(s32["alpha"])
    assert rel < {torch.float16: 1e-5, torch.bfloat16: 1e-4}[dtype], rel
    zeros = torch.zeros(2, 8, dtype=dtype)
    _, sz = AionResidual()(zeros, zeros, return_stats=True)
    assert float(sz["ratio"]) == 0.0  # epsilon never underflows


def test_autocast_bfloat16_block():
    torch.manual_seed(0)
    m = AionBlock(torch.nn.Linear(32, 32), 32)
    x = torch.randn(4, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, s = m(x, return_stats=True)
    out.float().sum().backward()
    assert s["alpha"].dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_energy_and_compute_alpha_helpers():
    t = torch.randn(3, 5, dtype=torch.float16)
    torch.testing.assert_close(energy(t, dim=0, keepdim=False), t.float().square().mean(0))
    assert energy(t).shape == (3, 1)
    assert compute_alpha(0.1, 0.05, 2.0) == aion_core.compute_alpha(0.1, 0.05, 2.0)


def test_backward_after_later_forwards_updated_the_state():
    m = AionResidual(k_update=2)
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    m.eval()
    out_eval = m(x, y)
    m.train()
    out_hold = [m(x, y) for _ in range(2)][1]  # a hold step reads the stored ratio
    m(x, y)  # an update step rewrites it in place
    (out_eval.sum() + out_hold.sum()).backward()
    assert torch.isfinite(m.beta.grad)


def test_alpha_cached_is_the_eval_alpha_read_only_and_detached():
    m = AionResidual(alpha0=0.2, beta=0.5, ema_gamma=0.9)
    x, y = torch.randn(4, 8), 3 * torch.randn(4, 8)
    _, s = m(x, y, return_stats=True)
    a = m.alpha_cached
    assert a.shape == () and a.dtype == torch.float32 and not a.requires_grad
    torch.testing.assert_close(a, s["alpha"])  # k_update=1: the alpha of the last training forward
    with torch.no_grad():
        m.beta.fill_(0.1)  # it follows the current parameters (aion-torch 1.0.2's went stale)
    m.eval()
    _, s = m(x, y, return_stats=True)
    torch.testing.assert_close(m.alpha_cached, s["alpha"])
    m.alpha_cached.fill_(7.0)  # a new tensor on each read: the layer is unchanged
    torch.testing.assert_close(m.alpha_cached, s["alpha"])
    with pytest.raises(AttributeError):
        m.alpha_cached = torch.tensor(0.3)
    assert "alpha_cached" not in m.state_dict()


def test_alpha_cached_reads_nothing_on_host():
    with torch.device("meta"):  # any host read of a meta tensor raises
        m = AionResidual()
        m(torch.randn(2, 4), torch.randn(2, 4))
    assert m.alpha_cached.device.type == "meta"


def test_repr_shows_every_hyper_parameter():
    text = repr(AionResidual(alpha0=0.2, beta=0.1, ema_gamma=0.95, epsilon=1e-6, k_update=3, sync_ratio=False))
    assert text == ("AionResidual(alpha0=0.2, beta=0.1, ema_gamma=0.95, epsilon=1e-06, k_update=3, "
                    "sync_ratio=False)")
    with torch.device("meta"):
        assert "alpha0=0.1" in repr(AionBlock(torch.nn.Linear(4, 4), 4))
        assert "sync_ratio=True" in repr(AionBlock(torch.nn.Linear(4, 4), 4))


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha0": 0.0}, "alpha0 must be positive, got 0.0"),
    ({"alpha0": -0.1}, "alpha0 must be positive, got -0.1"),
    ({"beta": -1.0}, "beta must be non-negative, got -1.0"),
    ({"ema_gamma": 1.1}, r"ema_gamma must be in \[0, 1\], got 1.1"),
    ({"epsilon": 0.0}, "epsilon must be positive, got 0.0"),
])
def test_constructor_errors_keep_the_original_wording(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        AionResidual(**kwargs)
    with pytest.raises(ValueError, match=f"^{message}$"):
        AionBlock(torch.nn.Identity(), 4, **kwargs)


@pytest.mark.parametrize("train", [True, False])
def test_input_errors_keep_the_original_wording_and_name_the_argument(train):
    m = AionResidual().train(train)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cases = [
        ((torch.randn(4, 8), torch.randn(4, 9)), r"^Input shapes must match: y\.shape \(4, 9\) != x\.shape \(4, 8\)$"),
        ((torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 7)),
         r"^Input shapes must match: x_norm\.shape \(4, 7\) != x\.shape \(4, 8\)$"),
        ((torch.empty(0, 8), torch.randn(4, 8)), r"^Input tensor x cannot be empty, got shape \(0, 8\)$"),
        ((torch.randn(4, 8), torch.empty(4, 0)), r"^Input tensor y cannot be empty, got shape \(4, 0\)$"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            m(*args)
    with pytest.raises(TypeError, match="^y must have a floating dtype"):
        m(torch.randn(2, 3), torch.ones(2, 3, dtype=torch.int64))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_public_functions_have_return_annotations():
    import inspect

    for fn in (AionResidual.forward, AionBlock.forward, compute_alpha, energy):
        assert inspect.signature(fn).return_annotation is not inspect.Signature.empty, fn


@pytest.mark.parametrize("name", ["alpha0", "ratio_ema"])
def test_a_complex_checkpoint_entry_is_refused_and_nothing_is_written(name):
    """Spec section 9: torch would keep the real part; the layer refuses it first."""
    m = AionResidual(k_update=2)
    before = _state(m)
    new = {k: v + 1 for k, v in before.items()}
    with pytest.raises(TypeError, match=f"'aion.{name}'"):
        AionBlock(torch.nn.Identity(), 4).load_state_dict(
            {f"aion.{k}": v for k, v in {**new, name: torch.tensor(2 + 1j)}.items()}, strict=False)
    with pytest.raises(TypeError, match=f"'{name}'"):
        m.load_state_dict({**new, name: torch.tensor(2 + 1j)})
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("name, value", [("step_count", 3.7), ("step_count", -1), ("nonfinite_count", 2**40),
                                         ("ratio_ema", float("nan")), ("ratio_ema", 1e300), ("ratio_ema", -0.5),
                                         ("alpha0", float("inf"))])
def test_a_checkpoint_value_the_cast_would_change_is_refused_and_nothing_is_written(name, value):
    """Spec section 9: torch would truncate 3.7 to 3, wrap 2**40 and store a NaN ratio."""
    m = AionResidual(k_update=2)
    before = _state(m)
    new = {k: v + 1 for k, v in before.items()}
    dtype = torch.float64 if isinstance(value, float) else torch.int64
    with pytest.raises(ValueError, match=f"'{name}'"):
        m.load_state_dict({**new, name: torch.tensor(value, dtype=dtype)})
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    m.load_state_dict({**new, "step_count": torch.tensor(4.0), "ratio_ema": torch.tensor(2.5, dtype=torch.bfloat16)})
    assert int(m.step_count) == 4 and float(m.ratio_ema) == 2.5  # integral floats and 16-bit values load


@pytest.mark.parametrize("cast", ["half", "bfloat16", "double", "to_float16"])
def test_module_casts_keep_aion_parameters_and_state_float32(cast):
    block = AionBlock(torch.nn.Linear(8, 8), 8)
    block = block.to(torch.float16) if cast == "to_float16" else getattr(block, cast)()
    dtype = block.layer.weight.dtype
    assert dtype != torch.float32  # the branch was cast ...
    aion = block.aion  # ... AION's own tensors were not
    assert {k: v.dtype for k, v in aion.state_dict().items()} == {
        "alpha0": torch.float32, "beta": torch.float32, "ratio_ema": torch.float32,
        "step_count": torch.int32, "nonfinite_count": torch.int32}
    assert float(aion.alpha0) == float(torch.tensor(0.1, dtype=torch.float32))  # no round trip through 16 bits
    out = block(torch.randn(2, 8, dtype=dtype))
    assert out.dtype == dtype


def test_half_module_keeps_a_ratio_beyond_float16_finite():
    # The repro: a float16 ratio_ema stored inf, with nonfinite_count 0.
    m = AionResidual().half()
    out = m(torch.full((2, 8), 1e-3, dtype=torch.float16), torch.full((2, 8), 10.0, dtype=torch.float16))
    assert out.dtype == torch.float16
    assert torch.isfinite(m.ratio_ema) and float(m.ratio_ema) > 65504 and int(m.nonfinite_count) == 0


@pytest.mark.parametrize("make, args, error, message", [
    (lambda: AionResidual(), (torch.ones(2, 8), torch.ones(2, 7)), ValueError, "y.shape"),
    (lambda: AionResidual(), (torch.ones(2, 8, dtype=torch.int32), torch.ones(2, 8)), TypeError, "x must"),
    (lambda: AionBlock(torch.nn.Linear(8, 8), 8), (torch.ones(2, 7),), ValueError, "dim=8"),
    (lambda: AionBlock(torch.nn.Linear(8, 8), 8), (torch.ones(2, 8, dtype=torch.int64),), TypeError, "x must"),
    (lambda: AionBlock(torch.nn.Linear(8, 8), 8), (torch.tensor(1.0),), ValueError, "scalar"),
    (lambda: AionBlock(torch.nn.Linear(8, 7), 8), (torch.ones(2, 8),), ValueError, "y.shape"),
])
def test_compiled_fullgraph_errors_keep_class_and_name_and_change_no_state(make, args, error, message, fresh_dynamo):
    module = make()
    compiled = torch.compile(module, fullgraph=True)
    good = torch.randn(2, 8)
    valid = (good, good) if isinstance(module, AionResidual) else (good,)
    can_run = module.layer.out_features == 8 if isinstance(module, AionBlock) else True
    if can_run:
        compiled(*valid)  # a first, valid graph
    before = _state(module)
    with pytest.raises(error, match=message):
        compiled(*args)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    if can_run:
        compiled(*valid)  # valid input still runs
        assert int((module.aion if isinstance(module, AionBlock) else module).step_count) == 2


def test_block_refuses_a_numpy_array_with_a_type_error():
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got numpy.ndarray"):
        AionBlock(torch.nn.Linear(4, 4), 4)(np.ones((2, 4), np.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compile_fullgraph_16bit_forward_and_backward_match_eager(dtype, fresh_dynamo):
    torch.manual_seed(0)
    x, cot = torch.randn(2, 3, 8, dtype=dtype), torch.randn(2, 3, 8)
    results = []
    for compiled in (False, True):
        block = AionBlock(torch.nn.Linear(8, 8), 8)
        block.load_state_dict(AionBlock(torch.nn.Linear(8, 8), 8).state_dict() if not results else results[0][2])
        block = block.to(dtype)
        run = torch.compile(block, fullgraph=True) if compiled else block
        xi = x.clone().requires_grad_()
        out, stats = run(xi, return_stats=True)
        (out.float() * cot).sum().backward()
        results.append((out, [xi.grad, block.aion.alpha0.grad, block.aion.beta.grad, stats["alpha"]],
                        {k: v for k, v in block.state_dict().items()}))
    (out_e, grads_e, _), (out_c, grads_c, _) = results
    assert out_c.dtype == dtype
    # Inductor keeps 16-bit intermediates in float32, so compiled and eager differ by the
    # inputs' rounding: each within the spec's tolerance of the dtype (section 10).
    rtol = RTOL[str(dtype).removeprefix("torch.")]
    for got, want in zip([out_c, *grads_c], [out_e, *grads_e]):
        ok, _, max_rel, why = compare(got.float().detach().numpy(), want.float().detach().numpy(), rtol)
        assert ok, why
