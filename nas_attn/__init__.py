"""nas_attn: multi-objective search over attention modules in timm CNNs.

The path data takes, one module per arrow (none reaches back):

    space      search_spaces/*.yaml -> SearchSpace (load, validate, sample an Arch)
    arch       Arch (a plain dict) -> timm model; registers timm's ``nas_attn_cnn``
    modules    the attention modules (DSA, SCA, CPSAM, AWConv2d) and the registry beside timm's
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
"""
__version__ = "0.1.0"

from . import modules
from .arch import Arch, build_model, nas_attn_cnn  # importing arch registers nas_attn_cnn with timm
from .space import SearchSpace, load as load_space


def load(folder, **kwargs):
    """An exported model folder with its trained weights (see :func:`nas_attn.export.load`)."""
    from .export import load as load_exported
    return load_exported(folder, **kwargs)


__all__ = ["modules", "Arch", "build_model", "nas_attn_cnn", "SearchSpace", "load_space", "load"]
