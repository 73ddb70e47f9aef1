"""How a mistake in a space file is reported: :class:`SpaceError` (file, line, key path, what was
expected) and the checker the validators share, which finds the line of a key path."""
from __future__ import annotations

import difflib
import math
from typing import Dict, Optional


class SpaceError(ValueError):
    """A mistake in a search-space file: ``FILE:LINE: KEY.PATH: what was expected``."""

    def __init__(self, message: str, file: Optional[str] = None, line: Optional[int] = None,
                 key_path: str = ""):
        self.file, self.line, self.key_path, self.detail = file, line, key_path, message
        where = f"{file or '<space>'}" + (f":{line}" if line else "")
        super().__init__(f"{where}: {key_path + ': ' if key_path else ''}{message}")


def format_key_path(path: tuple) -> str:
    """``("blocks", "layer*.*", "attention")`` -> ``blocks."layer*.*".attention``."""
    parts = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif str(part).replace("_", "").isalnum():
            parts.append(("." if parts else "") + str(part))
        else:
            parts.append(("." if parts else "") + f'"{part}"')
    return "".join(parts)


class _Checker:
    """Raises SpaceError with file, line and key path for a place in the document."""

    def __init__(self, file: Optional[str], lines: Dict[tuple, int]):
        self.file, self.lines = file, lines

    def fail(self, path: tuple, message: str):
        probe = tuple(path)
        while probe and probe not in self.lines:
            probe = probe[:-1]
        raise SpaceError(message, self.file, self.lines.get(probe), format_key_path(tuple(path)))

    def mapping(self, value, path, allowed, required=()):
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping with keys {', '.join(allowed)}, got {_kind(value)}")
        for key in value:
            if key not in allowed:
                self.fail(path + (key,), f"unknown key {key!r}{_did_you_mean(key, allowed)}; "
                                         f"allowed: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                self.fail(path, f"missing required key {key!r}")
        return value

    def number(self, value, path, low=None, low_inclusive=True, integer=False, high=None):
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            self.fail(path, f"expected {'an integer' if integer else 'a number'}, got {_kind(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {value}")
        if low is not None and (value < low or (value == low and not low_inclusive)):
            self.fail(path, f"expected a number {'>=' if low_inclusive else '>'} {low}, got {value}")
        if high is not None and value > high:
            self.fail(path, f"expected a number <= {high}, got {value}")
        return value

    def one_of(self, value, path, allowed):
        if value not in allowed:
            self.fail(path, f"expected one of {', '.join(map(str, allowed))}, got {value!r}"
                            f"{_did_you_mean(value, allowed) if isinstance(value, str) else ''}")
        return value

    def string(self, value, path):
        if not isinstance(value, str) or not value:
            self.fail(path, f"expected a non-empty string, got {_kind(value)}")
        return value


def _kind(value) -> str:
    """What the user wrote, kind and value, for "expected X, got ..." messages."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, list):
        return f"the list {_short(value)}" if value else "an empty list"
    if isinstance(value, dict):
        return f"a mapping with keys {_short(list(value))}" if value else "an empty mapping"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {_short(value)}"


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _did_you_mean(word, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
