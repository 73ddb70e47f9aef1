"""CPSAM: Channel and Position Squeeze Attention Module.

Paper: Y. Gong, Z. Gu, Z. Zhang, L. Ma, "CPSAM: Channel and Position Squeeze Attention
Module", ICONIP 2021, LNCS 13108, pp. 190-202, doi:10.1007/978-3-030-92185-9_16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_values, choice_spec, float_spec, int_spec, reject_unknown
from ._pool import adaptive_avg_pool2d, adaptive_max_pool2d

PSA_FORMS = ("gate", "mix")


class ChannelSqueezeAttention(nn.Module):
    """CSA branch: one query-independent position map joins all positions (global-context style).

    ``a = softmax_HW(conv1x1_{C->1}(x))``; ``c = sum_j a_j x_j`` (length C);
    ``out = x + W2 ReLU(LN(W1 c))`` with W1: C -> rd, W2: rd -> C. W2 (weight and bias)
    starts at zero, so the fresh branch is the identity (as timm's GlobalContext starts).
    """

    def __init__(self, channels: int, rd_channels: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv_attn = nn.Conv2d(channels, 1, 1, bias=True, **dd)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True, **dd)
        self.norm = nn.LayerNorm(rd_channels, **dd)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True, **dd)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``W2 ReLU(LN(W1 c))``, (B, C, 1, 1): what the branch adds to every position."""
        b, c, h, w = x.shape
        # float32 softmax: half-precision logits over many positions lose the small weights.
        attn = F.softmax(self.conv_attn(x).view(b, 1, h * w).float(), dim=-1).to(x.dtype)
        context = torch.bmm(x.reshape(b, c, h * w), attn.transpose(1, 2)).view(b, c, 1, 1)
        hidden = self.norm(self.fc1(context).view(b, -1)).view(b, -1, 1, 1)
        return self.fc2(F.relu(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta(x)


class PositionSqueezeAttention(nn.Module):
    """PSA branch: squeeze positions with avg+max pooling, attend between all channel maps.

    ``P = AvgPool_s(x) + MaxPool_s(x)`` flattened to (C, s*s); ``S = softmax(P P^T)`` (C x C),
    the correlation between all channel maps. Two ways to apply it (``form``):

    * ``"gate"`` (default): S acts on the squeezed descriptor ``p`` (P averaged over its s*s
      cells, length C): ``g = sigmoid(S p)``, ``out = x * (1 + tanh(gamma) * g)``. About
      C*C*(s*s + 1) MACs per image; no full-size product besides the gating.
    * ``"mix"``: S mixes the full maps, ``out = x + tanh(gamma) * (S x_flat)``: C*C*H*W more
      MACs, like a 1x1 conv, which makes it dearer than Non-Local from 512x28x28 on. S is
      computed from the input but not differentiated: the gradient reaches x only through
      the product with S held constant (see CPSAM, "Changed (issue 11, gradient)").

    gamma is a learned per-channel parameter (C values), 0 at init, so the fresh branch is the
    identity; it acts through tanh, so the gate form scales each channel by a factor in
    (0, 2) and the mix form adds at most one convex mixture of channel maps (see CPSAM,
    "Changed (issue 11, learning)"). P P^T and the softmax run in float32 (in half precision
    P P^T overflows for activations above ~16 on 256 channels).
    """

    def __init__(self, channels: int, pool_size: int, form: str = "gate", device=None, dtype=None):
        super().__init__()
        self.pool_size = pool_size
        self.form = form
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1, device=device, dtype=dtype))

    def affinity(self, x: torch.Tensor):
        """(S, P): S (B, C, C) float32 softmax affinity, P (B, C, s*s) float32 pooled maps."""
        b, c = x.shape[:2]
        s = self.pool_size
        pooled = (adaptive_avg_pool2d(x, (s, s)) + adaptive_max_pool2d(x, (s, s))).view(b, c, s * s).float()
        return F.softmax(torch.bmm(pooled, pooled.transpose(1, 2)), dim=-1), pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.form == "gate":
            affinity, pooled = self.affinity(x)
            gate = torch.sigmoid(torch.bmm(affinity, pooled.mean(dim=2, keepdim=True))).to(x.dtype)
            return x * (1.0 + torch.tanh(self.gamma) * gate.view(b, c, 1, 1))
        # Mix form: no gradient through S. S has no parameter of its own, and its backward
        # (a softmax of logits quadratic in x, a max pool, a sum over H*W of grad * x) is what
        # stopped MobileNetV2 from learning (CPSAM, "Changed (issue 11, gradient)").
        affinity, _ = self.affinity(x.detach())
        mixed = torch.bmm(affinity.to(x.dtype), x.reshape(b, c, h * w)).view(b, c, h, w)
        return x + torch.tanh(self.gamma) * mixed


class CPSAM(nn.Module):
    """Channel and Position Squeeze Attention Module: CSA and PSA in parallel, fused by a conv.

    Stated by the paper's abstract (the method section is not available to us): two
    branches in parallel on the same input; a Channel Squeeze Attention joining positions
    through one query-independent map; a Position Squeeze Attention compressing the spatial
    dimensions with both average and max pooling and modelling the correlation between all
    channel maps; the two outputs combined by a conv layer; fewer parameters than a
    Non-Local block on the same channels; motivated by Non-Local wasting computation on
    pixel-level pairwise relations.

    Reconstruction (ours): the two branch formulas in :class:`ChannelSqueezeAttention` and
    :class:`PositionSqueezeAttention`; the fuse ``y = conv1x1_{2C->C, groups=C}(interleave(
    out_csa, out_psa))`` mixes each channel's two branch outputs with 2 weights per channel,
    the pair softmax-normalised (``fuse.weight`` holds their logits, 0 at init: (1/2, 1/2)).
    Both branches start as the identity (CSA's last layer and PSA's gamma are zero), so a
    fresh CPSAM is the identity.

    Changed (issue 11), and why:

    * ``psa="gate"`` is the new default: applying S to the squeezed descriptor costs about
      C*C*(s*s + 1) MACs instead of C*C*H*W, so CPSAM is cheaper than timm's Non-Local at
      every resnet50 stage shape (the old full-map form, ``psa="mix"``, was dearer from
      512x28x28 on: 211 M vs 181 M MACs there, 274 M vs 104 M at 2048x7x7). How both forms
      trained on the embedded digits is in the README's CPSAM section.
    * The fuse lost its BatchNorm (zero-initialised weight): in a MobileNetV2 inverted
      residual the slot sees sparse ReLU6 activations, and a BN normalising a mostly-zero
      channel to unit variance turns its few non-zero pixels into spikes of about sqrt(B*H*W).
      With it every MobileNetV2 trial diverged (train loss 9.6 after one epoch on digits,
      slot output RMS 97 against an input RMS of 3). Identity at init now comes from the
      branches themselves.
    * gamma is per channel (C values) instead of one scalar: a scalar's gradient sums over
      every element of the map, and SGD at lr 0.05 threw it to -5 ... -20 in the first epoch.

    Changed (issue 11, learning), and why: in MobileNetV2 (digits_mobilenetv2's recipe, SGD
    lr 0.05, whose first epoch starts at a train loss near 8.7 with very large gradients)
    CPSAM in blocks.1-2 reached 0.708 validation accuracy against plain 0.799 (seed 0). It
    is the identity at init, so the damage came from training: after the first epoch the
    slot's output RMS was 13.5 against an input RMS of 1.7 in blocks.1.0 (17.1 vs 1.5 at the
    end), because both free multiplicative parameters had been thrown far from their start,
    the fuse weights (init 1/2) to -3.3 ... 5.0 and gamma to -1.6 ... 2.9. The slot feeds the
    1x1 projection directly, so such a per-channel gain multiplies the effective learning
    rate of that channel's projection weights by its square and the channels it blows up
    dominate the projection. In a ResNet block the slot output is added to the shortcut
    after the last BN, whose small weights hid it. Now both are bounded: the fuse pair is
    softmax-normalised (a convex per-channel mix of the two branches, as before at init) and
    gamma acts through tanh, so CPSAM's per-channel gain stays in (0, 2) in the gate form,
    like a sigmoid gate's range doubled. Accuracy 0.708 -> 0.827 (seed 0) and 0.362 -> 0.680
    (seed 1, plain 0.811): the second is still 13 points under plain although the slot's
    gain stayed within 1.1-1.3x, so this bound is necessary, not sufficient; README, "Does
    each module learn in each family?".

    Changed (issue 11, gradient), and why. The mix form still failed to learn in MobileNetV2:
    the module-learning test (tests/test_module_learning.py) ended at 2.15x the plain loss,
    and with the product's recipe (scripts/module_accuracy.py, digits_mobilenetv2) it
    reached 0.496 / 0.287 at seeds 0 / 1 against plain 0.788 / 0.760 (today's environment). Cause, measured: the
    backward through S. Its logits P P^T are quadratic in x, P comes through a max pool, and
    its gradient sums grad * x over the whole map; S has no parameter of its own, so that
    gradient only reshapes the features to move S. PSA alone (mix, no CSA) in the test's tiny
    MobileNetV2 ended at 10-15x the plain loss over 4 seeds, the same with S held constant at
    1.0-1.5x. So the mix form computes S from ``x.detach()`` (the forward is unchanged bit for
    bit). Full recipe, seeds 0-3: 0.496 / 0.287 / 0.515 / 0.331 -> 0.540 / 0.660 / 0.677 /
    0.747, still 10-25 points under plain (open; README, "Re-measured"); resnet18 0.972 /
    0.983 against plain 0.975 / 0.978 (seeds 0 / 1). This also drops
    the backward of the (B, C, C) softmax and of P P^T: at 2048x7x7 (batch 8, one thread,
    forward+backward CPU time, one process) the mix form went from 5.1x timm's Non-Local to
    2.9x. Not changed in the gate form, by measurement: there the product's recipe gave
    0.830 / 0.833 / 0.825 / 0.808 at seeds 0-3 against plain 0.788 / 0.760 / 0.852 / 0.841, while holding S and
    p constant gave 0.794 / 0.749 / 0.866 / 0.694 (seeds 0-3) and also halving gamma's range
    (gain in (1/2, 3/2), which stops the 9 of 96 channels in blocks.1.0 whose tanh(gamma)
    went below -0.9 in the first epoch) gave 0.596 / 0.816 / 0.585. (The 0.680 at seed 1
    quoted above was measured before the environment was reinstalled; the same code and seed
    now give 0.833, and single runs of this recipe differ by 5-20 points with any change of
    arithmetic.) Wrapping CPSAM in the identity blend used for CBAM
    (nas_attn/modules/identity_blend.py) cannot help: CPSAM is the identity at init, so
    ``cpsam(x) - x`` is 0, the blend weight gets no gradient and CPSAM's parameters get
    gradients times tanh(0) = 0; measured, after 30 steps every blend weight, gamma and CSA
    last layer was still exactly 0. These are our choices; the abstract fixes none of them.

    Parameters: 2C + 2 + C*rd + rd + 2*rd + rd*C + C (CSA) + C (gamma) + 2C (fuse), fewer than
    a Non-Local block on the same channels (tested).

    Time: the affinity S is a (B, C, C) float32 tensor (16 MiB per image at C = 2048); its
    product, softmax and their backward are memory-bound passes over it, so at resnet50's
    deep stages CPSAM can take longer than Non-Local (whose affinity is (H*W)^2, 49^2 at 7x7)
    even with fewer MACs. scripts/bench_modules.py times both per stage.

    Args:
        channels: number of input channels C.
        rd_ratio: CSA bottleneck width as a fraction of C, in (0, 1]; rd = max(1, round(C * rd_ratio)).
            timm's EfficientNet builder passes its se ratio here.
        pool_size: side s of PSA's pooled map, int >= 1, in pooled cells (s*s per channel).
        psa: ``"gate"`` (channel gate from the squeezed descriptor, ~C*C MACs) or ``"mix"``
            (S applied to the full map, C*C*H*W MACs).
        device, dtype: where and in what dtype the parameters and buffers are made (timm's
            factory keywords, passed to every submodule).
        **kwargs: timm pass-through keywords (act_layer, ...) are accepted and ignored;
            anything else raises ``UnknownArgumentError``.
    """

    HYPERPARAMETERS = {
        "rd_ratio": float_spec(1 / 8, 0.0, 1.0, low_inclusive=False, doc="CSA bottleneck width / C"),
        "pool_size": int_spec(4, 1, None, doc="PSA pooled map side (cells)"),
        "psa": choice_spec("gate", PSA_FORMS,
                           doc="PSA form: gate (channel gate, ~C*C MACs) or mix (full map, C*C*H*W MACs)"),
    }

    def __init__(self, channels: int, rd_ratio: float = 1 / 8, pool_size: int = 4, psa: str = "gate",
                 device=None, dtype=None, **kwargs):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        reject_unknown("CPSAM", kwargs, self.HYPERPARAMETERS)
        check_values("CPSAM", self.HYPERPARAMETERS, dict(rd_ratio=rd_ratio, pool_size=pool_size, psa=psa))
        self.channels = channels
        self.rd_ratio = float(rd_ratio)
        self.pool_size = int(pool_size)
        self.psa_form = psa
        rd_channels = max(1, int(round(channels * self.rd_ratio)))
        self.csa = ChannelSqueezeAttention(channels, rd_channels, **dd)
        self.psa = PositionSqueezeAttention(channels, self.pool_size, psa, **dd)
        # fuse.weight holds the logits of each channel's pair of branch weights (softmax over
        # the pair, so the fuse is a convex mix); zeros: (1/2, 1/2).
        self.fuse = nn.Conv2d(2 * channels, channels, 1, groups=channels, bias=False, **dd)
        nn.init.zeros_(self.fuse.weight)

    def fuse_weights(self) -> torch.Tensor:
        """(C, 2) weights of (CSA, PSA) per output channel, each row non-negative summing to 1."""
        return F.softmax(self.fuse.weight.view(-1, 2).float(), dim=1).to(self.fuse.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The grouped 1x1 fuse conv (2 weights per channel) is two per-channel scales and a
        # sum; run as such, not as a conv: torch's CPU path for a conv with groups=C loops over
        # the groups (2,051 slow-conv calls for one CPSAM at C=2048, most of its time).
        weight = self.fuse_weights().view(1, -1, 2, 1, 1)
        return torch.addcmul(self.csa(x) * weight[:, :, 0], self.psa(x), weight[:, :, 1])

    def extra_repr(self) -> str:
        return f"rd_ratio={self.rd_ratio:g}, pool_size={self.pool_size}, psa={self.psa_form}"
