"""Search spaces: YAML -> validated :class:`SearchSpace` -> sampled Arch.

``load(path_or_name)`` reads a YAML file (``yaml.safe_load`` semantics only) or a space
shipped in ``search_spaces/`` by name, checks every key before any trial runs, and raises
:class:`SpaceError` naming the file, the line, the key path and what was expected.

The format (README "Search spaces" documents every key)::

    name: digits_resnet
    model: {name: resnet18, args: {num_classes: 10, in_chans: 1}, stem: default}
    data: {dataset: digits, image_size: 32, val_fraction: 0.2}
    train: {epochs: 4, batch_size: 64, lr: 0.05}
    objectives:
      - {metric: accuracy, direction: maximize, ref: 0.0}
      - {metric: effective_macs, direction: minimize, ref: 6.0e7}
    constraints: {max_params: 12.0e6}
    blocks:
      "layer*.*":
        attention:
          choices: [none, se, dsa]
          dsa: {threshold: {float: [0.0, 0.8]}}
        aw_conv: {choices: [false, true]}
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
from .arch import STEMS, Arch, ArchError, attention_sites, build_model

#: Metrics a trial reports, usable as objectives, with the direction that is better and the unit.
METRICS = {
    "accuracy": ("maximize", "fraction of validation images classified right (top-1)"),
    "macs": ("minimize", "multiply-accumulates per image"),
    "effective_macs": ("minimize", "MACs per image with DSA-pruned pixels skipped"),
    "params": ("minimize", "parameters"),
    "elementwise_ops": ("minimize", "element-wise/pooling/normalisation ops per image"),
    "latency_ms": ("minimize", "median forward time of one batch, milliseconds"),
}
SAMPLERS = ("tpe", "nsga2", "random")
OPTIMIZERS = ("sgd", "adamw")
TOP_LEVEL_KEYS = ("name", "model", "data", "train", "objectives", "constraints", "blocks", "search")


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
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            type(None): "nothing (null)"}.get(type(value), f"{type(value).__name__} {value!r}")


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


def _parse_block_rule(glob, value, path, check: _Checker) -> BlockRule:
    check.mapping(value, path, ("attention", "aw_conv", "tie"))
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
            if not isinstance(choices, list) or not choices or not all(isinstance(c, bool) for c in choices):
                check.fail(wpath + ("choices",), f"expected a non-empty list of true/false, got {_kind(choices)}")
            aw_values = tuple(dict.fromkeys(choices))
            aw_params = {hp: _parse_param(v, wpath + (hp,), check) for hp, v in spec.items() if hp != "choices"}
            _check_module_kwargs("aw_conv", aw_params, wpath, check)
        else:
            check.fail(wpath, f"expected true, false or {{choices: [false, true], ...}}, got {_kind(spec)}")
    tie = value.get("tie")
    if tie is not None:
        check.one_of(tie, path + ("tie",), ("stage",))
    return BlockRule(str(glob), attention, aw_values, aw_params, tie == "stage")


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
        return total * aw


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

    # -- architectures ------------------------------------------------------------------
    def _arch(self, choose) -> Arch:
        blocks = {}
        for decision in self.decisions:
            choice = choose(decision)
            for block in decision.blocks:
                blocks[block] = copy.deepcopy(choice)
        return {"model": self.model["name"], "model_args": copy.deepcopy(self.model["args"]),
                "stem": self.model["stem"], "blocks": blocks}

    def sample(self, trial) -> Arch:
        """Sample an Arch inside an Optuna define-by-run function.

        A module's hyperparameters are suggested only when that module is chosen, so they
        are conditional in the study (``layer1.0.dsa.threshold`` exists only in DSA trials).
        """
        def choose(decision: Decision):
            rule, unit = decision.rule, decision.unit
            names = list(rule.attention)
            name = trial.suggest_categorical(f"{unit}.attention", names) if len(names) > 1 else names[0]
            kwargs = {hp: p.suggest(trial, f"{unit}.{name}.{hp}") for hp, p in rule.attention[name].items()}
            use_aw = (trial.suggest_categorical(f"{unit}.aw_conv", list(rule.aw_conv))
                      if len(rule.aw_conv) > 1 else rule.aw_conv[0])
            aw = ({hp: p.suggest(trial, f"{unit}.aw_conv.{hp}") for hp, p in rule.aw_conv_params.items()}
                  if use_aw else None)
            return {"attention": name, "attention_kwargs": kwargs, "aw_conv": aw}
        return self._arch(choose)

    def baseline(self) -> Arch:
        """The Arch with no attention and no AW-conv in any searched block."""
        return self._arch(lambda d: {"attention": "none", "attention_kwargs": {}, "aw_conv": None})

    def baseline_params(self) -> Dict[str, Any]:
        """Optuna parameters that make :meth:`sample` return the baseline (for enqueueing it).

        Decisions whose choices lack ``none``/``false`` cannot reach the baseline: their
        parameters are left to the sampler, and :meth:`baseline` is then outside the space.
        """
        params = {}
        for d in self.decisions:
            if len(d.rule.attention) > 1 and "none" in d.rule.attention:
                params[f"{d.unit}.attention"] = "none"
            if len(d.rule.aw_conv) > 1:
                params[f"{d.unit}.aw_conv"] = False
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
        """How many distinct architectures the space holds (``inf`` with float ranges)."""
        return math.prod(d.count() for d in self.decisions)

    def structure_count(self) -> int:
        """Architectures counting module choices only (hyperparameters ignored)."""
        return math.prod(len(d.rule.attention) * len(d.rule.aw_conv) for d in self.decisions)

    def objective_metrics(self) -> List[str]:
        return [o["metric"] for o in self.objectives]

    def objective_directions(self) -> List[str]:
        return [o["direction"] for o in self.objectives]

    def reference_point(self) -> Optional[List[float]]:
        """The declared hypervolume reference point, or None if any objective lacks ``ref``."""
        refs = [o.get("ref") for o in self.objectives]
        return None if any(r is None for r in refs) else [float(r) for r in refs]

    def with_overrides(self, train: Optional[dict] = None, search: Optional[dict] = None,
                       data: Optional[dict] = None) -> "SearchSpace":
        """A copy with some train/search/data values replaced (CLI flags), validated again."""
        raw = copy.deepcopy(self.raw)
        for section, values in (("train", train), ("search", search), ("data", data)):
            for key, value in (values or {}).items():
                if value is not None:
                    raw.setdefault(section, {})[key] = value
        return from_dict(raw, file=self.path)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)


# --------------------------------------------------------------------------------------------
# Loading

DEFAULTS = {
    "data": {"dataset": "digits", "root": None, "image_size": 32, "val_fraction": 0.2, "augment": True},
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.05, "optimizer": "sgd", "weight_decay": None,
              "momentum": 0.9, "label_smoothing": 0.0},
    "search": {"trials": 16, "concurrent": 2, "sampler": "tpe", "seed": 0,
               "resources": {"cpu": 1, "gpu": 0}, "early_stopping": None,
               "latency_batch_size": 1, "max_failures": 2},
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
    shipped = shipped_spaces()
    if str(path_or_name) in shipped:
        return shipped[str(path_or_name)]
    raise SpaceError(f"no such file, and no shipped space of that name"
                     f"{_did_you_mean(path_or_name, shipped)}; shipped: {', '.join(sorted(shipped))}",
                     file=str(path_or_name))


def load(path_or_name: Union[str, os.PathLike]) -> SearchSpace:
    """Load and validate a search space from a YAML path or a shipped name."""
    path = resolve(path_or_name)
    document, lines = _parse_yaml(path.read_text(), str(path))
    return from_dict(document, file=str(path), lines=lines)


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

    # model
    model = check.mapping(doc["model"], ("model",), ("name", "args", "stem"), required=("name",))
    import timm
    model_name = check.string(model["name"], ("model", "name"))
    if not timm.is_model(model_name):
        check.fail(("model", "name"), f"unknown timm model {model_name!r}"
                                      f"{_did_you_mean(model_name, timm.list_models())}")
    args = model.get("args", {}) or {}
    if not isinstance(args, dict):
        check.fail(("model", "args"), f"expected a mapping of timm create_model arguments, got {_kind(args)}")
    stem = check.one_of(model.get("stem", "default"), ("model", "stem"), STEMS)
    model = {"name": model_name, "args": args, "stem": stem}

    # data
    from .data import DATASETS
    data = {**DEFAULTS["data"], **check.mapping(doc.get("data", {}) or {}, ("data",), tuple(DEFAULTS["data"]))}
    check.one_of(data["dataset"], ("data", "dataset"), tuple(DATASETS))
    check.number(data["image_size"], ("data", "image_size"), low=1, integer=True)
    check.number(data["val_fraction"], ("data", "val_fraction"), low=0, low_inclusive=False, high=0.9)
    if data["root"] is not None and not isinstance(data["root"], str):
        check.fail(("data", "root"), f"expected a folder path, got {_kind(data['root'])}")
    if data["dataset"] != "digits" and data["root"] is None:
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
        objective.setdefault("direction", METRICS[objective["metric"]][0])
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
    try:
        probe = build_model({"model": model_name, "model_args": args, "stem": stem, "blocks": {}})
        sites = attention_sites(probe)
    except ArchError as exc:
        check.fail(("model", "name"), str(exc))
    except TypeError as exc:
        check.fail(("model", "args"), f"timm could not build {model_name} with these args: {exc}")
    decisions = _decisions(rules, list(sites), check)

    raw = {"name": name, "model": model, "data": data, "train": train, "objectives": objectives,
           "constraints": constraints, "blocks": blocks_doc, "search": search}
    return SearchSpace(name=name, path=file, model=model, data=data, train=train, objectives=objectives,
                       constraints=constraints, search=search, decisions=decisions, raw=raw)


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
        unit = block.rsplit(".", 1)[0] if rule.tie_stage else block
        if unit in decisions and decisions[unit].rule is rule:
            decisions[unit].blocks.append(block)
        else:
            if unit in decisions:  # a stage tied under one glob but split by another
                unit = block
            decisions[unit] = Decision(unit, [block], rule)
    return list(decisions.values())
