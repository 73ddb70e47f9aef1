"""DSA gate: DSA's keep mask, computed from a block's input, gating the block's residual branch.

The idea is DynConv's (T. Verelst, T. Tuytelaars, "Dynamic Convolutions: Exploiting Spatial
Sparsity for Faster Inference", CVPR 2020): a residual block returns
``y = shortcut(x) + M * branch(x)``, so pixels outside the keep mask ``M`` pass the shortcut
unchanged and the branch needs computing only where ``M`` is set (and, for the convolutions
before the last one, on ``M`` dilated by the receptive field of what follows them). DynConv
learns its mask with a Gumbel straight-through estimator; here the mask is DSA's
(H. Wei, Z. Wang, G. Hua, Y. Zhao, "Double Spatial Attention for Convolution Neural
Networks", ICBDA 2022), parameter-free, so nothing about it is learned: training runs the
branch densely with the mask multiplied in, and inference can gather the kept pixels,
compute only them and scatter the result back. Putting DSA at the block input as a gate is
our reconstruction of "dynamically prunes the redundant spatial pixels ... and reduces the
redundant computation", not something either paper describes in this form.

What can be gated (:func:`why_not_gateable`):

* timm ResNet ``BasicBlock`` and ``Bottleneck``, including the first block of a stage that
  changes resolution or width: the mask lives on the block's *output* grid (DSA's foreground
  map of the input, average-pooled to the output size), the shortcut (identity or the
  ``downsample`` conv) always runs densely, and the branch is computed at kept output pixels.
* timm ``InvertedResidual`` (MobileNetV2, EfficientNet) when it has a skip connection
  (stride 1, same width). A block without one (the first block of most stages) returns
  ``branch(x)`` alone: pruned pixels would become zeros instead of passing through, so it is
  not gateable, and validation says so.

A gated block keeps its class's module paths and state-dict keys (the gate has no parameters
and no buffers), so weights, cost attribution by module path and every lookup by block name
work unchanged; see :func:`gate_block`.

Attention in the block's ``se`` slot stays where it is and sees the branch with pruned pixels
set to zero (``se(M * h)``); in the sparse path it runs densely on the scattered kept pixels.
"""
import math
import weakref
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from timm.models._efficientnet_blocks import InvertedResidual
from timm.models.resnet import BasicBlock, Bottleneck

from ._common import bool_spec, exporting
from ._pool import adaptive_avg_pool2d
from .dsa import DSA

__all__ = [
    "DSAGate", "GatedBasicBlock", "GatedBottleneck", "GatedInvertedResidual",
    "gate_block", "why_not_gateable", "is_gated", "set_sparse", "branch_fractions",
]


class DSAGate(DSA):
    """Keep mask of a residual branch by DSA's rule; zero parameters.

    A subclass of :class:`~nas_attn.modules.DSA` so that saliency, foreground, threshold,
    keep ratio and the flat-map keep-all rule are DSA's own methods, not copies. It never
    reweights (the gate is a mask on the branch, not attention on the activations).

    Args:
        channels: input channels of the gated block (unused; timm's signature).
        sparse: in eval mode, run the gated branch on the kept pixels only (gather, compute,
            scatter). False keeps the dense masked computation everywhere. Either gives the
            same output; ``set_sparse(model, False)`` flips every gate of a model. Whether a
            forward runs sparse is decided per block from its mask's kept fraction
            (:meth:`_Gated.sparse_pays`): by default against the crossover measured for the
            block's kind, below which the sparse path is faster than the dense block; with
            ``sparse_max_kept`` set to a float, against that fraction alone (1.0 forces the
            sparse path). In inference a dense branch is masked in place, and a mask that keeps
            every pixel runs the plain timm block with no mask at all (see ``_Gated._route``),
            so a gate that prunes nothing costs only its mask: saliency, min-max, comparison
            and count, a dozen small operations (none at all with ``prune_mode="keep_ratio",
            keep_ratio=1``).
        **kwargs: DSA's threshold, reduce, prune_mode, keep_ratio and eps, with DSA's defaults
            and checks (passed through, not restated, so the two cannot drift apart), and timm's
            pass-through keywords.

    Attributes:
        kept_fraction: fraction of the output grid's pixels kept in the last forward (float;
            computed on reading from the kept count, :meth:`kept_pixels`).
        last_mask: the boolean keep mask (B, 1, H_out, W_out) of the last forward, detached
            (the cost model derives from it the pixels each branch conv must compute).
    """

    HYPERPARAMETERS = {
        # A gate only masks the branch (no reweighting), and gates only blocks with a
        # shortcut, so DSA's reweight and prune_everywhere do not apply.
        **{k: v for k, v in DSA.HYPERPARAMETERS.items() if k not in ("reweight", "prune_everywhere")},
        "sparse": bool_spec(True, doc="eval mode computes only kept pixels (gather/scatter)"),
    }
    # Declared for TorchScript (it types an attribute by its first value, None); real
    # annotations, not strings, so this file has no `from __future__ import annotations`.
    _kept_fraction: Optional[torch.Tensor]  # DSA's, repeated: TorchScript reads this class's annotations only
    _kept_count: Optional[torch.Tensor]
    _known_count: int
    __jit_unused_properties__ = ["kept_fraction"]
    last_mask: Optional[torch.Tensor]
    last_in_size: Tuple[int, int]
    sparse_max_kept: Optional[float]

    def __init__(self, channels: int, sparse: bool = True, **kwargs):
        if "reweight" in kwargs:
            raise ValueError("DSAGate: reweight is not a gate hyperparameter (a gate only masks the branch)")
        super().__init__(channels, reweight=False, **kwargs)
        if not isinstance(sparse, bool):
            raise ValueError(f"DSAGate: sparse must be a bool (True or False), got {sparse!r}")
        self.sparse = sparse
        # None: the gated block's measured rule decides (_Gated.sparse_pays); a float in
        # [0, 1]: run sparse exactly when at most that fraction of the pixels is kept
        self.sparse_max_kept: Optional[float] = None
        # route of the last inference forward (a _Gated route constant; -1 before any), read by
        # the benchmark to report which blocks ran sparse
        self.last_route = -1
        # False makes every forward take the dense masked route, whatever the mask: the cost
        # counter (nas_attn.cost) sets it so that its counts do not hang on the random input's mask
        self.fast_routes = True
        self.last_mask: Optional[torch.Tensor] = None
        self._kept_count: Optional[torch.Tensor] = None  # pixels kept in the last forward (0-d int64)
        self._known_count = -1  # the same, when the rule alone told it (batch 1); -1: not known
        self._mask_numel = 0  # pixels of the last forward's mask
        self._all_kept = False  # the last mask was full by the rule alone (no count taken)
        self.last_in_size: Tuple[int, int] = (0, 0)

    def forward(self, x: torch.Tensor, out_size: List[int]) -> torch.Tensor:
        """Boolean keep mask (B, 1, out_size[0], out_size[1]) from the block input ``x``.

        On a coarser output grid the foreground map is average-pooled to it before the
        threshold / keep-ratio rule, so a kept output pixel is one whose input window is
        salient on average.
        """
        keeps_all = self._keeps_every_pixel(out_size[0] * out_size[1])
        known = -1
        if keeps_all:
            # keep_ratio mode keeping ceil(keep_ratio * H * W) = H * W pixels: the saliency
            # cannot change the mask (nor can a top-k over every pixel)
            mask = torch.ones(x.shape[0], 1, out_size[0], out_size[1], dtype=torch.bool, device=x.device)
        elif (not torch.jit.is_scripting() and not torch.is_grad_enabled() and x.shape[0] == 1
              and self.fast_routes and not x.is_meta and not exporting()):
            # not for a meta tensor (no value to read on the host), nor while the cost model
            # counts (fast_routes False): its element-wise count must be the batched path's, the
            # one the meta device takes
            mask, known = self._mask_one_image(x, out_size)
        else:
            if torch.jit.is_scripting() or torch.is_grad_enabled():
                a_fg, informative = self.foreground(x)
            else:
                a_fg, informative = self._foreground_for_mask(x)
            if a_fg.shape[-2] != out_size[0] or a_fg.shape[-1] != out_size[1]:
                a_fg = adaptive_avg_pool2d(a_fg, (out_size[0], out_size[1]))
            mask = self.keep_mask(a_fg, informative)  # boolean: never requires grad, needs no detach
        if not exporting():  # an exported graph has no module state to record into
            # The count, not the fraction: the gated block reads it (one host sync) to choose its
            # path, and kept_fraction divides on demand. A mask known to be full needs no count,
            # nor does one whose count the rule told (batch 1: see _mask_one_image).
            self._all_kept = keeps_all
            self._known_count = known
            self._kept_count = None if keeps_all or known >= 0 else mask.count_nonzero()
            self._mask_numel = mask.numel()
            self.last_mask = mask
            self.last_in_size = (int(x.shape[-2]), int(x.shape[-1]))
        return mask

    @property
    def kept_fraction(self) -> Optional[float]:
        if self._all_kept:
            return 1.0
        if self._known_count >= 0:
            return self._known_count / self._mask_numel
        return None if self._kept_count is None else int(self._kept_count) / self._mask_numel

    def kept_pixels(self) -> int:
        """Pixels the last forward's mask kept (a host sync unless the rule told the count)."""
        if self._all_kept:
            return self._mask_numel
        return self._known_count if self._known_count >= 0 else int(self._kept_count)

    @torch.jit.unused
    def _mask_one_image(self, x: torch.Tensor, out_size: List[int]) -> Tuple[torch.Tensor, int]:
        """DSA's mask of a batch of one under no_grad, and its kept count when the rule tells it
        (-1 otherwise), in fewer operations than :meth:`_foreground_for_mask` and
        :meth:`DSA.keep_mask`: the flatness test is read on the host (one value), so a flat
        map returns all ones at once and an informative one skips the flat-sample merge
        (``mask | ~informative``); in keep-ratio mode the count is the top-k's k, so no
        ``count_nonzero`` follows. The same arithmetic on the same values as the batched
        path, so the same mask bit for bit. Why: at batch 1 each small operation costs its
        dispatch (5-10 us with the caches cold after a block's convolutions), and the gate's
        mask was some 20 of them; this saves 6-7."""
        s = self.saliency(x)
        lo, hi = torch.aminmax(s.reshape(-1))
        span = hi - lo
        n_out = out_size[0] * out_size[1]
        if not bool(span > self.eps):  # a flat map: DSA keeps every pixel
            return torch.ones(1, 1, out_size[0], out_size[1], dtype=torch.bool, device=x.device), n_out
        a_fg = (s - lo).div_(span + self.eps)
        if a_fg.shape[-2] != out_size[0] or a_fg.shape[-1] != out_size[1]:
            a_fg = adaptive_avg_pool2d(a_fg, (out_size[0], out_size[1]))
        if self.prune_mode == "threshold":
            return a_fg >= self.threshold, -1
        flat = a_fg.reshape(1, n_out)
        n_keep = min(n_out, max(1, math.ceil(self.keep_ratio * n_out)))
        top = flat.topk(n_keep, dim=1, sorted=False).indices
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, top, True)
        return mask.view(1, 1, out_size[0], out_size[1]), n_keep

    def _foreground_for_mask(self, x: torch.Tensor):
        """DSA's foreground coefficient in fewer operations, for a mask under no_grad.

        The same arithmetic as :meth:`DSA.foreground` (``(s - min) / (max - min + eps)`` on the
        same saliency, so the same values bit for bit), but one ``aminmax`` instead of ``amin``
        and ``amax``, the division in place, and no zeroing of flat samples' coefficients:
        :meth:`DSA.keep_mask` keeps every pixel of those whatever their coefficient. Why it
        matters: at batch 1 the gate is a dozen small operations on a (B, 1, H, W) map, each
        costing its dispatch (microseconds, more when the caches are cold after a block's
        convolutions), while a whole block of MobileNetV2 at 14x14 takes ~0.5 ms on one thread.
        """
        s = self.saliency(x)
        lo, hi = torch.aminmax(s.reshape(s.shape[0], 1, 1, -1), dim=-1, keepdim=True)  # (B, 1, 1, 1)
        span = hi - lo
        return (s - lo).div_(span + self.eps), (span > self.eps).view(-1)

    def _keeps_every_pixel(self, n_pixels: int) -> bool:
        """Whether the rule keeps all ``n_pixels`` of every sample whatever the input: keep_ratio
        mode rounding up to all of them. (Threshold 0 keeps every pixel of a finite input, but
        its mask is still computed: an infinite saliency value prunes its pixel.)"""
        if self.prune_mode != "keep_ratio":
            return False
        return min(n_pixels, max(1, math.ceil(self.keep_ratio * n_pixels))) == n_pixels

    def extra_repr(self) -> str:
        return super().extra_repr().replace(", reweight=False", "") + f", sparse={self.sparse}"


# ----------------------------------------------------------------------------- sparse helpers
#
# A feature map in the sparse path is a table of pixel rows, (B*H*W, C), the layout of a
# channels-last tensor (a view when the input is channels-last, one copy otherwise). Each branch
# conv writes the pixels it must produce, in sorted order, into a *packed* table, (N + 1, C),
# whose extra last row is zero and stands for every read outside the image (a convolution's zero
# padding); the next conv reads it through neighbour indices remapped to packed rows. A conv is
# a matrix product of gathered neighbourhoods (im2col restricted to the needed pixels) with eval
# BatchNorm folded into its weight and bias (``_folded``), run over chunks of rows so that each
# gathered chunk is reused from cache (``_CHUNK_BYTES``), and the last conv of a branch is added
# into the shortcut's rows of its chunk in place (``index_add_``: half the time of gathering them
# and copying them back, except for very narrow rows). Measured on one thread against the
# first version of this path (per-pixel tables of the whole map, BatchNorm as a separate pass,
# whole-map im2col): see README, "DSA gate", for the figures. Alternatives measured earlier and
# dropped: a dense conv on the scattered map (saves nothing) and per-tile dense convs (pay off
# only for masks made of large tiles).

# Bytes of gathered rows per chunk and thread: about half the 2 MB L2 cache per core of the
# machine this was tuned on, and at least _MIN_CHUNK_ROWS rows, so that a wide weight matrix
# (resnet50's layer4 conv2: 4608 x 512 floats, 9 MB) is streamed once per few hundred pixels,
# not per few dozen. Each operation on a chunk splits it across torch's threads, so a chunk
# grows with their number: the same working set per core, and fewer operations, each of which
# costs a dispatch and a fork/join of the threads (a resnet50 forward at batch 32, keep 0.3,
# runs ~11,500 of them on one thread).
_CHUNK_BYTES = 1 << 20
_MIN_CHUNK_ROWS = 256


def _chunk_rows(floats_per_row: int) -> int:
    return max(_MIN_CHUNK_ROWS, _CHUNK_BYTES * torch.get_num_threads() // (4 * floats_per_row))


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _owned_rows(t: torch.Tensor, borrowed: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` that may be written in place: ``t``'s own memory when it is a fresh tensor
    (not ``borrowed``, the block input) that ``_rows`` could view, else a copy."""
    rows = _rows(t)
    if rows.data_ptr() == t.data_ptr() and t is borrowed:  # a view of the caller's input
        rows = rows.clone()
    return rows


# conv module -> (key of the tensors it was folded from, weight matrix, bias)
_FOLDED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _folded(conv: nn.Conv2d, bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``conv`` followed by eval-mode ``bn`` as one affine map on pixel rows: (weight, bias).

    The weight is (kh*kw*C_in, C_out) for a dense conv, rows ordered (kernel row, kernel column,
    input channel) like a gathered neighbourhood, and (kh*kw, C) per-tap scales for a depthwise
    conv; the bias is (C_out,). Folding saves BatchNorm's pass over every conv output (and its
    allocation). It rounds differently from conv-then-BN: within ~1e-6 relative in float32.
    Cached per conv, keyed by the data pointer and version counter of each tensor it reads
    (any in-place update, ``load_state_dict`` or optimiser step bumps the version), so a stale
    fold is never used.
    """
    sources = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    key = (id(bn), bn.eps) + tuple((t.data_ptr(), t._version) if t is not None else None for t in sources)
    cached = _FOLDED.get(conv)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    scale = (bn.running_var + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    c_out, _, kh, kw = weight.shape
    if conv.groups == 1:
        matrix = weight.permute(0, 2, 3, 1).reshape(c_out, -1).t().contiguous()
    else:  # depthwise
        matrix = weight.reshape(c_out, kh * kw).t().contiguous()
    _FOLDED[conv] = (key, matrix, bias.contiguous())
    return matrix, bias


def _act_(h: torch.Tensor, act: Optional[nn.Module]) -> torch.Tensor:
    """``act(h)``, in place for ReLU, ReLU6 and SiLU; other activations return a new tensor
    (use :func:`_act_into` where the result must land in ``h``)."""
    if act is None or isinstance(act, nn.Identity):
        return h
    kind = type(act)
    if kind is nn.ReLU:
        return h.relu_()
    if kind is nn.ReLU6:
        return F.hardtanh(h, 0.0, 6.0, inplace=True)
    if kind is nn.SiLU:
        return F.silu(h, inplace=True)
    return act(h)


def _act_into(h: torch.Tensor, act: Optional[nn.Module]) -> None:
    """``h = act(h)`` in ``h``'s memory, whatever the activation."""
    out = _act_(h, act)
    if out is not h:
        h.copy_(out)


def _idempotent(act: Optional[nn.Module]) -> bool:
    """act(act(v)) == act(v): applying it to a whole map after some rows already had it is safe."""
    return act is None or type(act) in (nn.Identity, nn.ReLU, nn.ReLU6)


def _pair(v) -> Tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


# (out_hw, in_hw, kernel, stride, padding, dilation, device) -> one image's neighbour table
_NEIGHBOUR_TABLES: Dict[tuple, torch.Tensor] = {}
_MAX_NEIGHBOUR_TABLES = 64  # distinct conv geometries and map sizes kept; past that the cache starts over


def _image_neighbours(out_hw: List[int], in_hw: List[int], conv: nn.Conv2d, device: torch.device) -> torch.Tensor:
    """Flat indices (H_out*W_out, kh*kw) into H_in*W_in of the input pixels each output pixel of
    one image reads; -1 for reads outside the image. Order: kernel row, kernel column, as the
    weight's (kh, kw). Built once per map size and conv geometry and cached: computing it per
    forward took some 35 small integer operations, 80-150 us per block on one thread at batch 1,
    as much as a 14x14 block's gathers."""
    kh, kw = _pair(conv.kernel_size)
    sh, sw = _pair(conv.stride)
    ph, pw = _pair(conv.padding)
    dh, dw = _pair(conv.dilation)
    ho, wo = int(out_hw[0]), int(out_hw[1])
    hi, wi = int(in_hw[0]), int(in_hw[1])
    key = (ho, wo, hi, wi, kh, kw, sh, sw, ph, pw, dh, dw, str(device))
    table = _NEIGHBOUR_TABLES.get(key)
    if table is not None:
        return table
    pix = torch.arange(ho * wo, device=device)
    oy = pix // wo
    ox = pix % wo
    dy = torch.arange(kh, device=device).repeat_interleave(kw) * dh
    dx = torch.arange(kw, device=device).repeat(kh) * dw
    iy = (oy * sh - ph).unsqueeze(1) + dy.unsqueeze(0)
    ix = (ox * sw - pw).unsqueeze(1) + dx.unsqueeze(0)
    inside = (iy >= 0) & (iy < hi) & (ix >= 0) & (ix < wi)
    table = (iy * wi + ix).masked_fill_(~inside, -1)
    if len(_NEIGHBOUR_TABLES) >= _MAX_NEIGHBOUR_TABLES:
        _NEIGHBOUR_TABLES.clear()
    _NEIGHBOUR_TABLES[key] = table
    return table


def _neighbours(pos: torch.Tensor, batch: int, out_hw: List[int], in_hw: List[int], conv: nn.Conv2d) -> torch.Tensor:
    """Flat indices (N, kh*kw) into batch*H_in*W_in of the input pixels each output pixel ``pos``
    (flat indices into batch*H_out*W_out) reads; -1 for reads outside the image. Order: kernel
    row, kernel column, as the weight's (kh, kw)."""
    table = _image_neighbours(out_hw, in_hw, conv, pos.device)
    if batch == 1:
        return table.index_select(0, pos)
    n_out = int(out_hw[0]) * int(out_hw[1])
    image = pos // n_out
    nbrs = table.index_select(0, pos - image * n_out)
    # shift in-image reads to their image's block of rows; -1 (outside) stays
    return torch.where(nbrs >= 0, nbrs + (image * (int(in_hw[0]) * int(in_hw[1]))).unsqueeze(1), nbrs)


def _needed_packed(nbrs: torch.Tensor, n_pixels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sorted flat indices of the in-image pixels of an ``n_pixels`` map read through ``nbrs``
    (-1 = outside), ``nbrs`` as rows of the packed table that holds those pixels in order and
    then a zero row, which -1 maps to).

    A pixel's packed row is the number of needed pixels before it, a running count of the
    flags. index_fill_ and take rather than assignment and reading through an index: 2-3x
    faster on CPU (one thread, 59-30,000 pixels)."""
    flag = torch.zeros(n_pixels + 1, dtype=torch.bool, device=nbrs.device)
    flag.index_fill_(0, nbrs.reshape(-1), True)  # -1 lands on the last entry, dropped from `need`
    need = flag[:-1].nonzero().squeeze(1)
    # the last entry (flagged whenever some read falls outside) counts to need.numel(): the zero row
    row_of = flag.cumsum(0).sub_(1)
    # take reads -1 as the last entry, as indexing does, in half the time of row_of[nbrs]
    return need, torch.take(row_of, nbrs)


def _table(n_rows: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised packed table for ``n_rows`` pixels, its zero row last."""
    table = like.new_empty(n_rows + 1, channels)
    table[n_rows].zero_()
    return table


def _conv_into(dest: torch.Tensor, src: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor, act: Optional[nn.Module]) -> None:
    """``dest[i] = act(src[index[i]].flatten() @ weight + bias)`` for each row i of ``index``
    ((M,) for a 1x1 conv, (M, kh*kw) neighbourhoods for a k x k one), chunk by chunk."""
    m = index.shape[0]
    taps = 1 if index.dim() == 1 else index.shape[1]
    step = _chunk_rows(weight.shape[0] + weight.shape[1])
    cols_buffer = src.new_empty(min(step, m) * taps, src.shape[1])
    for s in range(0, m, step):
        e = min(s + step, m)
        cols = torch.index_select(src, 0, index[s:e].reshape(-1), out=cols_buffer[:(e - s) * taps])
        out = dest[s:e]
        torch.addmm(bias, cols.view(e - s, -1), weight, out=out)
        _act_into(out, act)


# Largest gather (floats: taps x pixels x channels) that a depthwise conv makes all at once; above
# it, one tap at a time (see _depthwise)
_DEPTHWISE_GATHER_ALL_FLOATS = 1 << 20


def _depthwise_buffer_rows(n_taps: int, n: int, channels: int) -> int:
    """Rows of the gather buffer :func:`_depthwise` needs for chunks of up to n pixels."""
    return n_taps * n if n_taps * n * channels <= _DEPTHWISE_GATHER_ALL_FLOATS else n


def _depthwise(table: torch.Tensor, index_by_tap: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor,
               buffer: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A depthwise conv at n pixels whose neighbourhoods are ``index_by_tap`` (kh*kw, n) rows of
    ``table``, into ``out`` (n, C). A small gather (up to ``_DEPTHWISE_GATHER_ALL_FLOATS``) takes
    every tap at once, (kh*kw, n, C), scales it and sums over the taps: four operations. A
    larger one goes per tap, one (n, C) slice gathered and multiply-added at a time. Measured on
    one thread: all at once 10-45% faster for batch-1 chunks of mobilenetv2_100 (15 pixels x 960
    channels: 38 vs 70 us; 941 x 144: 296 vs 327 us), where the per-tap loop's 18 operations cost
    more than their arithmetic; per tap up to 3x faster for wide batch-32 chunks (960 channels at
    7x7), whose all-tap gather outgrows the cache. ``buffer`` has :func:`_depthwise_buffer_rows`
    rows for the largest chunk, and its size decides (every chunk of a call goes the same way)."""
    n_taps, n = index_by_tap.shape
    channels = table.shape[1]
    if buffer.shape[0] >= n_taps * n:
        gathered = torch.index_select(table, 0, index_by_tap.reshape(-1), out=buffer[:n_taps * n])
        gathered = gathered.view(n_taps, n, channels).mul_(taps.view(n_taps, 1, channels))
        return torch.sum(gathered, 0, out=out).add_(bias)
    gathered = buffer[:n]
    torch.index_select(table, 0, index_by_tap[0], out=gathered)
    torch.addcmul(bias, gathered, taps[0], out=out)
    for t in range(1, n_taps):
        torch.index_select(table, 0, index_by_tap[t], out=gathered)
        out.addcmul_(gathered, taps[t])
    return out


def _output(rows: torch.Tensor, like: torch.Tensor, shape: List[int]) -> torch.Tensor:
    """Rows (B*H*W, C) back to (B, C, H, W), in ``like``'s memory format."""
    out = rows.view(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2)
    if like.is_contiguous(memory_format=torch.channels_last):
        return out
    return out.contiguous()


def _attend_rows(se: nn.Module, rows: torch.Tensor, pos: torch.Tensor, shape: List[int],
                 like: torch.Tensor) -> torch.Tensor:
    """Run the slot attention densely on the kept rows scattered into zeros; rows back at ``pos``."""
    dense = rows.new_zeros(shape[0] * shape[2] * shape[3], shape[1])
    dense.index_copy_(0, pos, rows)
    attended = se(_output(dense, like, shape))
    return _rows(attended).index_select(0, pos)


def _plain_conv(conv: nn.Module, depthwise_ok: bool) -> bool:
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    return conv.groups == 1 or (depthwise_ok and conv.groups == conv.in_channels == conv.out_channels)


def _plain_norm(bn: nn.Module) -> bool:
    if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or bn.running_mean is None:
        return False
    drop = getattr(bn, "drop", None)
    return drop is None or isinstance(drop, nn.Identity)


def _identity(m: Optional[nn.Module]) -> bool:
    return m is None or isinstance(m, nn.Identity)


# ----------------------------------------------------------------------------- gated blocks


# How a gated block computes its branch in one forward (_Gated._route)
_DENSE_MASKED = 0          # dense, masked; autograd-safe (training, grad, TorchScript, export)
_DENSE_MASKED_NO_GRAD = 1  # dense, masked in place (inference, mask keeps too much for sparse)
_DENSE_ALL = 2             # the mask keeps every pixel: the plain block, no mask at all
_SPARSE = 3                # gather the kept pixels, compute them, scatter


# gated block -> (its children when checked, whether its sparse path supports them)
_SUPPORTED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


class _Gated:
    """Shared parts of the gated block classes (a mixin; the timm class supplies the rest, and
    :func:`gate_block` the ``gate``, a :class:`DSAGate`). No class annotations here: TorchScript
    types a module's attributes by the first ``__annotations__`` in its class's MRO, and a
    gated ResNet block has this mixin before the timm class."""

    # The routes again, as module constants: TorchScript reads no module-level globals
    __constants__ = ["DENSE_MASKED", "DENSE_MASKED_NO_GRAD", "DENSE_ALL", "SPARSE"]
    DENSE_MASKED = _DENSE_MASKED
    DENSE_MASKED_NO_GRAD = _DENSE_MASKED_NO_GRAD
    DENSE_ALL = _DENSE_ALL
    SPARSE = _SPARSE

    def _inference_only(self) -> bool:
        """Eval mode, no autograd, no tracing or export: the only state in which the block may
        take its sparse path or skip the mask."""
        if torch.jit.is_scripting():  # TorchScript runs the dense masked path, never compiles the sparse one
            return False
        return not (self.training or torch.is_grad_enabled() or torch.jit.is_tracing() or exporting())

    def _route(self, mask: torch.Tensor) -> int:
        """How this forward computes the branch (one of the ``DENSE_*`` / ``SPARSE`` constants).

        Outside inference (training, autograd, TorchScript, tracing, export) it is always
        ``DENSE_MASKED``, with no host sync. In inference it reads the gate's kept count (one
        sync): sparse when :meth:`sparse_pays`, else dense, and without any masking when every
        pixel is kept. All give the same output."""
        if torch.jit.is_scripting():  # TorchScript compiles no code below this line
            return self.DENSE_MASKED
        if not self._inference_only() or mask.is_meta or not self.gate.fast_routes:
            # a meta tensor (cost counting on the meta device) has no kept count to read
            return self.DENSE_MASKED
        kept = self.gate.kept_pixels()
        n_pixels = mask.numel()
        # the cheap count comparison first: a full mask (the overhead case) skips the module checks
        if self.gate.sparse and self.sparse_pays(kept, n_pixels) and self._sparse_supported_cached():
            route = self.SPARSE
        else:
            route = self.DENSE_ALL if kept == n_pixels else self.DENSE_MASKED_NO_GRAD
        self.gate.last_route = route
        return route

    # When the sparse path pays (sparse_pays), per block kind: it runs when at most
    # SPARSE_CROSSOVER of the output pixels are kept and the branch's widest map, dense, would
    # hold at least SPARSE_MIN_ELEMENTS values (batch x output pixels x widest branch width).
    # Measured (README, "DSA gate", "Which blocks run sparse"): the kept fraction at which the
    # sparse block's CPU time equals the dense block's, over resnet18/resnet50/mobilenetv2_100
    # stages at batch 1 and 32, rounded down; the size floor is where the sparse path's fixed
    # cost (some 40 small operations) stops dominating. Subclasses set both.
    SPARSE_CROSSOVER = 0.5
    SPARSE_MIN_ELEMENTS = 0

    def sparse_pays(self, kept: int, n_pixels: int) -> bool:
        """Whether the sparse path should run for a mask keeping ``kept`` of ``n_pixels`` output
        pixels (batch included): against ``gate.sparse_max_kept`` when it is set, else against
        this block kind's measured crossover and size floor."""
        limit = self.gate.sparse_max_kept
        if limit is not None:
            return kept <= limit * n_pixels
        return (kept <= self.SPARSE_CROSSOVER * n_pixels
                and n_pixels * self._branch_width() >= self.SPARSE_MIN_ELEMENTS)

    def _sparse_supported_cached(self) -> bool:
        """:meth:`_sparse_supported`, remembered for as long as the block's children are the same
        module objects (an AW-conv or any other module put in place of a conv is seen). Checking
        took ~17 us per block and forward (a dozen ``nn.Module`` attribute look-ups)."""
        children = tuple(self._modules.values())
        cached = _SUPPORTED.get(self)
        if cached is None or cached[0] != children:
            cached = (children, self._sparse_supported())
            _SUPPORTED[self] = cached
        return cached[1]

    def _branch_width(self) -> int:
        """Channels of the branch's widest map."""
        raise NotImplementedError

    def _sparse_supported(self) -> bool:
        raise NotImplementedError

    def branch_convs(self) -> List[str]:
        """Attribute names of the branch's convolutions, input to output."""
        raise NotImplementedError


class _GatedResNetBlock(_Gated):
    """The forward of a gated timm ResNet block, ``y = act(shortcut(x) + M * branch(x))``; first
    in its subclasses' bases, so that this forward, not the timm block's, runs. Subclasses supply
    the branch up to its last norm (dense, and sparse at the kept pixels) and the last activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        mask = self.gate(x, [shortcut.shape[-2], shortcut.shape[-1]])
        route = self._route(mask)
        if route == self.SPARSE:
            return self._forward_sparse(x, shortcut, mask)
        h = self._branch(x)
        if route == self.DENSE_ALL:
            # every pixel kept: the plain timm block (multiplying by an all-ones mask would cost
            # a pass over the branch output and, at batch 32, a fresh allocation of its size);
            # inference only, so the additions can be in place, as timm's own block does
            if self.se is not None:
                h = self.se(h)
            if self.drop_path is not None:
                h = self.drop_path(h)
            return self._last_act(h.add_(shortcut))
        m = mask.to(x.dtype)
        if route == self.DENSE_MASKED:
            h = h * m
            if self.se is not None:
                h = self.se(h) * m
            if self.drop_path is not None:
                h = self.drop_path(h)
            return self._last_act(h + shortcut)
        h = h.mul_(m)  # inference: in place, no temporaries of the branch's size
        if self.se is not None:
            h = self.se(h).mul_(m)
        if self.drop_path is not None:
            h = self.drop_path(h)
        return self._last_act(h.add_(shortcut))

    @torch.jit.unused
    def _forward_sparse(self, x, shortcut, mask):
        """The branch at the kept pixels ``pos``, added into the shortcut's rows there."""
        pos, table, nbrs = self._sparse_table(x, mask)
        shape = [x.shape[0], shortcut.shape[1], shortcut.shape[-2], shortcut.shape[-1]]
        out = _owned_rows(shortcut, x)  # the downsample's fresh output is written in place
        last_act = self._last_act_module()
        n = pos.numel()
        step = _chunk_rows(nbrs.shape[1] * table.shape[1] + 2 * shape[1])
        cols_buffer = table.new_empty(min(step, n) * nbrs.shape[1], table.shape[1])
        if self.se is None and _idempotent(last_act):
            # fused: per chunk, the branch is added into the shortcut's rows (index_add_: half the
            # time of gathering the rows and copying them back); the activation then runs over the
            # whole map in place (a second application at kept rows changes nothing)
            branch_buffer = table.new_empty(min(step, n), shape[1])
            for s in range(0, n, step):
                e = min(s + step, n)
                out.index_add_(0, pos[s:e], self._branch_into(branch_buffer[:e - s], table, nbrs[s:e], cols_buffer))
            return _output(_act_(out, last_act), x, shape)
        branch = table.new_empty(n, shape[1])
        for s in range(0, n, step):
            e = min(s + step, n)
            self._branch_into(branch[s:e], table, nbrs[s:e], cols_buffer)
        if self.se is not None:
            branch = _attend_rows(self.se, branch, pos, shape, x)
        kept = out.index_select(0, pos).add_(branch)
        out = _act_(out, last_act)
        out.index_copy_(0, pos, _act_(kept, last_act))
        return _output(out, x, shape)

    def _sparse_table(self, x: torch.Tensor, mask: torch.Tensor):
        """(kept pixels of ``mask``, the packed table the branch's last k x k conv reads, its
        neighbourhoods (N, kh*kw) in that table)."""
        raise NotImplementedError

    def _branch_into(self, out: torch.Tensor, table: torch.Tensor, nbrs: torch.Tensor,
                     cols_buffer: torch.Tensor) -> torch.Tensor:
        """The branch (up to its last norm) at the n pixels whose neighbourhoods are ``nbrs``,
        written into ``out`` (n, C_out) and returned."""
        raise NotImplementedError

    def _last_act_module(self) -> nn.Module:
        raise NotImplementedError

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _last_act(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GatedBasicBlock(_GatedResNetBlock, BasicBlock):
    """timm ResNet BasicBlock with ``y = act(shortcut(x) + M * branch(x))``."""

    SPARSE_CROSSOVER = 0.4
    SPARSE_MIN_ELEMENTS = 0

    def _branch_width(self) -> int:
        return max(self.conv1.out_channels, self.conv2.out_channels)

    def branch_convs(self) -> List[str]:
        return ["conv1", "conv2"]

    def _sparse_supported(self) -> bool:
        return (_plain_conv(self.conv1, False) and _plain_conv(self.conv2, False)
                and _plain_norm(self.bn1) and _plain_norm(self.bn2)
                and _identity(self.aa) and _identity(self.drop_block))

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.drop_block(self.bn1(self.conv1(x))))
        return self.bn2(self.conv2(self.aa(h)))

    def _last_act(self, h: torch.Tensor) -> torch.Tensor:
        return self.act2(h)

    def _last_act_module(self) -> nn.Module:
        return self.act2

    @torch.jit.unused
    def _sparse_table(self, x, mask):
        """conv2 reads conv1's output where its kept pixels' neighbourhoods reach; conv1 reads the
        block input where those reach in turn (packed too: it has the zero row)."""
        b, _, hi, wi = x.shape
        ho, wo = mask.shape[-2:]
        pos = mask.view(-1).nonzero().squeeze(1)
        nbrs2 = _neighbours(pos, b, [ho, wo], [ho, wo], self.conv2)
        need1, packed2 = _needed_packed(nbrs2, b * ho * wo)
        nbrs1 = _neighbours(need1, b, [ho, wo], [hi, wi], self.conv1)
        need0, packed1 = _needed_packed(nbrs1, b * hi * wi)
        x_table = _table(need0.numel(), x.shape[1], x)
        torch.index_select(_rows(x), 0, need0, out=x_table[:need0.numel()])
        w1, b1 = _folded(self.conv1, self.bn1)
        h1 = _table(need1.numel(), w1.shape[1], x)
        _conv_into(h1, x_table, packed1, w1, b1, self.act1)
        return pos, h1, packed2

    @torch.jit.unused
    def _branch_into(self, out, table, nbrs, cols_buffer):
        w2, b2 = _folded(self.conv2, self.bn2)
        n = nbrs.shape[0]
        cols = torch.index_select(table, 0, nbrs.reshape(-1), out=cols_buffer[:nbrs.numel()])
        return torch.addmm(b2, cols.view(n, -1), w2, out=out)


class GatedBottleneck(_GatedResNetBlock, Bottleneck):
    """timm ResNet Bottleneck with ``y = act(shortcut(x) + M * branch(x))``."""

    SPARSE_CROSSOVER = 0.55
    SPARSE_MIN_ELEMENTS = 0

    def _branch_width(self) -> int:
        return self.conv3.out_channels

    def branch_convs(self) -> List[str]:
        return ["conv1", "conv2", "conv3"]

    def _sparse_supported(self) -> bool:
        return (all(_plain_conv(c, False) for c in (self.conv1, self.conv2, self.conv3))
                and self.conv1.kernel_size == (1, 1) and self.conv1.stride == (1, 1)
                and self.conv3.kernel_size == (1, 1) and self.conv3.stride == (1, 1)
                and all(_plain_norm(n) for n in (self.bn1, self.bn2, self.bn3))
                and _identity(self.aa) and _identity(self.drop_block))

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(h)))))
        return self.bn3(self.conv3(h))

    def _last_act(self, h: torch.Tensor) -> torch.Tensor:
        return self.act3(h)

    def _last_act_module(self) -> nn.Module:
        return self.act3

    @torch.jit.unused
    def _sparse_table(self, x, mask):
        """conv2 (k x k, maybe strided) reads conv1's (1x1) output where its kept pixels'
        neighbourhoods reach; conv1 is computed there, straight from the block input's rows."""
        b, _, hi, wi = x.shape
        pos = mask.view(-1).nonzero().squeeze(1)
        nbrs2 = _neighbours(pos, b, [mask.shape[-2], mask.shape[-1]], [hi, wi], self.conv2)
        need1, packed2 = _needed_packed(nbrs2, b * hi * wi)
        w1, b1 = _folded(self.conv1, self.bn1)
        h1 = _table(need1.numel(), w1.shape[1], x)
        _conv_into(h1, _rows(x), need1, w1, b1, self.act1)
        return pos, h1, packed2

    @torch.jit.unused
    def _branch_into(self, out, table, nbrs, cols_buffer):
        w2, b2 = _folded(self.conv2, self.bn2)
        w3, b3 = _folded(self.conv3, self.bn3)
        n = nbrs.shape[0]
        cols = torch.index_select(table, 0, nbrs.reshape(-1), out=cols_buffer[:nbrs.numel()])
        h2 = _act_(torch.addmm(b2, cols.view(n, -1), w2), self.act2)
        return torch.addmm(b3, h2, w3, out=out)


class GatedInvertedResidual(InvertedResidual, _Gated):
    """timm InvertedResidual (with a skip) with ``y = x + M * branch(x)``."""

    SPARSE_CROSSOVER = 0.4
    # was 2^20 (no batch-1 mobilenetv2_100 block ran sparse); since the cached neighbour tables
    # and the all-tap depthwise gather, every one of them runs faster sparse than dense masked
    # at keep 0.3, down to 7x7 x 960 = 47,040 values (README, "Which blocks run sparse"); smaller
    # maps were not measured and stay dense
    SPARSE_MIN_ELEMENTS = 1 << 15

    def _branch_width(self) -> int:
        return self.conv_pw.out_channels

    def branch_convs(self) -> List[str]:
        return ["conv_pw", "conv_dw", "conv_pwl"]

    def _sparse_supported(self) -> bool:
        return (_plain_conv(self.conv_pw, False) and _plain_conv(self.conv_dw, True)
                and _plain_conv(self.conv_pwl, False)
                and self.conv_pw.kernel_size == (1, 1) and self.conv_pwl.kernel_size == (1, 1)
                and self.conv_dw.stride == (1, 1)
                and all(_plain_norm(n) for n in (self.bn1, self.bn2, self.bn3))
                and _identity(self.aa))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.gate(x, [x.shape[-2], x.shape[-1]])
        route = self._route(mask)
        if route == self.SPARSE:
            return self._forward_sparse(x, mask)
        h = self.aa(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x)))))
        if route == self.DENSE_ALL:  # every pixel kept: the plain block (see _GatedResNetBlock)
            if not isinstance(self.se, nn.Identity):
                h = self.se(h)
            # out of place, as timm's block: the 1x1 projection can come out in a memory format
            # other than x's, and an in-place add across formats ran 4x slower in profiles
            return self.drop_path(self.bn3(self.conv_pwl(h))) + x
        m = mask.to(x.dtype)
        if not isinstance(self.se, nn.Identity):
            h = self.se(h * m)
        if route == self.DENSE_MASKED:
            h = self.bn3(self.conv_pwl(h)) * m
            return self.drop_path(h) + x
        return self.drop_path(self.bn3(self.conv_pwl(h)).mul_(m)) + x  # inference: mask in place

    @torch.jit.unused
    def _forward_sparse(self, x, mask):
        """conv_dw and conv_pwl at the kept pixels ``pos``, conv_pw where conv_dw's neighbourhoods
        reach; per chunk of kept pixels, the depthwise output feeds conv_pwl from cache and is
        added into the input's rows there."""
        b, c, hi, wi = x.shape
        pos = mask.view(-1).nonzero().squeeze(1)
        need1, packed = _needed_packed(_neighbours(pos, b, [hi, wi], [hi, wi], self.conv_dw), b * hi * wi)
        x_rows = _rows(x)
        w_pw, b_pw = _folded(self.conv_pw, self.bn1)
        h1 = _table(need1.numel(), w_pw.shape[1], x)
        _conv_into(h1, x_rows, need1, w_pw, b_pw, getattr(self.bn1, "act", None))
        nbrs = packed.t().contiguous()  # (kh*kw, N): one index row per tap
        taps, b_dw = _folded(self.conv_dw, self.bn2)
        w_pwl, b_pwl = _folded(self.conv_pwl, self.bn3)
        act2, act3 = getattr(self.bn2, "act", None), getattr(self.bn3, "act", None)
        out = _owned_rows(x, x)
        n, mid = pos.numel(), h1.shape[1]
        step = _chunk_rows(2 * mid + 2 * c)  # a tap's gathered slice, the depthwise output, shortcut rows
        tap_buffer = h1.new_empty(_depthwise_buffer_rows(nbrs.shape[0], min(step, n), mid), mid)
        if isinstance(self.se, nn.Identity) and _identity(act3):
            h2_buffer = h1.new_empty(min(step, n), mid)
            h3_buffer = h1.new_empty(min(step, n), c)
            for s in range(0, n, step):
                e = min(s + step, n)
                h2 = _act_(_depthwise(h1, nbrs[:, s:e], taps, b_dw, tap_buffer, h2_buffer[:e - s]), act2)
                out.index_add_(0, pos[s:e], torch.addmm(b_pwl, h2, w_pwl, out=h3_buffer[:e - s]))
            return _output(out, x, [b, c, hi, wi])
        h2 = h1.new_empty(n, mid)
        for s in range(0, n, step):
            e = min(s + step, n)
            _act_into(_depthwise(h1, nbrs[:, s:e], taps, b_dw, tap_buffer, h2[s:e]), act2)
        if not isinstance(self.se, nn.Identity):
            h2 = _attend_rows(self.se, h2, pos, [b, mid, hi, wi], x)
        h3 = _act_(torch.addmm(b_pwl, h2, w_pwl), act3)
        out.index_add_(0, pos, h3)
        return _output(out, x, [b, c, hi, wi])


_GATED = {BasicBlock: GatedBasicBlock, Bottleneck: GatedBottleneck, InvertedResidual: GatedInvertedResidual}


def why_not_gateable(block: nn.Module) -> Optional[str]:
    """None if :func:`gate_block` can gate ``block``, else the reason (one sentence)."""
    if isinstance(block, tuple(_GATED.values())):
        return "the block already has a gate"
    kind = type(block)
    if kind not in _GATED:
        return (f"a {kind.__name__} is not gateable: the DSA gate wraps timm ResNet BasicBlock/"
                f"Bottleneck and InvertedResidual blocks")
    if kind is InvertedResidual:
        if not block.has_skip:
            return ("this InvertedResidual has no skip connection (it changes resolution or "
                    "width), so pruned pixels would be zeroed instead of passing through")
        if block.conv_s2d is not None:
            return "an InvertedResidual with space-to-depth (s2d) is not gateable"
    return None


def gate_block(block: nn.Module, **gate_kwargs) -> nn.Module:
    """Gate a timm residual block in place: ``y = shortcut(x) + M * branch(x)``; returns it.

    The block's class becomes its gated subclass (``BasicBlock`` -> :class:`GatedBasicBlock`,
    ...) and it gains a ``gate`` child (:class:`DSAGate`, built from ``gate_kwargs``). Why a
    class swap rather than a wrapper module: a wrapper would move every submodule one level
    down (``layer1.0.conv1`` -> ``layer1.0.block.conv1``), changing state-dict keys, the module
    paths the cost model attributes to and every lookup by block name; the subclass keeps all
    of them and ``isinstance(block, BasicBlock)`` stays true.

    Raises ValueError with :func:`why_not_gateable`'s reason.
    """
    reason = why_not_gateable(block)
    if reason is not None:
        raise ValueError(reason)
    gate = DSAGate(_in_channels(block), **gate_kwargs)
    block.__class__ = _GATED[type(block)]
    block.gate = gate
    return block


def _in_channels(block: nn.Module) -> int:
    conv = block.conv1 if hasattr(block, "conv1") else block.conv_pw
    return conv.in_channels


def is_gated(module: nn.Module) -> bool:
    return isinstance(module, _Gated)


def set_sparse(model: nn.Module, sparse: bool) -> int:
    """Turn the sparse eval path of every gate in ``model`` on or off; returns how many gates."""
    n = 0
    for m in model.modules():
        if isinstance(m, DSAGate):
            m.sparse = bool(sparse)
            n += 1
    return n


def _needed_input_mask(mask: torch.Tensor, conv: nn.Conv2d, in_hw: Tuple[int, int]) -> torch.Tensor:
    """Input pixels (B, 1, H_in, W_in) a conv reads to produce the output pixels in ``mask``."""
    kh, kw = _pair(conv.kernel_size)
    sh, sw = _pair(conv.stride)
    if (kh, kw, sh, sw) == (1, 1, 1, 1):
        return mask
    ph, pw = _pair(conv.padding) if not isinstance(conv.padding, str) else ((kh - 1) // 2, (kw - 1) // 2)
    dh, dw = _pair(conv.dilation)
    ho, wo = mask.shape[-2:]
    op_h = in_hw[0] - ((ho - 1) * sh - 2 * ph + dh * (kh - 1) + 1)
    op_w = in_hw[1] - ((wo - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
    ones = torch.ones(1, 1, kh, kw)
    hit = F.conv_transpose2d(mask.float().cpu(), ones, stride=(sh, sw), padding=(ph, pw),
                             output_padding=(op_h, op_w), dilation=(dh, dw))
    return hit > 0


def branch_fractions(block: nn.Module, mask: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Fraction of its output pixels each branch conv of a gated block must compute.

    Walking back from the last conv (computed at the mask ``M``), each earlier conv is needed
    at the input pixels the next one reads: ``M`` dilated by the next conv's kernel (and
    mapped through its stride), as DynConv dilates its masks. ``mask`` defaults to the
    gate's mask of the last forward. Keys are the conv attribute names (``conv1``, ...).
    """
    if not is_gated(block):
        raise ValueError(f"branch_fractions needs a gated block, got {type(block).__name__}")
    mask = block.gate.last_mask if mask is None else mask
    if mask is None:
        raise ValueError("the gate has not run yet: pass a mask or run a forward first")
    names = block.branch_convs()
    fractions: Dict[str, float] = {}
    need = mask.bool()
    for i in range(len(names) - 1, -1, -1):
        fractions[names[i]] = int(need.sum()) / need.numel()
        if i > 0:
            conv = getattr(block, names[i])
            # a strided conv of these blocks reads a map at the block input's resolution;
            # a stride-1 conv keeps the grid
            in_hw = block.gate.last_in_size if _pair(conv.stride) != (1, 1) else tuple(need.shape[-2:])
            need = _needed_input_mask(need, conv, in_hw)
    return {name: fractions[name] for name in names}

