"""Optuna samplers sized to the trial budget.

Optuna's defaults assume long studies: NSGA-II breeds from a population of 50 and TPE
samples its first 10 trials at random. Inside a 12- or 16-trial budget both are random
search. The rule here (README "Samplers") keeps every sampler doing what it is for:

* NSGA-II ``population_size = clamp(round(trials / 4), 4, 50)``: at least four generations,
  so three of them breed from measured parents; 50 (Optuna's default) from 200 trials.
* TPE ``n_startup_trials = clamp(round(trials / 4), 3, 10)``: a quarter of the budget
  explores at random before the model takes over; 10 (Optuna's default) from 40 trials.

``search.population`` and ``search.startup_trials`` in a space override the rule.
``search.sampler_options`` passes any other keyword argument of the Optuna sampler's
constructor (``multivariate``, ``group``, ``constant_liar`` for TPE; ``mutation_prob``,
``crossover_prob`` for NSGA-II, ...): :func:`check_sampler_options` says which are allowed.
"""
from __future__ import annotations

import inspect
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
                     startup: Optional[int] = None, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The keyword arguments the rule gives sampler ``name`` (overrides win), then ``options``."""
    sized: Dict[str, Any] = {}
    if name == "nsga2":
        sized = {"population_size": population or population_size(trials)}
    elif name == "tpe":
        sized = {"n_startup_trials": startup or startup_trials(trials)}
    return {**sized, **(options or {})}


#: Constructor arguments ``search.sampler_options`` may not set, and the key that sets each instead.
_SET_ELSEWHERE = {"seed": "search.seed", "n_startup_trials": "search.startup_trials",
                  "population_size": "search.population", "constraints_func": "constraints"}


def sampler_class(name: str):
    """The Optuna sampler class ``search.sampler`` names."""
    import optuna
    return {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
            "random": optuna.samplers.RandomSampler}[name]


#: Annotation names whose values a YAML space can write, and the kind each admits.
_YAML_TYPES = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string", "None": "null"}


def _yaml_kinds(param: inspect.Parameter) -> list:
    """What YAML can give for a constructor argument, from its annotation (``bool | None`` ->
    true/false or null); [] when it needs a Python object (a callable, a mutation class)."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:  # unannotated: judge by the default value
        annotation = type(param.default).__name__ if param.default is not None else "None"
    names = [part.strip() for part in str(annotation).split("|")]
    kinds = [_YAML_TYPES[n] for n in names if n in _YAML_TYPES]
    return kinds if any(n != "None" for n in names if n in _YAML_TYPES) else []


def _is_kind(value, kind: str) -> bool:
    if kind == "true or false":
        return isinstance(value, bool)
    if kind == "an integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "a string":
        return isinstance(value, str)
    return value is None


def check_sampler_options(name: str, options: Dict[str, Any]) -> Dict[str, str]:
    """Problems with ``search.sampler_options`` for sampler ``name``: option -> what is wrong.

    An option must be a keyword argument of the sampler's constructor that YAML can give (a
    bool, number or string; callables and sampler objects cannot be written in a space), not
    one another key sets (seed, start-up trials, population, constraints), and of its
    annotated type (``multivariate: "yes"`` would be taken as true by Optuna without a word).
    """
    params = inspect.signature(sampler_class(name).__init__).parameters
    problems: Dict[str, str] = {}
    for key, value in options.items():
        if key in _SET_ELSEWHERE:
            problems[key] = f"{key} is set by {_SET_ELSEWHERE[key]}, not by sampler_options"
            continue
        param = params.get(key)
        if param is None or key == "self" or param.kind not in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
            allowed = [k for k, p in params.items() if k != "self" and k not in _SET_ELSEWHERE
                       and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
            problems[key] = (f"{key} is not an argument of optuna.samplers.{sampler_class(name).__name__}; "
                             f"it takes {', '.join(allowed) or 'none besides the seed'}")
            continue
        kinds = _yaml_kinds(param)
        if not kinds:
            problems[key] = f"{key} takes a Python object ({param.annotation}), which a YAML space cannot give"
        elif not any(_is_kind(value, kind) for kind in kinds):
            problems[key] = f"expected {' or '.join(kinds)} (Optuna's type: {param.annotation}), got {value!r}"
    return problems
