"""Attention modules: ours (DSA, SCA, CPSAM, AW-conv) beside timm's, behind one registry.

* :class:`DSA`, :class:`SCA`, :class:`CPSAM`: activation attention, built as timm builds
  its attention layers, ``cls(channels, **kwargs)``, (B, C, H, W) in and out.
* :class:`AWConv2d`: attention on the weights, a drop-in replacement of ``nn.Conv2d``
  (``AWConv2d.from_conv(conv)``).
* :class:`DSAGate` and :func:`gate_block`: DSA's keep mask gating a residual block's branch
  (``y = shortcut(x) + M * branch(x)``), computed only at kept pixels in eval mode.
* :func:`create_attn`, :func:`get_attn_class`, :func:`available`: the registry over ours,
  timm's and "none". :data:`HYPERPARAMETERS` and :func:`check_kwargs` give and check the
  valid range of every hyperparameter.
* :class:`IdentityBlend`: ``x + tanh(alpha) * (attn(x) - x)``, how the builder places the
  attention listed in :data:`BLEND_IN_INVERTED_RESIDUAL` (CBAM) in inverted residuals.
* :func:`register`: add a user's attention module (a plugin, see :mod:`nas_attn.plugins`),
  its hyperparameters given as ``float_spec``/``int_spec``/``choice_spec``/``bool_spec``.
"""
from ._common import (
    TIMM_PASSTHROUGH_KWARGS, UnknownArgumentError, bool_spec, choice_spec, float_spec, int_spec,
)
from .aw_conv import AWConv2d
from .cpsam import CPSAM
from .dsa import DSA
from .dsa_gate import (
    DSAGate, branch_fractions, gate_block, is_gated, set_sparse, why_not_gateable,
)
from .identity_blend import IdentityBlend
from .registry import (
    BLEND_IN_INVERTED_RESIDUAL, EXCLUDED_TIMM, HYPERPARAMETERS, available, check_kwargs, create_attn, get_attn_class, register,
)
from .sca import SCA

__all__ = [
    "DSA", "SCA", "CPSAM", "AWConv2d", "IdentityBlend", "BLEND_IN_INVERTED_RESIDUAL",
    "DSAGate", "gate_block", "why_not_gateable", "is_gated", "set_sparse", "branch_fractions",
    "create_attn", "available", "get_attn_class", "check_kwargs", "register",
    "float_spec", "int_spec", "choice_spec", "bool_spec",
    "HYPERPARAMETERS", "EXCLUDED_TIMM", "TIMM_PASSTHROUGH_KWARGS", "UnknownArgumentError",
]
