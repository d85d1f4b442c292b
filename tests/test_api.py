"""One API across adapters: the same constructor arguments, ``config`` attribute and annotations.

The adapters, and what a test needs to drive each, are listed in ``tests/frameworks.py``.
"""

import importlib
import inspect

import numpy as np
import pytest

import aion_core as core
import frameworks
from frameworks import APIS

COMMON = ["alpha0", "beta", "ema_gamma", "epsilon", "k_update", "sync_ratio"]
DEFAULTS = core.AionConfig().to_dict()
ADAPTERS = frameworks.params(APIS.values())


def _adapter(name):
    return importlib.import_module(APIS[name].module)


def _branch(adapter):
    """A 4 -> 4 branch layer of the adapter's framework."""
    return APIS[adapter].branch()


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("cls, leading", [("AionResidual", []), ("AionScale", []), ("AionBlock", ["layer", "dim"])])
def test_constructor_arguments_are_the_same(adapter, cls, leading):
    params = list(inspect.signature(getattr(_adapter(adapter), cls)).parameters.values())
    names = [p.name for p in params]
    assert names[:len(leading) + len(COMMON)] == leading + COMMON, names
    for p in params[len(leading):len(leading) + len(COMMON)]:
        assert p.kind is p.POSITIONAL_OR_KEYWORD and p.default == DEFAULTS[p.name], p
        assert p.annotation in ("float", "int", "bool", float, int, bool), p
    assert set(names[len(leading) + len(COMMON):]) <= APIS[adapter].own


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_config_attribute_holds_the_validated_hyper_parameters(adapter):
    m = _adapter(adapter)
    want = core.AionConfig(0.2, 0.3, 0.9, 1e-6, 2, False)
    assert m.AionResidual(0.2, 0.3, 0.9, 1e-6, 2, False).config == want
    assert m.AionBlock(_branch(adapter), 4, 0.2, 0.3, 0.9, 1e-6, 2, False).config == want
    assert m.AionResidual(sync_ratio=np.bool_(False)).config.sync_ratio is False
    with pytest.raises(ValueError, match="alpha0"):
        m.AionResidual(alpha0=-1.0)
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="^sync_ratio must be a bool"):
            m.AionResidual(sync_ratio=bad)
        with pytest.raises(TypeError, match="^sync_ratio must be a bool"):
            m.AionBlock(_branch(adapter), 4, sync_ratio=bad)


@pytest.mark.parametrize("adapter, method", frameworks.params(APIS.values(), "call"))
def test_call_signatures_are_annotated(adapter, method):
    m = _adapter(adapter)
    for cls in (m.AionResidual, m.AionScale, m.AionBlock):
        sig = inspect.signature(getattr(cls, method))
        assert sig.return_annotation is not inspect.Signature.empty, (cls, method)
        assert all(p.annotation is not p.empty for p in sig.parameters.values()
                   if p.name != "self" and p.kind is not p.VAR_KEYWORD), (cls, method, sig)


def _call_block(adapter, block, a):
    """Run ``block`` on the numpy array ``a`` as the framework's array."""
    return APIS[adapter].run(block, a)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("bad, error, message", [
    (np.ones((2, 3), np.float32), ValueError, r"x.shape\[-1\] must equal dim=4, got shape \(2, 3\)"),
    (np.ones((), np.float32), ValueError, "x must have at least one axis"),
    (np.ones((2, 4), np.int32), TypeError, "x must have a floating dtype"),
])
def test_block_input_errors_are_the_same_everywhere(adapter, bad, error, message):
    block = _adapter(adapter).AionBlock(_branch(adapter), 4)
    with pytest.raises(error, match=message):
        _call_block(adapter, block, bad)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("dim, error", [(0, ValueError), (True, TypeError), (4.0, TypeError)])
def test_block_dim_is_validated_alike(adapter, dim, error):
    with pytest.raises(error, match="dim must be"):
        _adapter(adapter).AionBlock(_branch(adapter), dim)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_block_takes_a_numpy_integer_dim(adapter):
    assert _adapter(adapter).AionBlock(_branch(adapter), np.int64(4)).config == core.AionConfig()
