"""Cost knobs: width/channels and depth per stage (``stages:``), the stem's width (the key
``stem`` under ``stages:``), expansion and kernel per inverted-residual block (``blocks:``),
parsed, checked against the base model and written as timm model args (ResNet ``layers``/
``channels``/``stem_width``) or timm block strings and ``stem_size`` (MobileNetV2)."""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..names import stage_of
from ._errors import _Checker, _kind
from ._params import Param, _knob_values, _parse_param

STAGE_KEYS = ("width", "channels", "depth")
#: The key under ``stages:`` that names the stem. It is matched only by this exact key, not by
#: globs such as ``*`` (which match the block stages), so existing spaces keep their meaning.
STEM = "stem"
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
    """One stage of the base model: its name, base channels and blocks, and the rule over it.

    The stem is a Stage named ``stem`` without blocks; its ``channels`` is timm's stem width
    argument (ResNet ``stem_width``: the deep stem's 3x3 convs have stem_width, stem_width and
    2x stem_width channels; MobileNetV2 ``stem_size``: the stem conv's channels)."""
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


def _resnet_default(arg: str):
    """The default of one of timm ``ResNet``'s constructor arguments (``channels``, ``stem_width``, ...)."""
    import inspect
    from timm.models.resnet import ResNet  # second pass: timm
    return inspect.signature(ResNet.__init__).parameters[arg].default


def _stem_stage(model_family: str, model_name: str, args: dict, rule: StageRule, check: _Checker) -> Stage:
    """The stem as a Stage with its width knob, where timm's builder takes the stem's width as
    an argument: a ResNet's deep stem (``stem_width``) or a MobileNetV2 (``stem_size``)."""
    if "depth" in rule.knobs:
        check.fail(rule.path + ("depth",), "the stem has no blocks to keep or drop; depth applies to the "
                                           "block stages (layer1.., blocks.0..)")
    if model_family == "resnet":
        stem_type = args.get("stem_type", _resnet_default("stem_type"))
        if "deep" not in str(stem_type):
            check.fail(rule.path, f"timm's single 7x7 ResNet stem has 64 channels whatever the model args say "
                                  f"(stem_type {stem_type!r}), so its width cannot be searched; declare a deep stem "
                                  f"in model.args (stem_type: deep, stem_width: N: three 3x3 convs of N, N and 2N "
                                  f"channels) to search stem_width")
        return Stage(STEM, int(args.get("stem_width", _resnet_default("stem_width"))), [], rule)
    from ..arch import MOBILENETV2_MULTIPLIERS  # second pass: timm
    from timm.models._efficientnet_builder import round_channels
    if model_name not in MOBILENETV2_MULTIPLIERS:
        check.fail(rule.path, f"the stem's width is a knob of ResNets with a deep stem and of "
                              f"{', '.join(MOBILENETV2_MULTIPLIERS)}; got {model_name}")
    base = args.get("stem_size", round_channels(32, MOBILENETV2_MULTIPLIERS[model_name]))
    return Stage(STEM, int(base), [], rule)


def _stages(probe, model_family: str, model_name: str, args: dict, block_names: List[str],
            stage_rules: List[StageRule], rules: list, check: _Checker):
    """The base model's stages (name, channels, blocks) with the stage rule owning each, the
    stem (a Stage, or None when ``stages:`` has no ``stem`` key), and for MobileNetV2 its
    per-block timm block strings."""
    from ..arch import MOBILENETV2_MULTIPLIERS, mobilenetv2_arch_def  # second pass: timm
    needs_knobs = bool(stage_rules) or any(r.knobs for r in rules)
    stem_rules = [r for r in stage_rules if r.glob == STEM]
    stage_rules = [r for r in stage_rules if r.glob != STEM]
    base_arch_def = None
    names = list(dict.fromkeys(stage_of(b) for b in block_names))
    blocks_of = {n: [b for b in block_names if stage_of(b) == n] for n in names}
    if model_family == "resnet":
        channels = list(args.get("channels", _resnet_default("channels")))
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
    stem = _stem_stage(model_family, model_name, args, stem_rules[-1], check) if stem_rules else None
    return stages, stem, base_arch_def


def _check_knobs(stages: List[Stage], decisions: list, model_family: str, base_arch_def,
                 divisor: int, check: _Checker) -> None:
    """Every knob value must be one timm's builder can make for every stage/block it covers
    (``stages`` may include the stem)."""
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
