"""The cost model against an independent counter (torch's FlopCounterMode) and against hand counts.

FlopCounterMode counts only matrix products and convolutions, at 2 FLOPs per multiply-accumulate:
on every model its FLOPs / 2 must equal our MACs, except AW-conv's weight modulation, which our
table counts as one MAC per weight element and FlopCounterMode (a point-wise op) does not.
With DSA gates, our ``macs`` are the dense count (the dense path's FLOPs / 2); a gated block
that runs its sparse eval path does only the work our ``effective_macs`` charge it, and
FlopCounterMode sees exactly that, less the depthwise taps it runs as ``addcmul``.
``uncounted_ops`` must be empty everywhere: an aten op missing from the table would count as 0
and make that attention module look cheap, the very bias the cost model exists to prevent.
"""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models._efficientnet_blocks import InvertedResidual
from timm.models.resnet import BasicBlock, Bottleneck
from torch.utils.flop_counter import FlopCounterMode

from nas_attn.arch import attention_sites, build_model, gateable_blocks
from nas_attn.cost import count, measure
from nas_attn.modules import CPSAM, SCA, AWConv2d, DSAGate, available, create_attn, set_sparse

# Both block types of each supported family (arch.family): ResNet basic (resnet18) and bottleneck
# (resnet26) blocks, EfficientNet inverted residuals with (efficientnet_b0) and without an SE slot
# of its own (mobilenetv2_100). resnet34/50 repeat the same blocks more times, only slower.
FAMILIES = ["resnet18", "resnet26", "mobilenetv2_100", "efficientnet_b0"]
ATTENTION = [name for name in available("attention") if name != "none"]


def flop_counter_macs(model, x):
    """MACs per image by torch's own counter: FLOPs of one eval forward / 2 / batch."""
    total, _ = flop_counter_batch_macs(model, x)
    assert total % len(x) == 0
    return total // len(x)


def flop_counter_batch_macs(model, x):
    """(MACs of one eval forward over the whole batch, module path -> MACs of the ops run inside
    that module) by FlopCounterMode (FLOPs / 2). Whole-batch figures: a sparse path's pixel
    counts need not divide by the batch size."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    root = type(model).__name__ + "."
    inside = {key[len(root):]: sum(counts.values()) // 2
              for key, counts in counter.get_flop_counts().items() if key.startswith(root)}
    return flops // 2, inside


def aw_modulation_macs(model):
    """AW-conv's K + A (.) K per image: one MAC per kernel element, which FlopCounterMode skips."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, AWConv2d))


def every_module_arch(model_name):
    """Every registry attention module in turn over the family's slots, AW-conv on every third
    conv, a DSA gate on every other block that can take one."""
    plain = timm.create_model(model_name, num_classes=5)
    gateable = gateable_blocks(plain)
    blocks = {}
    for i, name in enumerate(attention_sites(plain)):
        blocks[name] = {"attention": ATTENTION[i % len(ATTENTION)], "attention_kwargs": {},
                        "aw_conv": {"mixing": "channel" if i % 2 else "element"} if i % 3 == 0 else None}
        if gateable[name] is None and i % 2:
            blocks[name]["gate"] = {"threshold": 0.7}
    return {"model": model_name, "model_args": {"num_classes": 5}, "blocks": blocks}


# The branch convs of each gateable timm block, input to output (spelled out here rather than
# read from the gated block, so that the hand count below does not lean on the code it checks).
BRANCH_CONVS = [(Bottleneck, ("conv1", "conv2", "conv3")), (BasicBlock, ("conv1", "conv2")),
                (InvertedResidual, ("conv_pw", "conv_dw", "conv_pwl"))]


def branch_pixels_by_hand(block, mask):
    """Branch conv name -> (output pixels it must compute over the batch, MACs per such pixel).

    The last conv is needed at the gate's mask; an earlier one wherever the next conv reads,
    i.e. the mask dilated by the next conv's k x k window: a k x k max-pool (every conv here is
    stride 1 with 'same' padding, which the assert states)."""
    names = next(convs for kind, convs in BRANCH_CONVS if isinstance(block, kind))
    need = mask.float()
    out = {}
    for name in reversed(names):
        conv = getattr(block, name)
        kh, kw = conv.kernel_size
        assert tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (kh // 2, kw // 2) and kh == kw
        out[name] = (int(need.sum()), conv.out_channels * conv.in_channels // conv.groups * kh * kw)
        need = F.max_pool2d(need, kh, 1, kh // 2)
    return out


def blob_images(batch, side):
    """A bright blob in the top-left quarter over faint noise: the gates' masks come out as a
    compact region, so dilating them by a 3x3 window does not cover the whole map (on noise it
    does) and a sparse path that computed its first conv everywhere would show."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    blob = torch.exp(-((yy - side / 4) ** 2 + (xx - side / 4) ** 2) / (2 * (side / 8) ** 2))
    noise = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    return 4 * blob.expand(batch, 3, side, side) + 0.1 * noise


@pytest.mark.parametrize("model_name", FAMILIES)
def test_family_with_every_module_matches_flop_counter(model_name):
    torch.manual_seed(0)  # weights, hence the gates' masks, hence which gated blocks run sparse
    arch = every_module_arch(model_name)
    model = build_model(arch)
    used = {b["attention"] for b in arch["blocks"].values()}
    # resnet18/34 have fewer slots than the registry has modules; the per-module test covers the rest
    assert len(used) == min(len(ATTENTION), len(arch["blocks"]))
    gated = [name for name, b in arch["blocks"].items() if b.get("gate") is not None]
    assert gated
    # A DSA in a gated block's slot would scale an inverted residual's conv_pwl by its own kept
    # fraction too (the smaller one counts); this arch has none, so the hand count below is exact.
    assert all(arch["blocks"][name]["attention"] != "dsa" for name in gated)
    x = blob_images(2, 32)
    batch = len(x)
    # One counting pass for both figures: macs (dense) and effective_macs (the gates' masks on x)
    cost = measure(model, data=x)
    assert cost.uncounted_ops == ()
    assert aw_modulation_macs(model) > 0

    # Dense path (every gate's sparse path off): our MACs are exactly what runs.
    set_sparse(model, False)
    dense, _ = flop_counter_batch_macs(model, x)
    assert cost.macs * batch == dense + aw_modulation_macs(model) * batch

    # Sparse eval path. A gated block runs sparse when its mask keeps at most sparse_max_kept of
    # the pixels and its branch convs are plain convs (no AW-conv); it then computes each branch
    # conv at the pixels counted by hand below, as matrix products that FlopCounterMode sees,
    # except the depthwise conv, run as per-tap addcmul (point-wise, so FlopCounterMode sees 0).
    # sparse_max_kept is set (0.9) rather than left to each block kind's measured speed rule,
    # which keeps these small inverted residuals dense: this test is about what the sparse path
    # computes, and needs blocks of every kind to take it.
    set_sparse(model, True)
    for gate in (m for m in model.modules() if isinstance(m, DSAGate)):
        gate.sparse_max_kept = 0.9
    sparse, inside = flop_counter_batch_macs(model, x)
    partly_dilated = False
    skipped = 0  # dense MACs the sparse path did not run, or ran where FlopCounterMode cannot see
    ran_sparse = []
    for name in gated:
        block = model.get_submodule(name)
        mask = block.gate.last_mask  # of the last forward, on x
        pixels = branch_pixels_by_hand(block, mask)
        aw = sum(m.weight.numel() for m in block.modules() if isinstance(m, AWConv2d))
        block_dense = cost.under(name).macs * batch
        # seen from outside: in the sparse path the branch conv modules are never called
        is_sparse = f"{name}.{next(iter(pixels))}" not in inside
        expect_sparse = aw == 0 and int(mask.sum()) <= 0.9 * mask.numel()
        assert is_sparse == expect_sparse, name
        for conv_name, (n, per_pixel) in pixels.items():
            path = f"{name}.{conv_name}"
            conv = block.get_submodule(conv_name)
            # ours, effective: the conv's own MACs at the pixels it must compute, plus AW-conv's
            # modulation (per weight, never scaled); what runs below it (AW-conv's MLP) unscaled
            modulation = conv.weight.numel() if isinstance(conv, AWConv2d) else 0
            assert cost.by_module[path].effective_macs * batch == pytest.approx(n * per_pixel + modulation * batch), path
            below = cost.under(path).effective_macs - cost.by_module[path].effective_macs
            assert below == pytest.approx(cost.under(path).macs - cost.by_module[path].macs), path
        if is_sparse:
            ran_sparse.append(name)
            partly_dilated |= next(iter(pixels.values()))[0] < mask.numel()
            visible = sum(n * pp for c, (n, pp) in pixels.items() if block.get_submodule(c).groups == 1)
            depthwise = sum(n * pp for c, (n, pp) in pixels.items() if block.get_submodule(c).groups > 1)
            rest = block_dense - sum(cost.under(f"{name}.{c}").macs for c in pixels) * batch  # shortcut, slot
            assert inside[name] == rest + visible, name
            assert inside[name] + depthwise == pytest.approx(cost.under(name).effective_macs * batch), name
        else:
            assert inside[name] == block_dense - aw * batch, name
        skipped += block_dense - aw * batch - inside[name]
    assert ran_sparse, "no gated block ran its sparse path; the comparison would not test it"
    # the first branch conv of some sparse block runs at fewer than all pixels, so the dilation is
    # tested (efficientnet_b0's gateable blocks have 2x2 maps here: a 3x3 window covers them)
    assert partly_dilated or model_name == "efficientnet_b0"
    assert sparse + skipped == dense


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


@pytest.mark.parametrize("rd_ratio, pool_size, psa, key_groups",
                         [(1 / 8, 4, "gate", 256), (0.5, 2, "gate", 256), (1 / 8, 4, "mix", 256),
                          (1 / 8, 4, "gate", 4), (1 / 8, 2, "mix", 5)])
def test_cpsam_macs_by_hand(rd_ratio, pool_size, psa, key_groups):
    c, h, w = 16, 6, 5
    n, s2 = h * w, pool_size * pool_size
    rd = max(1, round(c * rd_ratio))
    g = min(c, key_groups)                   # keys: the channel maps averaged in g groups
    cost = count(CPSAM(c, rd_ratio=rd_ratio, pool_size=pool_size, psa=psa, key_groups=key_groups),
                 torch.randn(2, c, h, w))
    csa = c * n + c * n + c * rd + rd * c    # conv_attn C->1 per pixel, context bmm, fc1, fc2
    affinity = c * g * s2                    # P K^T over the s*s pooled cells
    apply = c * g if psa == "gate" else c * g * n  # S v on the squeezed descriptor, or S x_G on every pixel
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
