"""The conformance report: a driver x check table, as text, JSON and Markdown."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

from aion_conformance.drivers.protocol import FLOAT_DTYPES, PROTOCOL_VERSION
from aion_conformance.spec import SPEC_VERSION

#: The checks the suite runs on every driver; any other is a driver's own (its extra_checks),
#: whose worst relative deviation the table shows beside the vectors' errors.
SUITE_CHECKS = ("vector", "config_error", "call_error", "portable", "trajectory", "checkpoint")


def _summary(run: dict) -> dict:
    by_check = {}
    for r in run["results"]:
        row = by_check.setdefault(r["check"], {"pass": 0, "fail": 0, "skip": 0, "max_abs": 0.0,
                                               "max_rel": 0.0, "failures": []})
        row[r["status"]] += 1
        row["max_abs"] = max(row["max_abs"], r["max_abs"])
        row["max_rel"] = max(row["max_rel"], r["max_rel"])
        if r["status"] == "fail":
            row["failures"].append(f"{r['case']}: " + "; ".join(r["messages"][:3]))
    return by_check


def _per_dtype(run: dict) -> dict:
    out = {}
    for r in run["results"]:
        if r["check"] == "vector" and r["status"] == "pass":
            d = out.setdefault(r["dtype"], [0.0, 0.0])
            d[0], d[1] = max(d[0], r["max_abs"]), max(d[1], r["max_rel"])
    return out


#: The columns of the execution matrix: the parts of a vector check (see ``CheckResult.parts``).
PARTS = ("train fwd", "train bwd", "eval fwd", "eval bwd")


def matrix(runs: list[dict]) -> list[str]:
    """The execution matrix: per driver, execution and case dtype, the worst relative error of
    each part (train/eval x forward/backward) over the vectors run, and the call-error cases."""
    lines = ["| driver | execution | dtype | " + " | ".join(PARTS) + " | call errors |",
             "|---|---|---|" + "---|" * (len(PARTS) + 1)]
    for run in runs:
        by_execution: dict[str, list[dict]] = {}
        for r in run.get("results", []):
            if r["check"] in ("vector", "call_error"):
                by_execution.setdefault(r.get("execution", "default"), []).append(r)
        for execution, results in by_execution.items():
            errors = [r for r in results if r["check"] == "call_error"]
            failed = sum(r["status"] == "fail" for r in errors)
            error_cell = "-" if not errors else f"**{failed} FAIL**" if failed else f"{len(errors)} pass"
            not_run = [m for r in results if r["status"] == "skip" for m in r["messages"] if m.startswith("not run")]
            if not_run and all(r["status"] == "skip" for r in results):
                lines.append(f"| {run['driver']} | {execution} | all | " + " | ".join([not_run[0]] * len(PARTS))
                             + f" | {not_run[0] if errors else '-'} |")
                continue
            vectors = [r for r in results if r["check"] == "vector" and r["status"] != "skip"]
            for dtype in sorted({r["dtype"] for r in vectors}, key=FLOAT_DTYPES.index):
                cells = [_part_cell([r for r in vectors if r["dtype"] == dtype], part) for part in PARTS]
                lines.append(f"| {run['driver']} | {execution} | {dtype} | " + " | ".join(cells) + f" | {error_cell} |")
                error_cell = ""
    return lines


def _part_cell(vectors: list[dict], part: str) -> str:
    seen = [r["parts"][part] for r in vectors if part in r.get("parts", {})]
    if not seen:
        return "-"
    worst = max(max_rel for max_rel, _ in seen)
    failures = sum(f for _, f in seen)
    return f"**FAIL** ({failures})" if failures else f"pass {worst:.1e}"


def write_report(runs: list[dict], outdir: Path, extra: list[str] = ()) -> bool:
    """Print the table and write ``conformance.json`` and ``conformance.md``; True if all passed."""
    checks = ["vector", "config_error", "call_error"]
    checks += sorted({r["check"] for run in runs for r in run["results"]} - set(checks))
    lines = ["| driver | " + " | ".join(checks) + " | max abs / rel error per dtype (vectors) |",
             "|---|" + "---|" * len(checks) + "---|"]
    ok, failures = True, []
    for run in runs:
        if run.get("crashed"):
            ok = False
            lines.append(f"| {run['driver']} | " + " | ".join(["CRASHED"] * len(checks)) + " | |")
            failures.append(f"{run['driver']} crashed:\n{run['crashed']}")
            continue
        summ = _summary(run)
        cells = []
        for c in checks:
            s = summ.get(c, {"pass": 0, "fail": 0, "skip": 0})
            cell = "-" if not any(s[k] for k in ("pass", "fail", "skip")) else f"{s['pass']} pass" + \
                (f", **{s['fail']} FAIL**" if s["fail"] else "") + (f", {s['skip']} skip" if s["skip"] else "")
            cells.append(cell)
            if s["fail"]:
                ok = False
                failures += [f"{run['driver']} {c}: {f}" for f in s["failures"]]
        errs = ", ".join(f"{d} {a:.1e} / {r:.1e}" for d, (a, r) in sorted(_per_dtype(run).items()))
        for own in sorted(set(summ) - set(SUITE_CHECKS)):
            row = summ[own]
            errs += f"; vs {own}: " + ("skipped" if row["skip"] and not (row["pass"] or row["fail"])
                                       else f"{row['max_rel']:.1e}")
        lines.append(f"| {run['driver']} | " + " | ".join(cells) + f" | {errs} |")
    versions = {k: v for run in runs for k, v in run.get("versions", {}).items()}
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    spec_line = f"Spec version {SPEC_VERSION} (driver protocol {PROTOCOL_VERSION})"
    notes = [f"Note: {n}" for run in runs for n in run.get("notes", [])]
    head = [f"# AION conformance report ({now})", "", spec_line, "", *notes, *([""] if notes else []),
            f"Device: {platform.machine()} CPU, {os.cpu_count()} cores (a GPU a backend ran on is in its "
            f"versions); Python {platform.python_version()}",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), ""]
    grid = ["", "## Execution matrix", "",
            "Worst relative error against the float64 reference over the vectors each execution runs "
            "(forward: output, stats, state; backward: gradients), at the tolerance of each case's dtype.",
            ""] + matrix(runs)
    tail = ([""] + ["Failures:"] + [f"- {f}" for f in failures] if failures else []) + [""] + list(extra)
    md = "\n".join(head + lines + grid + tail) + "\n"
    print("\n".join([spec_line, *notes, ""] + lines + grid))
    if failures:
        print("\nFailures:\n" + "\n".join(f"- {f}" for f in failures))
    print("\n" + "\n".join(extra))
    (outdir / "conformance.md").write_text(md)
    (outdir / "conformance.json").write_text(json.dumps({"date": now, "spec_version": SPEC_VERSION,
                                                               "protocol_version": PROTOCOL_VERSION,
                                                               "versions": versions, "runs": runs}, indent=1))
    print(f"\nreport: {outdir / 'conformance.md'}  ({'all passed' if ok else 'FAILED'})")
    return ok
