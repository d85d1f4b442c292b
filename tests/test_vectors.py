"""The committed golden vectors are exactly what the generator writes, and the suite can fail."""

import numpy as np

from aion_conformance.drivers.reference_driver import ReferenceDriver
from aion_conformance.runner import run_driver, run_vector
from aion_conformance.spec.golden import VECTOR_DIR, load_all, render_all
from aion_conformance.spec.tolerance import compare


def test_committed_vectors_match_generator():
    rendered = render_all()
    committed = {p.name: p.read_text() for p in VECTOR_DIR.glob("*.json")}
    assert sorted(committed) == sorted(rendered)
    stale = [name for name, text in rendered.items() if committed[name] != text]
    assert not stale, f"regenerate with `python -m aion_conformance.spec.golden`: {stale}"


def test_vectors_cover_the_required_cases():
    cases = load_all()
    dtypes = {c["dtype"] for c in cases}
    assert dtypes == {"float64", "float32", "float16", "bfloat16"}
    configs = [c["config"] for c in cases]
    assert any(c["ema_gamma"] == 1.0 for c in configs) and any(c["k_update"] > 1 for c in configs)
    calls = [call for c in cases for call in c["calls"]]
    assert any(call["x_norm"] is None for call in calls) and any(call["x_norm"] is not None for call in calls)
    assert any(call["expected"]["state"]["nonfinite_count"] > 0 for call in calls)
    mixed = [c["input_dtypes"] for c in cases if c.get("input_dtypes")]
    assert {("bfloat16", "float16"), ("bfloat16", "float32")} <= {tuple(sorted({d["x"], d["y"]})) for d in mixed}
    assert any(d["x_norm"] == "float64" and d["x"] != "float64" for d in mixed)


def test_cancelling_vectors_leave_only_rounding_residue():
    """x = -alpha * y rounded: the output is far below x, so a 16-bit multiply-add shows."""
    for c in (c for c in load_all() if c["name"].startswith("cancelling_")):
        for call in c["calls"]:
            out, x = np.abs(call["expected"]["out"]), np.abs(call["x"])
            assert out.max() < 0.01 * x.max() and out.max() > 0, (c["name"], out.max(), x.max())


def test_reference_driver_passes_everything():
    results = run_driver(ReferenceDriver())
    assert results and all(r.status == "pass" for r in results), [r for r in results if r.status != "pass"]


class _OffByOne(ReferenceDriver):
    name = "wrong"

    def call(self, *args, **kwargs):
        result = super().call(*args, **kwargs)
        result["out"] = result["out"] * (1 + 1e-4)
        return result


def test_a_wrong_implementation_fails():
    case = next(c for c in load_all() if c["name"] == "train_xnorm_f32")
    res = run_vector(_OffByOne(), case)
    assert res.status == "fail" and "out" in " ".join(res.messages)


def test_compare_nan_positions_must_match():
    ok, *_ = compare(np.array([1.0, np.nan]), np.array([1.0, 2.0]), 1e-5)
    assert not ok
    ok, *_ = compare(np.array([1.0, np.nan]), np.array([1.0, np.nan]), 1e-5)
    assert ok


def test_compare_infinities_must_coincide_unless_the_dtype_overflows_there():
    inf = np.inf
    assert compare([inf, -inf, 1.0], [inf, -inf, 1.0], 1e-5)[0]
    assert not compare([-inf, 1.0], [inf, 1.0], 1e-5)[0]  # the sign
    assert not compare([inf, 1.0], [1e30, 1.0], 1e-5)[0]  # finite want, no dtype: no overflow allowed
    # float16 rounds past 65520 to inf (spec section 10): inf passes where want, within the
    # tolerance, reaches it, with want's sign; a finite result near want passes too.
    assert compare([inf, 2.0], [65530.0, 2.0], 4e-3, 2.0**-24, "float16")[0]
    assert compare([65504.0, 2.0], [65530.0, 2.0], 4e-3, 2.0**-24, "float16")[0]
    assert not compare([-inf, 2.0], [65530.0, 2.0], 4e-3, 2.0**-24, "float16")[0]
    assert not compare([inf, 2.0], [30000.0, 2.0], 4e-3, 2.0**-24, "float16")[0]
    assert not compare([inf, 2.0], [65530.0, 2.0], 4e-3, 2.0**-24, "float32")[0]
    assert compare([-inf], [-3.4028235e38], 1e-5, 0.0, "float32")[0]
