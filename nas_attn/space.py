"""Search spaces: YAML -> validated :class:`SearchSpace` -> sampled Arch.

``load(path_or_name)`` reads a YAML file (``yaml.safe_load`` semantics only) or a space
shipped in ``search_spaces/`` by name, checks every key before any trial runs, and raises
:class:`SpaceError` naming the file, the line, the key path and what was expected.

The format (README "Search spaces" documents every key)::

    name: digits_resnet
    model: {name: resnet18, args: {num_classes: 10, in_chans: 1}, stem: default, channel_divisor: 8}
    data: {dataset: digits, image_size: 32, val_fraction: 0.2}
    train: {epochs: 4, batch_size: 64, lr: 0.05}
    objectives:
      - {metric: accuracy, direction: maximize, ref: 0.0}
      - {metric: effective_macs, direction: minimize, ref: 6.0e7}
    constraints: {max_params: 12.0e6}
    stages:                       # cost knobs, per stage (layer1..4; blocks.0..6 in MobileNetV2)
      "layer*":
        width: {choices: [0.5, 1.0]}    # multiplier of the base channels (or channels: [...])
        depth: {choices: [1, 2]}        # blocks kept, from the first
    blocks:
      "layer*.*":
        attention:
          choices: [none, se, dsa]
          dsa: {threshold: {float: [0.0, 0.8]}}
        aw_conv: {choices: [false, true]}
        gate: {choices: [false, true], threshold: {float: [0.0, 0.8]}}   # DSA gate on the branch
        tie: stage
    search: {trials: 16, concurrent: 2, sampler: tpe, seed: 0}
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import importlib.resources
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from . import modules as attn_modules
from .arch import (MOBILENETV2_MULTIPLIERS, STEMS, Arch, ArchError, attention_sites, build_model, family,
                   mobilenetv2_arch_def, stage_of)
from .metrics import METRICS
from .plugins import PluginError, import_plugins

SAMPLERS = ("tpe", "nsga2", "random")
OPTIMIZERS = ("sgd", "adamw")
TOP_LEVEL_KEYS = ("name", "plugins", "model", "data", "train", "objectives", "constraints", "stages", "blocks", "search")
STAGE_KEYS = ("width", "channels", "depth")
#: Per-block knobs of inverted residuals (MobileNetV2): the block-string letters timm decodes.
BLOCK_KNOBS = {"expansion": "e", "kernel": "k"}


class SpaceError(ValueError):
    """A mistake in a search-space file: ``FILE:LINE: KEY.PATH: what was expected``."""

    def __init__(self, message: str, file: Optional[str] = None, line: Optional[int] = None,
                 key_path: str = ""):
        self.file, self.line, self.key_path, self.detail = file, line, key_path, message
        where = f"{file or '<space>'}" + (f":{line}" if line else "")
        super().__init__(f"{where}: {key_path + ': ' if key_path else ''}{message}")


# --------------------------------------------------------------------------------------------
# Reading YAML with line numbers

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


# --------------------------------------------------------------------------------------------
# Parameters

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


@dataclass(frozen=True)
class BlockRule:
    """What one glob under ``blocks`` allows."""
    glob: str
    attention: Dict[str, Dict[str, Param]]   # module name -> its hyperparameters
    aw_conv: Tuple[bool, ...]                 # allowed values: (False,), (True,), (False, True)
    aw_conv_params: Dict[str, Param]
    tie_stage: bool
    knobs: Dict[str, Param] = field(default_factory=dict)   # expansion, kernel
    knob_lines: Dict[str, tuple] = field(default_factory=dict)  # knob -> key path (for errors)
    gate: Tuple[bool, ...] = (False,)         # DSA gate on the residual branch: allowed values
    gate_params: Dict[str, Param] = field(default_factory=dict)


def _parse_knob(knob: str, value, path, check: _Checker) -> Param:
    """A cost knob's values: choices or a fixed value (int ranges for depth), checked one by one."""
    param = _parse_param(value, path, check)
    if param.kind == "float":
        check.fail(path, f"give {knob} as choices or a fixed value, not a float range")
    if param.kind == "int" and knob != "depth":
        check.fail(path, f"give {knob} as choices or a fixed value, not an int range")
    values = list(range(param.low, param.high + 1)) if param.kind == "int" else param.extremes()
    for i, v in enumerate(values):
        where = path + (("choices", i) if param.kind == "choice" else ())
        integer = knob in ("channels", "depth", "kernel")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            check.fail(where, f"{knob} values must be {'integers' if integer else 'numbers'}, got {_kind(v)}")
        if v <= 0 or (isinstance(v, float) and not math.isfinite(v)):
            check.fail(where, f"{knob} values must be > 0, got {v}")
        if knob == "kernel" and v % 2 == 0:
            check.fail(where, f"kernel must be odd (an even depthwise kernel changes the map size "
                              f"and breaks the residual), got {v}")
    return param


def _parse_block_rule(glob, value, path, check: _Checker) -> BlockRule:
    check.mapping(value, path, ("attention", "aw_conv", "gate", "tie", *BLOCK_KNOBS))
    attention: Dict[str, Dict[str, Param]] = {"none": {}}
    if "attention" in value:
        spec = value["attention"]
        apath = path + ("attention",)
        if isinstance(spec, str):
            spec = {"choices": [spec]}
        if not isinstance(spec, dict):
            check.fail(apath, f"expected a mapping with 'choices' (a list of module names), got {_kind(spec)}")
        if "choices" not in spec:
            check.fail(apath, "missing required key 'choices' (a list of module names)")
        names = spec["choices"]
        if not isinstance(names, list) or not names:
            check.fail(apath + ("choices",), f"expected a non-empty list of module names, got {_kind(names)}")
        valid = [n for n in attn_modules.available() if n != "aw_conv"]
        for i, name in enumerate(names):
            if name == "aw_conv":
                check.fail(apath + ("choices", i), "aw_conv replaces a conv, not the attention slot: "
                                                    "use the block's 'aw_conv' key")
            if name not in valid:
                check.fail(apath + ("choices", i), f"unknown attention module {name!r}"
                                                    f"{_did_you_mean(name, valid)}; valid: {', '.join(valid)}")
        if len(set(names)) != len(names):
            check.fail(apath + ("choices",), f"duplicate module names in {names}")
        for key in spec:
            if key != "choices" and key not in names:
                check.fail(apath + (key,), f"hyperparameters for {key!r}, which is not among the choices "
                                           f"{names}{_did_you_mean(key, names)}")
        attention = {}
        for name in names:
            hps = spec.get(name, {}) or {}
            if not isinstance(hps, dict):
                check.fail(apath + (name,), f"expected a mapping of hyperparameters, got {_kind(hps)}")
            params = {hp: _parse_param(v, apath + (name, hp), check) for hp, v in hps.items()}
            _check_module_kwargs(name, params, apath + (name,), check)
            attention[name] = params
    aw_values: Tuple[bool, ...] = (False,)
    aw_params: Dict[str, Param] = {}
    if "aw_conv" in value:
        spec = value["aw_conv"]
        wpath = path + ("aw_conv",)
        if isinstance(spec, bool):
            aw_values = (spec,)
        elif isinstance(spec, dict):
            if "choices" not in spec:
                check.fail(wpath, "missing required key 'choices' ([false, true], [true] or [false])")
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                check.fail(wpath + ("choices",), f"expected a non-empty list of true/false, got {_kind(choices)}")
            for i, c in enumerate(choices):
                if not isinstance(c, bool):
                    check.fail(wpath + ("choices", i), f"expected true or false, got {_kind(c)}")
            aw_values = tuple(dict.fromkeys(choices))
            aw_params = {hp: _parse_param(v, wpath + (hp,), check) for hp, v in spec.items() if hp != "choices"}
            _check_module_kwargs("aw_conv", aw_params, wpath, check)
        else:
            check.fail(wpath, f"expected true, false or {{choices: [false, true], ...}}, got {_kind(spec)}")
    gate_values, gate_params = _parse_switch(value, "gate", "dsa_gate", path, check)
    tie = value.get("tie")
    if tie is not None:
        check.one_of(tie, path + ("tie",), ("stage",))
    knobs = {k: _parse_knob(k, value[k], path + (k,), check) for k in BLOCK_KNOBS if k in value}
    return BlockRule(str(glob), attention, aw_values, aw_params, tie == "stage", knobs,
                     {k: path + (k,) for k in knobs}, gate_values, gate_params)


def _parse_switch(value, key: str, module: str, path, check: _Checker) -> Tuple[Tuple[bool, ...], Dict[str, Param]]:
    """A block option that is on or off with hyperparameters when on (``gate``): ``true``,
    ``false`` or ``{choices: [false, true], <hyperparameter>: <param>, ...}``."""
    if key not in value:
        return (False,), {}
    spec = value[key]
    kpath = path + (key,)
    if isinstance(spec, bool):
        return (spec,), {}
    if not isinstance(spec, dict):
        check.fail(kpath, f"expected true, false or {{choices: [false, true], ...}}, got {_kind(spec)}")
    if "choices" not in spec:
        check.fail(kpath, "missing required key 'choices' ([false, true], [true] or [false])")
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices or not all(isinstance(c, bool) for c in choices):
        check.fail(kpath + ("choices",), f"expected a non-empty list of true/false, got {_kind(choices)}")
    params = {hp: _parse_param(v, kpath + (hp,), check) for hp, v in spec.items() if hp != "choices"}
    _check_module_kwargs(module, params, kpath, check)
    return tuple(dict.fromkeys(choices)), params


@dataclass(frozen=True)
class StageRule:
    """What one glob under ``stages`` allows: width (multiplier) or channels, and depth."""
    glob: str
    knobs: Dict[str, Param]
    path: tuple


def _parse_stage_rule(glob, value, path, check: _Checker) -> StageRule:
    check.mapping(value, path, STAGE_KEYS)
    if "width" in value and "channels" in value:
        check.fail(path, "give width (a multiplier of the base channels) or channels, not both")
    if not value:
        check.fail(path, f"expected at least one of {', '.join(STAGE_KEYS)}")
    return StageRule(str(glob), {k: _parse_knob(k, v, path + (k,), check) for k, v in value.items()}, path)


@dataclass
class Stage:
    """One stage of the base model: its name, base channels and blocks, and the rule over it."""
    name: str
    channels: int
    blocks: List[str]
    rule: Optional[StageRule] = None


# --------------------------------------------------------------------------------------------
# The search space

@dataclass
class Decision:
    """One decision the sampler makes: a block, or all blocks of a stage under ``tie: stage``."""
    unit: str                 # the Optuna parameter prefix: a block name or a stage name
    blocks: List[str]
    rule: BlockRule

    def count(self) -> float:
        total = 0.0
        for params in self.rule.attention.values():
            total += math.prod(p.count() for p in params.values()) if params else 1
        aw = sum(math.prod(p.count() for p in self.rule.aw_conv_params.values()) if v else 1
                 for v in self.rule.aw_conv)
        gate = sum(math.prod(p.count() for p in self.rule.gate_params.values()) if v else 1
                   for v in self.rule.gate)
        return total * aw * gate * math.prod(p.count() for p in self.rule.knobs.values())


@dataclass
class SearchSpace:
    """A validated search space. ``raw`` is the document as read (with defaults filled in)."""
    name: str
    path: Optional[str]
    model: Dict[str, Any]
    data: Dict[str, Any]
    train: Dict[str, Any]
    objectives: List[Dict[str, Any]]
    constraints: Dict[str, float]
    search: Dict[str, Any]
    decisions: List[Decision]
    raw: Dict[str, Any] = field(repr=False, default_factory=dict)
    plugins: List[str] = field(default_factory=list)   # modules imported before validation (nas_attn.plugins)

    stages: List[Stage] = field(default_factory=list)
    family: str = "resnet"
    channel_divisor: int = 8
    base_arch_def: Optional[List[List[str]]] = None   # MobileNetV2: timm block strings per block

    # -- architectures ------------------------------------------------------------------
    @property
    def has_knobs(self) -> bool:
        """Whether any stage or block rule searches width, depth, expansion or kernel."""
        return any(st.rule for st in self.stages) or any(d.rule.knobs for d in self.decisions)

    def _stage_channels(self, stage: Stage, knob: str, value) -> int:
        if knob == "channels":
            return int(value)
        from timm.layers import make_divisible
        return int(make_divisible(stage.channels * value, self.channel_divisor))

    def _arch(self, choose, choose_stage=None, choose_knobs=None) -> Arch:
        """Arch from three choosers, called in this order: ``choose_stage(stage, knob, param)``
        for each stage knob, ``choose_knobs(decision, knob, param, blocks)`` and ``choose(decision,
        blocks)`` for each decision that still has blocks once the depths are known."""
        depth, channels = {}, {}
        for stage in self.stages:
            depth[stage.name], channels[stage.name] = len(stage.blocks), stage.channels
            if stage.rule is None or choose_stage is None:
                continue
            for knob, param in stage.rule.knobs.items():
                value = choose_stage(stage, knob, param)
                if knob == "depth":
                    depth[stage.name] = int(value)
                else:
                    channels[stage.name] = self._stage_channels(stage, knob, value)
        kept = {b for st in self.stages for b in st.blocks[:depth[st.name]]}
        blocks, block_knobs = {}, {}
        for decision in self.decisions:
            present = [b for b in decision.blocks if b in kept]
            if not present:
                continue  # removed by a depth choice: asks the sampler nothing
            if choose_knobs is not None:
                for knob, param in decision.rule.knobs.items():
                    value = choose_knobs(decision, knob, param, present)
                    for block in present:
                        block_knobs.setdefault(block, {})[knob] = value
            choice = choose(decision, present)
            for block in present:
                blocks[block] = copy.deepcopy(choice)
        arch = {"model": self.model["name"], "model_args": copy.deepcopy(self.model["args"]),
                "stem": self.model["stem"], "blocks": blocks}
        if not self.has_knobs:
            return arch
        if self.family == "resnet":
            arch["model_args"]["layers"] = [depth[st.name] for st in self.stages]
            arch["model_args"]["channels"] = [channels[st.name] for st in self.stages]
        else:
            arch["arch_def"] = [[_block_string(self.base_arch_def[i][j], channels[st.name], block_knobs.get(b, {}))
                                 for j, b in enumerate(st.blocks[:depth[st.name]])]
                                for i, st in enumerate(self.stages)]
        return arch

    def sample(self, trial) -> Arch:
        """Sample an Arch inside an Optuna define-by-run function.

        A module's hyperparameters are suggested only when that module is chosen, so they
        are conditional in the study (``layer1.0.dsa.threshold`` exists only in DSA trials).
        Stage knobs come first; a block that a depth choice removes asks nothing.
        """
        def choose_stage(stage, knob, param):
            return param.suggest(trial, f"{stage.name}.{knob}")

        def choose_knobs(decision, knob, param, present):
            return param.suggest(trial, f"{decision.unit}.{knob}")

        def choose(decision: Decision, present):
            rule, unit = decision.rule, decision.unit
            names = list(rule.attention)
            name = trial.suggest_categorical(f"{unit}.attention", names) if len(names) > 1 else names[0]
            kwargs = {hp: p.suggest(trial, f"{unit}.{name}.{hp}") for hp, p in rule.attention[name].items()}
            use_aw = (trial.suggest_categorical(f"{unit}.aw_conv", list(rule.aw_conv))
                      if len(rule.aw_conv) > 1 else rule.aw_conv[0])
            aw = ({hp: p.suggest(trial, f"{unit}.aw_conv.{hp}") for hp, p in rule.aw_conv_params.items()}
                  if use_aw else None)
            choice = {"attention": name, "attention_kwargs": kwargs, "aw_conv": aw}
            if rule.gate != (False,):  # Arches of spaces without gates stay as they were
                use_gate = (trial.suggest_categorical(f"{unit}.gate", list(rule.gate))
                            if len(rule.gate) > 1 else rule.gate[0])
                choice["gate"] = ({hp: p.suggest(trial, f"{unit}.gate.{hp}") for hp, p in rule.gate_params.items()}
                                  if use_gate else None)
            return choice
        return self._arch(choose, choose_stage, choose_knobs)

    def _base_knob(self, stage_or_blocks, knob: str):
        """The base model's value of a knob: width 1.0, its channels, all blocks, its e/k."""
        if knob == "width":
            return 1.0
        if knob == "channels":
            return stage_or_blocks.channels
        if knob == "depth":
            return len(stage_or_blocks.blocks)
        stage_index, block_index = (int(x) for x in stage_or_blocks[0].split(".")[1:3])
        return _block_value(self.base_arch_def[stage_index][block_index], BLOCK_KNOBS[knob])

    def baseline(self) -> Arch:
        """The base model as the space declares it (full width and depth, base expansion and
        kernels) with no attention and no AW-conv in any searched block."""
        return self._arch(lambda d, present: _plain_choice(d),
                          lambda st, knob, p: self._base_knob(st, knob),
                          lambda d, knob, p, present: self._base_knob(present, knob))

    def extreme_arch(self, largest: bool) -> Arch:
        """No attention, every knob at its smallest (or largest) value: the cheapest (dearest)
        structure, since MACs grow with width, depth, expansion and kernel."""
        pick = max if largest else min
        return self._arch(lambda d, present: _plain_choice(d),
                          lambda st, knob, p: pick(_knob_values(p)),
                          lambda d, knob, p, present: pick(_knob_values(p)))

    def baseline_params(self) -> Dict[str, Any]:
        """Optuna parameters that make :meth:`sample` return the baseline (for enqueueing it).

        Decisions whose choices lack ``none``/``false`` (or knobs whose values lack the base
        model's) cannot reach the baseline: their parameters are left to the sampler, and
        :meth:`baseline` is then outside the space.
        """
        params = {}
        for stage in self.stages:
            for knob, param in (stage.rule.knobs.items() if stage.rule else ()):
                base = self._base_knob(stage, knob)
                if param.kind != "fixed" and base in _knob_values(param):
                    params[f"{stage.name}.{knob}"] = base
        for d in self.decisions:
            if len(d.rule.attention) > 1 and "none" in d.rule.attention:
                params[f"{d.unit}.attention"] = "none"
            if len(d.rule.aw_conv) > 1:
                params[f"{d.unit}.aw_conv"] = False
            if len(d.rule.gate) > 1:
                params[f"{d.unit}.gate"] = False
            for knob, param in d.rule.knobs.items():
                base = self._base_knob(d.blocks, knob)
                if param.kind != "fixed" and base in _knob_values(param):
                    params[f"{d.unit}.{knob}"] = base
        return params

    def build(self, arch: Arch):
        """The timm model of an Arch (random init)."""
        return build_model(arch)

    @property
    def input_size(self) -> Tuple[int, int, int]:
        """(C, H, W) of one input image after the data pipeline."""
        size = self.data["image_size"]
        return (self.model["args"].get("in_chans", 3), size, size)

    def count_architectures(self) -> float:
        """How many distinct architectures the space holds (``inf`` with float ranges); an upper
        bound with depth knobs, which remove blocks and the choices they would have had."""
        return math.prod(d.count() for d in self.decisions) * self._stage_count()

    def _stage_count(self) -> int:
        return math.prod(p.count() for st in self.stages if st.rule for p in st.rule.knobs.values())

    def structure_count(self) -> int:
        """Architectures counting module choices and cost knobs only (module hyperparameters ignored)."""
        return math.prod(len(d.rule.attention) * len(d.rule.aw_conv) * len(d.rule.gate)
                         * math.prod(p.count() for p in d.rule.knobs.values())
                         for d in self.decisions) * self._stage_count()

    def objective_metrics(self) -> List[str]:
        return [o["metric"] for o in self.objectives]

    def objective_directions(self) -> List[str]:
        return [o["direction"] for o in self.objectives]

    def reference_point(self) -> Optional[List[float]]:
        """The declared hypervolume reference point, or None if any objective lacks ``ref``."""
        refs = [o.get("ref") for o in self.objectives]
        return None if any(r is None for r in refs) else [float(r) for r in refs]

    def with_overrides(self, train: Optional[dict] = None, search: Optional[dict] = None,
                       data: Optional[dict] = None, plugins: Optional[List[str]] = None) -> "SearchSpace":
        """A copy with some train/search/data values replaced and plugins added (CLI flags), validated again."""
        raw = copy.deepcopy(self.raw)
        if plugins:
            raw["plugins"] = list(dict.fromkeys(list(raw.get("plugins", [])) + list(plugins)))
        for section, values in (("train", train), ("search", search), ("data", data)):
            for key, value in (values or {}).items():
                if value is not None:
                    raw.setdefault(section, {})[key] = value
        return from_dict(raw, file=self.path)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)


def _plain_choice(decision: "Decision") -> Dict[str, Any]:
    """No attention, no AW-conv, no gate: what :meth:`SearchSpace.sample` returns for a decision
    at its baseline values (``gate`` appears only where the rule can gate, as in sample)."""
    choice = {"attention": "none", "attention_kwargs": {}, "aw_conv": None}
    if decision.rule.gate != (False,):
        choice["gate"] = None
    return choice


def _knob_values(param: Param) -> list:
    """Every value a (non-float) knob can take."""
    if param.kind == "int":
        return list(range(param.low, param.high + 1))
    return list(param.choices) if param.kind == "choice" else [param.value]


def _block_value(block: str, letter: str) -> float:
    """The number after ``_<letter>`` in a timm block string (``ir_r1_k3_s2_e6_c24``, ``k`` -> 3)."""
    for part in block.split("_")[1:]:
        if part.startswith(letter) and part[len(letter):].replace(".", "", 1).isdigit():
            value = float(part[len(letter):])
            return int(value) if value.is_integer() else value
    raise ValueError(f"block string {block!r} has no '{letter}' option")


def _block_string(block: str, channels: int, knobs: Dict[str, Any]) -> str:
    """A timm block string with its channels and any expansion/kernel replaced."""
    new = {"c": channels, **{BLOCK_KNOBS[k]: v for k, v in knobs.items()}}
    parts = block.split("_")
    out = [parts[0]]
    for part in parts[1:]:
        letter = part[0]
        if letter in new and part[1:].replace(".", "", 1).isdigit():
            value = new[letter]
            part = f"{letter}{int(value) if float(value).is_integer() else value}"
        out.append(part)
    return "_".join(out)


# --------------------------------------------------------------------------------------------
# Loading

DEFAULTS = {
    "data": {"dataset": "digits", "root": None, "image_size": 32, "val_fraction": 0.2, "augment": True},
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "weight_decay": None,
              "momentum": 0.9, "label_smoothing": 0.0},
    "search": {"trials": 16, "concurrent": 2, "sampler": "tpe", "seed": 0,
               "resources": {"cpu": 1, "gpu": 0}, "early_stopping": None,
               "latency_batch_size": 1, "max_failures": 2, "confirm": 0, "population": None,
               "startup_trials": None},
}


def shipped_spaces() -> Dict[str, Path]:
    """Name -> file of every search space shipped with nas_attn."""
    folder = importlib.resources.files("nas_attn.search_spaces")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def resolve(path_or_name: Union[str, os.PathLike]) -> Path:
    """A path to an existing file, or the shipped space of that name."""
    candidate = Path(path_or_name)
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        raise SpaceError(f"is a folder, not a YAML file; give the space file inside it "
                         f"(e.g. {candidate / 'space.yaml'}) or a shipped space name", file=str(path_or_name))
    shipped = shipped_spaces()
    if str(path_or_name) in shipped:
        return shipped[str(path_or_name)]
    raise SpaceError(f"no such file, and no shipped space of that name"
                     f"{_did_you_mean(path_or_name, shipped)}; shipped: {', '.join(sorted(shipped))}",
                     file=str(path_or_name))


def load(path_or_name: Union[str, os.PathLike]) -> SearchSpace:
    """Load and validate a search space from a YAML path or a shipped name."""
    path = resolve(path_or_name)
    document, lines = _parse_yaml(_read_text(path), str(path))
    return from_dict(document, file=str(path), lines=lines)


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


def loads(text: str, file: str = "<string>") -> SearchSpace:
    """Load a search space from YAML text (tests, notebooks)."""
    document, lines = _parse_yaml(text, file)
    return from_dict(document, file=file, lines=lines)


def from_dict(document: Any, file: Optional[str] = None, lines: Optional[Dict[tuple, int]] = None) -> SearchSpace:
    """Validate a search-space document (the parsed YAML) and build the SearchSpace."""
    check = _Checker(file, lines or {})
    check.mapping(document, (), TOP_LEVEL_KEYS, required=("model", "blocks"))
    doc = copy.deepcopy(document)

    name = doc.get("name", Path(file).stem if file else "space")
    check.string(name, ("name",))

    # plugins: imported first, so the attention modules they register are known below
    plugins = doc.get("plugins", []) or []
    if not isinstance(plugins, list):
        check.fail(("plugins",), f"expected a list of Python module names, got {_kind(plugins)}")
    for i, plugin in enumerate(plugins):
        try:
            import_plugins([plugin])
        except PluginError as exc:
            check.fail(("plugins", i), str(exc))

    # model
    model = check.mapping(doc["model"], ("model",), ("name", "args", "stem", "channel_divisor"), required=("name",))
    import timm
    model_name = check.string(model["name"], ("model", "name"))
    if not timm.is_model(model_name):
        check.fail(("model", "name"), f"unknown timm model {model_name!r}"
                                      f"{_did_you_mean(model_name, timm.list_models())}")
    args = model.get("args", {}) or {}
    if not isinstance(args, dict):
        check.fail(("model", "args"), f"expected a mapping of timm create_model arguments, got {_kind(args)}")
    stem = check.one_of(model.get("stem", "default"), ("model", "stem"), STEMS)
    divisor = check.number(model.get("channel_divisor", 8), ("model", "channel_divisor"), low=1, integer=True)
    model = {"name": model_name, "args": args, "stem": stem}

    # data
    from .data import DATASETS
    data = {**DEFAULTS["data"], **check.mapping(doc.get("data", {}) or {}, ("data",), tuple(DEFAULTS["data"]))}
    check.one_of(data["dataset"], ("data", "dataset"), tuple(DATASETS))
    check.number(data["image_size"], ("data", "image_size"), low=1, integer=True)
    check.number(data["val_fraction"], ("data", "val_fraction"), low=0, low_inclusive=False, high=0.9)
    if data["root"] is not None and not isinstance(data["root"], str):
        check.fail(("data", "root"), f"expected a folder path, got {_kind(data['root'])}")
    if data["dataset"] not in ("digits", "cluttered_digits") and data["root"] is None:
        check.fail(("data",), f"dataset {data['dataset']} needs 'root': the folder that holds it "
                              f"(or pass --data-root)")
    if not isinstance(data["augment"], bool):
        check.fail(("data", "augment"), f"expected true or false, got {_kind(data['augment'])}")

    # train
    train = {**DEFAULTS["train"], **check.mapping(doc.get("train", {}) or {}, ("train",), tuple(DEFAULTS["train"]))}
    check.number(train["epochs"], ("train", "epochs"), low=1, integer=True)
    check.number(train["batch_size"], ("train", "batch_size"), low=1, integer=True)
    check.number(train["lr"], ("train", "lr"), low=0, low_inclusive=False)
    check.one_of(train["optimizer"], ("train", "optimizer"), OPTIMIZERS)
    if train["weight_decay"] is not None:
        check.number(train["weight_decay"], ("train", "weight_decay"), low=0)
    check.number(train["momentum"], ("train", "momentum"), low=0, high=1)
    check.number(train["label_smoothing"], ("train", "label_smoothing"), low=0, high=0.99)

    # objectives
    objectives = doc.get("objectives", [{"metric": "accuracy", "direction": "maximize"},
                                        {"metric": "effective_macs", "direction": "minimize"}])
    if not isinstance(objectives, list) or not objectives:
        check.fail(("objectives",), f"expected a non-empty list of {{metric, direction}}, got {_kind(objectives)}")
    seen = set()
    for i, objective in enumerate(objectives):
        opath = ("objectives", i)
        check.mapping(objective, opath, ("metric", "direction", "ref"), required=("metric",))
        check.one_of(objective["metric"], opath + ("metric",), tuple(METRICS))
        objective.setdefault("direction", METRICS[objective["metric"]].direction)
        check.one_of(objective["direction"], opath + ("direction",), ("maximize", "minimize"))
        if "ref" in objective:
            check.number(objective["ref"], opath + ("ref",))
        if objective["metric"] in seen:
            check.fail(opath + ("metric",), f"metric {objective['metric']!r} appears twice")
        seen.add(objective["metric"])

    # constraints
    constraints = check.mapping(doc.get("constraints", {}) or {}, ("constraints",),
                                ("max_params", "max_macs", "max_effective_macs"))
    for key, value in constraints.items():
        check.number(value, ("constraints", key), low=0, low_inclusive=False)

    # search
    search_doc = check.mapping(doc.get("search", {}) or {}, ("search",), tuple(DEFAULTS["search"]))
    search = {**DEFAULTS["search"], **search_doc}
    check.number(search["trials"], ("search", "trials"), low=1, integer=True)
    check.number(search["concurrent"], ("search", "concurrent"), low=1, integer=True)
    check.one_of(search["sampler"], ("search", "sampler"), SAMPLERS)
    check.number(search["seed"], ("search", "seed"), integer=True)
    check.number(search["latency_batch_size"], ("search", "latency_batch_size"), low=1, integer=True)
    check.number(search["max_failures"], ("search", "max_failures"), low=0, integer=True)
    check.number(search["confirm"], ("search", "confirm"), low=0, integer=True)
    if search["population"] is not None:
        check.number(search["population"], ("search", "population"), low=2, integer=True)
    if search["startup_trials"] is not None:
        check.number(search["startup_trials"], ("search", "startup_trials"), low=1, integer=True)
    resources = {**DEFAULTS["search"]["resources"],
                 **check.mapping(search.get("resources") or {}, ("search", "resources"), ("cpu", "gpu"))}
    check.number(resources["cpu"], ("search", "resources", "cpu"), low=0, low_inclusive=False)
    check.number(resources["gpu"], ("search", "resources", "gpu"), low=0)
    search["resources"] = resources
    if search["early_stopping"] is not None:
        es = check.mapping(search["early_stopping"], ("search", "early_stopping"),
                           ("enabled", "grace_epochs", "reduction_factor"))
        es = {"enabled": True, "grace_epochs": 1, "reduction_factor": 3, **es}
        if not isinstance(es["enabled"], bool):
            check.fail(("search", "early_stopping", "enabled"), f"expected true or false, got {_kind(es['enabled'])}")
        check.number(es["grace_epochs"], ("search", "early_stopping", "grace_epochs"), low=1, integer=True)
        check.number(es["reduction_factor"], ("search", "early_stopping", "reduction_factor"), low=2, integer=True)
        search["early_stopping"] = es

    # blocks: parse rules, then match them against the real model
    blocks_doc = doc["blocks"]
    if not isinstance(blocks_doc, dict) or not blocks_doc:
        check.fail(("blocks",), f"expected a mapping of block globs to settings, got {_kind(blocks_doc)}")
    rules = [_parse_block_rule(glob, value, ("blocks", glob), check) for glob, value in blocks_doc.items()]
    stages_doc = doc.get("stages") or {}
    if not isinstance(stages_doc, dict):
        check.fail(("stages",), f"expected a mapping of stage globs to width/channels/depth, got {_kind(stages_doc)}")
    stage_rules = [_parse_stage_rule(glob, value, ("stages", glob), check) for glob, value in stages_doc.items()]
    try:
        probe = build_model({"model": model_name, "model_args": args, "stem": stem, "blocks": {}})
        sites = attention_sites(probe)
        model_family = family(probe)
    except ArchError as exc:
        check.fail(("model", "name"), str(exc))
    except Exception as exc:  # timm/torch refuse an argument (TypeError, ValueError, ...): say which
        _fail_model_args(model_name, args, stem, exc, "build", check)
    _check_against_data(model_name, args, data, check)
    decisions = _decisions(rules, list(sites), check)
    _check_gateable(decisions, sites, check)
    _check_image_size(probe, model_name, args, stem, data, train, sites, decisions, check)
    stages, base_arch_def = _stages(probe, model_family, model_name, args, list(sites), stage_rules, rules, check)
    _check_knobs(stages, decisions, model_family, base_arch_def, divisor, check)
    if "channel_divisor" in doc["model"]:
        model["channel_divisor"] = divisor

    raw = {"name": name, **({"plugins": plugins} if plugins else {}), "model": model, "data": data, "train": train, "objectives": objectives,
           "constraints": constraints, **({"stages": stages_doc} if stages_doc else {}),
           "blocks": blocks_doc, "search": search}
    space = SearchSpace(name=name, path=file, model=model, data=data, train=train, objectives=objectives,
                        constraints=constraints, search=search, decisions=decisions, raw=raw, stages=stages,
                        family=model_family, channel_divisor=divisor, base_arch_def=base_arch_def,
                        plugins=list(plugins))
    if space.has_knobs:
        # timm's builder has the last word on what it can make: build the two extremes now,
        # so a knob value it refuses fails here, not in a trial.
        for largest in (False, True):
            try:
                build_model(space.extreme_arch(largest))
            except Exception as exc:
                first = next((st.rule.path for st in stages if st.rule), None) or next(
                    iter(next(d.rule.knob_lines for d in decisions if d.rule.knobs).values()))
                check.fail(first, f"timm cannot build the {'largest' if largest else 'smallest'} "
                                  f"structure these knobs allow: {type(exc).__name__}: {exc}")
    return space


def _check_against_data(model_name: str, args: dict, data: dict, check: _Checker) -> None:
    """The model's input channels and classes must be the dataset's: otherwise every trial fails
    (wrong channels) or trains a head of the wrong size (wrong classes)."""
    from .data import dataset_format
    in_chans, num_classes = dataset_format(data["dataset"], data["root"])
    for key, want, default in (("in_chans", in_chans, 3), ("num_classes", num_classes, 1000)):
        if want is None:
            continue
        given = args.get(key, default)
        if given == want:
            continue
        where = ("model", "args", key)  # the line of the key, or of model.args / model when it is absent
        stated = f"{key}: {given!r}" if key in args else f"no {key}, so timm's default {default}"
        what = "channel" + ("s" if want != 1 else "") if key == "in_chans" else "classes"
        check.fail(where, f"dataset {data['dataset']} has {want} {what} but the model has {stated}; "
                          f"set model.args.{key}: {want}")


def _fail_model_args(model_name: str, args: dict, stem: str, exc: Exception, what: str, check: _Checker,
                     input_size=None):
    """SpaceError at the model arg that makes timm/torch fail (found by leaving each one out),
    else at model.args."""
    import torch
    for key in args:
        rest = {k: v for k, v in args.items() if k != key}
        try:
            model = build_model({"model": model_name, "model_args": rest, "stem": stem, "blocks": {}})
            if input_size is not None:
                model.eval()
                with torch.no_grad():
                    model(torch.zeros(1, *input_size))
        except Exception:
            continue
        check.fail(("model", "args", key), f"timm could not {what} {model_name} with {key}: {args[key]!r}: "
                                           f"{type(exc).__name__}: {exc}")
    check.fail(("model", "args"), f"timm could not {what} {model_name} with these args: "
                                  f"{type(exc).__name__}: {exc}")


def _check_image_size(probe, model_name: str, args: dict, stem: str, data: dict, train: dict, sites,
                      decisions: List["Decision"], check: _Checker) -> None:
    """Run the base model once on one image of the data's size: it must run, and the searched
    blocks must see more than a single pixel (beyond the model's downsampling every map is 1x1
    and spatial attention has nothing to attend to)."""
    import torch
    from .arch import site_shapes
    size = data["image_size"]
    input_size = (args.get("in_chans", 3), size, size)
    try:
        shapes = site_shapes(probe, input_size)
    except Exception as exc:
        if isinstance(exc, (ValueError, TypeError)) and args:
            _fail_model_args(model_name, args, stem, exc, "run", check, input_size)
        check.fail(("data", "image_size"), f"{model_name} cannot run on {size}x{size} images: "
                                           f"{type(exc).__name__}: {exc}")
    searched = [b for d in decisions for b in d.blocks]
    if searched and all(shapes[b]["slot"][1:] == (1, 1) for b in searched):
        last = next((b for b in shapes if shapes[b]["slot"][1:] == (1, 1)), searched[0])
        check.fail(("data", "image_size"),
                   f"{size}x{size} images are too small for {model_name}'s downsampling: every searched block "
                   f"sees a 1x1 map (from {last} on); use a larger image_size or model.stem: cifar")
    smallest = min((shapes[b]["slot"][1] * shapes[b]["slot"][2] for b in shapes), default=2)
    if train["batch_size"] == 1 and smallest == 1:
        check.fail(("train", "batch_size"), "batch_size 1 with maps of 1x1 pixels: batch norm cannot "
                                            "normalise a single value in training; use batch_size >= 2")


def _stages(probe, model_family: str, model_name: str, args: dict, block_names: List[str],
            stage_rules: List["StageRule"], rules: List[BlockRule], check: _Checker):
    """The base model's stages (name, channels, blocks) with the stage rule owning each, and
    for MobileNetV2 its per-block timm block strings."""
    needs_knobs = bool(stage_rules) or any(r.knobs for r in rules)
    base_arch_def = None
    names = list(dict.fromkeys(stage_of(b) for b in block_names))
    blocks_of = {n: [b for b in block_names if stage_of(b) == n] for n in names}
    if model_family == "resnet":
        import inspect
        from timm.models.resnet import ResNet
        default = inspect.signature(ResNet.__init__).parameters["channels"].default
        channels = list(args.get("channels", default))
    else:
        if needs_knobs and model_name not in MOBILENETV2_MULTIPLIERS:
            check.fail(("stages",) if stage_rules else ("blocks",),
                       f"cost knobs (width, depth, expansion, kernel) of inverted-residual nets need one of "
                       f"{', '.join(MOBILENETV2_MULTIPLIERS)} (timm's block list is known for these); "
                       f"got {model_name}")
        base_arch_def = mobilenetv2_arch_def(model_name) if model_name in MOBILENETV2_MULTIPLIERS else None
        channels = [int(_block_value(st[0], "c")) for st in base_arch_def] if base_arch_def else [0] * len(names)
        if base_arch_def and [len(st) for st in base_arch_def] != [len(blocks_of[n]) for n in names]:
            check.fail(("model", "args"), "model args change the block count of the model; cost knobs need "
                                          "the entrypoint's own block list")
    stages = [Stage(n, int(c), blocks_of[n]) for n, c in zip(names, channels)]
    for rule in stage_rules:
        matched = [st for st in stages if fnmatch.fnmatchcase(st.name, rule.glob)]
        if not matched:
            check.fail(rule.path, f"glob matches no stage of the model; its stages are "
                                  f"{', '.join(st.name for st in stages)}")
        for st in matched:
            st.rule = rule  # a later glob overrides an earlier one
    return stages, base_arch_def


def _check_knobs(stages: List[Stage], decisions: List["Decision"], model_family: str, base_arch_def,
                 divisor: int, check: _Checker) -> None:
    """Every knob value must be one timm's builder can make for every stage/block it covers."""
    for st in stages:
        if st.rule is None:
            continue
        for knob, param in st.rule.knobs.items():
            for i, value in enumerate(_knob_values(param)):
                where = st.rule.path + (knob,) + (("choices", i) if param.kind == "choice" else ())
                if knob == "depth" and value > len(st.blocks):
                    check.fail(where, f"depth {value} is more than the {len(st.blocks)} block(s) of stage "
                                      f"{st.name} (depth keeps the first N blocks, 1..{len(st.blocks)})")
                if knob == "channels" and value % divisor:
                    check.fail(where, f"channels {value} is not a positive multiple of the channel "
                                      f"divisor {divisor} (model.channel_divisor)")
    for d in decisions:
        for knob, path in d.rule.knob_lines.items():
            if model_family == "resnet":
                check.fail(path, f"{knob} is a knob of inverted-residual blocks (MobileNetV2); ResNet "
                                 f"blocks have none: use stages: width/channels/depth")
            for block in d.blocks:
                stage_index, block_index = (int(x) for x in block.split(".")[1:3])
                if knob == "expansion" and not base_arch_def[stage_index][block_index].startswith("ir"):
                    check.fail(path, f"block {block} is a depthwise-separable block without an expansion "
                                     f"conv; expansion applies to inverted residuals ('ir' blocks)")


def _check_gateable(decisions: List[Decision], sites, check: _Checker) -> None:
    """A rule that may gate a block must match only blocks that can take a DSA gate."""
    for decision in decisions:
        if True not in decision.rule.gate:
            continue
        for block in decision.blocks:
            reason = attn_modules.why_not_gateable(sites[block].block)
            if reason is not None:
                ok = [b for b, site in sites.items() if attn_modules.why_not_gateable(site.block) is None]
                check.fail(("blocks", decision.rule.glob, "gate"),
                           f"block {block} cannot take a DSA gate: {reason}; narrow the glob to "
                           f"gateable blocks ({', '.join(ok) or 'none in this model'})")


def _decisions(rules: List[BlockRule], block_names: List[str], check: _Checker) -> List[Decision]:
    owner: Dict[str, BlockRule] = {}
    for rule in rules:
        matched = [b for b in block_names if fnmatch.fnmatchcase(b, rule.glob)]
        if not matched:
            check.fail(("blocks", rule.glob), f"glob matches no block of the model; its blocks are "
                                              f"{', '.join(block_names)}")
        for block in matched:
            owner[block] = rule  # a later glob overrides an earlier one
    decisions: Dict[str, Decision] = {}
    for block in block_names:
        rule = owner.get(block)
        if rule is None:
            continue
        unit = stage_of(block) if rule.tie_stage else block
        if unit in decisions and decisions[unit].rule is rule:
            decisions[unit].blocks.append(block)
        else:
            if unit in decisions:  # a stage tied under one glob but split by another
                unit = block
            decisions[unit] = Decision(unit, [block], rule)
    return list(decisions.values())
