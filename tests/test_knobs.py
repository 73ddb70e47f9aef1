"""Cost knobs: width, depth, expansion and kernel in the space, built through timm's own args."""
import json
import textwrap

import optuna
import pytest
import timm
import torch

from nas_attn.arch import ArchError, build_model, mobilenetv2_arch_def
from nas_attn.cost import measure
from nas_attn.describe import mac_range
from nas_attn.space import SpaceError, loads

RESNET = textwrap.dedent("""\
    name: knobs
    model: {name: resnet18, args: {num_classes: 10, in_chans: 1, channels: [16, 32, 64, 128]}}
    data: {dataset: digits, image_size: 32}
    stages:
      "layer*":
        width: {choices: [0.5, 1.0]}
        depth: {choices: [1, 2]}
    blocks:
      "layer[12].*":
        attention:
          choices: [none, se, dsa]
          dsa: {threshold: {float: [0.1, 0.7]}}
    """)

MOBILENET = textwrap.dedent("""\
    name: mnv2knobs
    model: {name: mobilenetv2_050, args: {num_classes: 10, in_chans: 1}}
    data: {dataset: digits, image_size: 32}
    stages:
      "blocks.[12]":
        channels: {choices: [8, 16]}
        depth: {int: [1, 2]}
    blocks:
      "blocks.[1-3].*":
        attention: {choices: [none, eca]}
        expansion: {choices: [3, 6]}
        kernel: {choices: [3, 5]}
    """)


def sample(space, seed, n):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        arch = space.sample(trial)
        out.append((trial.params, arch))
    return out


def test_resnet_knobs_become_timm_layers_and_channels():
    space = loads(RESNET)
    for params, arch in sample(space, 0, 6):
        args = arch["model_args"]
        assert args["layers"] == [params[f"layer{i}.depth"] for i in range(1, 5)]
        assert args["channels"] == [int(c * params[f"layer{i}.width"]) for i, c in
                                    zip(range(1, 5), (16, 32, 64, 128))]
        model = build_model(arch)
        plain = timm.create_model("resnet18", num_classes=10, in_chans=1, layers=args["layers"],
                                  channels=args["channels"])
        assert sum(p.numel() for p in model.parameters()) >= sum(p.numel() for p in plain.parameters())
        # a block that the depth removed is neither in the Arch nor asked about
        for i in range(1, 5):
            removed = f"layer{i}.1"
            if params[f"layer{i}.depth"] == 1 and i <= 2:
                assert removed not in arch["blocks"]
                assert not any(k.startswith(removed + ".") for k in params)
            elif i <= 2:
                assert removed in arch["blocks"] and f"{removed}.attention" in params


def test_baseline_is_the_declared_model_and_baseline_params_reach_it():
    space = loads(RESNET)
    assert space.baseline()["model_args"]["layers"] == [2, 2, 2, 2]
    assert space.baseline()["model_args"]["channels"] == [16, 32, 64, 128]
    study = optuna.create_study()
    study.enqueue_trial(space.baseline_params())
    assert space.sample(study.ask()) == space.baseline()


# Anchors need a baseline strictly inside the knobs' range: a width above 1, every depth kept
ANCHORED = {"resnet": RESNET.replace("width: {choices: [0.5, 1.0]}", "width: {choices: [0.5, 1.0, 1.5]}"),
            "mobilenetv2": MOBILENET.replace("    depth: {int: [1, 2]}\n", "")}


@pytest.mark.parametrize("family", list(ANCHORED))
def test_anchors_are_the_baseline_then_the_cheapest_and_dearest_structure(family):
    text = ANCHORED[family]
    space = loads(text)
    first = space.first_points()
    assert len(first) == 3
    study = optuna.create_study()
    for point in first:
        study.enqueue_trial(point)
    archs = [space.sample(study.ask()) for _ in first]
    assert archs == [space.baseline(), space.extreme_arch(False), space.extreme_arch(True)]
    assert all(b["attention"] == "none" for a in archs for b in a["blocks"].values())
    macs = [measure(build_model(a), space.input_size).macs for a in archs]
    assert macs[1] < macs[0] < macs[2]
    if family == "resnet":
        assert archs[1]["model_args"]["layers"] == [1, 1, 1, 1]
        assert archs[1]["model_args"]["channels"] == [8, 16, 32, 64]
        assert archs[2]["model_args"]["channels"] == [24, 48, 96, 192]
    # search.anchors: false leaves the baseline alone
    assert loads(text.replace("name: ", "search: {anchors: false}\nname: ", 1)).first_points() == first[:1]


def test_anchors_that_equal_the_baseline_are_evaluated_once():
    # RESNET's baseline is its dearest structure (width 1.0 and depth 2 are the largest values)
    space = loads(RESNET)
    assert space.first_points() == [space.baseline_params(), space.extreme_params(largest=False)]
    no_knobs = loads(RESNET.split("stages:")[0] + "blocks:" + RESNET.split("blocks:")[1])
    assert no_knobs.first_points() == [no_knobs.baseline_params()]


def test_anchors_must_be_a_boolean():
    with pytest.raises(SpaceError, match=r"search.anchors: expected true or false, got the string 'yes'"):
        loads(RESNET + "search: {anchors: 'yes'}\n")


def test_mac_range_spans_the_knobs():
    space = loads(RESNET)
    base, low, high = mac_range(space)
    smallest = measure(build_model(space.extreme_arch(False)), space.input_size).macs
    assert base == measure(build_model(space.baseline()), space.input_size).macs
    assert low == smallest  # none of the attention choices is cheaper than none
    assert high >= base > 2 * low


def test_mobilenetv2_arch_def_rebuilds_timm_exactly():
    arch_def = mobilenetv2_arch_def("mobilenetv2_050")
    assert arch_def[1] == ["ir_r1_k3_s2_e6_c16"] * 2
    ours = build_model({"model": "mobilenetv2_050", "model_args": {"num_classes": 10}, "blocks": {},
                        "arch_def": arch_def})
    theirs = timm.create_model("mobilenetv2_050", num_classes=10)
    assert str(ours) == str(theirs)
    assert [t.shape for t in ours.state_dict().values()] == [t.shape for t in theirs.state_dict().values()]


def test_mobilenetv2_knobs_reach_the_blocks():
    space = loads(MOBILENET)
    for params, arch in sample(space, 1, 2):
        model = build_model(arch)
        for stage in (1, 2):
            blocks = model.blocks[stage]
            assert len(blocks) == params[f"blocks.{stage}.depth"]
            for j, block in enumerate(blocks):
                assert block.conv_pwl.out_channels == params[f"blocks.{stage}.channels"]
                assert block.conv_dw.kernel_size == (params[f"blocks.{stage}.{j}.kernel"],) * 2
                assert block.conv_pw.out_channels == block.conv_pw.in_channels * params[f"blocks.{stage}.{j}.expansion"]
            assert f"blocks.{stage}.1.kernel" in params if len(blocks) == 2 else f"blocks.{stage}.1.kernel" not in params
        model(torch.zeros(2, 1, 32, 32))
    json.dumps(arch)


def test_knob_arch_reloads_through_the_timm_entrypoint(tmp_path):
    space = loads(MOBILENET)
    arch = sample(space, 2, 1)[0][1]
    model = timm.create_model("nas_attn_cnn", arch=arch)
    from timm.models import save_for_hf
    save_for_hf(model, str(tmp_path), model_args={"arch": arch}, safe_serialization=True)
    again = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


DEEP_STEM = textwrap.dedent("""\
    name: stemknob
    model:
      name: resnet18
      args: {num_classes: 10, in_chans: 1, layers: [1, 1, 1, 1], channels: [16, 32, 64, 128], stem_type: deep, stem_width: 8}
      channel_divisor: 4
    data: {dataset: digits, image_size: 32}
    stages:
      stem:
        width: {choices: [0.5, 1.0, 2.0]}
      "*":
        width: {choices: [0.5, 1.0]}
    blocks:
      "layer1.*":
        attention: {choices: [none, se]}
    """)


def test_stem_width_becomes_timm_stem_width_and_the_stem_convs_follow():
    space = loads(DEEP_STEM)
    seen = set()
    for params, arch in sample(space, 0, 12):
        width = arch["model_args"]["stem_width"]
        assert width == {0.5: 4, 1.0: 8, 2.0: 16}[params["stem.width"]]
        seen.add(width)
        model = build_model(arch)
        # timm's deep stem: 3x3 convs of stem_width, stem_width, 2 x stem_width channels
        convs = [m for m in model.conv1 if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [width, width, 2 * width]
        assert model.layer1[0].conv1.in_channels == 2 * width
    assert seen == {4, 8, 16}
    # the "*" glob gave the block stages a width but not the stem (which only the key "stem" names)
    assert [st.name for st in space.stages] == ["layer1", "layer2", "layer3", "layer4"]
    assert space.baseline()["model_args"]["stem_width"] == 8
    assert "stem.width" in space.baseline_params()
    from nas_attn.describe import describe_space
    shown = describe_space(space, detail=True)
    assert "stem         stem_width 8 (base): width {0.5, 1.0, 2.0}" in shown
    assert "stages     5 of 5 with cost knobs (channel divisor 4)" in shown


def test_stem_width_changes_the_macs_by_the_stem_convs_hand_computed():
    space = loads(DEEP_STEM)
    base = space.baseline()
    wide = {**base, "model_args": {**base["model_args"], "stem_width": 16}}
    # 32x32 input: the stem's first conv (stride 2) and the next two run at 16x16, then
    # layer1.0.conv1 (3x3, 2w -> 16 channels) at 8x8 and, when 2w != 16, its 1x1 downsample.
    def stem_and_first_conv(w):
        stem = 16 * 16 * 9 * (1 * w + w * w + w * 2 * w)
        return stem + 8 * 8 * 9 * 2 * w * 16 + (8 * 8 * 2 * w * 16 if 2 * w != 16 else 0)
    got = measure(build_model(wide), space.input_size).macs - measure(build_model(base), space.input_size).macs
    assert got == stem_and_first_conv(16) - stem_and_first_conv(8)


def test_mobilenetv2_stem_width_is_timm_stem_size(tmp_path):
    text = MOBILENET.replace('  "blocks.[12]":', '  stem:\n    channels: {choices: [8, 24]}\n  "blocks.[12]":')
    space = loads(text)
    assert space.stem.channels == 16  # mobilenetv2_050: 32 x 0.5
    for params, arch in sample(space, 1, 4):
        model = build_model(arch)
        assert model.conv_stem.out_channels == arch["model_args"]["stem_size"] == params["stem.channels"]
        assert model.blocks[0][0].conv_dw.in_channels == params["stem.channels"]
    from timm.models import save_for_hf
    model = timm.create_model("nas_attn_cnn", arch=arch)
    save_for_hf(model, str(tmp_path), model_args={"arch": arch}, safe_serialization=True)
    again = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert again.conv_stem.out_channels == params["stem.channels"]


KNOB_ERRORS = {
    "channels_not_multiple": (RESNET.replace("width: {choices: [0.5, 1.0]}", "channels: {choices: [16, 12]}"),
                              6, 'stages."layer*".channels.choices[1]', "multiple of the channel divisor 8"),
    "depth_zero": (RESNET.replace("depth: {choices: [1, 2]}", "depth: {choices: [0, 2]}"), 7,
                   'stages."layer*".depth.choices[0]', "must be > 0"),
    "depth_too_deep": (RESNET.replace("depth: {choices: [1, 2]}", "depth: {int: [1, 3]}"), 7,
                       'stages."layer*".depth', "more than the 2 block(s) of stage layer1"),
    "width_and_channels": (RESNET.replace("depth: {choices: [1, 2]}", "channels: [16]"), 5,
                           'stages."layer*"', "not both"),
    "stage_glob": (RESNET.replace('"layer*":', '"stage*":'), 5, 'stages."stage*"', "matches no stage"),
    "expansion_on_resnet": (RESNET.replace("dsa: {threshold: {float: [0.1, 0.7]}}",
                                           "dsa: {threshold: {float: [0.1, 0.7]}}\n    expansion: {choices: [3]}"),
                            13, 'blocks."layer[12].*".expansion', "ResNet blocks have none"),
    "even_kernel": (MOBILENET.replace("kernel: {choices: [3, 5]}", "kernel: {choices: [3, 4]}"), 12,
                    'blocks."blocks.[1-3].*".kernel.choices[1]', "must be odd"),
    "expansion_on_ds_block": (MOBILENET.replace('"blocks.[1-3].*"', '"blocks.[0-3].*"'), 11,
                              'blocks."blocks.[0-3].*".expansion', "depthwise-separable"),
    "float_expansion_range": (MOBILENET.replace("expansion: {choices: [3, 6]}", "expansion: {float: [3, 6]}"), 11,
                              'blocks."blocks.[1-3].*".expansion', "not a float range"),
    "stem_of_a_7x7_resnet": (RESNET.replace('  "layer*":', '  stem: {width: {choices: [0.5, 1.0]}}\n  "layer*":'),
                             5, "stages.stem", "7x7 ResNet stem has 64 channels"),
    "stem_depth": (DEEP_STEM.replace("width: {choices: [0.5, 1.0, 2.0]}", "depth: {choices: [1]}"), 9,
                   "stages.stem.depth", "the stem has no blocks"),
    "stem_channels_not_multiple": (DEEP_STEM.replace("width: {choices: [0.5, 1.0, 2.0]}", "channels: {choices: [8, 6]}"),
                                   9, "stages.stem.channels.choices[1]", "multiple of the channel divisor 4"),
    "stem_of_efficientnet": (MOBILENET.replace("mobilenetv2_050", "efficientnet_b0").replace(
                                 '  "blocks.[12]":', '  stem:\n    width: {choices: [1.0]}\n  "blocks.[12]":'),
                             4, "stages", "need one of mobilenetv2_035"),
}


@pytest.mark.parametrize("case", sorted(KNOB_ERRORS))
def test_bad_knob_names_file_line_key(case):
    text, line, key, words = KNOB_ERRORS[case]
    with pytest.raises(SpaceError) as info:
        loads(text, file="k.yaml")
    assert (info.value.line, info.value.key_path) == (line, key), str(info.value)
    assert words in str(info.value)


def test_arch_def_only_for_mobilenetv2():
    with pytest.raises(ArchError, match="mobilenetv2_100"):
        build_model({"model": "resnet18", "blocks": {}, "arch_def": [["ir_r1_k3_s1_e6_c16"]]})
    with pytest.raises(ArchError, match="cannot decode"):
        build_model({"model": "mobilenetv2_050", "blocks": {}, "arch_def": [["zz_r1_q3"]]})


def test_summaries_show_the_structure():
    from nas_attn.arch import arch_summary
    space = loads(RESNET)
    arch = space.extreme_arch(False)
    assert arch_summary(arch) == "ch 8/16/32/64; no attention"
    assert arch_summary(space.baseline()).startswith("ch 16/32/64/128 x2/2/2/2; ")
    assert arch_summary(loads(DEEP_STEM).extreme_arch(False)) == "stem 4 ch 8/16/32/64; no attention"
    mnv2 = loads(MOBILENET).extreme_arch(True)
    assert arch_summary(mnv2).startswith("c 8/16/16/32/48/80/160 d 1/2/2/4/3/3/1")


def test_default_space_can_trade_at_least_3x_in_macs():
    from nas_attn.space import load
    space = load("cluttered_resnet")
    macs = [measure(build_model(space.extreme_arch(big)), space.input_size).macs for big in (False, True)]
    assert macs[1] / macs[0] >= 3.0
    assert space.data["dataset"] == "cluttered_digits" and space.search["trials"] == 12
    # trial 0 of the default search is exactly the declared base model, gates included
    study = optuna.create_study()
    study.enqueue_trial(space.baseline_params())
    assert space.sample(study.ask()) == space.baseline()
    assert all(c["gate"] is None for c in space.baseline()["blocks"].values())
