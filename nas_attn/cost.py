"""Cost model: parameters, MACs, element-wise operations and DSA-effective MACs.

All figures are per image (the counts of one forward pass divided by its batch size).

Why we count by hand
--------------------
``torch.utils.flop_counter.FlopCounterMode`` (and fvcore) count only matrix products and
convolutions. Pooling, reductions, normalisation, activations and element-wise arithmetic
are left out, and those are nearly all of the cost of SE, ECA, CBAM and all of DSA's
(pytorch#165570, fvcore#42), so attention would look free. FlopCounterMode also cannot
scale the operations that run after a pruning module by the fraction of pixels it kept,
nor see that a convolution run on a batch folded into groups (AW-conv) is per-sample
work. So :class:`_OpCounter`, a ``TorchDispatchMode``, sees every aten operation of one
forward pass, applies the table below, attributes the count to the innermost module
running (tracked by forward pre/post hooks on the model's own modules) and follows data
flow (which tensors descend from which DSA output) for the effective MACs.

Counting convention
-------------------
MACs are multiply-accumulates, counted exactly as the published tables count them
(FlopCounterMode reports 2 x these): convolutions and matrix products only, bias not
included. Everything else is an element-wise operation ("op"), counted separately:

=====================================================  =========================================
aten operation                                         count
=====================================================  =========================================
convolution (any groups, 1/2/3-d)                      MACs = output elements x C_in/groups x
                                                       kernel volume; transposed: input
                                                       elements x C_out/groups x kernel volume;
                                                       bias: +1 op per output element
mm, bmm, mv, dot, matmul                               MACs = n x k x m (per batch entry)
addmm, baddbmm, addmv (linear with bias)               same MACs, +1 op per output element
scaled dot-product attention kernels                   MACs = B x heads x L x S x (E + E_v);
                                                       6 ops per score (scale + softmax)
point-wise ops (arithmetic, comparison, logic,         1 op per output element
where/masked_fill/clamp, every activation incl.        (addcmul, addcdiv, lerp, glu: 2)
relu, relu6, sigmoid, tanh, gelu, silu, hardswish)
reductions: sum, mean, amax/amin, max/min, prod,       1 op per input element
argmax/argmin, any/all, cumsum, count_nonzero,
nonzero, col2im (fold); selections topk,
kthvalue, median, mode
var, std (and *_mean)                                  3 ops per input element
vector norm / logsumexp                                2 / 4 ops per input element
sort                                                   ceil(log2 n) ops per input element
                                                       (n = length of the sorted dimension)
pooling, max and avg, fixed window                     1 op per element read:
                                                       output elements x window volume
adaptive pooling, max and avg                          1 op per element read: the exact sum
                                                       of the bin sizes (= input elements
                                                       when bins do not overlap)
batch norm with running statistics (eval)              2 ops per element (scale + shift)
batch norm in training, layer/group/instance norm      4 ops per element (mean, centre,
                                                       variance, scale) +1 for an affine
                                                       weight, +1 for an affine bias
RMS norm                                               3 ops per element, +1 for a weight
softmax, log_softmax                                   5 ops per element (max, subtract, exp,
                                                       sum, divide or log)
interpolation                                          per output element: nearest 0 (a
                                                       copy), linear 2, bilinear 4,
                                                       trilinear 8, bicubic 16
dropout (training only)                                1 op per element
index_add, scatter_add, index_reduce                   1 op per source element (accumulated)
views, reshapes, copies, casts, cat/stack, padding,    free
indexing, gather/scatter, allocation, fill
=====================================================  =========================================

An aten operation in none of these classes is counted as 0 and its name is listed in
:attr:`Cost.uncounted_ops`, so a gap in the table shows instead of hiding.

AW-conv (``nas_attn.modules.AWConv2d``) runs per-sample weights ``W' = K + A (.) K`` as one
grouped convolution with the batch folded into the groups. The folded convolution is
counted by the rule above and divided by the real batch size, so it costs what the plain
convolution it replaced costs per image. The weight modulation is counted as MACs,
C_out x C_in/groups x k x k per image (one multiply-accumulate per weight element), in
place of the point-wise ops that compute it; its attention MLP is counted as usual.

Effective MACs (DSA pruning)
----------------------------
A module exposing a ``kept_fraction`` attribute (``nas_attn.modules.DSA``) prunes pixels at
run time. ``measure(..., data=batch)`` runs the model in eval on the batch and reads each
such module's ``kept_fraction`` f. In the counting pass the MACs of every operation that
(a) runs inside the DSA's block (its module path minus the last component, e.g.
``blocks.2.1`` for ``blocks.2.1.se``) and (b) has an input descending by data flow from
the DSA's output, are scaled by f. With several such DSAs on one operation's inputs the
smallest f is used: a pixel must be kept by each of them, so the smallest is an upper
bound of the true fraction (conservative). Element-wise ops are never scaled.

Effective MACs (DSA gates)
--------------------------
A gated residual block (``nas_attn.modules.gate_block``: ``y = shortcut(x) + M * branch(x)``)
needs each branch convolution only at some output pixels: the last one at the mask M, each
earlier one at the input pixels the next one reads (M dilated by the next kernel and mapped
through its stride, as DynConv dilates its masks; a 1x1 stride-1 conv keeps the mask). With
``data``, ``measure`` runs the model on it and takes these fractions from each gate's mask
(averaged over the batch, :func:`nas_attn.modules.branch_fractions`); the MACs of a branch
convolution (the ops run by the module ``block.conv1`` etc.) are scaled by its fraction. The
shortcut (identity or downsample conv) is never scaled, nor is attention in the block's slot
(it runs on the whole, partly zero, map). A DSA in the slot and a gate on the same conv: the
smaller fraction is used, as above. An AW-conv as a branch conv: its folded convolution is
scaled, its weight modulation (per weight, not per pixel) and its attention MLP (child modules)
are not. The counting pass itself runs the dense masked path, so the MAC count is the model's
dense count. The gates' kept fractions appear in ``dsa_kept`` under their module path
(``layer1.0.gate``), the per-conv fractions in ``gated``.

What torch's FlopCounterMode sees of the sparse eval path (tests/test_cost_reference.py checks
it): a block that runs sparse computes its 1x1 and dense k x k branch convs as matrix products
at exactly the pixels above, so FlopCounterMode's MACs for that block equal its effective
MACs here, except that the depthwise conv of an inverted residual runs as per-tap
multiply-adds (``addcmul``), which FlopCounterMode does not count. Gathers, the mask's
dilation and the index arithmetic are no MACs for either. A gated block runs dense (and
FlopCounterMode sees its dense MACs) when its speed rule (``sparse_pays``: the kept fraction
against its kind's measured crossover) says so or a branch conv is not a plain ``nn.Conv2d``
(AW-conv); its effective MACs are still what a sparse computation would need.
"""
from __future__ import annotations

import math
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .modules.aw_conv import AWConv2d

__all__ = ["Cost", "ModuleCost", "measure", "count", "module_cost"]


class ModuleCost(NamedTuple):
    """Per-image cost of the operations executed directly by one module (or a subtree).

    macs: multiply-accumulates; elementwise_ops: element-wise operations; effective_macs:
    MACs after DSA pruning (float).
    """

    macs: int
    elementwise_ops: int
    effective_macs: float


@dataclass(frozen=True)
class Cost:
    """Cost of one model, per image.

    params: number of parameters. macs: multiply-accumulates of convolutions and matrix
    products. elementwise_ops: everything else, by the table in this module's docstring.
    effective_macs: MACs with the work after each DSA scaled by its kept fraction (equals
    ``macs`` without DSA or without data). dsa_kept: module path -> fraction of pixels
    kept on the data (0..1), for DSA modules and DSA gates. gated: path of a gated branch's
    conv -> fraction of its output pixels it must compute (0..1). by_module: module path -> :class:`ModuleCost` of the
    operations that module executed itself (innermost module; "" is the root).
    uncounted_ops: names of aten operations seen that the table does not cover.
    """

    params: int
    macs: int
    elementwise_ops: int
    effective_macs: float
    dsa_kept: Dict[str, float] = field(default_factory=dict, hash=False)
    gated: Dict[str, float] = field(default_factory=dict, hash=False)
    by_module: Dict[str, ModuleCost] = field(default_factory=dict, hash=False, repr=False)
    uncounted_ops: Tuple[str, ...] = ()

    def as_dict(self, detail: bool = False) -> Dict[str, Any]:
        """JSON-friendly dict: ``params``, ``macs``, ``elementwise_ops``, ``effective_macs``.

        With ``detail=True`` also ``dsa_kept`` (path -> fraction), ``by_module`` (path ->
        {macs, elementwise_ops, effective_macs}) and ``uncounted_ops`` (list).
        """
        out: Dict[str, Any] = {
            "params": int(self.params),
            "macs": int(self.macs),
            "elementwise_ops": int(self.elementwise_ops),
            "effective_macs": float(self.effective_macs),
        }
        if detail:
            out["dsa_kept"] = {k: float(v) for k, v in self.dsa_kept.items()}
            out["gated"] = {k: float(v) for k, v in self.gated.items()}
            out["by_module"] = {k: v._asdict() for k, v in self.by_module.items()}
            out["uncounted_ops"] = list(self.uncounted_ops)
        return out

    def under(self, prefix: str) -> ModuleCost:
        """Sum of :attr:`by_module` over ``prefix`` and every module below it.

        ``prefix`` is a module path such as ``"layer2.0"``; ``""`` sums the whole model.
        """
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a module path string, got {prefix!r}")
        macs = ops = 0
        eff = 0.0
        for path, mc in self.by_module.items():
            if _within(path, prefix):
                macs += mc.macs
                ops += mc.elementwise_ops
                eff += mc.effective_macs
        return ModuleCost(macs, ops, eff)


# ----------------------------------------------------------------------------- op table

def _aten(*names: str) -> frozenset:
    return frozenset(names)


_FREE = _aten(
    # copies, casts, layout
    "clone", "copy_", "_to_copy", "to", "contiguous", "_copy_from", "_copy_from_and_resize",
    "cat", "stack", "hstack", "vstack", "constant_pad_nd", "reflection_pad1d",
    "reflection_pad2d", "reflection_pad3d", "replication_pad1d", "replication_pad2d",
    "replication_pad3d", "repeat", "repeat_interleave", "tile", "roll", "flip", "im2col",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle",
    "_unsafe_view", "view", "reshape", "_reshape_alias", "alias", "as_strided_", "detach", "lift_fresh",
    "lift_fresh_copy", "resize_", "set_", "zero_", "fill_", "fill",
    # indexing
    "index", "index_select", "index_put", "index_put_", "_index_put_impl_", "index_copy",
    "index_copy_", "gather",
    "scatter", "scatter_", "take", "masked_select", "embedding", "_local_scalar_dense",
    "slice_scatter", "select_scatter", "diagonal_scatter", "as_strided_scatter",
    "unfold", "split_with_sizes_copy", "split_copy", "unbind_copy",
    # allocation / constants
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros",
    "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like",
    "new_full", "scalar_tensor", "arange", "linspace", "logspace", "eye", "tensor",
    "randn", "rand", "randint", "randn_like", "rand_like", "normal", "uniform_", "normal_",
    "bernoulli", "bernoulli_", "randperm", "sym_size", "sym_stride", "sym_numel",
    "sym_storage_offset", "is_same_size", "_assert_async", "_assert_tensor_metadata",
    "_functional_assert_async", "record_stream", "_nested_tensor_from_mask",
)

_MATMUL = _aten("mm", "bmm", "mv", "dot", "vdot", "matmul")
_MATMUL_BIAS = _aten("addmm", "baddbmm", "addmv", "_addmm_activation")
_CONV = _aten(
    "convolution", "_convolution", "convolution_overrideable", "conv1d", "conv2d", "conv3d",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "mkldnn_convolution",
    "_slow_conv2d_forward", "slow_conv3d_forward", "slow_conv_dilated2d",
    "slow_conv_dilated3d", "slow_conv_transpose2d", "slow_conv_transpose3d",
    "thnn_conv2d", "_conv_depthwise2d", "conv_depthwise3d", "cudnn_convolution",
    "cudnn_convolution_transpose", "miopen_convolution", "miopen_depthwise_convolution",
)
_SDPA = _aten(
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_attention_math", "_scaled_dot_product_fused_attention_overrideable",
)

# ops per output element for point-wise ops without the `pointwise` tag or with more work
_POINTWISE_EXTRA = {
    "hardswish": 1, "hardswish_": 1, "prelu": 1, "_prelu_kernel": 1, "log_sigmoid_forward": 1,
    "rrelu_with_noise": 1, "native_dropout": 1, "dropout": 1, "glu": 2,
    "addcmul": 2, "addcmul_": 2, "addcdiv": 2, "addcdiv_": 2, "lerp": 2, "lerp_": 2,
    # integer index arithmetic (the DSA gate's sparse path): untagged, still point-wise
    "floor_divide": 1, "floor_divide_": 1, "remainder": 1, "remainder_": 1,
}
# accumulating index ops: one add per source element, not per element of the (dense) output
_INDEX_ADD = _aten("index_add", "index_add_", "scatter_add", "scatter_add_", "index_reduce", "index_reduce_")
# ops per input element
_REDUCTION = {
    "sum": 1, "mean": 1, "nansum": 1, "nanmean": 1, "amax": 1, "amin": 1, "max": 1, "min": 1,
    "prod": 1, "argmax": 1, "argmin": 1, "any": 1, "all": 1, "cumsum": 1, "cumsum_": 1,
    "cumprod": 1, "count_nonzero": 1, "nonzero": 1, "aminmax": 2, "_aminmax": 2,
    "cummax": 1, "cummin": 1, "topk": 1, "kthvalue": 1, "median": 1, "nanmedian": 1,
    "mode": 1, "var": 3, "std": 3, "var_mean": 3, "std_mean": 3, "linalg_vector_norm": 2,
    "norm": 2, "logsumexp": 4, "equal": 1,
    "col2im": 1,  # fold: overlapping patches are summed
}
_SOFTMAX = _aten("_softmax", "_log_softmax", "_safe_softmax", "softmax", "log_softmax")
_INTERP = {
    "upsample_linear1d": 2, "upsample_bilinear2d": 4, "_upsample_bilinear2d_aa": 4,
    "upsample_trilinear3d": 8, "upsample_bicubic2d": 16, "_upsample_bicubic2d_aa": 16,
    "upsample_nearest1d": 0, "upsample_nearest2d": 0, "upsample_nearest3d": 0,
    "_upsample_nearest_exact1d": 0, "_upsample_nearest_exact2d": 0,
    "_upsample_nearest_exact3d": 0,
}
_POOL = _aten(
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "mkldnn_max_pool2d", "mkldnn_max_pool3d", "quantized_max_pool2d",
)
_ADAPTIVE_POOL = _aten(
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "mkldnn_adaptive_avg_pool2d",
)
_BN_EVAL = _aten("_native_batch_norm_legit_no_training", "_batch_norm_no_update")
_BN_MAYBE_TRAIN = _aten(
    "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
    "batch_norm", "_batch_norm_impl_index", "cudnn_batch_norm", "miopen_batch_norm",
)
_STAT_NORM = _aten(
    "native_layer_norm", "native_group_norm", "layer_norm", "group_norm",
    "_batch_norm_with_update", "_batch_norm_with_update_functional", "instance_norm",
)
_RMS_NORM = _aten("_fused_rms_norm", "rms_norm")


def _bind(func, args: tuple, kwargs: dict) -> Dict[str, Any]:
    names = [a.name for a in func._schema.arguments]
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _spatial_dims(name: str, default: int) -> int:
    for d in (1, 2, 3):
        if f"{d}d" in name:
            return d
    return default


def _expand(values, dims: int) -> Sequence[int]:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(values) == 1:
        values = values * dims
    return [int(v) for v in values[-dims:]]


def _adaptive_read(in_size: int, out_size: int) -> int:
    # bins start at floor(i*in/out) and end at ceil((i+1)*in/out): they overlap when
    # out does not divide in, and then some elements are read twice
    return sum(
        -((-(i + 1) * in_size) // out_size) - (i * in_size) // out_size for i in range(out_size)
    )


def _op_cost(func, args: tuple, kwargs: dict, out) -> Optional[Tuple[int, int]]:
    """(MACs, element-wise ops) of one aten call over the whole batch; None if unknown."""
    name = func._schema.name.split("::", 1)[-1]
    if name in _FREE or func.is_view:
        return 0, 0
    out_t = _first_tensor(out)

    if name in _CONV:
        b = _bind(func, args, kwargs)
        x, w = b.get("input", args[0]), b.get("weight", args[1])
        transposed = bool(b.get("transposed", False)) or "transpose" in name
        kernel = math.prod(w.shape[2:])
        if transposed:
            macs = x.numel() * w.shape[1] * kernel
        else:
            macs = out_t.numel() * w.shape[1] * kernel
        ops = out_t.numel() if b.get("bias") is not None else 0
        return macs, ops

    if name in _MATMUL or name in _MATMUL_BIAS:
        b = _bind(func, args, kwargs)
        if name in _MATMUL:
            a = args[0]
        else:
            a = b.get("mat1", b.get("batch1", b.get("mat")))
        inner = a.shape[-1] if a.dim() >= 1 else 1
        macs = max(out_t.numel(), 1) * inner
        ops = 0
        if name in _MATMUL_BIAS:
            ops = out_t.numel() * (2 if name == "_addmm_activation" else 1)
        return macs, ops

    if name in _SDPA:
        b = _bind(func, args, kwargs)
        q, k, v = b["query"], b["key"], b["value"]
        scores = q.numel() // q.shape[-1] * k.shape[-2]
        return scores * (q.shape[-1] + v.shape[-1]), 6 * scores

    if torch.Tag.pointwise in func.tags:
        return 0, _POINTWISE_EXTRA.get(name, 1) * max(out_t.numel(), 1)
    if name in _POINTWISE_EXTRA:
        return 0, _POINTWISE_EXTRA[name] * max(out_t.numel(), 1)

    if name in _INDEX_ADD:
        b = _bind(func, args, kwargs)
        return 0, max(b.get("source", b.get("src", out_t)).numel(), 1)

    if name in _REDUCTION:
        x = args[0]
        per = _REDUCTION[name]
        return 0, per * max(x.numel(), 1)
    if name == "sort" or name == "argsort":
        b = _bind(func, args, kwargs)
        x = args[0]
        n = x.shape[b.get("dim", -1)] if x.dim() else 1
        return 0, x.numel() * max(math.ceil(math.log2(n)), 1) if n > 1 else 0

    if name in _POOL:
        b = _bind(func, args, kwargs)
        dims = _spatial_dims(name, 2)
        window = math.prod(_expand(b["kernel_size"], dims))
        return 0, out_t.numel() * window
    if name in _ADAPTIVE_POOL:
        x = args[0]
        dims = _spatial_dims(name, 2)
        b = _bind(func, args, kwargs)
        out_size = _expand(b["output_size"], dims)
        in_size = list(x.shape[-dims:])
        outer = x.numel() // max(math.prod(in_size), 1)
        read = outer * math.prod(_adaptive_read(i, o) for i, o in zip(in_size, out_size))
        return 0, read

    if name in _BN_EVAL or name in _BN_MAYBE_TRAIN or name in _STAT_NORM:
        b = _bind(func, args, kwargs)
        x = b.get("input", args[0])
        training = name in _STAT_NORM or bool(b.get("training", False))
        if name in _BN_EVAL or not training:
            return 0, 2 * x.numel()
        per = 4 + (b.get("weight") is not None) + (b.get("bias") is not None)
        return 0, per * x.numel()
    if name in _RMS_NORM:
        b = _bind(func, args, kwargs)
        x = b.get("input", args[0])
        return 0, (3 + (b.get("weight") is not None)) * x.numel()
    if name in _SOFTMAX:
        return 0, 5 * args[0].numel()
    if name in _INTERP:
        return 0, _INTERP[name] * out_t.numel()
    return None


# ----------------------------------------------------------------------------- counting

def _within(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + ".")


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


_DSA = "dsa"
_AW_WEIGHT = "aw_weight"
_AW_MOD = "aw_modulated"


class _OpCounter(TorchDispatchMode):
    """Counts every aten op of a forward pass by the module table, per innermost module.

    Data-flow lineage: a tensor carries a frozenset of tags (kind, module path); an op's
    outputs inherit the union of its inputs' tags. Tensors are keyed by id() with a
    weakref to confirm identity (ids are reused after a tensor dies), never put in sets
    or compared with ==, which is element-wise for tensors.
    """

    def __init__(self, track_lineage: bool, aw_paths: Iterable[str] = ()):
        super().__init__()
        self.path_stack = [""]
        self.track_lineage = track_lineage
        self.aw_paths = frozenset(aw_paths)
        self._lineage: Dict[int, Tuple[weakref.ref, frozenset]] = {}
        # path -> frozenset of DSA paths scaling these MACs -> MACs
        self.macs: Dict[str, Dict[frozenset, int]] = defaultdict(lambda: defaultdict(int))
        # path -> MACs per weight, not per pixel (AW-conv's modulation): no pruning scales them
        self.weight_macs: Dict[str, int] = defaultdict(int)
        self.ops: Dict[str, int] = defaultdict(int)
        self.uncounted: set = set()

    # lineage ---------------------------------------------------------------------
    def tags_of(self, t: torch.Tensor) -> frozenset:
        entry = self._lineage.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        return frozenset()

    def add_tags(self, tree, tags: frozenset) -> None:
        if not tags:
            return
        leaves, _ = tree_flatten(tree)
        for t in leaves:
            if isinstance(t, torch.Tensor):
                self._lineage[id(t)] = (weakref.ref(t), self.tags_of(t) | tags)

    def drop_tags(self, tree, tags: frozenset) -> None:
        leaves, _ = tree_flatten(tree)
        for t in leaves:
            if isinstance(t, torch.Tensor) and self.tags_of(t) & tags:
                self._lineage[id(t)] = (weakref.ref(t), self.tags_of(t) - tags)

    def _input_tags(self, args, kwargs) -> frozenset:
        tags = frozenset()
        leaves, _ = tree_flatten((args, kwargs))
        for t in leaves:
            if isinstance(t, torch.Tensor):
                tags = tags | self.tags_of(t)
        return tags

    # module hooks ------------------------------------------------------------------
    def enter(self, path: str) -> None:
        self.path_stack.append(path)

    def leave(self, path: str) -> None:
        if len(self.path_stack) > 1 and self.path_stack[-1] == path:
            self.path_stack.pop()

    # dispatch ----------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            cost = _op_cost(func, args, kwargs, out)
        except (AttributeError, IndexError, KeyError, TypeError):
            # an overload whose arguments the table does not expect: report it as
            # uncounted rather than fail a whole search trial over the cost model
            cost = None
        if cost is None:
            self.uncounted.add(str(func.overloadpacket.__name__))
            cost = (0, 0)
        macs, ops = cost
        path = self.path_stack[-1]
        tags = frozenset()
        if self.track_lineage:
            tags = self._input_tags(args, kwargs)
            self.add_tags(out, tags)
        if (
            ops
            and path in self.aw_paths
            and (_AW_WEIGHT, path) in tags
            and torch.Tag.pointwise in func.tags
        ):
            # A point-wise op run by the AW-conv itself on its kernel K is the weight
            # modulation W' = K + A (.) K: one multiply-accumulate per element of the
            # per-sample kernels it produces (B x C_out x C_in/groups x k x k), once per
            # chunk of the batch. Its outputs are marked, so a modulation written as several
            # ops (A * K, then + K) is counted once. It is per weight, not per pixel, so
            # neither a DSA upstream nor a DSA gate on this conv scales it.
            self.add_tags(out, frozenset({(_AW_MOD, path)}))
            if (_AW_MOD, path) not in tags:
                self.weight_macs[path] += _first_tensor(out).numel()
            ops = 0
        if macs:
            scaling = frozenset(
                p for kind, p in tags if kind == _DSA and _within(path, _parent(p))
            )
            self.macs[path][scaling] += macs
        if ops:
            self.ops[path] += ops
        return out


def _per_image(total: Union[int, float], batch: int) -> Union[int, float]:
    if isinstance(total, int) and total % batch == 0:
        return total // batch
    return total / batch


def _is_gate(module: nn.Module) -> bool:
    # a DSAGate: it masks a residual branch (counted through branch_fractions), it does not
    # prune the tensors that descend from its output
    return hasattr(module, "kept_fraction") and hasattr(module, "last_mask")


def _is_pruning(module: nn.Module) -> bool:
    return hasattr(module, "kept_fraction") and not _is_gate(module)


def _gate_fractions(model: nn.Module) -> Tuple[Dict[str, float], Dict[str, float]]:
    """(gate path -> kept fraction, branch conv path -> fraction to compute) of the last forward."""
    kept: Dict[str, float] = {}
    convs: Dict[str, float] = {}
    for path, m in model.named_modules():
        gate = getattr(m, "gate", None)
        if hasattr(m, "branch_convs") and gate is not None and _is_gate(gate) and gate.last_mask is not None:
            from nas_attn.modules import branch_fractions
            prefix = path + "." if path else ""
            kept[prefix + "gate"] = float(gate.kept_fraction)
            for conv, fraction in branch_fractions(m).items():
                convs[prefix + conv] = fraction
    return kept, convs


def _param_device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    for b in model.buffers():
        if b.is_floating_point():
            return b.device, b.dtype
    return torch.device("cpu"), torch.get_default_dtype()


class _Restore:
    """Puts back training flags and DSA kept fractions; removes hooks."""

    def __init__(self, model: nn.Module):
        self.modes = [(m, m.training) for m in model.modules()]
        # DSA keeps its last kept fraction in plain attributes (behind a read-only
        # property): a shallow copy of the instance dict puts them back
        self.state = [(m, dict(vars(m))) for m in model.modules() if _is_pruning(m) or _is_gate(m)]
        self.handles = []
        # the counting pass runs gated blocks densely and masked: the sparse path's gathers and
        # matrix products, or the unmasked route of a full mask, would count the random input's
        # mask, not the data's (and differ from a count on the meta device)
        for m in model.modules():
            if _is_gate(m):
                m.fast_routes = False

    def restore(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for m, mode in self.modes:
            m.training = mode
        for m, state in self.state:
            attrs = vars(m)
            for key in [k for k in attrs if k not in state]:
                del attrs[key]
            attrs.update(state)


def _count_forward(
    model: nn.Module, x: torch.Tensor, kept: Dict[str, float], restore: _Restore,
    gated: Optional[Dict[str, float]] = None,
) -> Cost:
    names = {}
    for path, m in model.named_modules():
        names.setdefault(m, path)
    pruning = {path for m, path in names.items() if _is_pruning(m)}
    aw = {path: m for m, path in names.items() if isinstance(m, AWConv2d)}
    counter = _OpCounter(track_lineage=bool(pruning or aw), aw_paths=aw)
    gated = dict(gated or {})

    def pre_hook(module, inputs):
        path = names[module]
        counter.enter(path)
        if path in aw:
            counter.add_tags(module.weight, frozenset({(_AW_WEIGHT, path)}))

    def post_hook(module, inputs, output):
        path = names[module]
        counter.leave(path)
        if path in pruning:
            counter.add_tags(output, frozenset({(_DSA, path)}))
        if path in aw:
            # the output descends from K; a second call of the same module must not
            # take its input for an already modulated kernel
            counter.drop_tags(output, frozenset({(_AW_WEIGHT, path), (_AW_MOD, path)}))

    for m in names:
        restore.handles.append(m.register_forward_pre_hook(pre_hook))
        restore.handles.append(m.register_forward_hook(post_hook))
    with torch.no_grad(), counter:
        model(x)

    batch = x.shape[0]
    by_module: Dict[str, ModuleCost] = {}
    total_macs = total_ops = 0
    total_eff = 0.0
    for path in set(counter.macs) | set(counter.ops) | set(counter.weight_macs):
        macs = sum(counter.macs[path].values()) if path in counter.macs else 0
        macs += counter.weight_macs.get(path, 0)
        eff = float(counter.weight_macs.get(path, 0))
        for dsas, m in counter.macs.get(path, {}).items():
            scale = min((kept[d] for d in dsas if d in kept), default=1.0)
            eff += m * min(scale, gated.get(path, 1.0))
        ops = counter.ops.get(path, 0)
        by_module[path] = ModuleCost(
            _per_image(macs, batch), _per_image(ops, batch), eff / batch
        )
        total_macs += macs
        total_ops += ops
        total_eff += eff
    params = sum(p.numel() for p in model.parameters())
    return Cost(
        params=params,
        macs=_per_image(total_macs, batch),
        elementwise_ops=_per_image(total_ops, batch),
        effective_macs=total_eff / batch,
        dsa_kept=dict(kept),
        gated=gated,
        by_module=dict(sorted(by_module.items())),
        uncounted_ops=tuple(sorted(counter.uncounted)),
    )


def count(model: nn.Module, x: torch.Tensor, kept: Optional[Dict[str, float]] = None) -> Cost:
    """Count the cost of ``model(x)`` per image (totals divided by ``x.shape[0]``).

    ``kept``: DSA module path -> kept fraction in [0, 1] used for ``effective_macs``
    (missing paths count as 1). The model runs in eval mode without gradients; its
    training flags, DSA kept fractions and hooks are left as they were, also on errors.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(
            f"x must be a tensor with a batch dimension of size >= 1, got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    kept = dict(kept or {})
    for path, f in kept.items():
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"kept[{path!r}] must be in [0, 1], got {f}")
    restore = _Restore(model)
    try:
        model.eval()
        return _count_forward(model, x, kept, restore)
    finally:
        restore.restore()


def _check_input_size(input_size) -> Tuple[int, ...]:
    try:
        size = tuple(int(s) for s in input_size)
        ok = len(size) >= 1 and all(s >= 1 for s in size) and all(
            float(s) == float(o) for s, o in zip(size, input_size)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"input_size must be a sequence of positive ints such as (3, 224, 224), "
            f"got {input_size!r}"
        )
    return size


def measure(
    model: nn.Module,
    input_size: Optional[Sequence[int]] = None,
    data: Optional[torch.Tensor] = None,
) -> Cost:
    """Cost of ``model`` per image; see the module docstring for the counting convention.

    input_size: (C, H, W) of one image, counted at batch 1 on a fixed random input;
    default ``data.shape[1:]`` when ``data`` is given, else (3, 224, 224).
    data: an input batch (B, C, H, W) of real data. The model runs on it in eval mode to
    read each DSA's kept fraction, which scales the MACs downstream of that DSA inside
    its block, and each DSA gate's mask, which scales its branch convolutions
    (``effective_macs``). Without it ``effective_macs == macs``.
    The model's training flags, DSA kept fractions and hooks are restored afterwards,
    also when the forward raises.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if data is not None:
        if not isinstance(data, torch.Tensor) or data.dim() < 2 or data.shape[0] < 1:
            raise ValueError(
                "data must be a tensor (B, C, H, W) with B >= 1, got "
                f"{tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__}"
            )
        if input_size is None:
            input_size = tuple(data.shape[1:])
    size = _check_input_size((3, 224, 224) if input_size is None else input_size)
    if data is not None and data.shape[1] != size[0]:
        raise ValueError(
            f"data must have input_size[0]={size[0]} channels, got shape {tuple(data.shape)}"
        )
    device, dtype = _param_device_dtype(model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((1,) + size, generator=generator).to(device=device, dtype=dtype)

    kept: Dict[str, float] = {}
    restore = _Restore(model)
    try:
        model.eval()
        if data is not None:
            with torch.no_grad():
                model(data.to(device=device, dtype=dtype))
            for path, m in model.named_modules():
                if _is_pruning(m) and m.kept_fraction is not None:
                    kept[path] = float(m.kept_fraction)
            gate_kept, gated = _gate_fractions(model)
            kept.update(gate_kept)
            return _count_forward(model, x, kept, restore, gated)
        return _count_forward(model, x, kept, restore)
    finally:
        restore.restore()


def module_cost(
    module: nn.Module,
    channels: int,
    hw: Union[int, Tuple[int, int]] = 14,
    batch_size: int = 1,
) -> Cost:
    """Cost per image of ``module`` on a (batch_size, channels, H, W) feature map.

    hw: H = W, or (H, W). Used to compare attention modules at a reference size
    (e.g. 256 channels at 14 x 14).
    """
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"channels must be an int >= 1, got {channels!r}")
    h, w = (hw, hw) if isinstance(hw, int) else tuple(hw)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (h, w)):
        raise ValueError(f"hw must be an int >= 1 or a pair of them, got {hw!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device, dtype = _param_device_dtype(module)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, channels, h, w), generator=generator)
    return count(module, x.to(device=device, dtype=dtype))
