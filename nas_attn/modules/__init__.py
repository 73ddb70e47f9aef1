"""Attention modules: ours (DSA, SCA, CPSAM, AW-conv) beside timm's, behind one registry.

* :class:`DSA`, :class:`SCA`, :class:`CPSAM`: activation attention, built as timm builds
  its attention layers, ``cls(channels, **kwargs)``, (B, C, H, W) in and out.
* :class:`AWConv2d`: attention on the weights, a drop-in replacement of ``nn.Conv2d``
  (``AWConv2d.from_conv(conv)``).
* :func:`create_attn`, :func:`get_attn_class`, :func:`available`: the registry over ours,
  timm's and "none". :data:`HYPERPARAMETERS` and :func:`check_kwargs` give and check the
  valid range of every hyperparameter.
"""
from ._common import TIMM_PASSTHROUGH_KWARGS, UnknownArgumentError
from .aw_conv import AWConv2d
from .cpsam import CPSAM
from .dsa import DSA
from .registry import (
    EXCLUDED_TIMM, HYPERPARAMETERS, available, check_kwargs, create_attn, get_attn_class,
)
from .sca import SCA

__all__ = [
    "DSA", "SCA", "CPSAM", "AWConv2d",
    "create_attn", "available", "get_attn_class", "check_kwargs",
    "HYPERPARAMETERS", "EXCLUDED_TIMM", "TIMM_PASSTHROUGH_KWARGS", "UnknownArgumentError",
]
