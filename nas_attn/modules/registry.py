"""One registry for our attention modules and timm's, with the valid range of every hyperparameter.

Names: ours (``dsa``, ``sca``, ``cpsam``, ``aw_conv``), the timm names that work as a
drop-in attention slot (``timm.layers.get_attn``), and ``none``. Every attention name
builds as ``cls(channels, **kwargs)`` and returns a module mapping (B, C, H, W) to the same
shape for any B, H, W >= 1, so it fits timm's ``attn_layer`` / ``se_layer`` slots.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping, Optional

from timm.layers import get_attn as _timm_get_attn
from torch import nn

from ._common import (
    Spec, UnknownArgumentError, bool_spec, check_value, check_values, choice_spec, float_spec, int_spec,
    reject_unknown, value_ok,
)
from .aw_conv import AWConv2d
from .cpsam import CPSAM
from .dsa import DSA
from .dsa_gate import DSAGate
from .sca import SCA

OUR_ATTENTION = {"dsa": DSA, "sca": SCA, "cpsam": CPSAM}
# Attention that nas_attn.arch.build_model wraps in an IdentityBlend inside inverted-residual
# (MobileNetV2/EfficientNet) blocks, where bare it stops channels from learning (measured:
# CBAM 0.643 vs plain 0.799 on digits_mobilenetv2, 0.783 blended; see identity_blend.py).
BLEND_IN_INVERTED_RESIDUAL = frozenset({"cbam"})
CONV_REPLACEMENTS = {"aw_conv": AWConv2d}
# Gates wrap a whole residual block (an Arch block's "gate" key), not its attention slot.
GATES = {"dsa_gate": DSAGate}

# timm names that keep the shape for any H, W >= 1 and any channel count >= 8, measured on
# timm 1.0.31 (C in 8, 24, 64, 256; H = W in 1, 3, 7, 14).
TIMM_ATTENTION = (
    "se", "ese", "eca", "ecam", "ceca", "gc", "gca", "cbam", "lcbam",
    "coord", "scoord", "ela", "strip", "nl",
)

# timm names left out of the registry, and why.
EXCLUDED_TIMM = {
    "ge": "timm 1.0.31's GatherExcite passes device/dtype positionally to ConvMlp "
          "(`*dd`), so it raises TypeError at construction with its defaults",
    "sk": "SelectiveKernel is a multi-branch 3x3/5x5 conv that replaces a block's conv "
          "(603,168 parameters at C=256, more than the 3x3 conv itself), not an attention added after it",
    "splat": "SplitAttn (ResNeSt) is a radix-split conv that replaces a block's conv "
             "(688,768 parameters at C=256), not an attention added after it",
    "lambda": "LambdaLayer is a self-attention layer that replaces a block's 3x3 conv: its "
              "output is new features, not the input reweighted",
    "bottleneck": "BottleneckAttn needs a fixed feat_size matching the feature map; it "
                  "fails without one",
    "halo": "HaloAttn needs H and W divisible by its block size",
    "bat": "BatNonLocalAttn needs H and W divisible by its block size (7 by default)",
}

_RD_RATIO = float_spec(1 / 16, 0.0, 1.0, low_inclusive=False, doc="bottleneck width / C")
_ODD_KERNEL = int_spec(None, 1, None, odd=True, nullable=True,
                       doc="1-D conv size over channels; None: adaptive from C, gamma, beta")
_GAMMA = float_spec(2.0, 0.0, None, low_inclusive=False, doc="adaptive kernel size slope")
_BETA = float_spec(1.0, None, None, doc="adaptive kernel size offset")

# name -> {keyword: spec}. A spec is a dict with "type" in {"float", "int", "choice", "bool"}
# and "default" and "doc"; float/int add "low", "high" (None: unbounded), "low_inclusive",
# "high_inclusive" and "nullable" (None allowed); int adds "odd"; choice adds "values".
# Only the listed keywords are search-space hyperparameters; check_kwargs enforces that.
HYPERPARAMETERS: Dict[str, Dict[str, Spec]] = {
    "none": {},
    "dsa": dict(DSA.HYPERPARAMETERS),
    "sca": dict(SCA.HYPERPARAMETERS),
    "cpsam": dict(CPSAM.HYPERPARAMETERS),
    "aw_conv": dict(AWConv2d.HYPERPARAMETERS),
    "dsa_gate": dict(DSAGate.HYPERPARAMETERS),
    "se": {"rd_ratio": _RD_RATIO, "rd_divisor": int_spec(8, 1, None, doc="round rd channels to a multiple"),
           "add_maxpool": bool_spec(False, doc="add global max pooling to the squeeze")},
    "ese": {"add_maxpool": bool_spec(False, doc="add global max pooling to the squeeze")},
    "eca": {"kernel_size": _ODD_KERNEL, "gamma": _GAMMA, "beta": _BETA},
    # ecam: timm needs channels for its MLP and then always derives the kernel from
    # gamma/beta, so kernel_size cannot be honoured and is not offered.
    "ecam": {"gamma": _GAMMA, "beta": _BETA, "rd_ratio": dict(_RD_RATIO, default=1 / 8),
             "rd_divisor": int_spec(8, 1, None, doc="round rd channels to a multiple")},
    "ceca": {"kernel_size": _ODD_KERNEL, "gamma": _GAMMA, "beta": _BETA},
    "gc": {"rd_ratio": dict(_RD_RATIO, default=1 / 8),
           "use_attn": bool_spec(True, doc="softmax position pooling (else mean)")},
    "gca": {"rd_ratio": dict(_RD_RATIO, default=1 / 8),
            "use_attn": bool_spec(True, doc="softmax position pooling (else mean)")},
    "cbam": {"rd_ratio": _RD_RATIO,
             "spatial_kernel_size": int_spec(7, 1, None, odd=True, doc="spatial gate conv size (pixels)")},
    "lcbam": {"rd_ratio": _RD_RATIO,
              "spatial_kernel_size": int_spec(7, 1, None, odd=True, doc="spatial gate conv size (pixels)")},
    "coord": {"rd_ratio": _RD_RATIO},
    "scoord": {"rd_ratio": dict(_RD_RATIO, default=0.25)},
    "ela": {"kernel_size": int_spec(7, 1, None, odd=True, doc="1-D conv size along H and W (pixels)")},
    "strip": {"kernel_size": int_spec(3, 1, None, odd=True, doc="1-D conv size along H and W (pixels)"),
              "use_conv": bool_spec(True, doc="conv on the strip-pooled maps")},
    "nl": {"rd_ratio": dict(_RD_RATIO, default=1 / 8),
           "use_scale": bool_spec(True, doc="scale affinities by C^-1/2")},
}


class TimmAttention:
    """timm attention factory that validates our listed hyperparameters before building.

    Called like the timm class, ``factory(channels, **kwargs)``; keywords without a spec
    (device, dtype, act_layer, ...) pass straight to timm, which rejects unknown ones
    with TypeError. For ``eca``/``ceca`` an explicit ``kernel_size`` is honoured: timm
    ignores it whenever ``channels`` is given, so the module is then built channel-agnostic.
    """

    def __init__(self, name: str):
        self.name = name
        self.module_cls = _timm_get_attn(name)

    def __call__(self, channels: int, **kwargs) -> nn.Module:
        check_values(self.name, HYPERPARAMETERS[self.name], kwargs)
        if self.name in ("eca", "ceca") and kwargs.get("kernel_size") is not None:
            kernel_size = kwargs["kernel_size"]
            if self.name == "ceca" and (kernel_size - 1) // 2 > channels:
                raise ValueError(f"ceca: kernel_size must be at most 2 * channels + 1 = "
                                 f"{2 * channels + 1} (circular padding), got {kernel_size}")
            return self.module_cls(None, **kwargs)
        return self.module_cls(channels, **kwargs)

    def __repr__(self) -> str:
        return f"TimmAttention({self.name!r})"


class PluginAttention:
    """A user's attention factory behind the registry (see :func:`register`).

    Called like the others, ``factory(channels, **kwargs)``: the declared hyperparameters are
    checked against their specs; timm's pass-through keywords (device, dtype, rd_ratio, ...)
    the plugin does not declare are dropped, so a plain ``factory(channels, **hp)`` fits any
    timm slot; any other keyword raises UnknownArgumentError.
    """

    def __init__(self, name: str, factory: Callable[..., nn.Module]):
        self.name, self.factory = name, factory

    def __call__(self, channels: int, **kwargs) -> nn.Module:
        specs = HYPERPARAMETERS[self.name]
        reject_unknown(self.name, {k: v for k, v in kwargs.items() if k not in specs}, own=specs)
        own = {k: v for k, v in kwargs.items() if k in specs}
        check_values(self.name, specs, own)
        return self.factory(channels, **own)

    def __repr__(self) -> str:
        return f"PluginAttention({self.name!r}, {getattr(self.factory, '__qualname__', self.factory)!r})"


PLUGIN_ATTENTION: Dict[str, PluginAttention] = {}
_SPEC_TEMPLATES = {"float": float_spec(None), "int": int_spec(None), "bool": bool_spec(None),
                   "choice": choice_spec(None, [])}


def _full_spec(owner: str, arg: str, spec: Mapping[str, Any]) -> Spec:
    if not isinstance(spec, Mapping) or spec.get("type") not in _SPEC_TEMPLATES or "default" not in spec:
        raise ValueError(f"register {owner!r}: hyperparameter {arg!r} needs a spec with 'type' (one of "
                         f"{', '.join(_SPEC_TEMPLATES)}) and 'default', as made by float_spec/int_spec/"
                         f"choice_spec/bool_spec; got {spec!r}")
    full = {**_SPEC_TEMPLATES[spec["type"]], **spec}
    if full["type"] == "choice" and not full["values"]:
        raise ValueError(f"register {owner!r}: choice hyperparameter {arg!r} lists no 'values'")
    if not value_ok(full, full["default"]):
        raise ValueError(f"register {owner!r}: the default of {arg!r}, {full['default']!r}, is outside its own spec")
    return full


def register(name: str, factory: Callable[..., nn.Module],
             hyperparameters: Optional[Mapping[str, Spec]] = None) -> Callable[..., nn.Module]:
    """Add a user's attention module to the registry under ``name``; returns ``factory``.

    ``factory(channels, **hyperparameters)`` must return a module mapping (B, C, H, W) to the
    same shape (a class such as ``MyAttention`` works). ``hyperparameters`` maps each keyword a
    search may set to a spec in the format of :data:`HYPERPARAMETERS` (``float_spec(default,
    low, high)``, ``int_spec``, ``choice_spec``, ``bool_spec`` from :mod:`nas_attn.modules`).
    The name then works everywhere a built-in does: space files, ``create_attn``,
    ``nas-attn modules``, cost, export. Registering a name again replaces the entry only for
    the same factory (a re-imported module); a built-in or another factory's name is refused.
    """
    key = _normalise(name)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
        raise ValueError(f"register: a module name is lower-case letters, digits and _, got {name!r}")
    if key in OUR_ATTENTION or key in TIMM_ATTENTION or key in CONV_REPLACEMENTS or key in ("none",) \
            or key in EXCLUDED_TIMM:
        raise ValueError(f"register: {key!r} is a built-in name; choose another")
    if not callable(factory):
        raise ValueError(f"register {key!r}: factory must be callable as factory(channels, **kwargs), got {factory!r}")
    previous = PLUGIN_ATTENTION.get(key)
    if previous is not None and getattr(previous.factory, "__qualname__", None) != getattr(factory, "__qualname__", 0):
        raise ValueError(f"register: {key!r} is already registered by {previous.factory!r}")
    specs = {arg: _full_spec(key, arg, spec) for arg, spec in (hyperparameters or {}).items()}
    HYPERPARAMETERS[key] = specs
    PLUGIN_ATTENTION[key] = PluginAttention(key, factory)
    return factory


def _normalise(name) -> str:
    if not isinstance(name, str):
        raise ValueError(f"attention name must be a str, one of {', '.join(available())}, got {name!r}")
    return name.strip().lower()


def available(kind: str = "all") -> List[str]:
    """Sorted registry names. kind: "all", "attention" (activation attention, plugins and "none"),
    "conv" (aw_conv) or "gate" (dsa_gate)."""
    attention = set(OUR_ATTENTION) | set(TIMM_ATTENTION) | set(PLUGIN_ATTENTION) | {"none"}
    kinds = {"all": attention | set(CONV_REPLACEMENTS) | set(GATES), "attention": attention,
             "conv": set(CONV_REPLACEMENTS), "gate": set(GATES)}
    if kind not in kinds:
        raise ValueError(f"available: kind must be one of {', '.join(sorted(kinds))}, got {kind!r}")
    return sorted(kinds[kind])


def _unknown_name(name: str, kind: str = "all") -> ValueError:
    valid = ", ".join(available(kind))
    if name in EXCLUDED_TIMM:
        return ValueError(f"attention {name!r} is not offered: {EXCLUDED_TIMM[name]}. Valid names: {valid}")
    return ValueError(f"unknown attention {name!r}; valid names: {valid}")


def get_attn_class(name: str) -> Optional[Callable[..., nn.Module]]:
    """Class or factory for ``name``, usable as timm's ``attn_layer``/``se_layer``; None for "none"."""
    key = _normalise(name)
    if key == "none":
        return None
    if key in OUR_ATTENTION:
        return OUR_ATTENTION[key]
    if key in TIMM_ATTENTION:
        return TimmAttention(key)
    if key in PLUGIN_ATTENTION:
        return PLUGIN_ATTENTION[key]
    if key in CONV_REPLACEMENTS:
        raise ValueError(f"{key!r} replaces a convolution and has no attention slot form: build it "
                         f"with AWConv2d.from_conv(conv, **kwargs) on the conv it replaces")
    if key in GATES:
        raise ValueError(f"{key!r} gates a whole residual block, not its attention slot: give the "
                         f"block a 'gate' key (nas_attn.modules.gate_block(block, **kwargs))")
    raise _unknown_name(key, "attention")


def create_attn(name: str, channels: int, **kwargs) -> Optional[nn.Module]:
    """Build attention ``name`` for ``channels`` channels; None for "none"."""
    module_cls = get_attn_class(name)
    if module_cls is None:
        reject_unknown("none", kwargs)
        return None
    return module_cls(channels, **kwargs)


def check_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Validate hyperparameters for ``name`` against HYPERPARAMETERS.

    Raises ValueError naming the key and its allowed range, or UnknownArgumentError (a
    ValueError) for a key that is not a hyperparameter of ``name``.
    """
    key = _normalise(name)
    if key not in HYPERPARAMETERS:
        raise _unknown_name(key)
    specs = HYPERPARAMETERS[key]
    for arg, value in kwargs.items():
        if arg not in specs:
            raise UnknownArgumentError(
                f"{key}: unknown hyperparameter {arg!r}; known: {', '.join(sorted(specs)) or 'none'}")
        check_value(key, arg, value, specs[arg])
