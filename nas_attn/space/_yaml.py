"""Reading a space file: UTF-8 text, YAML with ``safe_load`` semantics, and the line of every key."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

import yaml

from ._errors import SpaceError


class SpaceLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no Python objects, ever) that also reads ``4.0e7`` as a number.

    PyYAML follows YAML 1.1, where a float exponent needs a sign (``4.0e+7``) and ``4.0e7`` is
    a string; YAML 1.2 and every user writing MAC budgets expect a number.
    """


SpaceLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))

def _parse_yaml(text: str, file: str):
    """(document, key lines) of YAML text, or SpaceError with the line of a syntax error."""
    try:
        node = yaml.compose(text, Loader=SpaceLoader)
        document = yaml.load(text, Loader=SpaceLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpaceError(f"YAML syntax error: {problem}", file, mark.line + 1 if mark is not None else None) from None
    return document, (_key_lines(node) if node is not None else {})

def _key_lines(node, path=(), lines=None) -> Dict[tuple, int]:
    """Map every key path in a composed YAML node tree to its 1-based line."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            child = path + (key,)
            lines[child] = key_node.start_mark.line + 1
            _key_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = path + (index,)
            lines[child] = item.start_mark.line + 1
            _key_lines(item, child, lines)
    return lines


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, or SpaceError naming the line and byte that is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpaceError(f"cannot read the file: {exc.strerror or exc}", file=str(path)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpaceError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at column {column}; "
                         f"save the file as UTF-8", file=str(path), line=line) from None
