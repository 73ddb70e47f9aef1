"""Cost knobs: width/channels and depth per stage (``stages:``), expansion and kernel per
inverted-residual block (``blocks:``), parsed, checked against the base model and written as
timm model args (ResNet ``layers``/``channels``) or timm block strings (MobileNetV2)."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..names import stage_of
from ._errors import _Checker, _kind
from ._params import Param, _knob_values, _parse_param

STAGE_KEYS = ("width", "channels", "depth")
#: Per-block knobs of inverted residuals (MobileNetV2): the block-string letters timm decodes.
BLOCK_KNOBS = {"expansion": "e", "kernel": "k"}


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


def _stages_section(doc: dict, check: _Checker):
    """(the ``stages`` document, its rules): one rule per stage glob."""
    stages_doc = doc.get("stages") or {}
    if not isinstance(stages_doc, dict):
        check.fail(("stages",), f"expected a mapping of stage globs to width/channels/depth, got {_kind(stages_doc)}")
    return stages_doc, [_parse_stage_rule(glob, value, ("stages", glob), check) for glob, value in stages_doc.items()]


def _stages(probe, model_family: str, model_name: str, args: dict, block_names: List[str],
            stage_rules: List[StageRule], rules: list, check: _Checker):
    """The base model's stages (name, channels, blocks) with the stage rule owning each, and
    for MobileNetV2 its per-block timm block strings."""
    from ..arch import MOBILENETV2_MULTIPLIERS, mobilenetv2_arch_def  # second pass: timm
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


def _check_knobs(stages: List[Stage], decisions: list, model_family: str, base_arch_def,
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
