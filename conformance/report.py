"""The conformance report: a driver x check table, as text, JSON and Markdown."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

from aion_conformance.original import CHECK


def _gpu() -> str:
    try:
        import torch
    except ImportError:
        return "unknown (torch not installed)"
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


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
        if CHECK in summ:
            row = summ[CHECK]
            errs += f"; vs {CHECK}: " + ("skipped" if row["skip"] and not (row["pass"] or row["fail"])
                                         else f"{row['max_rel']:.1e}")
        lines.append(f"| {run['driver']} | " + " | ".join(cells) + f" | {errs} |")
    versions = {k: v for run in runs for k, v in run.get("versions", {}).items()}
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [f"# AION conformance report ({now})", "",
            f"Device: {platform.machine()} CPU, {os.cpu_count()} cores; GPU: {_gpu()}; "
            f"Python {platform.python_version()}",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), ""]
    tail = ([""] + ["Failures:"] + [f"- {f}" for f in failures] if failures else []) + [""] + list(extra)
    md = "\n".join(head + lines + tail) + "\n"
    print("\n".join(lines))
    if failures:
        print("\nFailures:\n" + "\n".join(f"- {f}" for f in failures))
    print("\n" + "\n".join(extra))
    (outdir / "conformance.md").write_text(md)
    (outdir / "conformance.json").write_text(json.dumps({"date": now, "versions": versions, "runs": runs}, indent=1))
    print(f"\nreport: {outdir / 'conformance.md'}  ({'all passed' if ok else 'FAILED'})")
    return ok
