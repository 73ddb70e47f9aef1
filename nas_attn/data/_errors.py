"""The errors a data folder or file can raise."""
from __future__ import annotations


class DataError(ValueError):
    """A data folder or file is missing or malformed; the message names the expected path."""


class UnsafePickleError(DataError):
    """A CIFAR pickle names a Python object outside the CIFAR format's needs."""
