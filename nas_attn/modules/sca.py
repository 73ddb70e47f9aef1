"""SCA: Spatial Channel Attention, cross-dimensional gating without channel reduction.

Paper: T. Liu et al., "Spatial Channel Attention for Deep Convolutional Neural Networks",
Mathematics 10(10):1750, 2022, doi:10.3390/math10101750.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._common import BatchNorm2dAnySize, check_values, int_spec, plain_path, reject_unknown

# Planes whose short side has at most ``_ONE_BLOCK_ROWS`` rows run the banded conv in one block;
# taller ones are cut into the fewest blocks of at most ``_BAND_ROWS`` output rows, evened out
# (56 rows: 4 blocks of 14), each with its k - 1 halo rows, so the band's zeros stay a bounded
# multiple of the kernel. Measured, batch 8, one thread, forward + backward of a 7 x 7 plane
# conv, medians of 21 interleaved rounds under load: 56 x 256 plane 9.8 ms in blocks of 16,
# 8.1 in blocks of 14; 28 x 512 9.3 in blocks of 16, 7.7 in blocks of 14, 5.7 in one block;
# 56 x 56 2.5 -> 2.3 (16 -> 14). (An earlier measurement: 56 x 256 7.2 ms in one block.)
_ONE_BLOCK_ROWS = 28
_BAND_ROWS = 16


def _banded_weight(weight: torch.Tensor, rows_out: int, rows_in: int, offset: int) -> torch.Tensor:
    """A (1, 2, k, k) kernel as a (rows_out, 2 * rows_in, k) conv1d weight over the long side.

    Output row r reads input row s through kernel row ``s - r + offset`` (zero outside
    [0, k)): the 2-D conv over (rows, columns) becomes a 1-D conv over the columns whose
    channels are the (map, row) pairs, a banded matrix in the row direction.
    """
    k = weight.shape[-1]
    r = torch.arange(rows_out, device=weight.device).view(rows_out, 1)
    s = torch.arange(rows_in, device=weight.device).view(1, rows_in)
    kernel_row = s - r + offset
    inside = (kernel_row >= 0) & (kernel_row < k)
    band = weight[0][:, kernel_row.clamp(0, k - 1), :]  # (2, rows_out, rows_in, k)
    band = band * inside.view(1, rows_out, rows_in, 1).to(band.dtype)
    return band.permute(1, 0, 2, 3).reshape(rows_out, 2 * rows_in, k)


def _conv_along_columns(columns: torch.Tensor, band: torch.Tensor, pad: int) -> torch.Tensor:
    """1-D conv along Q of ``columns`` (N, Q, C_in), each column's channels contiguous, with the
    (C_out, C_in, k) ``band``: (N, C_out, Q). Run as a channels-last 2-D conv over a height of 1,
    which reads that layout as it is (see :func:`_banded_conv` for why channels-last)."""
    out = F.conv2d(columns.transpose(1, 2).unsqueeze(2),
                   band.unsqueeze(2).contiguous(memory_format=torch.channels_last), padding=(0, pad))
    return out.squeeze(2)


def _banded_conv(avg: torch.Tensor, peak: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(stack((avg, peak), 1), weight, padding=k // 2)`` for avg, peak (B, P, Q), weight (1, 2, k, k), odd k.

    The same sums as the 2-D conv, taken as a 1-D conv along Q with 2P input and P output
    channels (P in blocks of at most ``_BAND_ROWS`` when taller than ``_ONE_BLOCK_ROWS``).
    oneDNN runs a 2 -> 1 channel conv as a matrix-vector product and its input gradient as a
    transposed conv; this form gives it real matrix products. Measured, batch 8, one thread,
    forward + backward of a 7 x 7 conv: 7 x 2048 plane 31 ms as conv2d, 2.1 ms banded;
    14 x 1024 31 -> 2.7; 28 x 512 32 -> 4.2; 56 x 56 7.1 -> 1.3. The band holds zeros (it
    runs window / k times the kernel's multiply-adds: 2.9x in blocks of 14 rows, 4x in one
    block of 28): the cost model counts the 2-D conv's k x k multiply-adds, which the no-grad
    and exported forwards run.

    The 1-D conv runs channels-last (its input laid out column by column, the (map, row)
    channels contiguous; stacking the two maps writes that layout directly): oneDNN's
    channels-last kernels took 0.53-0.78x the time of the channels-first ones for these
    shapes (batch 8, one thread, forward + backward: 14 -> 7 channels over 2048 columns 2.7 ->
    2.1 ms, 28 -> 14 over 1024 3.3 -> 2.2, blocks of 40 -> 14 over 256 6.1 -> 3.2). The output
    comes out column-major (B, 1, P, Q) with the rows contiguous.
    """
    b, rows, cols = avg.shape
    k = weight.shape[-1]
    pad = k // 2
    # (B, Q, 2, P): for each column, the two maps' rows, contiguous
    columns = torch.stack((avg.transpose(1, 2), peak.transpose(1, 2)), dim=2)
    if rows <= _ONE_BLOCK_ROWS:
        band = _banded_weight(weight, rows, rows, pad)
        return _conv_along_columns(columns.view(b, cols, 2 * rows), band, pad).unsqueeze(1)
    blocks = -(-rows // _BAND_ROWS)
    block_rows = -(-rows // blocks)
    window = block_rows + 2 * pad
    padded = F.pad(columns, (pad, blocks * block_rows - rows + pad))
    # (B, Q, 2, blocks, window) -> (B * blocks, Q, 2 * window): each block with its halo rows
    windows = padded.unfold(3, window, block_rows).permute(0, 3, 1, 2, 4).reshape(b * blocks, cols, 2 * window)
    band = _banded_weight(weight, block_rows, window, 0)
    out = _conv_along_columns(windows, band, pad).view(b, blocks, block_rows, cols).reshape(b, blocks * block_rows, cols)
    return out[:, :rows].unsqueeze(1)


# Widths from which the arg-max over W of a contiguous (NCHW) x goes through a transposed copy
# (see :func:`_max_with_index`). Measured, batch 8, one thread: 256x56x56 9.5 -> 8.3 ms,
# 512x28x28 6.3 -> 3.1, 1024x14x14 3.8 -> 2.4, but 2048x7x7 2.4 -> 3.0.
_TRANSPOSE_MAX_W_FROM = 14


def _max_with_index(x: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x.max(dim)`` for x (B, C, H, W) and dim 1, 2 or 3: values and arg-max indices along dim.

    Same values and the same (first) arg-max as ``torch.max``, faster: torch's arg-max
    reduction runs one position at a time, while max pooling over a tensor whose unit-stride
    dimension is not the pooled one runs vectorised along that unit-stride dimension. So
    each reduction is laid out (as a view, no copy) for the pooling kernel: for NCHW, the max
    over H and over C as a 1-D pool along a strided dimension; for channels-last, the max over
    H and over W as a 2-D pool with C the unit-stride dimension (its flat plane index is
    turned back into a row or column index). The max over the unit-stride dimension itself
    (W in NCHW, C in channels-last) has nothing to vectorise over: from ``W >= 14`` it runs on
    a transposed copy of x (one extra pass, still faster), otherwise through ``torch.max``.
    Measured, batch 8, one thread, ms, torch.max -> this: over H 10.5 -> 1.7 at 256x56x56,
    5.9 -> 1.1 at 512x28x28, 3.9 -> 1.7 at 1024x14x14, 2.7 -> 2.3 at 2048x7x7; over C
    6.8 -> 3.3, 3.4 -> 0.6, 2.7 -> 0.6, 1.1 -> 0.3; channels-last, over H 28.7 -> 4.5 and over W
    16.2 -> 2.2 at 256x56x56.
    """
    b, c, h, w = x.shape
    if x.is_contiguous():
        if dim == 2:
            values, index = F.max_pool1d_with_indices(x.reshape(b * c, h, w).transpose(1, 2), h)
            return values.reshape(b, c, w), index.reshape(b, c, w)
        if dim == 1:
            values, index = F.max_pool1d_with_indices(x.reshape(b, c, h * w).transpose(1, 2), c)
            return values.reshape(b, h, w), index.reshape(b, h, w)
        if w >= _TRANSPOSE_MAX_W_FROM:
            rows = x.transpose(2, 3).contiguous().reshape(b * c, w, h).transpose(1, 2)  # (B*C, H, W), H unit stride
            values, index = F.max_pool1d_with_indices(rows, w)
            return values.reshape(b, c, h), index.reshape(b, c, h)
    elif x.is_contiguous(memory_format=torch.channels_last) and dim in (2, 3):
        window = (h, 1) if dim == 2 else (1, w)
        values, flat = F.max_pool2d_with_indices(x, window)  # flat index h * W + w in the plane
        values, flat = values.squeeze(dim), flat.squeeze(dim)
        return values, (flat // w if dim == 2 else flat % w)
    return x.max(dim=dim)


def _max_values(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.amax(dim)`` for x (B, C, H, W), through the same pooling layouts as :func:`_max_with_index`."""
    b, c, h, w = x.shape
    if x.is_contiguous():
        if dim == 2:
            return F.max_pool1d(x.reshape(b * c, h, w).transpose(1, 2), h).reshape(b, c, w)
        if dim == 1:
            return F.max_pool1d(x.reshape(b, c, h * w).transpose(1, 2), c).reshape(b, h, w)
    elif x.is_contiguous(memory_format=torch.channels_last) and dim in (2, 3):
        return F.max_pool2d(x, (h, 1) if dim == 2 else (1, w)).squeeze(dim)
    return x.amax(dim=dim)


class PlaneGate(nn.Module):
    """Sigmoid gate over a 2-D plane of two pooled maps: [avg; max] -> k x k conv 2->1 -> BN -> sigmoid.

    Parameters: 2*k*k conv weights + 2 BN affine, whatever the plane's size.
    """

    def __init__(self, kernel_size: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, **dd)
        self.bn = BatchNorm2dAnySize(1, **dd)

    def forward(self, avg: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        """avg, peak: (B, P, Q) pooled maps -> gate (B, 1, P, Q) in (0, 1)."""
        if torch.jit.is_scripting():
            return torch.sigmoid(self.bn(self.conv(torch.stack((avg, peak), dim=1))))
        return self._forward_eager(avg, peak)

    @torch.jit.unused
    def _forward_eager(self, avg: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        """With autograd on, the conv runs as :func:`_banded_conv` over the plane's short side.

        Without autograd, and while exporting or compiling, the 2-D conv itself runs: what
        export writes and what the cost model counts.

        A plane taller than wide (the (C, W) plane at 2048 x 7) is transposed, with the
        kernel, so the short side is the banded one; BN (one channel) and the sigmoid do not
        care about the orientation, so they run before transposing back.
        """
        if not torch.is_grad_enabled() or plain_path():
            return torch.sigmoid(self.bn(self.conv(torch.stack((avg, peak), dim=1))))
        weight = self.conv.weight
        flip = avg.shape[-2] > avg.shape[-1]
        if flip:
            avg, peak, weight = avg.transpose(-1, -2), peak.transpose(-1, -2), weight.transpose(-1, -2)
        gate = torch.sigmoid(self.bn(_banded_conv(avg, peak, weight)))
        return gate.transpose(-1, -2) if flip else gate


def _gate_product(x: torch.Tensor, g_cw: torch.Tensor, g_ch: torch.Tensor, g_hw: torch.Tensor) -> torch.Tensor:
    """``x * (g_cw + g_ch + g_hw) / 3`` in one full-size buffer (x's memory format), three passes.

    The 1/3 goes on the small gates; the broadcast gate sum is built in the output buffer and
    multiplied by x in place, so no full-size intermediate is allocated.
    """
    third = 1.0 / 3.0
    out = torch.empty_like(x)
    torch.add(g_cw * third, g_ch * third, out=out)
    out.add_(g_hw * third)
    return out.mul_(x)


class _SCAFunction(torch.autograd.Function):
    """The whole SCA module as one autograd node whose backward writes dx into one buffer.

    Forward: the six poolings of x (mean and arg-max over H, W and C), the three plane gates
    (small tensors, recorded by autograd inside this node so their backward, BN included, is
    autograd's own), then :func:`_gate_product`. Saved: x, the three arg-max index maps and the
    gates' small graph; no full-size tensor is made besides the output.

    Backward, with dy the output gradient and one full-size buffer ``buf``:
    1. ``buf = dy * x``; its sums over H, W and C (over 3) are the gates' gradients;
    2. autograd's backward of the gates' graph gives the pooled maps' and parameters' gradients;
    3. ``buf`` is rewritten in place as dx: the gate sum G/3 (two passes), ``dy * G/3 + mean_H
       gradient`` (one addcmul pass), the W- and C-mean gradients broadcast-added (two passes), and
       the three max gradients scatter-added at their arg-max (B*C*W, B*C*H and B*H*W elements).
    The two-node version this replaces kept a full-size gate sum from forward to backward,
    allocated a full-size gradient in each node, and autograd added the two.

    Ties: the max gradient goes to one arg-max position (as max_pool2d does) instead of being
    split evenly among tied positions (as amax does). Both are valid subgradients; they differ
    only where several positions hold exactly the maximum, which after ReLU/ReLU6 are clipped
    values (0 or 6) whose upstream activation gradient is zero anyway.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: "SCA", *params: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        mean_h, mean_w, mean_c = x.mean(dim=2), x.mean(dim=3), x.mean(dim=1)
        max_h, idx_h = _max_with_index(x, 2)
        max_w, idx_w = _max_with_index(x, 3)
        max_c, idx_c = _max_with_index(x, 1)
        pooled = [p.requires_grad_() for p in (mean_h, max_h, mean_w, max_w, mean_c, max_c)]
        with torch.enable_grad():
            gates = module._gates(pooled, b, c, h, w)
        ctx.save_for_backward(x, idx_h, idx_w, idx_c)
        ctx.gate_graph = (pooled, gates, params)
        return _gate_product(x, *(g.detach() for g in gates))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, idx_h, idx_w, idx_c = ctx.saved_tensors
        pooled, gates, params = ctx.gate_graph
        b, c, h, w = x.shape
        third = 1.0 / 3.0
        need_x = ctx.needs_input_grad[0]
        trained = [p for p in params if p.requires_grad]
        buf = torch.empty_like(x)
        torch.mul(grad, x, out=buf)
        gate_grads = (buf.sum(dim=2, keepdim=True).mul_(third), buf.sum(dim=3, keepdim=True).mul_(third),
                      buf.sum(dim=1, keepdim=True).mul_(third))
        # retain_graph: the small gate graph lives as long as this node, so a caller that keeps
        # the outer graph (retain_graph=True) can run this backward again.
        grads = torch.autograd.grad(gates, (pooled if need_x else []) + trained, gate_grads,
                                    retain_graph=True)
        param_grads = iter(grads[6:] if need_x else grads)
        grad_params = tuple(next(param_grads) if p.requires_grad else None for p in params)
        if not need_x:
            return (None, None) + grad_params
        g_mean_h, g_max_h, g_mean_w, g_max_w, g_mean_c, g_max_c = grads[:6]
        g_cw, g_ch, g_hw = (g.detach() for g in gates)
        dx = buf  # its dy * x has been reduced: reuse it for dx
        torch.add(g_cw * third, g_ch * third, out=dx)
        dx.add_(g_hw * third)
        torch.addcmul((g_mean_h / h).unsqueeze(2), grad, dx, out=dx)
        dx.add_((g_mean_w / w).unsqueeze(3))
        dx.add_((g_mean_c / c).unsqueeze(1))
        dx.scatter_add_(2, idx_h.unsqueeze(2), g_max_h.unsqueeze(2))
        dx.scatter_add_(3, idx_w.unsqueeze(3), g_max_w.unsqueeze(3))
        dx.scatter_add_(1, idx_c.unsqueeze(1), g_max_c.unsqueeze(1))
        return (dx, None) + grad_params


class SCA(nn.Module):
    """Spatial Channel Attention: three parallel gates over the pairs (C,W), (C,H), (H,W).

    Stated by the paper's abstract (the method section is not available to us): captures
    cross-dimensional interaction between the spatial and channel dimensions; no
    dimensionality reduction (no reduction ratio, no bottleneck MLP); negligible overhead;
    lightweight, drops into any CNN.

    Reconstruction (ours): three parallel branches, each gating ``x`` over one pair of
    dimensions. The (C, W) branch pools over H, the (C, H) branch pools over W, the (H, W)
    branch pools over C; each pools with average and max to two maps, runs a k x k conv
    2->1 with BN and a sigmoid, and multiplies ``x`` by the gate broadcast over the pooled
    dimension. The output is the mean of the three gated copies. Parameters:
    3 x (2*k*k + 2) = 300 for k = 7, independent of the channel count: no layer has width
    C/r.

    Implementation (same function as the plain autograd expression, cheaper). Why: the
    paper promises negligible overhead, yet the plain expression added +72% to a resnet50
    training step and a first fused version (pooling and gate product as two autograd nodes)
    still +35.4% against CBAM's +26.5% (BENCHMARKS.md). Profiled per module at resnet50's slot
    shapes (batch 8, one thread): the time went into the three 2->1 plane convs (about 10 ms
    each for the (C, W) and (C, H) planes at every stage, forward + backward: oneDNN runs a
    2 -> 1 conv as a matrix-vector product), into full-size buffers (each new one costs page
    faults, not just a pass) and into the arg-max poolings. What changed:

    - training runs the whole module as one autograd node (:class:`_SCAFunction`): one
      full-size buffer in the backward is first dy * x (reduced to the gate gradients), then
      rewritten in place as dx; nothing full-size is kept from forward to backward but x;
    - the plane convs run as banded 1-D convs over the plane's long side
      (:func:`_banded_conv`): the three gates' forward + backward went from 27 to 13 ms at
      256x56x56, 23 to 8 at 1024x14x14, 21 to 6.4 at 2048x7x7 (batch 8, one thread);
    - the arg-max poolings run as max pooling laid out to vectorise (:func:`_max_with_index`,
      the same values and indices as ``torch.max``, which reduces one position at a time);
    - without autograd (``torch.no_grad``, the cost model) the poolings need no index maps
      (:func:`_max_values`) and the gates run the plain 2-D conv; under TorchScript, export and
      ``torch.compile`` the plain expression (:meth:`forward_reference`) runs.

    Full-size buffers follow x's memory format (channels-last stays channels-last). Outputs
    and all gradients equal the plain expression's within 1e-5 relative (tested against it);
    where several positions tie for a max, its gradient goes to one of them instead of being
    split (see :class:`_SCAFunction`). Measured forward + backward side by side in one process
    (``scripts/bench_sca.py``, CPU time, one thread, batch 8, under load): 0.66-0.89x the
    previous version per stage shape, 0.80x summed over resnet50's 16 blocks; against CBAM
    that sum went from 1.31x to 1.05x (medians). The arg-max poolings then were the largest
    single cost (``torch.max`` with indices, 2-8x slower than ``amax``). Then, each measured
    side by side with the version before it (summed over the 16 blocks, medians): the
    vectorised poolings 0.82x; the band in one block up to 28 rows and evened-out blocks
    above 0.96x; the band conv channels-last 0.93x. Together, against the single-node version
    (CPU time, one thread, batch 8, 9 interleaved rounds, load 12-14): 0.79x on medians, 0.77x
    on minima (0.76-0.83x per stage shape); against CBAM the 16-block sum went from 1.07x to
    0.84x on medians and from 1.19x to 0.92x on minima. CBAM stays cheaper per block at
    512x28x28 and deeper (1.04x, 1.40x, 1.54x there), SCA much cheaper at 256x56x56 (0.52x);
    what is left at the deep stages is mostly the two C-planes' banded convs, which run close
    to what oneDNN gives for their shapes.
    ``torch.compile`` of the poolings was measured and not used: 50.6 s for the first compile in
    a fresh process (every Ray trial worker would pay it), slower than eager at 1024x14x14.

    Args:
        channels: number of input channels C (the parameter count does not depend on it).
        kernel_size: side of each branch's square conv, odd int >= 1, in pixels (channels
            for the two branches whose plane contains C).
        device, dtype: where and in what dtype the parameters and buffers are made (timm's
            factory keywords, passed to every submodule).
        **kwargs: timm pass-through keywords (act_layer, rd_ratio, ...) are accepted and
            ignored; anything else raises ``UnknownArgumentError``.
    """

    HYPERPARAMETERS = {
        "kernel_size": int_spec(7, 1, None, odd=True, doc="branch conv size (pixels/channels)"),
    }

    def __init__(self, channels: int, kernel_size: int = 7, device=None, dtype=None, **kwargs):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        reject_unknown("SCA", kwargs, self.HYPERPARAMETERS)
        check_values("SCA", self.HYPERPARAMETERS, dict(kernel_size=kernel_size))
        self.channels = channels
        self.kernel_size = int(kernel_size)
        self.gate_cw = PlaneGate(self.kernel_size, **dd)
        self.gate_ch = PlaneGate(self.kernel_size, **dd)
        self.gate_hw = PlaneGate(self.kernel_size, **dd)

    def _gates(self, pooled: List[torch.Tensor], b: int, c: int, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # (B, 1, C, W) and (B, 1, C, H) hold the same elements as (B, C, 1, W) / (B, C, H, 1);
        # reshape, since a transposed plane's gate is not contiguous.
        g_cw = self.gate_cw(pooled[0], pooled[1]).reshape(b, c, 1, w)
        g_ch = self.gate_ch(pooled[2], pooled[3]).reshape(b, c, h, 1)
        # contiguous: the banded conv leaves the (H, W) gate column-major, and the full-size
        # passes that broadcast it over C vectorise along its unit-stride W
        g_hw = self.gate_hw(pooled[4], pooled[5]).contiguous()
        return g_cw, g_ch, g_hw

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The plain autograd expression of the same function (TorchScript, export, torch.compile)."""
        b, c, h, w = x.shape
        pooled = [x.mean(dim=2), x.amax(dim=2), x.mean(dim=3), x.amax(dim=3), x.mean(dim=1), x.amax(dim=1)]
        g_cw, g_ch, g_hw = self._gates(pooled, b, c, h, w)
        return x * ((g_cw + g_ch + g_hw) * (1.0 / 3.0))

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        if plain_path():
            return self.forward_reference(x)
        params = tuple(self.parameters())
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return _SCAFunction.apply(x, self, *params)
        # Nothing to differentiate: no index maps, and the gates run the plain conv.
        b, c, h, w = x.shape
        pooled = [x.mean(dim=2), _max_values(x, 2), x.mean(dim=3), _max_values(x, 3), x.mean(dim=1),
                  _max_values(x, 1)]
        return _gate_product(x, *self._gates(pooled, b, c, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.forward_reference(x)
        return self._forward_eager(x)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
