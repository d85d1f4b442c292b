"""aion_core runs unchanged on numpy, array-api-strict, torch and jax, and agrees with itself."""

import numpy as np
import pytest

import aion_core as core
import frameworks
from aion_conformance.spec.reference import reference_call

#: aion_core's array namespaces (tests/frameworks.py): the core's own, then each framework's.
NAMESPACES = frameworks.params(frameworks.NAMESPACES.values())


def _ns(name):
    return frameworks.NAMESPACES[name].load()


@pytest.fixture
def float64(request):
    """float64 in the namespace under test, for this test only (jax's flag is process-wide)."""
    with frameworks.NAMESPACES[request.node.callspec.params["name"]].float64():
        yield


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("k_update,ema_gamma", [(1, 0.99), (2, 1.0), (3, 0.0)])
def test_same_results_on_every_namespace(name, k_update, ema_gamma, request):
    request.getfixturevalue("float64")
    xp, arr = _ns(name)
    cfg = core.AionConfig(alpha0=0.2, beta=0.3, ema_gamma=ema_gamma, k_update=k_update)
    rng = np.random.default_rng(0)
    state = core.initial_state(xp, dtype=xp.float32)
    ref_state = {"ratio_ema": 1.0, "step_count": 0, "nonfinite_count": 0}
    a0, b = arr(np.float32(0.2)), arr(np.float32(0.3))
    for step in range(5):
        x, y, xn = (rng.standard_normal((3, 4, 8)) for _ in range(3))
        if step == 2:
            y[0, 0, 0] = np.nan
        update = bool(core.is_update_step(step, k_update))
        out, state, stats = core.train_step(arr(x), arr(y), arr(xn), a0, b, state, cfg, xp=xp, update=update)
        want, ref_state = reference_call(cfg, float(np.float32(0.2)), float(np.float32(0.3)),
                                         ref_state, "train", x, y, xn)
        np.testing.assert_allclose(np.asarray(out), want["out"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(float(stats["alpha"]), want["stats"]["alpha"], rtol=1e-12)
        assert float(state.ratio_ema) == ref_state["ratio_ema"]
        assert int(state.step_count) == ref_state["step_count"] == step + 1
        assert int(state.nonfinite_count) == ref_state["nonfinite_count"]
    out, stats = core.eval_step(arr(x), arr(y), a0, b, state, xp=xp)
    want, _ = reference_call(cfg, float(np.float32(0.2)), float(np.float32(0.3)), ref_state, "eval", x, y)
    np.testing.assert_allclose(np.asarray(out), want["out"], rtol=1e-12, atol=1e-12)


def test_nonfinite_batch_leaves_ratio_and_counts():
    cfg = core.AionConfig()
    state = core.initial_state(np)
    x = np.ones((2, 4), np.float32)
    y = np.full((2, 4), np.inf, np.float32)
    with np.errstate(invalid="ignore"):
        _, new, stats = core.train_step(x, y, None, np.float32(0.1), np.float32(0.05), state, cfg, xp=np)
    assert float(new.ratio_ema) == 1.0 and int(new.nonfinite_count) == 1 and int(new.step_count) == 1
    assert np.isinf(float(stats["ratio"]))
    # alpha fell back to the stored ratio
    assert float(stats["alpha"]) == pytest.approx(0.1 / (1 + 0.05 * 1.0), rel=1e-6)


def test_float64_ratio_beyond_float32_is_guarded():
    # r ~ 1e208: finite in float64, inf once stored in float32. Unguarded, ratio_ema became
    # inf, and with ema_gamma 0 the next step stored 0 * inf = NaN.
    cfg = core.AionConfig(ema_gamma=0.0)
    state = core.initial_state(np)
    x, y = np.full((2, 4), 1e-100), np.full((2, 4), 1e100)
    with np.errstate(over="ignore"):
        _, state, stats = core.train_step(x, y, None, np.float32(0.1), np.float32(0.05), state, cfg, xp=np)
    assert float(stats["ratio"]) == pytest.approx(1e208)
    assert float(state.ratio_ema) == 1.0 and int(state.nonfinite_count) == 1
    assert float(stats["alpha"]) == pytest.approx(0.1 / 1.05, rel=1e-6)
    _, state, _ = core.train_step(np.ones((2, 4)), np.ones((2, 4)), None, np.float32(0.1),
                                  np.float32(0.05), state, cfg, xp=np)
    assert float(state.ratio_ema) == pytest.approx(1.0, rel=1e-6) and int(state.nonfinite_count) == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_ema_of_finite_float32_values_is_a_finite_float32(dtype):
    """The comment of the guard in aion_core.step: its worst case, for many gammas.

    ratio_ema is the largest float32; r is the largest value of the accumulation dtype
    whose float32 rounding is finite (float32: the largest float32; float64: just below
    2**128 - 2**103). r reaches the EMA through the replica_mean hook.
    """
    big = np.finfo(np.float32).max
    r = np.float32(big) if dtype == "float32" else np.nextafter(2.0**128 - 2.0**103, 0.0)
    assert np.isfinite(np.float32(r)) and (dtype == "float32" or r > big)
    state = core.AionState(np.asarray(big, np.float32), np.asarray(0, np.int32), np.asarray(0, np.int32))
    x = np.ones((1, 2), dtype)
    rng = np.random.default_rng(0)
    gammas = np.concatenate([rng.uniform(0, 1, 3000), 1 - rng.uniform(0, 1e-3, 500), rng.uniform(0, 1e-6, 500),
                             2.0 ** -np.arange(1, 60), 1 - 2.0 ** -np.arange(1, 54)])
    for gamma in gammas:
        cfg = core.AionConfig(ema_gamma=float(gamma))
        _, new, _ = core.train_step(x, x, None, np.float32(0.1), np.float32(0.05), state, cfg, xp=np,
                                    replica_mean=lambda _: np.asarray(r, dtype))
        assert np.isfinite(new.ratio_ema) and int(new.nonfinite_count) == 0, gamma


def test_float16_energy_does_not_overflow():
    x = np.full((2, 8), 300.0, np.float16)  # x*x = 90000 > float16 max 65504
    e = core.energy(np, x)
    assert e.dtype == np.float32 and np.allclose(e, 90000.0)
    r = core.batch_ratio(np, np.zeros((2, 8), np.float16), np.zeros((2, 8), np.float16), 1e-8)
    assert float(r) == 0.0  # epsilon is added in float32: no 0/0


@pytest.mark.parametrize("bad,err", [
    ({"x": np.ones((2, 3)), "y": np.ones((3, 2))}, ValueError),
    ({"x": np.ones((0, 3)), "y": np.ones((0, 3))}, ValueError),
    ({"x": np.ones(()), "y": np.ones(())}, ValueError),
    ({"x": np.ones((2, 3), np.int64), "y": np.ones((2, 3))}, TypeError),
    ({"x": np.ones((2, 3)), "y": np.ones((2, 3)), "x_norm": np.ones((2, 2))}, ValueError),
])
def test_check_inputs_names_the_argument(bad, err):
    with pytest.raises(err, match="x|y|x_norm"):
        core.check_inputs(np, bad["x"], bad["y"], bad.get("x_norm"))


# --- aion_core.closed_form: the closed-form gradient equals autodiff of train_step ----------------

def _autodiff_step(cfg, state, update, x, y, x_norm, cotangent, replica_mean=None):
    """train_step's output, state and gradients by torch autograd: the truth for the closed form."""
    import array_api_compat.torch as txp
    import torch

    leaves = [t.clone().requires_grad_(True) for t in (x, y)]
    xn = None if x_norm is None else x_norm.clone().requires_grad_(True)
    a0, b = (torch.tensor(v, requires_grad=True) for v in (0.2, 0.3))
    out, new, _ = core.train_step(*leaves, xn, a0, b, state, cfg, xp=txp, update=update,
                                  replica_mean=replica_mean, stop_gradient=lambda t: t.detach())
    inputs = [*leaves, *([xn] if xn is not None else []), a0, b]
    grads = torch.autograd.grad(out, inputs, cotangent, allow_unused=True)  # x_norm: unused on hold steps
    grads = list(grads[:2]) + ([grads[2]] if xn is not None else [None]) + list(grads[-2:])
    return out.detach(), new, grads


def _fused_step(cfg, state, update, x, y, x_norm, cotangent, replica_mean=None, vjp_replica_mean=None):
    import array_api_compat.torch as txp
    import torch

    from aion_core import closed_form

    a0, b = torch.tensor(0.2), torch.tensor(0.3)
    out, new, stats, saved = closed_form.train_forward(x, y, x_norm, a0, b, state, cfg, xp=txp, update=update,
                                                 replica_mean=replica_mean)
    grads = closed_form.train_vjp(saved, cotangent, xp=txp, replica_mean=vjp_replica_mean or replica_mean)
    return out, new, list(grads)


def _assert_close_spec(got, want, rtol):
    """Spec section 10: |got - want| <= rtol * (|want| + max|want|)."""
    got, want = got.double(), want.double()
    assert got.shape == want.shape
    bound = rtol * (want.abs() + want.abs().max())
    assert bool(((got - want).abs() <= bound).all()), float((got - want).abs().max())


RTOL = {"float64": 1e-10, "float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}


@pytest.mark.parametrize("dtypes", [("float64",) * 3, ("float32",) * 3, ("float16",) * 3, ("bfloat16",) * 3,
                                    ("float32", "float16", "float32"), ("float32", "float32", "float64")])
@pytest.mark.parametrize("with_x_norm", [True, False])
@pytest.mark.parametrize("ema_gamma,update", [(0.99, True), (1.0, True), (0.0, True), (0.9, False)])
def test_closed_form_gradient_equals_autodiff(dtypes, with_x_norm, ema_gamma, update):
    import torch

    gen = torch.Generator().manual_seed(0)
    x, y, xn, cot = (torch.randn(3, 5, 16, generator=gen, dtype=torch.float64) for _ in range(4))
    x, y, xn = (t.to(getattr(torch, d)) for t, d in zip((x, y, xn), dtypes))
    x_norm = xn if with_x_norm else None
    cfg = core.AionConfig(alpha0=0.2, beta=0.3, ema_gamma=ema_gamma)
    state = core.AionState(torch.tensor(1.7), torch.tensor(4, dtype=torch.int32), torch.tensor(0, dtype=torch.int32))
    out_dtype = torch.promote_types(x.dtype, y.dtype)
    cot = cot.to(out_dtype)
    want_out, want_state, want_grads = _autodiff_step(cfg, state, update, x, y, x_norm, cot)
    out, new, grads = _fused_step(cfg, state, update, x, y, x_norm, cot)
    rtol = max(RTOL[d] for d in dtypes if d != "float64") if set(dtypes) != {"float64"} else RTOL["float64"]
    assert out.dtype == want_out.dtype and torch.equal(out, want_out)
    assert all(torch.equal(a, b) for a, b in zip(new, want_state))
    for got, want, name in zip(grads, want_grads, ["x", "y", "x_norm", "alpha0", "beta"]):
        if want is None:
            assert got is None, name
            continue
        if name not in ("alpha0", "beta"):  # those are in the accumulation dtype
            assert got.dtype == want.dtype, name
        _assert_close_spec(got, want, max(rtol, 1e-5) if name in ("alpha0", "beta") else rtol)


def test_closed_form_gradient_matches_finite_differences():
    # Independent of any autodiff: central differences of train_step in float64.
    from aion_core import closed_form

    rng = np.random.default_rng(1)
    x, y, xn, cot = (rng.standard_normal((2, 3, 4)) for _ in range(4))
    cfg = core.AionConfig(alpha0=0.2, beta=0.3, ema_gamma=0.5)
    state = core.AionState(np.asarray(1.3, np.float32), np.asarray(0, np.int32), np.asarray(0, np.int32))
    args = {"x": x, "y": y, "x_norm": xn, "alpha0": np.asarray(0.2), "beta": np.asarray(0.3)}

    def loss(a):
        out, _, _ = core.train_step(a["x"], a["y"], a["x_norm"], a["alpha0"], a["beta"], state, cfg, xp=np)
        return float(np.sum(out * cot))

    _, _, _, saved = closed_form.train_forward(x, y, xn, args["alpha0"], args["beta"], state, cfg, xp=np)
    grads = closed_form.train_vjp(saved, cot, xp=np)._asdict()
    h = 1e-6
    for name, value in args.items():
        numeric = np.zeros(value.shape)
        for i in np.ndindex(value.shape):
            up, down = dict(args), dict(args)
            up[name], down[name] = value.copy(), value.copy()
            up[name][i] += h
            down[name][i] -= h
            numeric[i] = (loss(up) - loss(down)) / (2 * h)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("nonfinite", ["y_inf", "ratio_beyond_float32"])
def test_closed_form_guarded_step_takes_no_gradient_through_the_ratio(nonfinite):
    import torch

    if nonfinite == "y_inf":  # y's energy overflows float32: the ratio is inf, y itself finite
        x, y = torch.ones(2, 4), torch.full((2, 4), 3e19)
    else:  # finite in float64, beyond float32
        x, y = torch.full((2, 4), 1e-100, dtype=torch.float64), torch.full((2, 4), 1e100, dtype=torch.float64)
    cfg = core.AionConfig(alpha0=0.2, beta=0.3)
    state = core.initial_state(torch)
    cot = torch.ones_like(y)
    out, new, grads = _fused_step(cfg, state, True, x, y, None, cot)
    assert int(new.nonfinite_count) == 1 and float(new.ratio_ema) == 1.0
    alpha = 0.2 / (1 + 0.3 * 1.0)
    # No ratio term: dx = dout, dy = alpha * dout, all finite.
    assert torch.equal(grads[0], cot.to(x.dtype))
    torch.testing.assert_close(grads[1], torch.full_like(y, alpha), rtol=1e-6, atol=0)


def test_closed_form_replica_mean_gradient_is_that_of_the_global_batch():
    """Two replicas simulated in one process: each fused step equals autodiff of the global view."""
    import array_api_compat.torch as txp
    import torch

    gen = torch.Generator().manual_seed(2)
    data = [[torch.randn(4, 8, generator=gen, dtype=torch.float64) for _ in range(4)] for _ in range(2)]
    cfg = core.AionConfig(alpha0=0.2, beta=0.3, ema_gamma=0.9)
    state = core.initial_state(torch)
    # Global view by autodiff: r = mean of the replicas' ratios; loss = sum over replicas.
    leaves = [[t.clone().requires_grad_(True) for t in d[:3]] for d in data]
    a0, b = (torch.tensor(v, requires_grad=True) for v in (0.2, 0.3))
    ratios = [core.batch_ratio(txp, xn, y, cfg.epsilon) for _, y, xn in leaves]
    mean_r = (ratios[0] + ratios[1]) / 2
    loss = 0
    for (x, y, xn), d in zip(leaves, data):
        out, _, _ = core.train_step(x, y, xn, a0, b, state, cfg, xp=txp, replica_mean=lambda _: mean_r,
                                    stop_gradient=lambda t: t.detach())
        loss = loss + (out * d[3]).sum()
    loss.backward()
    # The fused replicas: forward with the mean ratio, backward with the mean of both ratio gradients.
    local_d_r = []
    for d in data:
        _fused_step(cfg, state, True, *d[:3], d[3], replica_mean=lambda _: mean_r.detach(),
                    vjp_replica_mean=lambda g: local_d_r.append(g) or g)
    for (x, y, xn), d in zip(leaves, data):
        out, _, grads = _fused_step(cfg, state, True, *d[:3], d[3], replica_mean=lambda _: mean_r.detach(),
                                    vjp_replica_mean=lambda g: (local_d_r[0] + local_d_r[1]) / 2)
        for got, want in zip(grads[:3], (x.grad, y.grad, xn.grad)):
            _assert_close_spec(got, want, 1e-10)


@pytest.mark.parametrize("name", NAMESPACES)
def test_closed_form_runs_on_every_namespace(name, request):
    from aion_core import closed_form

    request.getfixturevalue("float64")
    xp, arr = _ns(name)
    rng = np.random.default_rng(3)
    x, y, xn, cot = (rng.standard_normal((3, 4, 8)) for _ in range(4))
    cfg = core.AionConfig(alpha0=0.2, beta=0.3, ema_gamma=0.9)
    results = []
    for ns, to in ((xp, arr), (np, np.asarray)):
        state = core.initial_state(ns, dtype=ns.float32)
        out, _, _, saved = closed_form.train_forward(to(x), to(y), to(xn), to(np.float32(0.2)), to(np.float32(0.3)),
                                               state, cfg, xp=ns)
        results.append([np.asarray(out), *(np.asarray(g) for g in closed_form.train_vjp(saved, to(cot), xp=ns))])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [1, 0, 1.0, "yes", "True", None, np.int64(1), np.array(True)])
def test_sync_ratio_must_be_a_bool(bad):
    with pytest.raises(TypeError, match=f"^sync_ratio must be a bool, got {type(bad).__name__}$"):
        core.AionConfig(sync_ratio=bad)


@pytest.mark.parametrize("flag", [True, False, np.bool_(True), np.bool_(False)])
def test_sync_ratio_round_trips_as_a_python_bool(flag):
    cfg = core.AionConfig(0.2, 0.3, 0.9, 1e-6, 2, flag)
    assert type(cfg.sync_ratio) is bool and cfg.sync_ratio == bool(flag)
    assert cfg.to_dict() == {"alpha0": 0.2, "beta": 0.3, "ema_gamma": 0.9, "epsilon": 1e-6, "k_update": 2,
                             "sync_ratio": bool(flag)}
    assert core.AionConfig(**cfg.to_dict()) == cfg
    assert core.AionConfig().sync_ratio is True  # the default: the exact cross-replica mean


@pytest.mark.parametrize("path", ["train_step", "fused"])
def test_sync_ratio_false_never_calls_the_replica_mean(path):
    """With sync_ratio=False the hook an adapter hands in is not called, forward or backward;
    the step is that of no hook at all. With True it is (the positive control)."""
    import array_api_compat.torch as txp
    import torch

    from aion_core import closed_form

    gen = torch.Generator().manual_seed(4)
    x, y, xn, cot = (torch.randn(3, 8, generator=gen) for _ in range(4))
    calls = []

    def hook(r):
        calls.append(r)
        return r * 0.5  # not the identity: a call would show in the results

    def run(sync, replica_mean):
        cfg = core.AionConfig(alpha0=0.2, beta=0.3, ema_gamma=0.5, sync_ratio=sync)
        state = core.initial_state(torch)
        if path == "train_step":
            out, new, stats = core.train_step(x, y, xn, torch.tensor(0.2), torch.tensor(0.3), state, cfg,
                                              xp=txp, replica_mean=replica_mean, stop_gradient=torch.detach)
            return out, new.ratio_ema, stats["ratio"]
        out, new, stats, saved = closed_form.train_forward(x, y, xn, torch.tensor(0.2), torch.tensor(0.3), state,
                                                     cfg, xp=txp, replica_mean=replica_mean)
        vjp_hook = core.step.replica_mean_for(cfg, replica_mean)  # what an adapter's backward gets
        grads = closed_form.train_vjp(saved, cot, xp=txp, replica_mean=vjp_hook)
        return out, new.ratio_ema, stats["ratio"], grads.y, grads.x_norm

    local = run(False, hook)
    assert calls == []
    for got, want in zip(local, run(False, None)):
        assert torch.equal(got, want)
    synced = run(True, hook)
    assert len(calls) == (1 if path == "train_step" else 2)  # forward (and the fused backward)
    assert not torch.equal(synced[2], local[2])


def _y(value):
    return np.full((2, 16), value, np.float32)


def _record_ratio(log, value):
    from aion_core.replay import fingerprint

    record = log.find(fingerprint(np, _y(value)))
    return None if record is None else float(record.state.ratio_ema)


def test_replay_log_finds_each_forward_by_its_branch_output_in_any_order_and_repeatedly():
    from aion_core.replay import ReplayLog, fingerprint

    log = ReplayLog()
    assert log.find(fingerprint(np, _y(1.0))) is None
    for value in (1.0, 2.0, 3.0):  # three forwards await their backward: micro-batches
        log.push(core.initial_state(np)._replace(ratio_ema=np.float32(value)), 0, fingerprint(np, _y(value)))
    assert [_record_ratio(log, v) for v in (3.0, 1.0, 2.0, 2.0)] == [3.0, 1.0, 2.0, 2.0]  # nested: twice
    log.push(core.initial_state(np), 0, fingerprint(np, _y(4.0)))  # the next step drops the replayed three
    assert len(log) == 1


def test_replay_log_drops_records_older_than_a_replayed_one():
    """A forward under no-grad nobody recomputes is dropped once a later one was replayed;
    the documented pattern this rule gets wrong (forward 1, forward 2, backward 2,
    forward 3, backward 1) loses forward 1's record."""
    from aion_core.replay import ReplayLog, fingerprint

    log = ReplayLog()
    for value in (1.0, 2.0):
        log.push(core.initial_state(np)._replace(ratio_ema=np.float32(value)), 0, fingerprint(np, _y(value)))
    assert _record_ratio(log, 2.0) == 2.0
    log.push(core.initial_state(np)._replace(ratio_ema=np.float32(3.0)), 0, fingerprint(np, _y(3.0)))
    assert len(log) == 1 and _record_ratio(log, 1.0) == 3.0  # forward 1's record is gone


def test_replay_log_keeps_at_most_capacity_records():
    from aion_core.replay import ReplayLog, fingerprint

    log = ReplayLog(capacity=4)
    for value in range(10):
        log.push(core.initial_state(np), 0, fingerprint(np, _y(float(value))))
    assert len(log) == 4
