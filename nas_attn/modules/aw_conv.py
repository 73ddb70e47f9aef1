"""AW-conv: attention on the convolution weights, a drop-in replacement of nn.Conv2d.

Paper: B. Zhu, P. Hofstee, J. Lee, Z. Al-Ars, "An Attention Module for Convolutional Neural
Networks", ICANN 2021, LNCS 12891, pp. 167-178, arXiv:2108.08205.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_values, choice_spec, int_spec, reject_unknown
from ._pool import adaptive_avg_pool2d


class _ModulateKernel(torch.autograd.Function):
    """``K + A (.) K`` for per-sample attention A (n, *K.shape), with a lean backward.

    Autograd's own addcmul backward reduces over the broadcast batch dimension twice
    (K appears twice) through zero-filled buffers; on a 512->512 3x3 conv that was more
    than half of the whole AW-conv step. Here: dA = g (.) K and dK = sum_b g_b (.) (1 + A_b),
    accumulated in place.
    """

    @staticmethod
    def forward(ctx, kernel: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(kernel, attn)
        return torch.addcmul(kernel, attn, kernel)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        kernel, attn = ctx.saved_tensors
        grad_kernel = grad_attn = None
        if ctx.needs_input_grad[0]:
            grad_kernel = torch.addcmul(grad[0], grad[0], attn[0])
            for b in range(1, grad.shape[0]):
                grad_kernel.add_(grad[b]).addcmul_(grad[b], attn[b])
        if ctx.needs_input_grad[1]:
            grad_attn = grad * kernel
        return grad_kernel, grad_attn


class ElementWeightAttention(nn.Module):
    """Point-wise MLP applied to every element of the pooled input, one output per output channel.

    ``h = ReLU(w1 * A0 + b1)`` per element of A0 (hidden width ``mid``), then
    ``A[o, c, i, j] = sum_m W2[o, m] h[m, c_o, i, j] + b2[o]`` where ``c_o`` runs over the
    input channels of output channel o's group. Parameters: 2*mid + (mid + 1)*C_out.
    The attention of weight (o, c, i, j) depends on input channel c's mean activity in the
    image region matching kernel tap (i, j), through a response curve learned per output
    channel.
    """

    def __init__(self, in_channels, out_channels, groups, mid, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.groups = groups
        self.fc1 = nn.Conv2d(1, mid, 1, bias=True, **dd)
        self.fc2 = nn.Linear(mid, out_channels, bias=True, **dd)

    def forward(self, a0: torch.Tensor) -> torch.Tensor:
        """a0: (B, C_in, kh, kw) -> A: (B, C_out, C_in/groups, kh, kw)."""
        b, c_in, kh, kw = a0.shape
        g = self.groups
        mid = self.fc1.out_channels
        c_out = self.fc2.out_features
        hidden = F.relu(F.conv2d(a0.reshape(b, 1, c_in, kh * kw), self.fc1.weight, self.fc1.bias))
        hidden = hidden.view(b, mid, g, (c_in // g) * kh * kw)
        w2 = self.fc2.weight.view(g, c_out // g, mid)
        attn = torch.einsum("gom,bmgq->bgoq", w2, hidden) + self.fc2.bias.view(1, g, c_out // g, 1)
        return attn.reshape(b, c_out, c_in // g, kh, kw)


class ChannelWeightAttention(nn.Module):
    """Point-wise (1x1) convs across channels at each of the k x k pooled positions.

    ``A = fc2(ReLU(fc1(A0)))`` with fc1: C_in -> mid, fc2: mid -> C_out * C_in/groups,
    reshaped to the weight's shape. Mixes all input channels; parameters
    (C_in + 1) * mid + (mid + 1) * C_out * C_in/groups, about (mid + 1)/(k*k) times the conv's own.
    """

    def __init__(self, in_channels, out_channels, groups, mid, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.weight_shape = (out_channels, in_channels // groups)
        self.fc1 = nn.Conv2d(in_channels, mid, 1, bias=True, **dd)
        self.fc2 = nn.Conv2d(mid, out_channels * (in_channels // groups), 1, bias=True, **dd)

    def forward(self, a0: torch.Tensor) -> torch.Tensor:
        b, _, kh, kw = a0.shape
        return self.fc2(F.relu(self.fc1(a0))).view(b, self.weight_shape[0], self.weight_shape[1], kh, kw)


class AWConv2d(nn.Module):
    """Convolution whose kernel is modulated per sample by an attention map of the kernel's shape.

    Stated by the paper's abstract (the method section is not available to us): the
    attention map has the shape of the convolution weights, not of the activations,
    ``O = (A (.) K) * I`` instead of ``O = K * (A (.) I)``; it is complementary to
    activation attention (SE, CBAM) and can be stacked with it.

    Reconstruction (ours): ``A0 = AdaptiveAvgPool2d(k)(I)`` per sample; a small point-wise
    MLP (hidden width ``mid``, ReLU) maps A0 to ``A`` of the weight's shape
    (C_out, C_in/groups, kh, kw) per sample; the sample's kernel is ``K + A (.) K``
    (residual form, A = 0 is the plain conv). The MLP's last layer starts at zero, so a
    freshly built AWConv2d computes exactly the conv it replaced. ``mixing`` picks the MLP:

    * ``"element"`` (default, :class:`ElementWeightAttention`): the MLP runs on each
      element of A0 and gives one value per output channel; a few thousand parameters.
    * ``"channel"`` (:class:`ChannelWeightAttention`): 1x1 convs across input channels
      at each pooled position; mixes channels but adds about (mid+1)/(k*k) of the conv's
      parameters (2.4 M for a 512->512 3x3 conv at mid = 8).

    Per-sample kernels run as a grouped conv with the batch folded into the groups. On CPU
    the batch is cut into chunks whose modulated kernels plus activations stay under
    ``cpu_chunk_bytes`` (16 MiB; at batch 8 that folds the whole batch up to 128 channels,
    6 samples at 256, one at 512); other devices fold the whole batch. The modulation
    ``K + A (.) K`` has its own backward (:class:`_ModulateKernel`).

    Why 16 MiB (it was 4 MiB). Measured forward + backward, batch 8, fp32, 3x3, stride 1,
    element mixing, torch 2.14 CPU, one thread, CPU time of the process (user + system),
    median (min) of 7 interleaved rounds, ms, on the shared 2-core machine at load 12-17
    (samples per chunk in brackets):

    =============  =========  ============  =============  ===========  ==========
    C, H x W       nn.Conv2d  4 MiB cap     **16 MiB cap** whole batch  per sample
                   (no attn)  (before)      (chosen)       folded       folded
    =============  =========  ============  =============  ===========  ==========
    64, 56x56      57 (55)    69 (67) [2]   63 (62) [8]    63 (61)      73 (67)
    128, 28x28     53 (51)    67 (66) [3]   64 (63) [8]    63 (61)      74 (69)
    256, 14x14     53 (52)    91 (86) [1]   93 (90) [6]    93 (86)      93 (83)
    512, 7x7       59 (56)    301 (225) [1] 322 (240) [1]  466 (425)    263 (227)
    dw 64, 56x56   6.8 (5.9)  13.1 (11.2)   10.8 (9.3)     10.8 (10.1)  15.5 (13.2)
    dw 256, 14x14  2.0 (1.6)  4.9 (4.3)     4.6 (4.1)      5.0 (4.2)    9.8 (8.9)
    dw 960, 7x7    2.3 (1.9)  8.4 (7.7)     8.5 (7.9)      8.7 (7.5)    15.4 (14.8)
    =============  =========  ============  =============  ===========  ==========

    (At 512 the 4 and 16 MiB caps run the same code, one sample per chunk: their gap is the
    run's noise.) What the chunk size changes, and why the earlier table here and the
    idle two-thread table in BENCHMARKS.md at 02b6b82 ("AW-conv per stage", where the whole
    batch was 1.2-1.5x faster than 4 MiB chunks at every non-depthwise stage) disagreed:

    - With one thread the user time is the same for every chunking (512x7x7: 171-196 ms
      for 1, 2, 3, 4 or 8 samples per chunk). What differs is system time for page faults:
      buffers above glibc's mmap threshold (at most 32 MiB) are fresh mappings on every
      step, and the whole batch's kernels at 512 channels are 75 MB (their gradients,
      the attention and its gradient as much again): 184,000 minor faults and 335 ms of
      system time per step, against 53,000 and 84 ms in one-sample chunks.
    - With two threads every chunk's ops are separate parallel regions, each too small to
      keep both threads busy; fewer, larger chunks parallelise better, which is why the
      whole batch won that idle two-thread run even at 512 channels (239 against 273 ms),
      where it pays the page faults. Under load the gap grows (threads spin waiting for
      each other): 256x14x14 at 2 threads, load 16, 1,250 ms wall with the whole batch
      against 2,970 ms in one-sample chunks.

    So the cap folds as many samples as it can while each chunk's kernels stay well below
    glibc's mmap ceiling: the whole batch at 64-128 channels and for depthwise convs, where
    both thread counts favour it or are indifferent, 6 samples at 256, one at 512, where one
    thread loses 1.5-2.2x to the whole batch's page faults. Re-run idle with two threads
    at b2a24fc (BENCHMARKS.md, layer1-4 conv2, medians, ms): 16 MiB cap 38 / 36 / 60 / 117,
    4 MiB cap 44 / 43 / 56 / 120, whole batch 38 / 37 / 57 / 129, one sample 45 / 42 / 58 /
    115: the cap ties the whole batch where it folds it, the chunkings are within the
    rounds' spread at 256 and 512 channels, and the whole batch no longer wins at 512.
    The first version (autograd
    ``K * (1 + A)``, whole batch folded) took 448 ms at 512 channels; with autograd's own
    backward for the modulation instead of :class:`_ModulateKernel` the 512x7x7 step took
    294 against 188 ms; channels-last layouts of the folded conv were 8-49 % slower than
    contiguous ones; one matrix product per sample over the unfolded input (unfold + bmm)
    was slower than the chunked fold at every shape but 512x7x7 (a tie) in the earlier
    one-thread measurement, and in the idle two-thread runs slower than the whole-batch fold
    at every shape (02b6b82) and at every shape but 512x7x7 (127 against 129 ms, a tie; b2a24fc). No exact reformulation avoids
    per-sample kernels: pushing A into the input (``sum_m W2[:, m] * conv(h_m (.) unfold(I),
    K)``) costs ``mid`` full convolutions.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as nn.Conv2d (kernel_size etc. in pixels).
        mid: hidden width of the attention MLP, int >= 1.
        mixing: ``"element"`` or ``"channel"``, see above.
        device, dtype: factory keywords.

    Attributes:
        weight: the static kernel K, (C_out, C_in/groups, kh, kw).
        bias: (C_out,) or None.
        attention: the MLP producing A.
    """

    HYPERPARAMETERS = {
        "mid": int_spec(8, 1, None, doc="hidden width of the attention MLP"),
        "mixing": choice_spec("element", ("element", "channel"), doc="attention MLP form"),
    }
    cpu_chunk_bytes = 16 << 20  # bytes of modulated kernels plus activations per chunk, see above
    __constants__ = ["cpu_chunk_bytes"]  # TorchScript sees instance attributes only, or constants

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: Union[int, Tuple[int, int]],
            stride: Union[int, Tuple[int, int]] = 1,
            padding: Union[int, Tuple[int, int], str] = 0,
            dilation: Union[int, Tuple[int, int]] = 1,
            groups: int = 1,
            bias: bool = True,
            padding_mode: str = "zeros",
            mid: int = 8,
            mixing: str = "element",
            device=None,
            dtype=None,
            **kwargs,
    ):
        super().__init__()
        if kwargs:
            reject_unknown("AWConv2d", kwargs, self.HYPERPARAMETERS)
        check_values("AWConv2d", self.HYPERPARAMETERS, dict(mid=mid, mixing=mixing))
        # nn.Conv2d validates the conv arguments (groups divisibility, padding strings,
        # padding_mode) with the messages users know; we borrow its checks and layout.
        try:
            reference = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                                  groups, bias, padding_mode, device="meta")
        except (ValueError, TypeError, RuntimeError) as err:
            raise ValueError(f"AWConv2d: {err}") from err
        dd = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = reference.kernel_size
        self.stride = reference.stride
        self.padding = reference.padding
        self.dilation = reference.dilation
        self.groups = groups
        self.padding_mode = padding_mode
        self._reversed_padding_repeated_twice = reference._reversed_padding_repeated_twice
        self.mid = int(mid)
        self.mixing = mixing
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **dd))
        self.bias = nn.Parameter(torch.empty(out_channels, **dd)) if bias else None
        attention_cls = ElementWeightAttention if mixing == "element" else ChannelWeightAttention
        self.attention = attention_cls(in_channels, out_channels, groups, self.mid, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as nn.Conv2d for K and bias.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        self.attention.fc1.reset_parameters()
        nn.init.zeros_(self.attention.fc2.weight)
        nn.init.zeros_(self.attention.fc2.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> "AWConv2d":
        """AWConv2d with ``conv``'s arguments, kernel and bias (copied), device and dtype.

        ``kwargs`` are AWConv2d's own (``mid``, ``mixing``). Only plain nn.Conv2d is
        accepted: subclasses (timm's Conv2dSame, CondConv2d, ...) change the forward.
        """
        if type(conv) is not nn.Conv2d:
            raise ValueError(f"AWConv2d.from_conv: conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding,
                     conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        with torch.no_grad():
            module.weight.copy_(conv.weight)
            if conv.bias is not None:
                module.bias.copy_(conv.bias)
        module.weight.requires_grad_(conv.weight.requires_grad)
        module.train(conv.training)
        return module

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention A for input x: (B, C_out, C_in/groups, kh, kw), dimensionless (W' = K (1 + A))."""
        return self.attention(adaptive_avg_pool2d(x, self.kernel_size))

    def _samples_per_chunk(self, x: torch.Tensor) -> int:
        if x.device.type != "cpu":
            return x.shape[0]
        # Output size only steers the chunking heuristic: ceil(H/stride) x ceil(W/stride) is close enough.
        out_pixels = math.ceil(x.shape[-2] / self.stride[0]) * math.ceil(x.shape[-1] / self.stride[1])
        per_sample = (self.weight.numel() + x[0].numel() + self.out_channels * out_pixels) * x.element_size()
        return max(1, self.cpu_chunk_bytes // per_sample)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int):
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, (0, 0), self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def _modulate(self, attn: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript has no custom autograd Functions: autograd's backward
            return torch.addcmul(self.weight, attn, self.weight)
        return _ModulateKernel.apply(self.weight, attn)

    def _forward_chunk(self, x: torch.Tensor) -> torch.Tensor:
        n, c_in, h, w = x.shape
        kernels = self._modulate(self.attention_weights(x))  # (n, C_out, C_in/g, kh, kw)
        bias = None if self.bias is None else self.bias.repeat(n)
        out = self._conv(x.reshape(1, n * c_in, h, w), kernels.flatten(0, 1), bias, self.groups * n)
        return out.view(n, self.out_channels, out.shape[-2], out.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts
            return self._forward_batch(x.unsqueeze(0)).squeeze(0)
        return self._forward_batch(x)

    def _forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:  # no samples, no attention: the static conv gives the right empty shape
            return self._conv(x, self.weight, self.bias, self.groups)
        chunks = x.split(self._samples_per_chunk(x))
        if len(chunks) == 1:
            return self._forward_chunk(x)
        return torch.cat([self._forward_chunk(chunk) for chunk in chunks])

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text + f", mid={self.mid}, mixing={self.mixing}"
