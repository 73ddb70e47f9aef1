"""Restricted unpickling of CIFAR batches: only what the CIFAR python format needs."""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np

from ._errors import DataError, UnsafePickleError


def _numpy_function(module_suffix: str, name: str):
    # numpy >= 2 keeps these in numpy._core; numpy 1.x in numpy.core. Resolve the real
    # object once, without importing numpy.core on numpy 2 (that import warns).
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module_suffix}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module_suffix}.{name}")  # pragma: no cover


_LATIN1_NAMES = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"})


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 pickles (protocol <= 2) store bytes as
    ``_codecs.encode(str, 'latin1')``; no other codec is needed, so no other is allowed."""
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1_NAMES:
        raise UnsafePickleError(
            f"refused _codecs.encode with encoding {encoding!r}: CIFAR pickles only use latin1"
        )
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode_latin1,
}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = _numpy_function("multiarray", "_reconstruct")
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "scalar")] = _numpy_function("multiarray", "scalar")
    _ALLOWED_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = _numpy_function("numeric", "_frombuffer")
del _module


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler admitting only numpy arrays, dtypes, scalars and latin-1 byte strings."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._path}: refused to unpickle {module}.{name}: a CIFAR batch holds only "
                "numpy arrays, lists and strings, so this file is not a CIFAR batch (or was "
                "tampered with); nothing in it was run"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._path}: refused a persistent id in the pickle")


def read_cifar_pickle(path) -> dict:
    """Read one CIFAR python-format pickle safely; return its dict with ``str`` keys.

    Raises :class:`UnsafePickleError` if the file names anything beyond numpy's array
    reconstruction, and :class:`DataError` if it is unreadable or not a dict.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"expected the file {path}, which does not exist") from None
    except Exception as e:  # a corrupt pickle raises anything from EOFError to TypeError
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: malformed CIFAR file: expected a pickled dict, got {type(obj).__name__}")
    # Python 2 pickles (the real release) decode keys to str under latin1; pickles made
    # with bytes keys keep them as bytes.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
