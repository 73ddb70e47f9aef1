"""The cost model against an independent counter (torch's FlopCounterMode) and against hand counts.

FlopCounterMode counts only matrix products and convolutions, at 2 FLOPs per multiply-accumulate:
on every model its FLOPs / 2 must equal our MACs, except AW-conv's weight modulation, which our
table counts as one MAC per weight element and FlopCounterMode (a point-wise op) does not.
``uncounted_ops`` must be empty everywhere: an aten op missing from the table would count as 0
and make that attention module look cheap, the very bias the cost model exists to prevent.
"""
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from nas_attn.arch import attention_sites, build_model
from nas_attn.cost import count
from nas_attn.modules import CPSAM, SCA, AWConv2d, available, create_attn

# Both block types of each supported family (arch.family): ResNet basic (resnet18) and bottleneck
# (resnet26) blocks, EfficientNet inverted residuals with (efficientnet_b0) and without an SE slot
# of its own (mobilenetv2_100). resnet34/50 repeat the same blocks more times, only slower.
FAMILIES = ["resnet18", "resnet26", "mobilenetv2_100", "efficientnet_b0"]
ATTENTION = [name for name in available("attention") if name != "none"]


def flop_counter_macs(model, x):
    """MACs per image by torch's own counter: FLOPs of one eval forward / 2 / batch."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops()
    assert flops % (2 * len(x)) == 0
    return flops // (2 * len(x))


def aw_modulation_macs(model):
    """AW-conv's K + A (.) K per image: one MAC per kernel element, which FlopCounterMode skips."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, AWConv2d))


def every_module_arch(model_name):
    """Every registry attention module in turn over the family's slots, AW-conv on every third
    conv, a DSA gate on every other block that can take one."""
    plain = timm.create_model(model_name, num_classes=5)
    blocks = {}
    for i, name in enumerate(attention_sites(plain)):
        blocks[name] = {"attention": ATTENTION[i % len(ATTENTION)], "attention_kwargs": {},
                        "aw_conv": {"mixing": "channel" if i % 2 else "element"} if i % 3 == 0 else None}
    return {"model": model_name, "model_args": {"num_classes": 5}, "blocks": blocks}


@pytest.mark.parametrize("model_name", FAMILIES)
def test_family_with_every_module_matches_flop_counter(model_name):
    arch = every_module_arch(model_name)
    model = build_model(arch)
    used = {b["attention"] for b in arch["blocks"].values()}
    # resnet18/34 have fewer slots than the registry has modules; the per-module test covers the rest
    assert len(used) == min(len(ATTENTION), len(arch["blocks"]))
    # One input for both counts: the gates' sparse eval path computes only the kept pixels.
    x = torch.randn(2, 3, 32, 32)
    cost = count(model, x)
    assert cost.uncounted_ops == ()
    reference = flop_counter_macs(model, x)
    assert aw_modulation_macs(model) > 0
    assert cost.macs == reference + aw_modulation_macs(model)


@pytest.mark.parametrize("name", ATTENTION + ["aw_conv"])
def test_every_registry_module_matches_flop_counter_and_counts_every_op(name):
    c, hw = 32, 9  # odd side: adaptive pooling bins overlap, windows hit the border
    if name == "aw_conv":
        module = AWConv2d(c, 48, 3, padding=1, groups=2)
    else:
        module = create_attn(name, c)
    x = torch.randn(2, c, hw, hw)
    cost = count(module, x)
    assert cost.uncounted_ops == (), name
    assert cost.elementwise_ops > 0, name  # every attention module does point-wise work
    assert cost.macs == flop_counter_macs(module, x) + aw_modulation_macs(module), name


# ------------------------------------------------------------------ hand counts
@pytest.mark.parametrize("k", [1, 3, 7])
def test_sca_macs_by_hand(k):
    c, h, w = 12, 5, 7
    cost = count(SCA(c, kernel_size=k), torch.randn(2, c, h, w))
    # three "same" k x k convs 2 -> 1 over the (C, W), (C, H) and (H, W) planes of pooled maps
    assert cost.macs == 2 * k * k * (c * w + c * h + h * w)
    assert cost.params == 3 * (2 * k * k + 2)
    assert cost.uncounted_ops == ()


@pytest.mark.parametrize("rd_ratio, pool_size, psa", [(1 / 8, 4, "gate"), (0.5, 2, "gate"), (1 / 8, 4, "mix")])
def test_cpsam_macs_by_hand(rd_ratio, pool_size, psa):
    c, h, w = 16, 6, 5
    n, s2 = h * w, pool_size * pool_size
    rd = max(1, round(c * rd_ratio))
    cost = count(CPSAM(c, rd_ratio=rd_ratio, pool_size=pool_size, psa=psa), torch.randn(2, c, h, w))
    csa = c * n + c * n + c * rd + rd * c    # conv_attn C->1 per pixel, context bmm, fc1, fc2
    affinity = c * c * s2                    # P P^T over the s*s pooled cells
    apply = c * c if psa == "gate" else c * c * n  # S p on the squeezed descriptor, or S x on every pixel
    # The fuse (grouped 2C -> C, 2 weights per channel) runs as two per-channel scales and a
    # sum, so it is element-wise work (3 ops per output element), not MACs.
    assert cost.macs == csa + affinity + apply
    assert cost.elementwise_ops >= 3 * c * n
    assert cost.uncounted_ops == ()


@pytest.mark.parametrize("groups", [1, 2])
def test_aw_conv_channel_mixing_macs_by_hand(groups):
    c_in, c_out, k, mid, hw = 4, 6, 3, 5, 6
    aw = AWConv2d(c_in, c_out, k, padding=1, groups=groups, mid=mid, mixing="channel")
    cost = count(aw, torch.randn(3, c_in, hw, hw))
    per_group = c_in // groups
    conv = c_out * hw * hw * per_group * k * k
    modulation = c_out * per_group * k * k
    fc1 = mid * c_in * k * k                  # 1x1 conv C_in -> mid at each of the k x k pooled cells
    fc2 = c_out * per_group * mid * k * k     # 1x1 conv mid -> C_out * C_in/groups at each cell
    assert cost.macs == conv + modulation + fc1 + fc2
    assert cost.uncounted_ops == ()
