"""Optuna samplers sized to the trial budget.

Optuna's defaults assume long studies: NSGA-II breeds from a population of 50 and TPE
samples its first 10 trials at random. Inside a 12- or 16-trial budget both are random
search. The rule here (README "Samplers") keeps every sampler doing what it is for:

* NSGA-II ``population_size = clamp(round(trials / 4), 4, 50)``: at least four generations,
  so three of them breed from measured parents; 50 (Optuna's default) from 200 trials.
* TPE ``n_startup_trials = clamp(round(trials / 4), 3, 10)``: a quarter of the budget
  explores at random before the model takes over; 10 (Optuna's default) from 40 trials.

``search.population`` and ``search.startup_trials`` in a space override the rule.
"""
from __future__ import annotations

from typing import Any, Dict, Optional


def _clamp(value: float, low: int, high: int) -> int:
    return int(max(low, min(high, round(value))))


def population_size(trials: int) -> int:
    """NSGA-II population for a budget of ``trials`` (see the module docstring)."""
    return _clamp(trials / 4, 4, 50)


def startup_trials(trials: int) -> int:
    """TPE's random start-up trials for a budget of ``trials``."""
    return _clamp(trials / 4, 3, 10)


def sampler_settings(name: str, trials: int, population: Optional[int] = None,
                     startup: Optional[int] = None) -> Dict[str, Any]:
    """The keyword arguments the rule gives sampler ``name`` (overrides win)."""
    if name == "nsga2":
        return {"population_size": population or population_size(trials)}
    if name == "tpe":
        return {"n_startup_trials": startup or startup_trials(trials)}
    return {}
