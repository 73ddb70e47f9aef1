"""nas_attn: multi-objective search over attention modules in timm CNNs.

The path data takes, one module per arrow (none reaches back):

    space      search_spaces/*.yaml -> SearchSpace (load, validate, sample an Arch)
    arch       Arch (a plain dict) -> timm model; registers timm's ``nas_attn_cnn``
    modules    the attention modules (DSA, SCA, CPSAM, AWConv2d) and the registry beside timm's
    plugins    imports user modules that add attention modules (``modules.register``)
    cost       params, MACs, element-wise ops, effective MACs;  latency: measured forward time
    data       digits (embedded), CIFAR-10/100 and ImageFolder from local folders
    metrics    each metric's name, direction, unit and labels;  units: SI-prefixed numbers
    train      the training loop;  trial: one trial (cost, constraints, training, reports)
    search     Ray Tune + Optuna over a space -> a results folder (a package; ``run`` is its front)
    cluster    starting or joining Ray with token authentication (never without), loopback when local
    results    the results folder: file names, reading and checking it, the trial-status rule
    schedulers multi-objective ASHA early stopping
    pareto     non-dominated sets and hypervolume
    export     results -> timm model folders (``load`` reads one back)
    plot, report   figures and REPORT.md of a results folder (they read ``results`` only)
    cli        the ``nas-attn`` command line

Importing the package is cheap: torch, timm and the modules load on first use of an attribute
(``nas_attn.Arch``, ``nas_attn.modules``...), so ``nas-attn --help`` answers without them. The
promise that ``import nas_attn`` registers ``nas_attn_cnn`` with timm still holds: if timm is
already imported, :mod:`nas_attn._timm_entry` registers it now; otherwise right after timm
finishes importing (see :class:`_RegisterWhenTimmLoads`).
"""
import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_LAZY = {"Arch": ("arch", "Arch"), "build_model": ("arch", "build_model"),
         "nas_attn_cnn": ("arch", "nas_attn_cnn"), "SearchSpace": ("space", "SearchSpace"),
         "load_space": ("space", "load")}


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    elif name == "modules":
        value = importlib.import_module(f"{__name__}.modules")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Registers ``nas_attn_cnn`` (:mod:`nas_attn._timm_entry`) as soon as timm is imported.

    Python has no post-import hook (PEP 369 was withdrawn), so this finder answers for the
    name ``timm`` only: it takes the spec the other finders give and runs our import after
    timm's own module code. It removes itself at first use.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_timm = spec.loader.exec_module

        def exec_module(module):
            exec_timm(module)
            importlib.import_module(f"{__name__}._timm_entry")

        spec.loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    from . import _timm_entry  # noqa: F401  (registers nas_attn_cnn with timm)
elif not any(isinstance(f, _RegisterWhenTimmLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())


def load(folder, **kwargs):
    """An exported model folder with its trained weights (see :func:`nas_attn.export.load`)."""
    from .export import load as load_exported
    return load_exported(folder, **kwargs)


__all__ = ["modules", "Arch", "build_model", "nas_attn_cnn", "SearchSpace", "load_space", "load"]
