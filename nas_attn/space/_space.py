"""The validated search space: :func:`from_dict` checks a document section by section and builds
the :class:`SearchSpace`, which samples Arches inside Optuna and knows its baseline."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import yaml

from ._blocks import Decision, _blocks_section, _check_gateable, _decisions
from ._errors import _Checker
from ._knobs import BLOCK_KNOBS, Stage, _block_string, _block_value, _check_knobs, _stages, _stages_section
from ._params import _knob_values
from ._sections import (TOP_LEVEL_KEYS, _check_model_name, _check_sampler_options, _constraints_section,
                        _data_section, _model_section, _objectives_section, _plugins_section, _search_section,
                        _train_section)

if TYPE_CHECKING:
    from ..arch import Arch


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
    stem: Optional[Stage] = None                      # the stem's width knob (``stages: stem``), if any
    family: str = "resnet"
    channel_divisor: int = 8
    base_arch_def: Optional[List[List[str]]] = None   # MobileNetV2: timm block strings per block

    # -- architectures ------------------------------------------------------------------
    @property
    def has_knobs(self) -> bool:
        """Whether any stage or block rule searches width, depth, the stem's width, expansion or kernel."""
        return any(st.rule for st in self._knob_stages()) or any(d.rule.knobs for d in self.decisions)

    def _knob_stages(self) -> List[Stage]:
        """The stem when ``stages:`` searches its width, then the block stages."""
        return ([self.stem] if self.stem is not None else []) + self.stages

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
        for stage in self._knob_stages():
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
        if self.stem is not None:
            arch["model_args"]["stem_width" if self.family == "resnet" else "stem_size"] = channels[self.stem.name]
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
        return self._plain_params(lambda where, knob, param: self._base_knob(where, knob))

    def extreme_params(self, largest: bool) -> Dict[str, Any]:
        """Optuna parameters that make :meth:`sample` return :meth:`extreme_arch` (the search's
        anchors, ``search.anchors``)."""
        pick = max if largest else min
        return self._plain_params(lambda where, knob, param: pick(_knob_values(param)))

    def _plain_params(self, knob_value) -> Dict[str, Any]:
        """No attention, AW-conv or gate, each knob at ``knob_value(stage or blocks, knob, param)``."""
        params = {}
        for stage in self._knob_stages():
            for knob, param in (stage.rule.knobs.items() if stage.rule else ()):
                value = knob_value(stage, knob, param)
                if param.kind != "fixed" and value in _knob_values(param):
                    params[f"{stage.name}.{knob}"] = value
        for d in self.decisions:
            if len(d.rule.attention) > 1 and "none" in d.rule.attention:
                params[f"{d.unit}.attention"] = "none"
            if len(d.rule.aw_conv) > 1:
                params[f"{d.unit}.aw_conv"] = False
            if len(d.rule.gate) > 1:
                params[f"{d.unit}.gate"] = False
            for knob, param in d.rule.knobs.items():
                value = knob_value(d.blocks, knob, param)
                if param.kind != "fixed" and value in _knob_values(param):
                    params[f"{d.unit}.{knob}"] = value
        return params

    def first_points(self) -> List[Dict[str, Any]]:
        """The trials a new search evaluates before its sampler proposes any: the baseline, then
        with ``search.anchors`` the cheapest and the dearest structure (no attention, every knob
        at its smallest / largest value), so the front's two ends are measured, not left to
        chance; duplicates (a space without knobs) appear once."""
        points = [self.baseline_params()]
        if self.search["anchors"]:
            points += [self.extreme_params(largest=False), self.extreme_params(largest=True)]
        unique = []
        for point in points:
            if point and point not in unique:
                unique.append(point)
        return unique

    def build(self, arch: Arch):
        """The timm model of an Arch (random init)."""
        from ..arch import build_model
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
        return math.prod(p.count() for st in self._knob_stages() if st.rule for p in st.rule.knobs.values())

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


@dataclass
class SpaceDocument:
    """A search-space document whose YAML has passed the first check (keys, types, ranges);
    :meth:`build` runs the second, which imports torch and timm and builds the model.

    Split so that a search can start Ray while the second pass runs (``nas_attn.search.run``):
    a mistake in the YAML is still reported before Ray starts, in well under a second.
    """
    name: str
    file: Optional[str]
    _check: _Checker = field(repr=False)
    _doc: Dict[str, Any] = field(repr=False)
    _sections: Dict[str, Any] = field(repr=False)

    def build(self) -> SearchSpace:
        """Run the second pass; raises :class:`SpaceError` like :func:`from_dict`."""
        return _second_pass(self)


def check_document(document: Any, file: Optional[str] = None,
                   lines: Optional[Dict[tuple, int]] = None) -> SpaceDocument:
    """The first pass of :func:`from_dict`: every section's keys, types and ranges, with nothing
    but the YAML (no torch, timm or Ray is imported)."""
    check = _Checker(file, lines or {})
    check.mapping(document, (), TOP_LEVEL_KEYS, required=("model", "blocks"))
    doc = copy.deepcopy(document)

    name = doc.get("name", Path(file).stem if file else "space")
    check.string(name, ("name",))
    plugins = _plugins_section(doc, check)  # first: the modules they register may be named below
    model, divisor = _model_section(doc, check)
    sections = dict(plugins=plugins, model=model, divisor=divisor, data=_data_section(doc, check),
                    train=_train_section(doc, check), objectives=_objectives_section(doc, check),
                    constraints=_constraints_section(doc, check), search=_search_section(doc, check))
    sections["stages_doc"], sections["stage_rules"] = _stages_section(doc, check)
    return SpaceDocument(name=name, file=file, _check=check, _doc=doc, _sections=sections)


def from_dict(document: Any, file: Optional[str] = None, lines: Optional[Dict[tuple, int]] = None) -> SearchSpace:
    """Validate a search-space document (the parsed YAML) and build the SearchSpace.

    Two passes. The first (:func:`check_document`) checks every section's keys, types and
    ranges with nothing but the YAML: a typo is reported in well under a second. The second
    (:meth:`SpaceDocument.build`) imports torch and timm (3-7 s on a 2-core machine) and checks
    what needs them: the model name, the attention modules and their hyperparameters, the
    blocks the globs match, the data against the model.
    """
    return check_document(document, file, lines).build()


def _second_pass(first: SpaceDocument) -> SearchSpace:
    check, doc, name, file = first._check, first._doc, first.name, first.file
    sections = first._sections
    plugins, model, divisor, data, train = (sections[k] for k in ("plugins", "model", "divisor", "data", "train"))
    objectives, constraints, search = sections["objectives"], sections["constraints"], sections["search"]
    stages_doc, stage_rules = sections["stages_doc"], sections["stage_rules"]

    # torch and timm load here. Blocks: parse the rules (the module registry), then match them
    # against the real model.
    from ..arch import build_model
    from ._probe import _check_against_data, _check_image_size, _probe_model
    _check_model_name(model, check)
    _check_sampler_options(search, check)
    blocks_doc, rules = _blocks_section(doc, check)
    probe, sites, model_family = _probe_model(model, check)
    model_name, args, stem = model["name"], model["args"], model["stem"]
    _check_against_data(model_name, args, data, check)
    decisions = _decisions(rules, list(sites), check)
    _check_gateable(decisions, sites, check)
    _check_image_size(probe, model_name, args, stem, data, train, sites, decisions, check)
    stages, stem, base_arch_def = _stages(probe, model_family, model_name, args, list(sites), stage_rules,
                                          rules, check)
    _check_knobs(stages + ([stem] if stem else []), decisions, model_family, base_arch_def, divisor, check)

    raw = {"name": name, **({"plugins": plugins} if plugins else {}), "model": model, "data": data, "train": train, "objectives": objectives,
           "constraints": constraints, **({"stages": stages_doc} if stages_doc else {}),
           "blocks": blocks_doc, "search": search}
    space = SearchSpace(name=name, path=file, model=model, data=data, train=train, objectives=objectives,
                        constraints=constraints, search=search, decisions=decisions, raw=raw, stages=stages,
                        stem=stem, family=model_family, channel_divisor=divisor, base_arch_def=base_arch_def,
                        plugins=list(plugins))
    if space.has_knobs:
        # timm's builder has the last word on what it can make: build the two extremes now,
        # so a knob value it refuses fails here, not in a trial.
        for largest in (False, True):
            try:
                build_model(space.extreme_arch(largest))
            except Exception as exc:
                first = next((st.rule.path for st in space._knob_stages() if st.rule), None) or next(
                    iter(next(d.rule.knob_lines for d in decisions if d.rule.knobs).values()))
                check.fail(first, f"timm cannot build the {'largest' if largest else 'smallest'} "
                                  f"structure these knobs allow: {type(exc).__name__}: {exc}")
    return space
