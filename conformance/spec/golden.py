"""Golden vectors: the float64 reference's answers to :mod:`conformance.cases`, as small JSON files.

Forward values (outputs, stats, states) and gradients alike come from
:mod:`aion_conformance.spec.reference`, written from the spec without ``aion_core``.

``python -m aion_conformance.spec.golden`` rewrites ``conformance/vectors/``; the test suite checks
that the committed files are exactly what this produces. Non-finite numbers are written
as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` so the files stay standard JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aion_conformance.spec import SPEC_VERSION
from aion_conformance.spec.cases import CONFIG_ERRORS, call_error_cases, vector_cases
from aion_conformance.spec.json_numbers import decode, encode
from aion_conformance.spec.reference import reference_call, spec_config
from aion_conformance.spec.tolerance import round_to

#: The committed vector files (beside the package, where outside implementers find them).
VECTOR_DIR = Path(__file__).parent.parent / "vectors"


def expected_case(case: dict) -> dict:
    """Run the reference over one case's calls; the result is what the JSON file holds."""
    config = spec_config(case["config"])
    dtypes = case.get("input_dtypes") or case["dtype"]  # the inputs as rounded to these (spec section 10)
    state = dict(case["state"])
    calls = []
    for call in case["calls"]:
        result, state = reference_call(config, call["alpha0"], call["beta"], state, call["mode"],
                                       call["x"], call["y"], call["x_norm"], call["cotangent"], dtypes)
        calls.append({**call, "expected": {**result, "state": dict(state)}})
    mixed = {"input_dtypes": case["input_dtypes"]} if case.get("input_dtypes") else {}
    return {"spec_version": SPEC_VERSION,  # the spec version whose rules gave these answers
            "name": case["name"], "must": case.get("must", ""), "dtype": case["dtype"], **mixed,
            # sync_ratio acts between replicas only and a vector is one process: its config
            # keeps the keys it always had (outside drivers read them).
            "config": {k: v for k, v in config.items() if k != "sync_ratio"},
            "state": case["state"], "calls": calls}


def recast_case(case: dict, dtype: str) -> dict:
    """``case`` as an implementation sees it that casts its inputs to ``dtype`` (a Keras
    mixed policy): inputs and cotangents rounded to ``dtype``, the reference's answers anew."""
    calls = [{k: round_to(v, dtype) if k in ("x", "y", "x_norm", "cotangent") and v is not None else v
              for k, v in call.items() if k != "expected"} for call in case["calls"]]
    # An input that rounds to inf (float32 1e30 in float16) makes the call one with non-finite
    # data, whose gradients no vector compares (spec section 10).
    calls = [{**call, "cotangent": None} if not all(np.isfinite(call[k]).all() for k in ("x", "y", "x_norm")
                                                     if call[k] is not None) else call
             for call in calls]
    return expected_case({**case, "dtype": dtype, "input_dtypes": None, "calls": calls})


def render_all() -> dict[str, str]:
    """File name -> JSON text for every vector file."""
    files = {f"{c['name']}.json": expected_case(c) for c in vector_cases()}
    files["errors.json"] = {
        "spec_version": SPEC_VERSION,
        "config_errors": [{"config": c, "error": e} for c, e in CONFIG_ERRORS],
        "call_errors": [{**c, "x": c["x"].shape, "y": c["y"].shape,
                         "x_norm": None if c["x_norm"] is None else c["x_norm"].shape}
                        for c in call_error_cases()],
    }
    return {name: _dumps(encode(body)) + "\n" for name, body in files.items()}


def _dumps(value, indent: str = "") -> str:
    """JSON with one line per array and per scalar field: diffable and readable."""
    if isinstance(value, dict):
        inner = indent + "  "
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}" if items else "{}"
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, allow_nan=False, separators=(", ", ": "))


def load_all() -> list[dict]:
    """The committed vector cases, decoded."""
    return [decode(json.loads(p.read_text())) for p in sorted(VECTOR_DIR.glob("*.json"))
            if p.name != "errors.json"]


if __name__ == "__main__":
    VECTOR_DIR.mkdir(exist_ok=True)
    for stale in VECTOR_DIR.glob("*.json"):
        stale.unlink()
    for name, text in render_all().items():
        (VECTOR_DIR / name).write_text(text)
    print(f"wrote {len(list(VECTOR_DIR.glob('*.json')))} files to {VECTOR_DIR}")
