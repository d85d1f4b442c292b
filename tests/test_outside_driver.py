"""The outside driver of docs/conformance.md, taken from the page, in a venv with only our wheel.

The page's block that starts ``# aion_numpy_driver.py`` (AION written from the spec in plain
numpy, "A complete outside driver") is written to a file as a reader would save it, and run in
a fresh venv holding numpy, array-api-compat and ``aion-residual[conformance]`` (hypothesis),
nothing else, through both command lines as the page gives them: every check passes (the
trajectory, both checkpoint directions and section 9's loads among them), the fuzzer finds no
disagreement, and the fuzzer without ``--only`` skips the built-ins that are not installed with a note. Uses
tests/test_install.py's wheel, pip and venv fixtures (the wheel built once per module).
"""

import json
import time
from pathlib import Path

from markdown_it import MarkdownIt

from test_install import CLASH, IMPORTS, _run, dists, pip, scratch, venv, wheel  # noqa: F401 - fixtures

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
MODULE, CLASS, NAME = "aion_numpy_driver", "NumpyAion", "numpy-aion"
#: Examples the fuzzer draws here (the page's command says 200; 50 keep this test short).
EXAMPLES = 50


def driver_source() -> str:
    """The page's driver block, exactly as written there."""
    found = [tok.content for tok in MarkdownIt("commonmark").parse(DOC.read_text(encoding="utf-8"))
             if tok.type == "fence" and tok.info.strip() == "python"
             and tok.content.startswith(f"# {MODULE}.py")]
    assert len(found) == 1, f"{DOC}: expected one python block starting '# {MODULE}.py', found {len(found)}"
    return found[0]


def test_the_docs_driver_passes_every_check_in_a_numpy_only_venv(request, tmp_path):
    installer, built, make_venv = (request.getfixturevalue(name) for name in ("pip", "wheel", "venv"))
    t0 = time.perf_counter()
    py = make_venv("venv-outside")
    log = installer.install(py, f"{built}[conformance]")
    assert not CLASH.search(log), log
    t1 = time.perf_counter()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / f"{MODULE}.py").write_text(driver_source(), encoding="utf-8")
    env = {"PYTHONPATH": str(tmp_path / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    spec = f"{MODULE}:{CLASS}"

    probe = _run([py, "-c", "import importlib.util, sys; import hypothesis, numpy, array_api_compat;"
                  "sys.exit(str([n for n in sys.argv[1:] if importlib.util.find_spec(n)]) if any("
                  "importlib.util.find_spec(n) for n in sys.argv[1:]) else 0)",
                  "matplotlib", "array_api_strict", *IMPORTS], cwd=tmp_path)
    assert probe.returncode == 0, probe.stdout + probe.stderr

    proc = _run([py, "-m", "aion_conformance", "--only", NAME, "--driver", spec, "--no-bench",
                 "--out", tmp_path / "report"], cwd=tmp_path, **env)
    t2 = time.perf_counter()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report" / "conformance.json").read_text())
    assert [run["driver"] for run in report["runs"]] == [NAME]
    results = report["runs"][0]["results"]
    assert {r["status"] for r in results} == {"pass"}, [r for r in results if r["status"] != "pass"]
    checks = {}
    for r in results:
        checks[r["check"]] = checks.get(r["check"], 0) + 1
    assert checks["trajectory"] == 1 and checks["checkpoint"] == 2 and checks["portable"] == 15, checks
    vectors = [f for f in (DOC.parents[1] / "conformance" / "vectors").glob("*.json") if f.name != "errors.json"]
    assert checks["vector"] == len(vectors), checks  # every vector, in the default execution
    assert checks["config_error"] > 0 and checks["call_error"] > 0, checks

    proc = _run([py, "-m", "aion_conformance.fuzz", "--only", NAME, "--driver", spec, "--examples", EXAMPLES,
                 "--out", tmp_path / "fuzz"], cwd=tmp_path, **env)
    t3 = time.perf_counter()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (fuzzed,) = json.loads((tmp_path / "fuzz" / "fuzz.json").read_text())
    assert fuzzed["driver"] == NAME and fuzzed["failure"] is None and fuzzed["examples"] == EXAMPLES, fuzzed

    # Without --only: the built-ins that are not installed here are skipped, each with a note.
    proc = _run([py, "-m", "aion_conformance.fuzz", "--driver", spec, "--examples", 10,
                 "--out", tmp_path / "fuzz-all"], cwd=tmp_path, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped array-api-strict: not installed (no module array_api_strict)" in proc.stdout, proc.stdout
    assert "skipped torch: not installed" in proc.stdout, proc.stdout
    ran = [r["driver"] for r in json.loads((tmp_path / "fuzz-all" / "fuzz.json").read_text())]
    assert ran == ["numpy", NAME], ran
    print(f"\n[outside] venv set up in {t1 - t0:.1f} s; suite {t2 - t1:.1f} s ({len(results)} checks), fuzz "
          f"{t3 - t2:.1f} s ({EXAMPLES} examples), fuzz of every installed driver {time.perf_counter() - t3:.1f} s")
