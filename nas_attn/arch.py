"""Architecture (Arch) -> timm model: the builder, and its timm entrypoint ``nas_attn_cnn``.

An Arch is a plain JSON-serialisable dict that says everything needed to rebuild a model::

    {"model": "resnet18",                       # a timm model name
     "model_args": {"num_classes": 10, "in_chans": 1},
     "stem": "default",                         # or "cifar" (see below)
     "blocks": {"layer1.0": {"attention": "dsa",
                             "attention_kwargs": {"threshold": 0.3},
                             "aw_conv": {"mid": 8},       # or None: plain conv
                             "gate": {"threshold": 0.3}}, # or None: no DSA gate
                ...}}

Blocks are named by their timm module path (``layer3.1`` in a ResNet, ``blocks.4.0`` in a
MobileNetV2/EfficientNet). A listed block gets ``attention`` in its attention slot (timm's
``block.se``: after the last BN of a ResNet block, after the depthwise conv of an inverted
residual); ``"none"`` empties the slot, also removing attention the base model had
(efficientnet_b0's SE). In an inverted residual, the modules in
:data:`~nas_attn.modules.BLEND_IN_INVERTED_RESIDUAL` (CBAM) are wrapped in an
:class:`~nas_attn.modules.IdentityBlend`, ``x + tanh(alpha) * (attn(x) - x)`` (issue 11). ``aw_conv`` replaces the block's spatial conv (ResNet ``conv2``, the
depthwise ``conv_dw``) by an :class:`~nas_attn.modules.AWConv2d`. ``gate`` (keyword arguments
of :class:`~nas_attn.modules.DSAGate`) gates the block's residual branch with DSA's keep mask,
``y = shortcut(x) + M * branch(x)`` (:func:`~nas_attn.modules.gate_block`); a block without a
skip connection cannot take one (ArchError). Blocks not listed keep what the base model has.

Cost knobs (width, depth, expansion ratio, depthwise kernel) are timm's own model arguments,
so rebuilding needs nothing but the Arch:

* ResNet: ``model_args`` carries ``layers`` (blocks per stage), ``channels`` (base width per
  stage) and, for a deep stem, ``stem_width``: the arguments timm's ``ResNet`` takes.
* MobileNetV2 (``mobilenetv2_035`` ... ``mobilenetv2_140``): the optional key ``arch_def``
  holds timm's block strings, one list per stage and one string per block with its final
  channels (``[["ds_r1_k3_s1_c16"], ["ir_r1_k5_s2_e3_c24", "ir_r1_k3_s2_e6_c24"], ...]``).
  timm's ``decode_arch_def`` reads them and its EfficientNet builder (``_create_effnet``)
  builds the model with the entrypoint's other settings (stem, head, ReLU6); the
  ``mobilenetv2_*`` entrypoints fix their own block list and multiplier, so they cannot take
  one. The builder gives a stage's stride to its first block only. ``model_args["stem_size"]``,
  when present, sets the stem conv's channels (else the entrypoint's, 32 x multiplier).

``stem: cifar`` adapts the stem to small images: a ResNet's 7x7/2 conv + max-pool become one
3x3/1 conv (the usual CIFAR ResNet stem); an EfficientNet/MobileNetV2 stem conv gets stride 1.
Either keeps 4x more resolution in every stage, so spatial attention has something to see.

``timm.create_model("nas_attn_cnn", arch=ARCH)`` builds the same model as
:func:`build_model`; it is registered with timm on ``import nas_attn``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import timm
import torch
from torch import nn
from timm.models.efficientnet import EfficientNet
from timm.models.resnet import ResNet

from ._timm_entry import nas_attn_cnn  # noqa: F401  (registered with timm there; re-exported)
from .modules import (
    BLEND_IN_INVERTED_RESIDUAL, AWConv2d, IdentityBlend, create_attn, gate_block, why_not_gateable,
)
from .names import STEMS, stage_of  # noqa: F401  (re-exported)

ENTRYPOINT = "nas_attn_cnn"
ARCH_KEYS = ("model", "model_args", "stem", "blocks", "arch_def")
#: MobileNetV2 entrypoints whose block list an Arch may replace, with their channel multiplier.
MOBILENETV2_MULTIPLIERS = {"mobilenetv2_035": 0.35, "mobilenetv2_050": 0.5, "mobilenetv2_075": 0.75,
                           "mobilenetv2_100": 1.0, "mobilenetv2_140": 1.4}
#: timm's mobilenetv2 block list (efficientnet._gen_mobilenet_v2), before the channel multiplier.
MOBILENETV2_ARCH_DEF = (("ds_r1_k3_s1_c16",), ("ir_r2_k3_s2_e6_c24",), ("ir_r3_k3_s2_e6_c32",),
                        ("ir_r4_k3_s2_e6_c64",), ("ir_r3_k3_s1_e6_c96",), ("ir_r3_k3_s2_e6_c160",),
                        ("ir_r1_k3_s1_e6_c320",))
Arch = Dict[str, Any]

# pretrained_cfg keys that locate the base model's published weights: they do not apply to a
# model with different blocks, so the carried cfg drops them.
_WEIGHT_LOCATION_KEYS = ("url", "hf_hub_id", "hf_hub_filename", "file", "state_dict", "tag",
                         "license", "origin_url", "paper_ids", "paper_name", "notes")


class ArchError(ValueError):
    """An Arch that cannot be built: names the block or key and what was expected."""


@dataclass(frozen=True)
class AttentionSite:
    """Where attention and AW-conv go in one block of a timm model.

    ``channels`` is the channel count of the tensor the attention slot sees.
    """
    block_name: str
    block: nn.Module
    channels: int
    slot_attr: str = "se"
    conv_attr: str = "conv2"

    @property
    def stage(self) -> str:
        """The stage this block belongs to (see :func:`stage_of`)."""
        return stage_of(self.block_name)


def family(model: nn.Module) -> str:
    """``"resnet"`` or ``"efficientnet"`` (which includes MobileNetV2); ArchError otherwise."""
    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, EfficientNet):
        return "efficientnet"
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    raise ArchError(
        f"{name + ' (model class ' if name else 'model class '}{type(model).__name__}{')' if name else ''} "
        f"is not supported: nas_attn builds timm ResNet "
        f"(resnet18/26/34/50...) and EfficientNet/MobileNetV2 (efficientnet_b0, mobilenetv2_*) models")


def attention_sites(model: nn.Module) -> Dict[str, AttentionSite]:
    """Every block of a supported timm model that has an attention slot, by module path, in order."""
    sites: Dict[str, AttentionSite] = {}
    if family(model) == "resnet":
        for stage_index in range(1, 5):
            for block_index, block in enumerate(getattr(model, f"layer{stage_index}")):
                last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
                name = f"layer{stage_index}.{block_index}"
                sites[name] = AttentionSite(name, block, last_bn.num_features, "se", "conv2")
    else:
        for stage_index, stage in enumerate(model.blocks):
            for block_index, block in enumerate(stage):
                if not hasattr(block, "se") or not hasattr(block, "conv_dw"):
                    continue  # e.g. a plain ConvBnAct block: no attention slot
                name = f"blocks.{stage_index}.{block_index}"
                sites[name] = AttentionSite(name, block, block.conv_dw.out_channels, "se", "conv_dw")
    return sites


def block_has_shortcut(block: nn.Module) -> bool:
    """Whether a block adds its input back to its output (identity or projection shortcut).

    Every timm ResNet block has one; a MobileNetV2/EfficientNet block only when its stride
    is 1 and its input and output widths match (timm's ``has_skip``), so the first block of
    each stage has none.
    """
    if hasattr(block, "has_skip"):
        return bool(block.has_skip)
    return hasattr(block, "downsample")  # timm BasicBlock / Bottleneck


def slot_may_prune(block: nn.Module) -> bool:
    """Whether pixels zeroed in the block's attention slot leave the block as its shortcut's value.

    True for timm's ResNet blocks: the slot sits after the last BN, right before the residual
    add. False for MobileNetV2/EfficientNet blocks: their slot feeds the 1x1 projection and its
    BatchNorm, which would normalise the pruned zeros with the live pixels and pass its shift
    on at pruned pixels (and the first block of a stage has no shortcut at all). DSA prunes
    only where this is True (see :class:`~nas_attn.modules.DSA`, rule 7); the DSA gate prunes
    the whole residual branch of an inverted residual instead.
    """
    return block_has_shortcut(block) and not hasattr(block, "has_skip")


def _device_of(model: nn.Module) -> torch.device:
    """Where the model's weights live (models built on the meta device are traced there)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def site_shapes(model: nn.Module, input_size) -> Dict[str, Dict[str, tuple]]:
    """Per block, for one input of ``input_size`` (C, H, W): ``slot``, the (C, H, W) its
    attention slot sees, and ``conv``, the (C, H, W) input of its spatial conv.

    The slot sits after the block's last spatial conv, so its H, W are the block output's.
    """
    sites = attention_sites(model)
    shapes: Dict[str, Dict[str, tuple]] = {name: {} for name in sites}
    handles = []
    for name, site in sites.items():
        handles.append(site.block.register_forward_hook(
            lambda mod, args, out, name=name, ch=site.channels: shapes[name].__setitem__("slot", (ch, *out.shape[-2:]))))
        handles.append(getattr(site.block, site.conv_attr).register_forward_pre_hook(
            lambda mod, args, name=name: shapes[name].__setitem__("conv", tuple(args[0].shape[1:]))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=_device_of(model)))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def feature_map_sizes(model: nn.Module, input_size) -> Dict[str, tuple]:
    """(C, H, W) of the tensor each block's attention slot sees, for one input of ``input_size``."""
    return {name: shape["slot"] for name, shape in site_shapes(model, input_size).items()}


def _apply_stem(model: nn.Module, stem: str) -> None:
    if stem == "default":
        return
    if isinstance(model, ResNet):
        if not isinstance(model.conv1, nn.Conv2d):
            raise ArchError("stem 'cifar' needs a ResNet with a single-conv stem (resnet18/34/50, not *d/*t)")
        old = model.conv1
        model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        # feature_info (what features_only reports) counted the 2x stride of the old stem
        # conv, and another 2x of its max-pool for everything after it.
        model.feature_info = [dict(info, reduction=info["reduction"] // (2 if info["module"] == "act1" else 4))
                              for info in model.feature_info]
    else:
        model.conv_stem.stride = (1, 1)
        model.feature_info = [dict(info, reduction=info["reduction"] // 2) for info in model.feature_info]


def _check_arch(arch: Any) -> Arch:
    if not isinstance(arch, dict):
        raise ArchError(f"an Arch is a dict with keys model, model_args, stem, blocks; got {type(arch).__name__}")
    unknown = set(arch) - set(ARCH_KEYS)
    if unknown:
        raise ArchError(f"Arch has unknown keys {sorted(unknown)}; expected {', '.join(ARCH_KEYS)}")
    if not isinstance(arch.get("model"), str) or not timm.is_model(arch["model"]):
        raise ArchError(f"Arch 'model' must name a timm model, got {arch.get('model')!r}")
    if arch.get("stem", "default") not in STEMS:
        raise ArchError(f"Arch 'stem' must be one of {STEMS}, got {arch.get('stem')!r}")
    if "arch_def" in arch:
        if arch["model"] not in MOBILENETV2_MULTIPLIERS:
            raise ArchError(f"Arch 'arch_def' (blocks of an inverted-residual net) needs one of "
                            f"{', '.join(MOBILENETV2_MULTIPLIERS)}, got model {arch['model']!r}")
        stages = arch["arch_def"]
        if (not isinstance(stages, (list, tuple)) or not stages
                or not all(isinstance(st, (list, tuple)) and st and all(isinstance(b, str) for b in st)
                           for st in stages)):
            raise ArchError("Arch 'arch_def' must be a non-empty list of stages, each a non-empty list "
                            f"of timm block strings such as 'ir_r1_k3_s2_e6_c24'; got {stages!r}")
    return arch


def mobilenetv2_arch_def(model_name: str):
    """The per-block timm block strings of a mobilenetv2_* model, channels multiplied and rounded
    as timm rounds them (``round_channels``, divisor 8): one string per block, ``r1`` each."""
    from timm.models._efficientnet_builder import round_channels
    multiplier = MOBILENETV2_MULTIPLIERS[model_name]
    stages = []
    for (stage,) in MOBILENETV2_ARCH_DEF:
        parts = stage.split("_")
        repeats = int(next(p for p in parts if p.startswith("r"))[1:])
        channels = round_channels(int(next(p for p in parts if p.startswith("c"))[1:]), multiplier)
        block = "_".join("r1" if p.startswith("r") else f"c{channels}" if p.startswith("c") else p for p in parts)
        stages.append([block] * repeats)
    return stages


def _create_mobilenetv2(model_name: str, arch_def, **model_args) -> nn.Module:
    """A mobilenetv2_* model with its block list replaced, built by timm's EfficientNet builder.

    Channels in ``arch_def`` are final; the stem and head widths follow the entrypoint's
    multiplier exactly as ``_gen_mobilenet_v2`` computes them.
    """
    from functools import partial
    from timm.layers import get_act_layer
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import _create_effnet
    multiplier = MOBILENETV2_MULTIPLIERS[model_name]
    try:
        block_args = decode_arch_def([list(stage) for stage in arch_def])
    except Exception as exc:  # timm's decoder raises AssertionError/ValueError on a bad string
        raise ArchError(f"Arch 'arch_def': timm cannot decode {arch_def!r}: {exc}") from None
    model_args = dict(model_args)
    act_layer = get_act_layer(model_args.pop("act_layer", "relu6"))
    stem_size = model_args.pop("stem_size", round_channels(32, multiplier))
    return _create_effnet(
        model_name, False, block_args=block_args,
        num_features=max(1280, round_channels(1280, multiplier)),
        stem_size=stem_size, fix_stem=True,
        # Channels in arch_def are final: rounding them again to a multiple of 8 leaves them as they are.
        round_chs_fn=partial(round_channels, multiplier=1.0), act_layer=act_layer, **model_args)


def build_model(arch: Arch, **model_overrides) -> nn.Module:
    """Build the timm model an Arch describes (random init).

    ``model_overrides`` are timm ``create_model`` kwargs that win over ``arch["model_args"]``
    (timm passes ``num_classes``/``in_chans`` back this way when loading an export).
    """
    arch = _check_arch(arch)
    model_args = {**arch.get("model_args", {}), **model_overrides}
    if "arch_def" in arch:
        model = _create_mobilenetv2(arch["model"], arch["arch_def"], **model_args)
    else:
        model = timm.create_model(arch["model"], pretrained=False, **model_args)
    _apply_stem(model, arch.get("stem", "default"))
    sites = attention_sites(model)
    for block_name, choice in arch.get("blocks", {}).items():
        site = sites.get(block_name)
        if site is None:
            raise ArchError(f"Arch block {block_name!r} is not a block of {arch['model']}; "
                            f"its blocks are {', '.join(sites)}")
        attention = choice.get("attention", "none")
        attn = create_attn(attention, site.channels, **choice.get("attention_kwargs", {}))
        if attn is not None and hasattr(attn, "block_allows_pruning"):
            attn.block_allows_pruning = slot_may_prune(site.block)  # DSA's rule 7
        if attn is None and isinstance(model, EfficientNet):
            attn = nn.Identity()  # EfficientNet blocks call self.se unconditionally
        elif isinstance(model, EfficientNet) and attention.strip().lower() in BLEND_IN_INVERTED_RESIDUAL:
            # Bare, its saturating gates shut channels the projection then never sees again
            # (no shortcut in a stage's first block): see nas_attn/modules/identity_blend.py.
            attn = IdentityBlend(attn, site.channels)
        setattr(site.block, site.slot_attr, attn)
        aw_kwargs = choice.get("aw_conv")
        if aw_kwargs is not None:
            conv = getattr(site.block, site.conv_attr)
            if type(conv) is not nn.Conv2d:
                raise ArchError(f"block {block_name}: AW-conv replaces a plain nn.Conv2d, "
                                f"but {site.conv_attr} is a {type(conv).__name__}")
            setattr(site.block, site.conv_attr, AWConv2d.from_conv(conv, **aw_kwargs))
        gate_kwargs = choice.get("gate")
        if gate_kwargs is not None:
            if not isinstance(gate_kwargs, dict):
                raise ArchError(f"block {block_name}: 'gate' must be a dict of DSAGate keyword "
                                f"arguments or None, got {gate_kwargs!r}")
            reason = why_not_gateable(site.block)
            if reason is not None:
                raise ArchError(f"block {block_name} cannot take a DSA gate: {reason}")
            try:
                gate_block(site.block, **gate_kwargs)
            except ValueError as exc:
                raise ArchError(f"block {block_name}: gate: {exc}") from None
    return model


def gateable_blocks(model: nn.Module) -> Dict[str, Optional[str]]:
    """Block name -> None if the block can take a DSA gate, else the reason it cannot."""
    return {name: why_not_gateable(site.block) for name, site in attention_sites(model).items()}


def carried_pretrained_cfg(base_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The base model's pretrained_cfg with its weight locations removed, renamed to ours.

    Input size, normalisation and classifier names stay true for the built model; the base
    model's published weights do not fit a model with other blocks.
    """
    cfg = {k: v for k, v in base_cfg.items() if k not in _WEIGHT_LOCATION_KEYS}
    cfg["architecture"] = ENTRYPOINT
    return cfg


def structure_summary(arch: Arch) -> str:
    """The cost knobs of an Arch in a few characters: ``stem 8`` (timm's stem_width/stem_size,
    when the Arch sets it), ``ch 8/16/32/64`` (ResNet channels per stage, with ``x2/1/1/1``
    blocks when not all one), ``c 16/24/.. d 1/2/..`` per MobileNetV2 stage; "" when the Arch
    sets none."""
    args = arch.get("model_args", {})
    parts = []
    stem_width = args.get("stem_width", args.get("stem_size"))
    if stem_width is not None:
        parts.append(f"stem {stem_width}")
    if "channels" in args:
        parts.append("ch " + "/".join(map(str, args["channels"])))
    if "layers" in args and set(args["layers"]) != {1}:
        parts.append("x" + "/".join(map(str, args["layers"])))
    if "arch_def" in arch:
        parts.append("c " + "/".join(st[0].split("_c")[-1].split("_")[0] for st in arch["arch_def"])
                     + " d " + "/".join(str(len(st)) for st in arch["arch_def"]))
    return " ".join(parts)


def arch_summary(arch: Arch) -> str:
    """A short human summary: ``ch 8/16/32/64; dsa x2, se x1, aw_conv x1, dsa_gate x3`` (or ``no attention``)."""
    structure = structure_summary(arch)
    return (structure + "; " if structure else "") + _attention_summary(arch)


def _attention_summary(arch: Arch) -> str:
    counts: Dict[str, int] = {}
    for choice in arch.get("blocks", {}).values():
        name = choice.get("attention", "none")
        if name != "none":
            counts[name] = counts.get(name, 0) + 1
        if choice.get("aw_conv") is not None:
            counts["aw_conv"] = counts.get("aw_conv", 0) + 1
        if choice.get("gate") is not None:
            counts["dsa_gate"] = counts.get("dsa_gate", 0) + 1
    return ", ".join(f"{name} x{n}" for name, n in counts.items()) or "no attention"


def is_baseline(arch: Optional[Arch]) -> bool:
    """True for the Arch with no attention module, no AW-conv and no DSA gate in any block."""
    if not isinstance(arch, dict):
        return False
    return all(choice.get("attention", "none") == "none" and choice.get("aw_conv") is None
               and choice.get("gate") is None for choice in (arch.get("blocks") or {}).values())


# create_model keywords that ask for a feature backbone: timm's builder consumes them, the Arch never sees them.
_FEATURE_KWARGS = ("features_only", "out_indices", "feature_cls", "feature_cfg")


def create_nas_attn_cnn(pretrained: bool = False, arch: Optional[Arch] = None,
                        pretrained_cfg: Optional[Dict[str, Any]] = None, plugins: Optional[List[str]] = None,
                        **kwargs) -> nn.Module:
    """What timm's entrypoint ``nas_attn_cnn`` (:mod:`nas_attn._timm_entry`) builds.

    With ``pretrained=True`` the weights come from ``pretrained_cfg`` (timm fills it in when
    loading ``local-dir:DIR`` written by ``nas-attn export``); nas_attn has no hub weights.
    ``features_only=True`` (with ``out_indices``, ``feature_cls``) returns timm's feature
    wrapper around the built model, as for any timm model: a ``FeatureListNet`` whose
    ``feature_info`` gives each output's channels and reduction (input pixels per output pixel).
    """
    from timm.models import build_model_with_cfg
    if arch is None:
        raise ArchError("nas_attn_cnn needs arch=ARCH (an Arch dict, see nas_attn.arch)")
    if plugins:  # an exported folder names the user modules its Arch uses (nas_attn.plugins)
        from .plugins import import_plugins
        import_plugins(plugins)
    builder_kwargs = {k: kwargs.pop(k) for k in ("pretrained_cfg_overlay", "cache_dir", "pretrained_model_args")
                      if k in kwargs}
    feature_cfg = dict(kwargs.pop("feature_cfg", None) or {})
    model = build_model(copy.deepcopy(arch), **{k: v for k, v in kwargs.items() if k not in _FEATURE_KWARGS})
    cfg = carried_pretrained_cfg(dict(model.pretrained_cfg))
    if pretrained:
        if not pretrained_cfg:
            raise ArchError("nas_attn_cnn has no published weights: load an exported folder with "
                            "timm.create_model('local-dir:DIR', pretrained=True)")
        given = pretrained_cfg.to_dict() if hasattr(pretrained_cfg, "to_dict") else dict(pretrained_cfg)
        cfg.update(given)
        cfg["architecture"] = ENTRYPOINT
    if family(model) == "efficientnet":
        # EfficientNet's feature_info names stages inside the blocks Sequential (blocks.2).
        feature_cfg.setdefault("flatten_sequential", True)
    # The Arch has already built the model. timm's builder then does for it what it does for
    # every timm model: cfg and traits, loading the weights (dropping the classifier for a
    # backbone), the feature wrapper. It would also fill num_classes/in_chans from the cfg,
    # which must not override the Arch's, hence a builder that ignores its arguments.
    return build_model_with_cfg(lambda **_: model, ENTRYPOINT, pretrained, pretrained_cfg=cfg,
                                feature_cfg=feature_cfg, **builder_kwargs, **kwargs)


def model_in_chans(model: nn.Module) -> int:
    """Input channels of a supported model's first conv."""
    first = model.conv1 if isinstance(model, ResNet) else model.conv_stem
    return first.in_channels
