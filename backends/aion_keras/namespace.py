"""The slice of the array API that :mod:`aion_core` uses, backed by ``keras.ops``.

TensorFlow tensors are not array-API objects and ``keras.ops`` is not an array-API
namespace, so the adapter hands the core this small module as ``xp``. It holds no math
of its own: each function forwards to the ``keras.ops`` function of the same meaning,
so one code path serves the TensorFlow, JAX and PyTorch backends alike.

>>> import keras
>>> from aion_keras import namespace as xp
>>> t = keras.ops.ones((2, 3), dtype="float16")
>>> xp.isdtype(t.dtype, "real floating"), t.dtype == xp.float16, t.dtype == xp.float32
(True, True, False)
>>> keras.backend.standardize_dtype(xp.astype(t, xp.float32).dtype)
'float32'
"""

from __future__ import annotations

import math

import keras
from keras import ops


class KerasDType(str):
    """A dtype name that compares equal to every backend's spelling of that dtype.

    The core tests ``t.dtype == xp.float64``; ``t.dtype`` is a ``tf.DType``,
    ``torch.dtype`` or ``numpy.dtype`` depending on the backend, and only some of
    those compare equal to a plain string. Comparison goes through
    ``keras.backend.standardize_dtype`` so all three agree.
    """

    __hash__ = str.__hash__

    def __new__(cls, name: str):
        dtype = super().__new__(cls, name)
        # The name as a plain str: torch.compile traces a str subclass's own value as
        # something keras.backend.standardize_dtype refuses ("Invalid dtype: 'float32'"), a
        # graph break in every AION layer under Keras' jit_compile on torch.
        dtype.name = str.__str__(dtype)
        return dtype

    def __eq__(self, other):
        return _standard_name(other) == self.name

    def __ne__(self, other):
        return not self.__eq__(other)


def _standard_name(dtype):
    if isinstance(dtype, KerasDType):
        return dtype.name
    try:
        return keras.backend.standardize_dtype(dtype)
    except (ValueError, TypeError, AttributeError):
        return None


float16 = KerasDType("float16")
bfloat16 = KerasDType("bfloat16")
float32 = KerasDType("float32")
float64 = KerasDType("float64")
int32 = KerasDType("int32")
bool = KerasDType("bool")  # noqa: A001 - the array API's name for the boolean dtype


def isdtype(dtype, kind) -> bool:
    """Array-API ``isdtype`` for a dtype (any backend's spelling) and a kind or dtype.

    Only the kinds the core asks about are known: ``"real floating"`` and single dtypes.
    """
    name = _standard_name(dtype)
    if name is None:
        return False
    if isinstance(kind, tuple):
        return any(isdtype(dtype, k) for k in kind)
    if kind == "real floating":
        return name in ("float16", "bfloat16", "float32", "float64")
    if isinstance(kind, str) and " " in kind:
        raise ValueError(f"kind must be 'real floating' or a dtype, got {kind!r}")
    return name == _standard_name(kind)


_FLOATS = ("float16", "bfloat16", "float32", "float64")


def result_type(*arrays_and_dtypes) -> KerasDType:
    """The promoted dtype, by Keras' promotion rules, except that float64 stays float64.

    Outside TensorFlow, Keras demotes every 64-bit result to 32 bits (JAX's default);
    a float64 input must give a float64 output, as with the array API.
    """
    names = [_standard_name(getattr(a, "dtype", a)) for a in arrays_and_dtypes]
    if "float64" in names and all(n in _FLOATS for n in names):
        return float64
    return KerasDType(keras.backend.result_type(*names))


def astype(x, dtype, /, *, copy=True):
    """``x`` cast to ``dtype``; ``copy`` is accepted for the API's sake (tensors are immutable)."""
    return ops.cast(x, _standard_name(dtype))


def asarray(obj, /, *, dtype=None, device=None, copy=None):
    """A tensor from ``obj``; ``device`` is left to Keras' device placement."""
    return ops.convert_to_tensor(obj, dtype=None if dtype is None else _standard_name(dtype))


def mean(x, /, *, axis=None, keepdims=False):
    """Array-API ``mean``; float64 input is averaged in float64 on every backend."""
    if _standard_name(x.dtype) == "float64" and keras.backend.result_type(x.dtype, "float32") != "float64":
        # keras.ops.mean would average in float32 here (Keras demotes float64 outside
        # TensorFlow), so sum in float64 and divide by the static element count.
        axes = range(len(x.shape)) if axis is None else (axis,) if isinstance(axis, int) else axis
        count = math.prod([x.shape[a] for a in axes])  # a list: Dynamo cannot trace a generator here
        return ops.sum(x, axis=axis, keepdims=keepdims) / count
    return ops.mean(x, axis=axis, keepdims=keepdims)


def isfinite(x, /):
    return ops.isfinite(x)


def logical_not(x, /):
    return ops.logical_not(x)


def where(condition, x1, x2, /):
    return ops.where(condition, x1, x2)
