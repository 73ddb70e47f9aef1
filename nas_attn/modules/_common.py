"""Shared helpers of the attention modules: keyword policy, value specs, a BatchNorm for any size.

Keyword policy (one rule for DSA, SCA, CPSAM and AWConv2d):

* A module's own hyperparameters are validated; a bad value raises ValueError naming the
  argument, the allowed range and the value given.
* timm passes extra keywords to every attention layer it builds (``device``/``dtype``
  always, ``act_layer`` from EfficientNet blocks, ``rd_ratio`` after the EfficientNet
  builder's probe ``se_layer(8, rd_ratio=1.0)``, ``gate_layer``/``norm_layer``/... from
  some model families). The names in :data:`TIMM_PASSTHROUGH_KWARGS` are accepted and
  ignored by a module that has no use for them.
* Any other keyword raises :class:`UnknownArgumentError`, so a misspelt hyperparameter
  (``threshhold=0.3``) never passes silently. It subclasses both TypeError (what Python
  raises for an unexpected keyword, and what timm's builder probe catches) and ValueError
  (the project's error contract).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Keywords timm's model builders pass to attention layers (timm 1.0.31: resnet.py,
# _efficientnet_builder.py, _efficientnet_blocks.py, byobnet.py, cspnet.py, mobilenetv3.py).
TIMM_PASSTHROUGH_KWARGS = frozenset({
    "device", "dtype",
    "act_layer", "gate_layer", "norm_layer", "force_act_layer",
    "rd_ratio", "rd_channels", "rd_divisor", "rd_round_fn",
})

Spec = Dict[str, Any]


class UnknownArgumentError(TypeError, ValueError):
    """A keyword that is neither a hyperparameter of the module nor a known timm pass-through."""


def float_spec(default, low=None, high=None, low_inclusive=True, high_inclusive=True,
               doc="", nullable=False) -> Spec:
    return {"type": "float", "low": low, "high": high, "low_inclusive": low_inclusive,
            "high_inclusive": high_inclusive, "default": default, "nullable": nullable, "doc": doc}


def int_spec(default, low=None, high=None, low_inclusive=True, high_inclusive=True,
             odd=False, doc="", nullable=False) -> Spec:
    return {"type": "int", "low": low, "high": high, "low_inclusive": low_inclusive,
            "high_inclusive": high_inclusive, "odd": odd, "default": default,
            "nullable": nullable, "doc": doc}


def choice_spec(default, values: Sequence, doc="") -> Spec:
    return {"type": "choice", "values": list(values), "default": default, "doc": doc}


def bool_spec(default, doc="") -> Spec:
    return {"type": "bool", "default": default, "doc": doc}


def describe(spec: Spec) -> str:
    """Human-readable allowed range of a spec, e.g. 'a float in [0, 1)'."""
    kind = spec["type"]
    if kind == "choice":
        return "one of " + ", ".join(repr(v) for v in spec["values"])
    if kind == "bool":
        return "a bool (True or False)"
    low = "-inf" if spec.get("low") is None else f"{spec['low']:g}"
    high = "inf" if spec.get("high") is None else f"{spec['high']:g}"
    left = "[" if spec.get("low") is not None and spec.get("low_inclusive", True) else "("
    right = "]" if spec.get("high") is not None and spec.get("high_inclusive", True) else ")"
    noun = "a float" if kind == "float" else "an odd int" if spec.get("odd") else "an int"
    text = f"{noun} in {left}{low}, {high}{right}"
    if spec.get("nullable"):
        text += " or None"
    return text


def value_ok(spec: Spec, value) -> bool:
    kind = spec["type"]
    if value is None:
        return bool(spec.get("nullable"))
    if kind == "choice":
        return any(value == v and isinstance(value, type(v)) and isinstance(value, bool) == isinstance(v, bool)
                   for v in spec["values"])
    if kind == "bool":
        return type(value).__name__ in ("bool", "bool_")  # Python or numpy bool, never 0/1
    if isinstance(value, bool):
        return False
    if kind == "int":
        if not isinstance(value, numbers.Integral):
            return False
        if spec.get("odd") and int(value) % 2 == 0:
            return False
    elif kind == "float":
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            return False
    low, high = spec.get("low"), spec.get("high")
    if low is not None:
        if value < low or (value == low and not spec.get("low_inclusive", True)):
            return False
    if high is not None:
        if value > high or (value == high and not spec.get("high_inclusive", True)):
            return False
    return True


def check_value(owner: str, key: str, value, spec: Spec) -> None:
    if not value_ok(spec, value):
        raise ValueError(f"{owner}: {key} must be {describe(spec)}, got {value!r}")


def check_values(owner: str, specs: Mapping[str, Spec], values: Mapping[str, Any]) -> None:
    """Validate each value against its spec (keys without a spec are not checked here)."""
    for key, value in values.items():
        if key in specs:
            check_value(owner, key, value, specs[key])


def reject_unknown(owner: str, kwargs: Mapping[str, Any], own: Iterable[str] = ()) -> None:
    """Raise UnknownArgumentError for keywords that are not timm pass-through names."""
    unknown = sorted(k for k in kwargs if k not in TIMM_PASSTHROUGH_KWARGS)
    if unknown:
        raise UnknownArgumentError(
            f"{owner}: unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"hyperparameters are {', '.join(sorted(own)) or 'none'}; timm pass-through "
            f"keywords accepted and ignored: {', '.join(sorted(TIMM_PASSTHROUGH_KWARGS))}")


def exporting() -> bool:
    """True while torch.export or an ONNX exporter traces the caller; False in eager and TorchScript."""
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def plain_path() -> bool:
    """True where only plain autograd expressions may run (no custom autograd.Function, no
    host-side branching on values): TorchScript, export, torch.compile."""
    if torch.jit.is_scripting():
        return True
    return exporting() or torch.compiler.is_compiling()


class BatchNorm2dAnySize(nn.BatchNorm2d):
    """BatchNorm2d that also runs in training mode on a single value per channel.

    torch refuses batch statistics over one value (batch 1 on a 1x1 map), yet the modules
    must accept any B, H, W >= 1. Such a forward normalises with the running statistics and
    leaves them untouched: one value carries no variance to learn from.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() // x.shape[1] <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        # nn.BatchNorm2d's own rule, written out: TorchScript cannot compile super().forward.
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            batch_stats, momentum, self.eps)
