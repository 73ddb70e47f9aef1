"""What the ``blocks:`` section allows per block glob (the attention choices and their
hyperparameters, AW-conv, the DSA gate, ``tie: stage``) and the decisions the sampler makes."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from ..names import stage_of
from ._errors import _Checker, _did_you_mean, _kind
from ._knobs import BLOCK_KNOBS, _parse_knob
from ._params import Param, _check_module_kwargs, _parse_param


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
        from .. import modules as attn_modules  # second pass: the registry imports torch and timm
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


def _blocks_section(doc: dict, check: _Checker):
    """(the ``blocks`` document, its rules): one rule per block glob."""
    blocks_doc = doc["blocks"]
    if not isinstance(blocks_doc, dict) or not blocks_doc:
        check.fail(("blocks",), f"expected a mapping of block globs to settings, got {_kind(blocks_doc)}")
    return blocks_doc, [_parse_block_rule(glob, value, ("blocks", glob), check) for glob, value in blocks_doc.items()]


def _check_gateable(decisions: List[Decision], sites, check: _Checker) -> None:
    """A rule that may gate a block must match only blocks that can take a DSA gate."""
    from .. import modules as attn_modules
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
