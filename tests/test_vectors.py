"""The committed golden vectors are exactly what the generator writes, the reference that
writes them is independent of ``aion_core``, and the suite can fail."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import aion_core as core
from aion_conformance.drivers.reference_driver import ReferenceDriver
from aion_conformance.runner import run_driver, run_vector
from aion_conformance.spec import golden, reference
from aion_conformance.spec.golden import VECTOR_DIR, load_all, render_all
from aion_conformance.spec.tolerance import compare
from aion_core import math as core_math


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


# --- the reference is independent of aion_core, which is held to it -------------------------------

_SPEC_DIR = Path(reference.__file__).parent


def _summed_energy(xp, t, acc_dtype=None):
    """A wrong energy: the sum of squares over the last axis, not their mean (spec section 4)."""
    t = core_math.cast(xp, t, acc_dtype or core_math.accumulation_dtype(xp, t.dtype))
    return xp.sum(t * t, axis=-1)


@pytest.mark.parametrize("module", [reference, golden], ids=["reference", "golden"])
def test_the_reference_and_the_generator_import_no_aion_core(module):
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not [name for name in imported if name.split(".")[0] == "aion_core"], imported


def test_the_reference_runs_with_aion_core_unimportable():
    """Every path of the reference (update, hold, guarded and eval steps, gradients, the
    scale-only form) in a process where ``import aion_core`` fails; the package
    ``__init__``s, which read aion_core's version, are left out. It loads numpy and the
    spec's tolerance module, nothing else of this project."""
    code = textwrap.dedent(f"""
        import json, sys, types
        sys.modules["aion_core"] = None  # any import of it raises ImportError
        packages = (("aion_conformance", {str(_SPEC_DIR.parent)!r}), ("aion_conformance.spec", {str(_SPEC_DIR)!r}))
        for name, path in packages:
            module = types.ModuleType(name)
            module.__path__ = [path]
            sys.modules[name] = module
        import numpy as np
        from aion_conformance.spec.reference import INITIAL_STATE, reference_call
        rng = np.random.default_rng(0)
        x, y, xn, g = (rng.standard_normal((2, 3, 4)) for _ in range(4))
        state, first = dict(INITIAL_STATE), None
        for mode, scale in (("train", 1.0), ("train", 1.0), ("train", 1e100), ("eval", 1.0)):  # update, hold, guarded
            result, state = reference_call({{"k_update": 2}}, 0.1, 0.05, state, mode, x, y * scale, xn, g, "float32")
            first = first or state["ratio_ema"]
        reference_call({{}}, 0.1, 0.05, state, "train", None, y, xn, g)
        loaded = sorted(m for m in sys.modules if m.startswith("aion") and sys.modules[m] is not None)
        print(json.dumps({{"state": state, "first": first, "loaded": loaded}}))
    """)
    done = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert done["state"] == {"ratio_ema": done["first"], "step_count": 3, "nonfinite_count": 1}
    assert done["first"] != 1.0
    assert done["loaded"] == ["aion_conformance", "aion_conformance.spec", "aion_conformance.spec.reference",
                              "aion_conformance.spec.tolerance"]


def test_the_vectors_do_not_depend_on_aion_core_math(monkeypatch):
    monkeypatch.setattr(core_math, "energy", _summed_energy)
    assert core.batch_ratio(np, np.ones((1, 4)), np.ones((1, 4)), 1.0) == 0.8  # the patch is in effect
    committed = {p.name: p.read_text() for p in VECTOR_DIR.glob("*.json")}
    assert render_all() == committed


def test_a_wrong_core_energy_is_caught_by_the_vectors(monkeypatch):
    """aion_core with ``sum`` for ``mean`` in the energy (the ratio then differs only through
    epsilon, ``E[y] / (E[x] + epsilon / D)``): the numpy driver, which runs aion_core,
    fails forward values of the float64 vectors, not only their gradients."""
    monkeypatch.setattr(core_math, "energy", _summed_energy)
    failed = {case["name"]: run_vector(ReferenceDriver(), case) for case in load_all()}
    failed = {name: res for name, res in failed.items() if res.status == "fail"}
    forward = {name for name, res in failed.items() if any("grad." not in m for m in res.messages)}
    assert {"basic_f64", "gamma0_f64"} <= forward, sorted(forward)
    assert any("stats.ratio" in m for m in failed["basic_f64"].messages)


def test_the_spec_defaults_of_the_reference_are_aion_core_s():
    assert core.AionConfig().to_dict() == reference.DEFAULTS
    assert {name: spec[2] for name, spec in core.STATE_SPEC.items()} == reference.INITIAL_STATE


def test_spec_version_is_written_once_and_carried_everywhere():
    """The spec's header, every vector file and the error-case file name SPEC_VERSION; the
    spec's Changes section has an entry for it."""
    from aion_conformance.spec import SPEC_VERSION

    spec = (Path(__file__).parent.parent / "docs" / "spec.md").read_text()
    assert spec.splitlines()[0] == f"# AION: normative specification (version {SPEC_VERSION})"
    assert f"\n### {SPEC_VERSION} (from " in spec.split("\n## Changes\n", 1)[1]
    versions = {p.name: json.loads(p.read_text())["spec_version"] for p in VECTOR_DIR.glob("*.json")}
    assert set(versions.values()) == {SPEC_VERSION}, versions


def test_a_driver_of_another_spec_version_gets_a_note_not_a_failure():
    from aion_conformance.drivers.protocol import spec_version_note
    from aion_conformance.spec import SPEC_VERSION

    class Old(ReferenceDriver):
        spec_version = "1"

    assert spec_version_note(ReferenceDriver(), SPEC_VERSION) is None
    assert spec_version_note(type("Now", (ReferenceDriver,), {"spec_version": SPEC_VERSION})(), SPEC_VERSION) is None
    note = spec_version_note(Old(), SPEC_VERSION)
    assert "spec version 1;" in note and SPEC_VERSION in note


def test_a_driver_without_complex_dtypes_skips_the_complex_error_cases():
    from aion_conformance.runner import run_call_errors

    class NoComplex(ReferenceDriver):
        has_complex = False

    results = run_call_errors(NoComplex())
    skipped = {r.case for r in results if r.status == "skip"}
    assert skipped and all("complex" in name for name in skipped)
    assert all(r.status == "pass" for r in results if r.case not in skipped)
