"""The eager CPU training step's C++ kernel (aion_pytorch.kernels) against the op path it replaces."""

from __future__ import annotations

import warnings

import pytest
import torch

from aion_pytorch import AionResidual, AionScale, closed_form, kernels

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="the C++ kernel cannot be built here")


@pytest.fixture
def mode():
    before = kernels.kernels_mode()
    yield kernels.set_kernels
    kernels.set_kernels(before)


def _run(mode, path, dtypes, with_x_norm=True, scale_only=False, k_update=1, gamma=0.99, poison=None, steps=3):
    """Outputs, stats, gradients and state of ``steps`` training forwards on ``path``."""
    mode(path)
    torch.manual_seed(0)
    cls = AionScale if scale_only else AionResidual
    layer = cls(alpha0=0.2, beta=0.3, k_update=k_update, ema_gamma=gamma)
    x, y, n = (torch.randn(3, 5, 16, dtype=d).requires_grad_() for d in dtypes)
    if poison is not None:
        with torch.no_grad():
            y[0, 0, 0] = poison
    weight = torch.randn(3, 5, 16)
    results = []
    for _ in range(steps):
        if scale_only:
            out, stats = layer(y, n, return_stats=True)
        else:
            out, stats = layer(x, y, n if with_x_norm else None, return_stats=True)
        inputs = [t for t in (None if scale_only else x, y, n if with_x_norm or scale_only else None) if t is not None]
        grads = torch.autograd.grad((out.double() * weight).sum(), [*inputs, layer.alpha0, layer.beta],
                                    allow_unused=True)
        results.append([out, *stats.values(), *grads, layer.ratio_ema.clone(), layer.step_count.clone(),
                        layer.nonfinite_count.clone()])
    return results


def _assert_same(got, want, rtol):
    for a_step, b_step in zip(got, want):
        for a, b in zip(a_step, b_step):
            if b is None:
                assert a is None
                continue
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=rtol * 1e-3, equal_nan=True)


@pytest.mark.parametrize("dtypes", [(torch.float32,) * 3, (torch.float64,) * 3, (torch.bfloat16,) * 3,
                                    (torch.float16,) * 3, (torch.float32, torch.bfloat16, torch.float32),
                                    (torch.bfloat16, torch.bfloat16, torch.float32),
                                    (torch.float64, torch.float32, torch.float32)],
                         ids=lambda d: "-".join(str(t).removeprefix("torch.") for t in d))
@pytest.mark.parametrize("with_x_norm", [True, False])
def test_kernel_equals_op_path(mode, dtypes, with_x_norm):
    rtol = 1e-12 if dtypes == (torch.float64,) * 3 else 1e-5
    _assert_same(_run(mode, "cpp", dtypes, with_x_norm), _run(mode, "ops", dtypes, with_x_norm), rtol)


@pytest.mark.parametrize("case", [dict(k_update=3, steps=4), dict(gamma=1.0), dict(scale_only=True),
                                  dict(poison=float("inf")), dict(poison=float("nan")), dict(poison=3e19)])
def test_kernel_equals_op_path_schedule_guard_and_forms(mode, case):
    # poison: an inf or NaN branch output, and a float32 energy that overflows (3e19**2 / 16):
    # the guard holds the state, counts the step, and no gradient passes through the ratio.
    _assert_same(_run(mode, "cpp", (torch.float32,) * 3, **case), _run(mode, "ops", (torch.float32,) * 3, **case),
                 1e-5)


def test_kernel_runs_and_writes_the_buffers_once(mode):
    mode("auto")
    layer = AionResidual()
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    assert closed_form.uses_kernel(x, y, None, layer.config)
    version = layer.step_count._version
    layer(x, y)
    assert int(layer.step_count) == 1 and layer.step_count._version > version  # the version counter moved
    with torch.inference_mode():  # inference tensors in, ordinary buffers written
        layer(torch.randn(4, 8), torch.randn(4, 8))
    assert int(layer.step_count) == 2


def test_no_rebuild_over_varying_shapes(mode):
    mode("auto")
    layer = AionResidual()
    builds = kernels.build_count()
    for i in range(20):  # batch, sequence and width all change
        shape = (1 + i % 5, 3 + 7 * i, 8 + 4 * (i % 7))
        x, y, n = (torch.randn(shape, requires_grad=True) for _ in range(3))
        layer(x, y, n).sum().backward()
    assert kernels.build_count() == builds == 1
    assert int(layer.step_count) == 20


def test_fake_kernels_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, y = torch.empty(2, 3, 4, dtype=torch.bfloat16), torch.empty(2, 3, 4, dtype=torch.float32)
        state = (torch.empty(()), torch.empty((), dtype=torch.int32), torch.empty((), dtype=torch.int32))
        out, rows, sc, *rest = torch.ops.aion_kernels.train_forward(x, y, None, torch.empty(()), torch.empty(()),
                                                                    *state, True, False, 1e-8, 0.99)
        assert out.shape == (2, 3, 4) and out.dtype == torch.float32 and rows.shape == (2, 6) and sc.shape == (5,)
        dy, d_ref, *_ = torch.ops.aion_kernels.train_backward(out, y, x, rows, sc, True, True)
        assert dy.shape == y.shape and d_ref.shape == x.shape


def test_op_path_where_the_kernel_does_not_apply(mode):
    x = torch.randn(2, 4)
    mode("ops")
    assert not closed_form.uses_kernel(x, x, None, AionResidual().config)
    mode("auto")
    assert not closed_form.uses_kernel(x, x, None, AionResidual().config, replica_mean=lambda r: r)
    assert closed_form.uses_kernel(x, x, None, AionResidual(sync_ratio=False).config, replica_mean=lambda r: r)
    assert not closed_form.uses_kernel(x.to("meta"), x.to("meta"), None, AionResidual().config)
    with pytest.raises(ValueError, match="mode must be one of"):
        kernels.set_kernels("triton")


def test_a_failed_build_warns_once_and_falls_back(mode, monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", no_compiler)
    monkeypatch.setattr(kernels._State, "module", None)
    monkeypatch.setattr(kernels._State, "builds", 0)
    mode("auto")
    layer, x = AionResidual(), torch.randn(2, 4)
    with pytest.warns(RuntimeWarning, match="could not be built.*op path"):
        layer(x, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x, x)  # no second warning, no second build
    assert kernels.build_count() == 1 and int(layer.step_count) == 2
    monkeypatch.setattr(kernels._State, "module", None)
    mode("cpp")
    with pytest.raises(RuntimeError, match="AION_TORCH_KERNELS=cpp"):
        kernels.load()
