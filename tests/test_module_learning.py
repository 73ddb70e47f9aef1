"""Every attention module learns in every family (issue 11).

A tiny MobileNetV2 and a tiny ResNet are trained for a few SGD steps on a fixed set of the
embedded digits, once plain and once with a module in every block that has an attention
slot (or AW-conv on every block's spatial conv, or the DSA gate on every gateable block).
Same initial weights (the model is built before the modules, from the same seed), same
batches, same optimizer as the product's recipe (SGD, lr 0.05, momentum 0.9).

Rule: after the steps, the module's loss on the whole fixed set must be at most
``LOSS_RATIO`` (2) times the plain model's, and the plain model must have reached at most
half the chance loss (ln 10), so that the ratio means something: a module that stops
learning stays near ln 10 = 2.30, 3.7x the plain ResNet's 0.625 and 5.8x the plain
MobileNetV2's 0.398 here. Why a ratio of losses and not of loss drops: timm's MobileNetV2
starts at a loss near 6 (large logits), and falling from 6 to chance only shrinks the
logits, so drops would pass a module that learns nothing. Why 2: measured here (seed 0,
one thread), as multiples of the plain loss, MobileNetV2 / ResNet: SE 1.24 / 1.50, ECA
0.66 / 1.44, CBAM (blended in the MobileNetV2) 0.96 / 1.58, GC 1.26 / 1.41, DSA 0.58 / 1.30, SCA 0.80 / 1.39, CPSAM 1.23 /
0.94, CPSAM mix 1.40 / 0.96, AW-conv 1.23 / 0.98, DSA gate (threshold 0.5: it drops half of
each gated branch by design) 1.86 / 1.64. Broken on purpose, the test fails: timm's CBAM
placed bare in the inverted residual (as before issue 11; 16 points under plain with the
full recipe) ends at 2.25x (0.895) with half its channel gates saturated below 0.05, and
CPSAM returning ``0 * x`` at 5.7x (2.284) in the MobileNetV2. (In the ResNet a zeroed slot
only switches the residual branches off and the shortcuts still learn, so there it passes.)

Since the environment was reinstalled (torch 2.14.1, timm 1.0.31) the plain losses are
0.469 (MobileNetV2) and 0.625 (ResNet). CPSAM's mix form with the gradient through its
affinity S failed here at 2.15x (1.005); without it (issue 11) CPSAM ends at 0.62x (gate,
0.288) and 0.95x (mix, 0.444) in the MobileNetV2, 0.91x / 0.96x in the ResNet, and CPSAM
returning ``0 * x`` still fails at 4.9x (2.284). The rule is coarse: a module that is exactly
the identity (CPSAM inside the identity blend, which never leaves it) ends at 0.417, 0.89x,
from rounding alone, and over build seeds 0-7 the gate form ranged 0.6-2.4x the plain loss.

It cannot resolve a few points of accuracy under the full recipe (scripts/module_accuracy.py
measures that, README "Does each module learn in each family?"); it catches a module that
cripples learning. Cost: 2-5 s of CPU per model on a loaded machine (22 models), over the
suite's per-test budget; with 8x8 images (cheaper) healthy modules scattered past the rule
(SE 1.85x in the MobileNetV2), and batches of 16 from 128 images cost as much CPU (per-step
overhead dominates) while scattering further (DSA 2.4x); fewer steps were not tried.
"""
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from nas_attn.arch import attention_sites, build_model, gateable_blocks
from nas_attn.data import _digits_tensors

# SGD with the product's momentum; 256 digits upsampled to 12x12 (at 8x8 the last stages are
# 1x1 or 2x2 and healthy modules scattered too widely). The tiny ResNet starts with its
# residual branches off (timm zero-initialises their last BN), so it gets lr 0.1 and 40 steps
# to move as far below chance as the MobileNetV2 does in 30 steps at the product's lr 0.05.
BATCH, MOMENTUM, N_IMAGES, SIZE = 32, 0.9, 256, 12
STEPS_AND_LR = {"mobilenetv2": (30, 0.05), "resnet": (40, 0.1)}
LOSS_RATIO = 2.0
CHANCE = math.log(10)

FAMILIES = {
    # mobilenetv2_035 with a short block list: a depthwise-separable block, then two stages of
    # two inverted residuals, each stage's first block without a shortcut (as in the product).
    "mobilenetv2": dict(model="mobilenetv2_035", model_args=dict(num_classes=10, in_chans=1), stem="cifar",
                        arch_def=[["ds_r1_k3_s1_c8"], ["ir_r1_k3_s2_e4_c16", "ir_r1_k3_s1_e4_c16"],
                                  ["ir_r1_k3_s2_e4_c24", "ir_r1_k3_s1_e4_c24"]]),
    "resnet": dict(model="resnet18", stem="cifar",
                   model_args=dict(num_classes=10, in_chans=1, layers=[1, 1, 1, 1], channels=[8, 16, 24, 32])),
}

# (attention name, its kwargs) in the attention slot; "aw_conv" and "dsa_gate" are the conv
# replacement and the residual gate.
MODULES = [("se", {}), ("eca", {}), ("cbam", {}), ("gc", {}), ("dsa", {}), ("sca", {}),
           ("cpsam", {}), ("cpsam", {"psa": "mix"}), ("aw_conv", {}), ("dsa_gate", {})]


@functools.lru_cache(maxsize=1)
def _data():
    images, labels, _ = _digits_tensors()
    index = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:N_IMAGES]
    x = F.interpolate(images[index], size=SIZE, mode="bilinear", align_corners=False)
    return (x - x.mean()) / x.std(), labels[index]


def _arch(family, module, kwargs):
    arch = dict(FAMILIES[family])
    base = build_model(arch)
    gateable = gateable_blocks(base)
    blocks = {}
    for name in attention_sites(base):
        if module == "aw_conv":
            blocks[name] = {"aw_conv": dict(kwargs)}
        elif module == "dsa_gate":
            if gateable[name] is None:
                blocks[name] = {"gate": dict(kwargs)}
        elif module != "none":
            blocks[name] = {"attention": module, "attention_kwargs": dict(kwargs)}
    assert module == "none" or blocks, f"{module} found no block to go into in {family}"
    return dict(arch, blocks=blocks)


@functools.lru_cache(maxsize=None)
def final_loss(family, module="none", kwargs_items=()):
    """Loss on the whole fixed set (train-mode BN, batch statistics) after STEPS SGD steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, and the same arithmetic whatever the machine has
    try:
        return _train(_arch(family, module, dict(kwargs_items)), *STEPS_AND_LR[family])
    finally:
        torch.set_num_threads(threads)


def _train(arch, steps, lr):
    x, y = _data()
    torch.manual_seed(0)
    model = build_model(arch).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    for step in range(steps):
        start = (step * BATCH) % len(y)
        loss = F.cross_entropy(model(x[start:start + BATCH]), y[start:start + BATCH])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_model_learns(family):
    assert final_loss(family) <= 0.5 * CHANCE


@pytest.mark.parametrize("module,kwargs", MODULES, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={w}" for k, w in v.items()) or "defaults")
@pytest.mark.parametrize("family", FAMILIES)
def test_module_learns_about_as_well_as_plain_model(family, module, kwargs):
    plain = final_loss(family)
    ours = final_loss(family, module, tuple(sorted(kwargs.items())))
    assert math.isfinite(ours)
    assert ours <= LOSS_RATIO * plain, (
        f"{family} with {module} {kwargs or ''} in every block: loss {ours:.3f} after "
        f"{STEPS_AND_LR[family][0]} steps, "
        f"more than {LOSS_RATIO} x the plain model's {plain:.3f}")
