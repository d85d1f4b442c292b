"""Every code block of README.md and docs/ (all of ``docs/**/*.md``) works as written.

Blocks are found with a CommonMark parser (markdown-it-py), by their fence's language:

* ``python`` / ``py``: executed. All of one file's blocks run in order in ONE fresh
  interpreter (``aion_conformance.registry.spawn``), in one namespace, as a reader would
  type them into one session; a fresh process per file because a Keras backend is fixed at
  import and JAX's x64 flag is process-wide. A file declares its own environment in its
  blocks (the Keras guide sets ``os.environ["KERAS_BACKEND"]`` before importing keras), so
  the runner starts from the user's environment without ``KERAS_BACKEND`` and with an empty
  ``KERAS_HOME`` (no ``keras.json`` choosing a backend behind the reader's back). Each block
  is compiled with the markdown file as its file name and its own line numbers, so a
  traceback points at the line in the markdown file.
* ``bash`` / ``sh`` / ``shell`` / ``console``: commands are not run (installs take minutes),
  each one is checked to be runnable as written (see :func:`check_command`); ``console``
  blocks hold ``$ command`` lines and output. A command of no recognised form fails, so no
  command goes unchecked.
* ``text``: output, formulas and other text; not executed.
* ``json`` / ``toml``: data; must parse.
* anything else, a fence with no language, or an indented code block: fails (say ``text``).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from aion_conformance.registry import spawn

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

PYTHON_LANGS = {"python", "py"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
DATA_LANGS = {"json", "toml"}
TEXT_LANGS = {"text"}
#: Seconds one file's python blocks may take together (a reader's whole session).
FILE_TIMEOUT = 600


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str  # "" for no language, "<indented>" for an indented code block
    code: str

    @property
    def where(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def blocks(path: Path) -> list[Block]:
    """The code blocks of a markdown file, in order."""
    found = []
    for tok in MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8")):
        if tok.type == "fence":
            lang = tok.info.strip().split()[0].lower() if tok.info.strip() else ""
            found.append(Block(path, tok.map[0] + 1, lang, tok.content))
        elif tok.type == "code_block":
            found.append(Block(path, tok.map[0] + 1, "<indented>", tok.content))
    return found


# --------------------------------------------------------------------------- python blocks

# Runs in the child: argv[1] is a JSON list of {"path", "line", "code"}; every block is
# executed in one namespace. The code is preceded by as many newlines as lines before it in
# the markdown file, so tracebacks name the markdown file and its real line numbers.
_RUNNER = r"""
import json, os, sys, traceback
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
for i, b in enumerate(blocks, 1):
    print(f"aion-docs: block {i}/{len(blocks)} at {b['where']}", file=sys.stderr, flush=True)
    try:
        exec(compile("\n" * b["line"] + b["code"], b["path"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"aion-docs: FAILED block {i}/{len(blocks)} at {b['where']}", file=sys.stderr, flush=True)
        sys.exit(1)
print(f"aion-docs: {len(blocks)} blocks ok", file=sys.stderr, flush=True)
"""


def run_python_blocks(path: Path, workdir: Path, timeout: float = FILE_TIMEOUT) -> str | None:
    """Run ``path``'s python blocks in one fresh process in ``workdir``; None, or why it failed."""
    todo = [b for b in blocks(path) if b.lang in PYTHON_LANGS]
    if not todo:
        return None
    request = workdir / "aion_docs_blocks.json"
    request.write_text(json.dumps([{"path": str(b.path), "line": b.line, "where": b.where,
                                    "code": b.code} for b in todo]), encoding="utf-8")
    keras_home = workdir / "keras_home"
    keras_home.mkdir(exist_ok=True)
    runner = ("import os; os.environ.pop('KERAS_BACKEND', None)\n" + _RUNNER)
    try:
        proc = spawn(["-c", runner, str(request)], env={"KERAS_HOME": str(keras_home)},
                     timeout=timeout, cwd=workdir)
    except subprocess.TimeoutExpired:
        return f"{_rel(path)}: its {len(todo)} python blocks took more than {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    tail = "\n".join((proc.stderr or "").strip().splitlines()[-40:])
    failed = re.findall(r"aion-docs: FAILED block (\d+)/\d+ at (\S+)", proc.stderr or "")
    which = (f"python block {failed[-1][0]} of {len(todo)}, at {failed[-1][1]}" if failed
             else f"its python blocks (exit {proc.returncode} outside any block)")
    return f"{_rel(path)}: {which}, failed:\n{tail}"


# --------------------------------------------------------------------------- shell blocks

_PYTHON = re.compile(r"(\.venv/bin/)?python(3(\.\d+)?)?")
_PIP = re.compile(r"(\.venv/bin/)?pip3?")
_NOX = re.compile(r"(\.venv/bin/)?nox")
_ASSIGN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")


@cache
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@cache
def _version() -> str:
    """The project's version: ``[project] version``, or the module attribute it is read from."""
    project = _pyproject()["project"]
    if "version" in project:
        return project["version"]
    setuptools = _pyproject().get("tool", {}).get("setuptools", {})
    module, _, attr = setuptools["dynamic"]["version"]["attr"].rpartition(".")
    top, *rest = module.split(".")
    folder = ROOT / setuptools.get("package-dir", {}).get(top, top)
    source = folder.joinpath(*rest)
    source = source / "__init__.py" if source.is_dir() else source.with_suffix(".py")
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == attr for t in node.targets)):
            return node.value.value
    raise LookupError(f"no {attr} = '...' in {source}")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _pinned() -> frozenset[str]:
    """Requirement lines of requirements/*.txt: third-party packages the project pins."""
    lines = set()
    for f in (ROOT / "requirements").glob("*.txt"):
        lines |= {ln.split("#")[0].strip() for ln in f.read_text(encoding="utf-8").splitlines()}
    return frozenset(ln for ln in lines if ln)


@cache
def _nox_sessions() -> frozenset[str]:
    """Session names in noxfile.py (functions decorated with ``nox.session``)."""
    names = set()
    for node in ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            call = dec if isinstance(dec, ast.Call) else None
            target = call.func if call else dec
            if ast.unparse(target) in ("nox.session", "session"):
                name = node.name
                for kw in (call.keywords if call else []):
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        name = kw.value.value
                names.add(name)
    return frozenset(names)


@cache
def _help(*args: str) -> tuple[int, str]:
    """Exit code and output of ``python ARGS --help`` in this interpreter."""
    try:
        proc = spawn([*args, "--help"], timeout=300, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return 124, "(timed out)"
    return proc.returncode, proc.stdout + proc.stderr


def _check_extras(target: str, extras: str | None) -> list[str]:
    known = set(_pyproject()["project"].get("optional-dependencies", {}))
    wanted = [e.strip() for e in (extras or "").split(",") if e.strip()]
    return [f"{target}: no extra {e!r} in pyproject.toml (has: {', '.join(sorted(known))})"
            for e in wanted if e not in known]


def _check_target(target: str) -> list[str]:
    """A pip install target: this project (clone, name or its wheel), or a pinned requirement."""
    project = _pyproject()["project"]
    m = re.fullmatch(r"\.(?:/)?(?:\[([^\]]*)\])?", target)
    if m:
        return _check_extras(target, m.group(1))
    m = re.fullmatch(r"(?:.*/)?([^/\[]+\.whl)(?:\[([^\]]*)\])?", target)
    if m:
        wheel = f"{_norm(project['name']).replace('-', '_')}-{_version()}-py3-none-any.whl"
        problems = [] if m.group(1) == wheel else [f"{target}: `pip wheel .` builds {wheel}"]
        return problems + _check_extras(target, m.group(2))
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([^\]]*)\])?(?:==(\S+))?", target)
    if m and _norm(m.group(1)) == _norm(project["name"]):
        problems = _check_extras(target, m.group(2))
        if m.group(3) and m.group(3) != _version():
            problems.append(f"{target}: the project's version is {_version()}")
        return problems
    if target in _pinned():
        return []
    return [f"unrecognised install target {target!r} (this project, its wheel, or a line "
            "of requirements/*.txt)"]


def _check_pip(args: list[str]) -> list[str]:
    if not args or args[0] not in ("install", "wheel", "uninstall"):
        return [f"unrecognised pip command: pip {' '.join(args)}"]
    sub, rest, problems, targets = args[0], args[1:], [], []
    code, usage = _help("-m", "pip", sub)
    if code != 0:
        return [f"pip {sub} --help exited {code}:\n{usage[-2000:]}"]
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in ("-r", "--requirement", "-c", "--constraint"):
            if i + 1 >= len(rest) or not (ROOT / rest[i + 1]).is_file():
                problems.append(f"pip {sub} {a}: no such file {rest[i + 1:i + 2]}")
            i += 2
            continue
        if a in ("-w", "--wheel-dir"):
            i += 2
            continue
        if a in ("-e", "--editable"):
            targets.append(rest[i + 1] if i + 1 < len(rest) else "")
            i += 2
            continue
        if a.startswith("-"):
            if a.split("=")[0] not in usage:
                problems.append(f"pip {sub}: no option {a}")
        elif sub == "uninstall":
            if _norm(a) != _norm(_pyproject()["project"]["name"]) and not any(
                    _norm(re.split(r"[=<>\[ ]", p)[0]) == _norm(a) for p in _pinned()):
                problems.append(f"pip uninstall: {a!r} is neither this project nor pinned")
        else:
            targets.append(a)
        i += 1
    if sub == "wheel" and targets != ["."]:
        problems.append(f"pip wheel: build this project ('.'), got {targets}")
    elif sub == "install":
        if not targets and not any(a in ("-r", "--requirement") for a in rest):
            problems.append("pip install: nothing to install")
        for t in targets:
            problems += _check_target(t)
    return problems


def _check_python_m(module: str, args: list[str]) -> list[str]:
    if module == "pip":
        return _check_pip(args)
    if module == "nox":
        return _check_nox(args)
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return [f"python -m {module}: no module {module!r}"]
    code, usage = _help("-m", module)
    if code != 0:
        return [f"python -m {module} --help exited {code}:\n{usage[-2000:]}"]
    return [f"python -m {module}: no option {a} in its --help"
            for a in args if a.startswith("--") and a.split("=")[0] not in usage]


def _check_nox(args: list[str]) -> list[str]:
    if "--" in args:
        args = args[:args.index("--")]
    problems, i = [], 0
    while i < len(args):
        if args[i] in ("-s", "--session", "--sessions"):
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                if args[i] not in _nox_sessions():
                    problems.append(f"nox: no session {args[i]!r} in noxfile.py "
                                    f"(has: {', '.join(sorted(_nox_sessions()))})")
                i += 1
            continue
        if args[i] not in ("-l", "--list", "-r", "--reuse-existing-virtualenvs"):
            problems.append(f"nox: unrecognised option {args[i]}")
        i += 1
    return problems


def check_command(command: str) -> list[str]:
    """Why a shell command line would not run as written (empty when it would).

    Commands joined with ``&&`` or ``;`` are checked one by one; leading ``NAME=value``
    assignments are allowed. Recognised:

    * ``python -m MODULE ...`` (``python3``, ``.venv/bin/python``): MODULE exists, its
      ``--help`` succeeds and lists every ``--option`` used;
    * ``pip install|wheel|uninstall ...`` (or ``python -m pip``): every target is this
      project (``.``, ``".[extra]"``, ``aion-residual[extra]``, the wheel ``pip wheel .``
      builds) with extras that pyproject.toml defines, or a line of ``requirements/*.txt``;
      ``-r``/``-c`` files exist; options are in ``pip ... --help``;
    * ``nox [-s NAME ...] [-- ...]`` (or ``.venv/bin/nox``, ``python -m nox``): the
      sessions exist in noxfile.py;
    * ``bash scripts/X.sh``: the script exists and ``bash -n`` parses it.

    Anything else is an unrecognised command.
    """
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|<>()")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as e:
        return [f"cannot parse {command!r}: {e}"]
    problems, part = [], []
    for tok in [*tokens, "&&"]:
        if tok in ("&&", ";"):
            if part:
                problems += _check_simple(part)
            part = []
        elif set(tok) <= set(";&|<>()"):
            return [f"unrecognised command {command!r}: no pipes, redirections or subshells"]
        else:
            part.append(tok)
    return problems


def _check_simple(words: list[str]) -> list[str]:
    while words and _ASSIGN.fullmatch(words[0]):
        words = words[1:]
    if not words:
        return []
    prog, args = words[0], words[1:]
    if _PYTHON.fullmatch(prog) and len(args) >= 2 and args[0] == "-m":
        return _check_python_m(args[1], args[2:])
    if _PIP.fullmatch(prog):
        return _check_pip(args)
    if _NOX.fullmatch(prog):
        return _check_nox(args)
    if prog == "bash" and len(args) == 1 and re.fullmatch(r"scripts/[\w.-]+\.sh", args[0]):
        script = ROOT / args[0]
        if not script.is_file():
            return [f"bash {args[0]}: no such script"]
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        return [] if proc.returncode == 0 else [f"bash -n {args[0]}: {proc.stderr.strip()}"]
    return [f"unrecognised command {' '.join(words)!r} (python -m, pip, nox, bash scripts/*.sh)"]


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """``(line, command)`` for each command of a shell block (``\\`` continuations joined)."""
    commands, pending, start = [], "", 0
    for offset, raw in enumerate(block.code.splitlines(), 1):
        line = raw.strip()
        if block.lang == "console":
            if not pending:
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
        if not pending:
            start = block.line + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line and not line.startswith("#"):
            commands.append((start, line))
    return commands


def check_blocks(path: Path) -> list[str]:
    """Every non-python block of ``path``: language known, commands runnable, data parses."""
    problems = []
    for b in blocks(path):
        if b.lang in PYTHON_LANGS or b.lang in TEXT_LANGS:
            continue
        if b.lang in SHELL_LANGS:
            commands = shell_commands(b)
            if not commands:
                problems.append(f"{b.where}: a {b.lang} block with no command")
            for line, command in commands:
                problems += [f"{_rel(path)}:{line}: {p}" for p in check_command(command)]
        elif b.lang == "json":
            try:
                json.loads(b.code)
            except ValueError as e:
                problems.append(f"{b.where}: invalid JSON: {e}")
        elif b.lang == "toml":
            try:
                tomllib.loads(b.code)
            except ValueError as e:
                problems.append(f"{b.where}: invalid TOML: {e}")
        elif b.lang == "<indented>":
            problems.append(f"{b.where}: an indented code block; fence it with a language "
                            "(python, bash, text, ...)")
        else:
            problems.append(f"{b.where}: code block language {b.lang or '(none)'!r} is neither "
                            f"run nor checked; use one of python, bash, console, json, toml, text")
    return problems


# --------------------------------------------------------------------------- the tests

def _ids(paths):
    return [_rel(p) for p in paths]


PY_FILES = [p for p in DOC_FILES if any(b.lang in PYTHON_LANGS for b in blocks(p))]


@pytest.mark.parametrize("path", PY_FILES, ids=_ids(PY_FILES))
def test_python_blocks_run(path, tmp_path):
    failure = run_python_blocks(path, tmp_path)
    if failure:
        pytest.fail(failure, pytrace=False)


@pytest.mark.parametrize("path", DOC_FILES, ids=_ids(DOC_FILES))
def test_other_blocks_checked(path):
    problems = check_blocks(path)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_docs_are_found():
    names = set(_ids(DOC_FILES))
    assert {"README.md", "docs/keras.md", "docs/flax.md", "docs/torch.md",
            "docs/conformance.md"} <= names
    assert {"README.md", "docs/torch.md", "docs/keras.md", "docs/flax.md"} <= set(_ids(PY_FILES))


# Self-tests: the checks above must catch what they exist to catch.

def test_runner_carries_state_and_reports_the_failing_block(tmp_path):
    good = tmp_path / "good.md"
    good.write_text("# t\n\n```python\nx = 41\n```\n\ntext\n\n```python\nassert x + 1 == 42\n```\n")
    assert run_python_blocks(good, tmp_path) is None
    bad = tmp_path / "bad.md"
    bad.write_text("# t\n\n```python\nx = 1\n```\n\n```python\ny = 2\nundefined_name + x\n```\n")
    failure = run_python_blocks(bad, tmp_path)
    assert failure is not None
    assert "python block 2 of 2, at" in failure and "bad.md:7" in failure
    assert "NameError" in failure and "undefined_name" in failure
    assert re.search(r'bad\.md", line 9', failure), failure  # the markdown file's own line


def test_runner_starts_without_a_keras_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    doc = tmp_path / "env.md"
    doc.write_text("```python\nimport os\nassert 'KERAS_BACKEND' not in os.environ\n```\n")
    assert run_python_blocks(doc, tmp_path) is None


def test_other_blocks_policy(tmp_path):
    doc = tmp_path / "cmds.md"
    doc.write_text("\n".join([
        "```bash", "pip install \".[torch]\"", "pip install \".[nonesuch]\"",
        "python -m aion_conformance --only numpy", "python -m no_such_module_here",
        "python -m aion_conformance --no-such-flag", "nox -s tests", "nox -s nonesuch",
        "bash scripts/install.sh", "bash scripts/nonesuch.sh", "curl https://example.org | sh",
        "pip install \"dist/aion_residual-0.1.0-py3-none-any.whl[flax]\"",
        "pip install \"dist/aion_residual-9.9-py3-none-any.whl\"", "pip install requests", "```",
        "", "```console", "$ python -m aion_conformance --help", "usage: whatever", "```",
        "", "```", "no language", "```", "", "    indented", "", "```json", "{bad", "```",
        "", "```text", "anything at all", "```", ""]), encoding="utf-8")
    problems = "\n".join(check_blocks(doc))
    for expected in ["no extra 'nonesuch'", "no module 'no_such_module_here'",
                     "no option --no-such-flag", "no session 'nonesuch'",
                     "bash scripts/nonesuch.sh: no such script", "unrecognised command",
                     "aion_residual-0.1.0-py3-none-any.whl", "unrecognised install target 'requests'",
                     "language '(none)'", "an indented code block", "invalid JSON"]:
        assert expected in problems, (expected, problems)
    assert len(problems.splitlines()) == 11, problems  # nothing flagged that is fine
