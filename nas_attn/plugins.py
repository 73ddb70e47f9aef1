"""User plugins: importable Python modules that add attention modules to the registry.

A plugin is any module that calls :func:`nas_attn.modules.register` when it is imported. Name
it in the space (``plugins: [my_pkg.my_attention]``) or with ``nas-attn ... --plugin
my_pkg.my_attention``: the driver imports it before the space is checked, every trial imports
it again in its Ray worker before it builds a model (workers are separate processes), export
writes it into the exported folder's ``model_args``, and ``nas_attn_cnn`` imports it when timm
rebuilds the model from that folder. The module must be importable where each of these runs
(installed, or on ``PYTHONPATH``).
"""
from __future__ import annotations

import importlib
import re
from typing import Iterable, List

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class PluginError(ValueError):
    """A plugin that is not a module name or that fails to import."""


def import_plugins(names: Iterable[str]) -> List[str]:
    """Import each named module (a no-op for one imported before); returns the names."""
    names = list(names or [])
    for name in names:
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            raise PluginError(f"a plugin is a Python module name like my_pkg.my_attention, got {name!r}")
        try:
            importlib.import_module(name)
        except Exception as exc:  # the plugin's own error, reported with its name
            raise PluginError(f"plugin {name!r} could not be imported: {type(exc).__name__}: {exc} "
                              f"(is it installed or on PYTHONPATH?)") from None
    return names
