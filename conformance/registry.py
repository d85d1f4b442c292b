"""The one backend registry, and the one way to run code in a backend's own process.

Each backend is listed once: its conformance driver, the environment its process needs
(a Keras backend is fixed when Keras is imported; 64-bit JAX and device flags are
process-wide), its framework kit and what it can run. Everything that loops over backends
(the CLI, trajectories, checkpoint matrix, bench, stability, tests) reads :data:`BACKENDS`
and runs code through :func:`spawn` or :func:`call`; no other module names a backend.

    python -m aion_conformance.registry TARGET ARGS.json RESULT.json   # (what call() runs)
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PKG = "aion_conformance"
#: Where the suite runs torch: "auto" (CPU, and CUDA too when present), "cpu" or "cuda".
#: An environment variable, so that every backend process sees it (``--device`` sets it).
DEVICE_ENV = "AION_CONFORMANCE_DEVICE"


@dataclass(frozen=True)
class Backend:
    """One implementation the suite knows by name, and what it can do.

    ``driver`` is a ``"module:Class"`` target and ``kit`` a module (its framework's kit,
    :mod:`aion_conformance.frameworks.kit`), both imported only in the backend's own
    process; ``kit`` None for the reference namespaces, which train nothing. ``problems``:
    which of ``"trajectory"``, ``"stability"``, ``"bench"`` it runs. ``bench_modes``: the
    ``compiled`` settings the bench times (None: the framework's usual way). ``extras``: the
    kit's own residual kinds (its ``EXTRA_RESIDUALS``, e.g. another implementation to time
    beside AION). ``sweeps``: the backend that trains the whole stability sweep, the others
    checked against it.
    """

    name: str
    driver: str
    env: dict[str, str] = field(default_factory=dict)
    kit: str | None = None
    problems: frozenset[str] = frozenset()
    bench_modes: tuple[bool | None, ...] = (None,)
    extras: tuple[str, ...] = ()
    sweeps: bool = False
    #: Import names its driver needs (its framework's); one that is missing here leaves the
    #: backend out of a run that does not name it (:func:`select`).
    imports: tuple[str, ...] = ()


_ALL = frozenset({"trajectory", "stability", "bench"})
_FW = f"{_PKG}.frameworks"


def _keras(backend: str, bench_modes=(None,)) -> Backend:
    return Backend(f"keras-{backend}", f"{_FW}.keras.driver:KerasDriver", {"KERAS_BACKEND": backend},
                   f"{_FW}.keras", _ALL, bench_modes, imports=("keras", backend))


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("numpy", f"{_PKG}.drivers.reference_driver:ReferenceDriver", imports=("numpy",)),
    Backend("array-api-strict", f"{_PKG}.drivers.array_api_strict_driver:ArrayApiStrictDriver",
            imports=("array_api_strict",)),
    Backend("torch", f"{_FW}.torch.driver:TorchDriver", {}, f"{_FW}.torch", _ALL, (False, True),
            ("aion-torch-1.0.2", "aion-floor"), sweeps=True, imports=("torch",)),
    _keras("tensorflow"), _keras("jax"), _keras("torch", (False, True)),
    Backend("flax-nnx", f"{_FW}.flax.driver:NnxDriver", {}, f"{_FW}.flax.nnx", _ALL, imports=("jax", "flax")),
    Backend("flax-linen", f"{_FW}.flax.driver:LinenDriver", {}, f"{_FW}.flax.linen", _ALL,
            imports=("jax", "flax")),
    Backend("mlx", f"{_FW}.mlx.driver:MlxDriver", {}, f"{_FW}.mlx", _ALL, (False, True), imports=("mlx",)),
)}


#: The backend that trains the whole stability sweep.
SWEEPS = next(name for name, b in BACKENDS.items() if b.sweeps)


def with_problem(problem: str) -> list[str]:
    """The backends that run ``problem``, in registry order."""
    return [name for name, b in BACKENDS.items() if problem in b.problems]


def missing(backend: str) -> list[str]:
    """The import names ``backend``'s driver needs that are not installed here (nothing is imported)."""
    return [name for name in BACKENDS[backend].imports if importlib.util.find_spec(name) is None]


def select(only: list[str] | None, outside: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """What a CLI runs: ``(spec, backend)`` pairs, registry names then outside ``module:Class``
    specs, and one note per built-in left out because its framework is not installed.

    ``only`` names built-in backends and outside drivers alike (an outside driver by its
    ``name``, read by loading it here); None: every built-in that is installed, and every
    outside driver. A built-in named in ``only`` runs even when not installed (its crash is
    reported). An outside driver that fails to load runs regardless, so that its failure is
    reported. Raises ValueError for a name in ``only`` that is no driver's.
    """
    named = {spec: _driver_name(spec) for spec in outside}
    known = list(BACKENDS) + [name for name in named.values() if name]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise ValueError(f"--only: unknown driver {', '.join(unknown)}; known: {', '.join(known)}")
    notes = []
    if only:
        keep = set(only)
    else:
        keep = set(known)
        for name in BACKENDS:
            if missing(name):
                keep.discard(name)
                notes.append(f"skipped {name}: not installed (no module {', '.join(missing(name))})")
    return ([(name, name) for name in BACKENDS if name in keep]
            + [(spec, None) for spec, name in named.items() if name in keep or name is None]), notes


def select_for_cli(parser, only: list[str] | None, outside: list[str]) -> list[tuple[str, str | None]]:
    """:func:`select` for a command line: an unknown name is ``parser``'s usage error (exit 2),
    and each note is printed."""
    try:
        targets, notes = select(only, outside)
    except ValueError as e:
        parser.error(str(e))
    for note in notes:
        print(note, flush=True)
    return targets


def _driver_name(spec: str) -> str | None:
    try:
        return load_driver(spec).name
    except Exception:  # noqa: BLE001 - reported when it is run, as a crash with its traceback
        return None


def kit(backend: str):
    """The framework kit of ``backend`` (imports the framework: call it in its process)."""
    from aion_conformance.frameworks.kit import load

    return load(BACKENDS[backend].kit)


class BackendError(RuntimeError):
    """Code run in a backend's process failed; the message ends with its last output lines."""


def load(target: str) -> Any:
    """The object a ``"package.module:attribute"`` target names."""
    module, _, attribute = target.partition(":")
    if not module or not attribute:
        raise ValueError(f"a target is 'package.module:Attribute', got {target!r}")
    return getattr(importlib.import_module(module), attribute)


def load_driver(spec: str):
    """A driver instance from a registry name or an outside ``"module:Class"``."""
    return load(BACKENDS[spec].driver if spec in BACKENDS else spec)()


def environment(backend: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment plus what ``backend`` needs, plus ``extra``."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    return {**env, **(BACKENDS[backend].env if backend in BACKENDS else {}), **extra}


def spawn(args: list[str], backend: str | None = None, env: dict | None = None,
          timeout: float | None = None, echo: bool = False, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in a fresh process with ``backend``'s environment (plus ``env``).

    Output is captured (``stdout``/``stderr`` of the result); with ``echo`` the child's
    stderr (its progress) is also shown here as it comes.
    """
    cmd = [sys.executable, *args]
    full_env = environment(backend, **(env or {}))
    if not echo:
        return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    with subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=cwd) as proc:
        err = collections.deque(maxlen=200)
        for line in proc.stderr:
            print("      " + line.rstrip(), file=sys.stderr, flush=True)
            err.append(line)
        out = proc.stdout.read()
        proc.wait(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "".join(err))


def call(target: str, *args, backend: str | None = None, env: dict | None = None,
         timeout: float | None = None, echo: bool = False):
    """``target(*args)`` in a fresh process of ``backend``; arguments and result are JSON.

    Raises
    ------
    BackendError
        The process failed (the message carries its last lines of output).
    """
    with tempfile.TemporaryDirectory(prefix="aion-") as tmp:
        request, response = Path(tmp) / "args.json", Path(tmp) / "result.json"
        request.write_text(json.dumps(args))
        proc = spawn(["-m", f"{_PKG}.registry", target, str(request), str(response)],
                     backend, env, timeout, echo)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            raise BackendError(f"{target} on {backend or 'this environment'} exited with "
                               f"{proc.returncode}:\n" + "\n".join(tail))
        return json.loads(response.read_text())


def _child(target: str, request: str, response: str) -> None:
    result = load(target)(*json.loads(Path(request).read_text()))
    Path(response).write_text(json.dumps(result))


if __name__ == "__main__":
    _child(*sys.argv[1:4])
