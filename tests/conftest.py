"""Markers and backend selection for the whole suite, applied here, from each test's path.

Tiers, one per test (select with ``-m``; ``noxfile.py`` has a session for each):

* ``unit``: runs in the pytest process (every test not listed below, the doctests too);
* ``integration``: starts processes: the conformance suite, fuzzing, the CLI, the docs'
  code, the distributed runs (``frameworks.INTEGRATION``);
* ``packaging``: builds and installs the package, or type-checks a user's script against it
  (``frameworks.PACKAGING``).

Framework markers (``torch``, ``keras``, ``flax``: ``tests/frameworks.py``): the tests in
``tests/<framework>/``, the doctests of its adapter, and every test parametrised over one of
its registry backends (a ``backend`` argument holding a registry name, or the ``backends``
marker that ``frameworks.params`` puts on a parameter).

``AION_TEST_BACKENDS=torch,numpy`` (registry names, comma-separated) narrows a run to those
backends: a parametrised test runs for them only, and the folders and doctests of a
framework none of whose backends is named are not collected (``tests/keras/`` runs on the
process's own Keras backend: it is collected only when that one is named). Tests of no
backend run as usual.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import frameworks

ROOT = Path(__file__).resolve().parents[1]


def _relative(path: Path) -> str | None:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None


def folder_framework(path: str) -> frameworks.Framework | None:
    """The framework whose tests folder or adapter folder holds ``path``."""
    for fw in frameworks.FRAMEWORKS:
        tops = (f"tests/{fw.name}", fw.folder, *fw.support.values())
        if any(path == top or path.startswith(top + "/") for top in tops):
            return fw
    return None


_SELECTED = pytest.StashKey[frozenset[str] | None]()


def pytest_configure(config: pytest.Config) -> None:
    try:
        config.stash[_SELECTED] = frameworks.selected()
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    chosen = config.stash.get(_SELECTED, None)
    path = _relative(collection_path)
    if chosen is None or path is None:
        return None
    fw = folder_framework(path)
    if fw is not None and not chosen & set(fw.process_backends()):
        return True
    return None


def _backends(item: pytest.Item, path: str | None) -> set[str]:
    """The registry backends ``item`` runs: its marker's, its ``backend`` argument's, its folder's."""
    marker = item.get_closest_marker("backends")
    if marker is not None:
        return set(marker.args)
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("backend") if callspec is not None else None
    if isinstance(backend, str) and backend in frameworks.ALL_BACKENDS:
        return {backend}
    fw = folder_framework(path) if path is not None else None
    return set(fw.process_backends()) if fw is not None else set()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.stash.get(_SELECTED, None)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        path = _relative(Path(item.path))
        item.add_marker(frameworks.tier(path) if path is not None else "unit")
        backends = _backends(item, path)
        for fw in frameworks.owners(backends):
            item.add_marker(fw.name)
        (drop if chosen is not None and backends and not backends & chosen else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
