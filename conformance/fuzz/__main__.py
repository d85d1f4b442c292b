"""``python -m aion_conformance.fuzz``: differential fuzzing of every driver against the float64 reference.

    python -m aion_conformance.fuzz                         # 200 examples per built-in driver
    python -m aion_conformance.fuzz --examples 2000 --only torch flax-nnx
    python -m aion_conformance.fuzz --driver mypkg.mod:MyDriver --every-execution
    python -m aion_conformance.fuzz --only mine --driver mypkg.mod:MyDriver   # the outside one alone
    python -m aion_conformance.fuzz --replay reports/fuzz/found_0123456789.json --only torch

Each driver runs in its own process on the same examples (``--seed``). A disagreement is
shrunk and saved under ``--out`` (default ``reports/fuzz``) as a vector file; the exit
status is 1 if any driver disagreed or crashed, 2 for a usage error (an unknown ``--only``
name), as ``python -m aion_conformance``'s. ``--only`` takes built-in names and outside
drivers by their ``name`` alike; without it, built-ins whose framework is not installed are skipped
with a one-line note. ``--replay`` runs a saved case on the drivers instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aion_conformance import registry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aion_conformance.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=200, help="examples per driver")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", metavar="NAME", help="drivers to fuzz, by name (built-in or outside)")
    p.add_argument("--driver", action="append", default=[], metavar="MODULE:CLASS",
                   help="an outside driver to fuzz as well (repeatable)")
    p.add_argument("--every-execution", action="store_true", help="each example under every execution")
    p.add_argument("--out", type=Path, default=Path("reports") / "fuzz")
    p.add_argument("--replay", type=Path, help="a saved case (found_*.json): run it on the drivers, no fuzzing")
    args = p.parse_args(argv)
    targets = registry.select_for_cli(p, args.only, args.driver)
    if args.replay is not None:
        return _replay(targets, args.replay, args.every_execution)
    results = []
    for i, (spec, backend) in enumerate(targets, 1):
        print(f"[{i}/{len(targets)}] {spec}: {args.examples} examples ...", flush=True)
        try:
            result = registry.call("aion_conformance.fuzz.runner:fuzz", spec, args.examples, args.seed,
                                   str(args.out), args.every_execution, True, backend=backend, echo=True)
        except registry.BackendError as e:
            print(f"    {spec} crashed:\n      " + str(e).replace("\n", "\n      "), flush=True)
            results.append({"driver": spec, "crashed": str(e), "failure": {"kind": "crash", "file": None,
                                                                          "messages": [str(e)]}})
            continue
        failure = result["failure"]
        counts = ", ".join(f"{n} {k}" for k, n in result["counts"].items())
        print(f"    {result['examples']} examples ({counts}) in {result['seconds']} s: "
              + ("no disagreement" if failure is None else f"DISAGREES ({failure['kind']}), saved {failure['file']}"
                 "\n      " + "\n      ".join(failure["messages"][:3])), flush=True)
        results.append(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(results, indent=1))
    return 1 if any(r["failure"] for r in results) else 0


def _replay(targets, path: Path, every_execution: bool) -> int:
    failing = 0
    for spec, backend in targets:
        try:
            messages = registry.call("aion_conformance.fuzz.runner:replay", spec, str(path), every_execution,
                                     backend=backend)
        except registry.BackendError as e:
            messages = [f"crashed: {e}"]
        failing += bool(messages)
        print(f"{spec}: " + ("agrees" if not messages else "DISAGREES\n  " + "\n  ".join(messages[:5])), flush=True)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
