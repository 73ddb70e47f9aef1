"""The search: Ray Tune runs the trials, Optuna proposes them, a results folder keeps them.

The public front is :func:`run` (what ``nas-attn search`` calls) and what it returns; the
private modules hold the driver (``_driver``), the Optuna searcher (``_optuna``), the Ray
worker and callback (``_ray``) and the printed text (``_text``). The results folder the
search writes is described, read and checked by :mod:`nas_attn.results`.
"""
from ._base import SearchError, SearchResult
from ._driver import apply_overrides, default_run_dir, init_ray, run, trial_resources
from ._optuna import make_sampler

__all__ = ["run", "SearchResult", "SearchError", "apply_overrides", "trial_resources", "default_run_dir",
           "init_ray", "make_sampler"]
