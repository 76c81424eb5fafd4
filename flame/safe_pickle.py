"""A restricted unpickler for FLAME's Python-2 pickles that works without the ``chumpy`` package.

FLAME's ``generic_model.pkl`` stores some arrays as chumpy objects; chumpy no longer imports on
current numpy. The unpickler below maps every ``chumpy.*`` class to :class:`ChumpyStub`, which
keeps the pickled state and exposes the stored array (chumpy keeps it under ``'x'``). It allows
the numpy and scipy.sparse classes an array pickle needs and refuses everything else, so a pickle
that would run code on load (``os.system`` via ``__reduce__`` and the like) never does.
"""

from __future__ import annotations

import builtins
import copyreg
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from utils.errors import InputError


class UnsafePickleError(InputError, pickle.UnpicklingError):
    """Raised when a pickle asks for a class outside the allow list."""


class ChumpyStub:
    """Stands in for any chumpy class: holds the pickled state; :attr:`array` is the stored array."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._state = state

    @property
    def array(self) -> np.ndarray:
        """The array chumpy stored (state key ``'x'``, else the only ndarray in the state)."""
        state = self._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = {**state[0], **(state[1] or {})}
        if isinstance(state, dict):
            if "x" in state:
                return _to_array(state["x"])
            arrays = [v for v in state.values() if isinstance(v, np.ndarray)]
            if len(arrays) == 1:
                return arrays[0]
        if isinstance(state, np.ndarray):
            return state
        raise ValueError(f"chumpy object {type(self).__name__} holds no stored array (state {type(state)})")


def _to_array(value: Any) -> np.ndarray:
    if isinstance(value, ChumpyStub):
        return value.array
    return np.asarray(value)


def unwrap(value: Any) -> Any:
    """Chumpy stubs -> their numpy arrays; everything else unchanged."""
    return value.array if isinstance(value, ChumpyStub) else value


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """The one use of ``_codecs.encode`` a data pickle has: a latin1 string back to bytes."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1",
                                                                                                 "iso88591"):
        raise UnsafePickleError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}): "
                                "only latin1 byte strings are allowed")
    return text.encode("latin1")


_chumpy_classes: dict[tuple[str, str], type] = {}


def _chumpy_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _chumpy_classes:
        _chumpy_classes[key] = type(name, (ChumpyStub,), {"__module__": "flame.safe_pickle.chumpy"})
    return _chumpy_classes[key]


def _numpy_attr(module: str, name: str) -> Any:
    # Old pickles name numpy.core.*; numpy 2 keeps those under numpy._core (numpy.core warns).
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == "core":
        parts[1] = "_core"
    obj: Any = np
    for part in parts[1:]:
        obj = getattr(obj, part)
    return getattr(obj, name)


_NUMPY_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}
_SPARSE_CLASSES = {"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"}
_BUILTINS_ALLOWED = {"object", "set", "frozenset", "list", "dict", "tuple", "slice", "bytes", "bytearray",
                     "str", "int", "float", "complex", "bool"}


class RestrictedUnpickler(pickle.Unpickler):
    """Allows numpy arrays, scipy.sparse matrices, plain containers and chumpy (as stubs) only."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return _chumpy_class(module, name)
        if (module, name) in _NUMPY_ALLOWED:
            return _numpy_attr(module, name)
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE_CLASSES:
            import scipy.sparse  # here, not at import: scipy.sparse is 0.15 s of every train.py start-up

            return getattr(scipy.sparse, name)
        if module in ("builtins", "__builtin__") and name in _BUILTINS_ALLOWED:

            return getattr(builtins, name)
        if module == "_codecs" and name == "encode":
            # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
            return _latin1_encode
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return copyreg._reconstructor
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: only numpy arrays, scipy.sparse matrices and chumpy arrays "
            "are allowed in a FLAME pickle")


def load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` (Python 2 or 3, ``encoding='latin1'``) with :class:`RestrictedUnpickler`."""
    with open(path, "rb") as fh:
        return RestrictedUnpickler(fh, encoding="latin1").load()
