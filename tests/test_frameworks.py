"""The test suite's own tables: tests/frameworks.py against the registry and the tree, the tiers of conftest.py."""

from pathlib import Path

import pytest

import frameworks

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_names_every_registry_backend_once():
    from aion_conformance import registry

    names = frameworks.ALL_BACKENDS
    assert sorted(names) == sorted(registry.BACKENDS) and len(set(names)) == len(names)


def test_every_framework_has_its_folders_and_its_marker(pytestconfig):
    registered = {line.split(":")[0].split("(")[0] for line in pytestconfig.getini("markers")}
    for fw in frameworks.FRAMEWORKS:
        assert (ROOT / "tests" / fw.name).is_dir() and fw.name in registered, fw.name
    for name, folder in frameworks.PACKAGES.items():
        assert (ROOT / folder / "__init__.py").is_file(), name
    assert {"unit", "integration", "packaging", "backends"} <= registered


def test_the_tier_lists_name_existing_files():
    missing = sorted(path for path in frameworks.INTEGRATION | frameworks.PACKAGING if not (ROOT / path).is_file())
    assert not missing, f"renamed or removed, update tests/frameworks.py: {missing}"


def test_each_test_has_one_tier(request):
    tiers = {m.name for m in request.node.iter_markers()} & {"unit", "integration", "packaging"}
    assert tiers == {"unit"}


@pytest.mark.parametrize("value, want", [("", None), (" , ", None), ("torch,numpy", {"torch", "numpy"}),
                                         (" keras-jax , flax-nnx ", {"keras-jax", "flax-nnx"})])
def test_the_selection_is_read_from_the_environment(monkeypatch, value, want):
    monkeypatch.setenv(frameworks.SELECT_ENV, value)
    assert frameworks.selected() == (None if want is None else frozenset(want))


def test_an_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv(frameworks.SELECT_ENV, "torch,tensorflow")
    with pytest.raises(ValueError, match="unknown backend.*tensorflow.*the registry has numpy"):
        frameworks.selected()
