"""A restricted unpickler for the CIFAR-10 python batches: numpy arrays and builtins, nothing else.

A pickle can run any callable it names, so a downloaded batch is loaded with an unpickler that
resolves only the handful of globals numpy arrays need (as written by Python 2's cPickle and by
Python 3 at protocols 2-5) and refuses every other name before it is imported.
"""

from __future__ import annotations

import codecs
import pickle
from typing import IO, Any

import numpy as np
from numpy._core import multiarray, numeric

from pipeline.errors import DataError

# (module, name) -> object. Both numpy module spellings appear: `numpy.core` in files written by
# numpy 1.x (the official CIFAR batches), `numpy._core` in files written by numpy 2.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
for _module in ("numpy.core", "numpy._core"):
    ALLOWED_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = multiarray._reconstruct
    ALLOWED_GLOBALS[(f"{_module}.multiarray", "scalar")] = multiarray.scalar
    ALLOWED_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = numeric._frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only `ALLOWED_GLOBALS`; any other global raises DataError."""

    def __init__(self, file: IO[bytes], where: str):
        # latin1 turns Python 2 byte strings into str the way numpy expects for array data.
        super().__init__(file, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.where}: the pickle asks to load {module}.{name}; only numpy arrays and "
                "builtin types are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.where}: the pickle uses persistent ids; refusing to load it")


def safe_load(file: IO[bytes], where: str) -> Any:
    """Unpickle `file` with `RestrictedUnpickler`; arrays of Python objects are refused too.

    Args:
        file: a binary file object positioned at the start of the pickle.
        where: the file name used in error messages.

    Returns:
        The unpickled object (for CIFAR batches: a dict of arrays, lists, str and bytes).
    """
    try:
        value = RestrictedUnpickler(file, where).load()
    except DataError:
        raise
    except Exception as error:  # a corrupt pickle can raise almost anything
        raise DataError(
            f"{where}: not a readable pickle ({type(error).__name__}: {error})"
        ) from None
    _refuse_object_arrays(value, where)
    return value


def _refuse_object_arrays(value: Any, where: str) -> None:
    """Walk dicts/lists/tuples; an ndarray holding Python objects is a DataError."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise DataError(f"{where}: the pickle holds an array of Python objects; refusing it")
    elif isinstance(value, dict):
        for item in value.values():
            _refuse_object_arrays(item, where)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_object_arrays(item, where)
