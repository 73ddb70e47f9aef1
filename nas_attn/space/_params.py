"""One hyperparameter as a space declares it (``{float: [lo, hi]}``, ``{int: ...}``, ``{choices:
[...]}`` or a fixed value), and the check that every value it can take suits its module."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict

from ._errors import _Checker, _did_you_mean, _kind


@dataclass(frozen=True)
class Param:
    """One searched or fixed hyperparameter: ``kind`` is float, int, choice or fixed."""
    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    choices: tuple = ()
    value: Any = None

    def suggest(self, trial, name: str):
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(name, self.low, self.high, log=self.log)
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        return self.value

    def extremes(self) -> list:
        """Values that bound what this parameter can take (for range checks and MAC ranges)."""
        if self.kind in ("float", "int"):
            return [self.low, self.high]
        if self.kind == "choice":
            return list(self.choices)
        return [self.value]

    def count(self) -> float:
        """How many values it can take (``inf`` for a float range)."""
        if self.kind == "float":
            return math.inf if self.high > self.low else 1
        if self.kind == "int":
            return self.high - self.low + 1
        if self.kind == "choice":
            return len(self.choices)
        return 1

    def default(self):
        """The value the baseline and summaries use: the fixed value, the low end, the first choice."""
        return {"float": self.low, "int": self.low, "choice": (self.choices or (None,))[0]}.get(
            self.kind, self.value)


def _parse_param(value, path, check: _Checker) -> Param:
    if isinstance(value, dict) and ({"float", "int", "choices"} & set(value)):
        kinds = [k for k in ("float", "int", "choices") if k in value]
        if len(kinds) > 1:
            check.fail(path, f"give one of float, int, choices; got {', '.join(kinds)}")
        kind = kinds[0]
        if kind == "choices":
            check.mapping(value, path, ("choices",))
            choices = value["choices"]
            if not isinstance(choices, list) or not choices:
                check.fail(path + ("choices",), f"expected a non-empty list of values, got {_kind(choices)}")
            for i, c in enumerate(choices):
                if not isinstance(c, (str, int, float, bool)) and c is not None:
                    check.fail(path + ("choices", i), f"choices must be strings, numbers or booleans, got {_kind(c)}")
            return Param("choice", choices=tuple(choices))
        check.mapping(value, path, (kind, "log"))
        bounds = value[kind]
        if not isinstance(bounds, list) or len(bounds) != 2:
            check.fail(path + (kind,), f"expected [low, high], got {_kind(bounds)}")
        low, high = (check.number(b, path + (kind, i), integer=(kind == "int")) for i, b in enumerate(bounds))
        if low > high:
            check.fail(path + (kind,), f"low must be <= high, got low={low} > high={high}")
        log = value.get("log", False)
        if not isinstance(log, bool):
            check.fail(path + ("log",), f"expected true or false, got {_kind(log)}")
        if log and low <= 0:
            check.fail(path + (kind,), f"log: true needs low > 0, got low={low}")
        return Param(kind, low=low, high=high, log=log)
    if isinstance(value, (dict, list)):
        check.fail(path, "expected {float: [low, high]}, {int: [low, high]}, {choices: [...]} "
                         f"or a fixed value, got {_kind(value)}")
    return Param("fixed", value=value)


def _check_module_kwargs(module: str, params: Dict[str, Param], path, check: _Checker):
    """Every value a hyperparameter can take must be valid for the module, before any trial."""
    from .. import modules as attn_modules  # second pass: the registry imports torch and timm
    known = attn_modules.HYPERPARAMETERS.get(module, {})
    for hp in params:
        if hp not in known:
            check.fail(path + (hp,), f"{module} has no hyperparameter {hp!r}{_did_you_mean(hp, known)}; "
                                     f"searchable: {', '.join(known) or 'none'}")
    for hp, param in params.items():
        for value in param.extremes():
            try:
                attn_modules.check_kwargs(module, {hp: value})
            except ValueError as exc:
                check.fail(path + (hp,), str(exc))


def _knob_values(param: Param) -> list:
    """Every value a (non-float) knob can take."""
    if param.kind == "int":
        return list(range(param.low, param.high + 1))
    return list(param.choices) if param.kind == "choice" else [param.value]
