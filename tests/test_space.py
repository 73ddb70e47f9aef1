"""Search-space loading, validation errors, sampling and the summary CLI."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from conftest import run_cli_in_process as run_cli
from nas_attn import space as space_mod
from nas_attn.space import SpaceError, load, loads

GOOD = textwrap.dedent("""\
    name: tiny
    model: {name: resnet18, args: {num_classes: 10, in_chans: 1}}
    data: {dataset: digits, image_size: 32}
    train: {epochs: 1, batch_size: 32, lr: 0.05}
    objectives:
      - {metric: accuracy, direction: maximize, ref: 0.0}
      - {metric: macs, direction: minimize, ref: 5.0e7}
    blocks:
      "layer[12].*":
        attention:
          choices: [none, se, dsa]
          dsa: {threshold: {float: [0.1, 0.7]}, reduce: {choices: [mean, max]}}
          se: {rd_ratio: 0.25}
        aw_conv: {choices: [false, true]}
    search: {trials: 4, concurrent: 1, sampler: random, seed: 3}
    """)


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load(path)
    return info.value, str(path)


def test_good_space_loads_with_defaults(tmp_path):
    space = load(write(tmp_path, GOOD))
    assert space.name == "tiny"
    assert space.input_size == (1, 32, 32)
    assert [d.unit for d in space.decisions] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert space.train["optimizer"] == "sgd"  # default filled in
    assert space.reference_point() == [0.0, 5.0e7]
    # 4 blocks, each: none | se | dsa(threshold float -> infinite)
    assert space.structure_count() == (3 * 2) ** 4
    assert space.count_architectures() == float("inf")


# Every validation error: (yaml text transform, expected line, expected key path, words in message)
CASES = {
    "yaml_syntax": (GOOD.replace("train: {epochs: 1,", "train: {epochs: 1,,["), 4, "", "YAML syntax error"),
    "unknown_top_key": (GOOD.replace("blocks:", "blokcs:\n  x: 1\nblocks:", 1), 8, "blokcs", "did you mean 'blocks'"),
    "unknown_nested_key": (GOOD.replace("lr: 0.05", "lr: 0.05, epoch: 3"), 4, "train.epoch", "did you mean 'epochs'"),
    "wrong_type": (GOOD.replace("epochs: 1", "epochs: four"), 4, "train.epochs", "expected an integer"),
    "empty_choices": (GOOD.replace("choices: [none, se, dsa]", "choices: []"), 11,
                      'blocks."layer[12].*".attention.choices', "non-empty list"),
    "low_above_high": (GOOD.replace("float: [0.1, 0.7]", "float: [0.7, 0.1]"), 12,
                       'blocks."layer[12].*".attention.dsa.threshold.float', "low must be <= high"),
    "dsa_threshold_range": (GOOD.replace("float: [0.1, 0.7]", "float: [0.1, 1.0]"), 12,
                            'blocks."layer[12].*".attention.dsa.threshold', "threshold"),
    "unknown_module": (GOOD.replace("[none, se, dsa]", "[none, sqe, dsa]"), 11,
                       'blocks."layer[12].*".attention.choices[1]', "unknown attention module 'sqe'"),
    "unknown_hyperparameter": (GOOD.replace("se: {rd_ratio: 0.25}", "se: {rd_ration: 0.25}"), 13,
                               'blocks."layer[12].*".attention.se.rd_ration', "did you mean 'rd_ratio'"),
    "unknown_model": (GOOD.replace("name: resnet18", "name: resnet181"), 2, "model.name", "unknown timm model"),
    "unsupported_family": (GOOD.replace("name: resnet18", "name: vit_tiny_patch16_224")
                           .replace(", in_chans: 1", ""), 2, "model.name", "not supported"),
    "glob_matches_nothing": (GOOD.replace('"layer[12].*"', '"stage9.*"'), 9, 'blocks."stage9.*"',
                             "matches no block"),
    "unknown_dataset": (GOOD.replace("dataset: digits", "dataset: mnist"), 3, "data.dataset", "expected one of"),
    "zero_epochs": (GOOD.replace("epochs: 1", "epochs: 0"), 4, "train.epochs", ">= 1"),
    "zero_batch": (GOOD.replace("batch_size: 32", "batch_size: -2"), 4, "train.batch_size", ">= 1"),
    "zero_trials": (GOOD.replace("trials: 4", "trials: 0"), 15, "search.trials", ">= 1"),
    "unknown_metric": (GOOD.replace("metric: macs", "metric: flops"), 7, "objectives[1].metric", "expected one of"),
    "aw_conv_in_attention": (GOOD.replace("[none, se, dsa]", "[none, aw_conv]"), 11,
                             'blocks."layer[12].*".attention.choices[1]', "aw_conv replaces a conv"),
    "bad_tie": (GOOD.replace("aw_conv: {choices: [false, true]}", "aw_conv: {choices: [false, true]}\n    tie: block"),
                15, 'blocks."layer[12].*".tie', "expected one of stage"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_mistake_names_file_line_key_and_expectation(tmp_path, case):
    text, line, key_path, words = CASES[case]
    error, path = error_of(tmp_path, text)
    assert error.file == path
    assert error.line == line, str(error)
    assert error.key_path == key_path, str(error)
    assert words in str(error), str(error)
    assert str(error).startswith(f"{path}:{line}: ")


def test_name_finds_shipped_space_and_unknown_name_is_clear():
    space = load("digits_resnet")
    assert space.path.endswith("digits_resnet.yaml")
    with pytest.raises(SpaceError, match="did you mean 'digits_resnet'"):
        load("digits_resent")


def test_yaml_is_read_safely(tmp_path):
    text = GOOD.replace("name: tiny", "name: !!python/object/apply:os.system ['echo pwned']")
    with pytest.raises(SpaceError, match="YAML syntax error"):
        load(write(tmp_path, text))


@pytest.mark.parametrize("name", sorted(space_mod.shipped_spaces()))
def test_every_shipped_space_validates(name):
    space = load(name)
    assert space.decisions
    baseline = space.baseline()
    assert all(b["attention"] == "none" and b["aw_conv"] is None for b in baseline["blocks"].values())


def test_digits_spaces_search_only_blocks_that_see_at_least_4x4():
    from nas_attn.arch import feature_map_sizes
    for name in ("digits_resnet", "digits_mobilenetv2", "cluttered_resnet"):
        space = load(name)
        sizes = feature_map_sizes(space.build(space.baseline()), space.input_size)
        for decision in space.decisions:
            for block in decision.blocks:
                assert min(sizes[block][1:]) >= 4, (name, block, sizes[block])


def sample_many(space, n=40, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((space.sample(trial), dict(trial.params)))
        study.tell(trial, 0.0)
    return out


def test_hyperparameters_are_sampled_only_for_the_chosen_module(tmp_path):
    space = load(write(tmp_path, GOOD))
    seen = set()
    for arch, params in sample_many(space):
        for block, choice in arch["blocks"].items():
            seen.add(choice["attention"])
            threshold_key = f"{block}.dsa.threshold"
            if choice["attention"] == "dsa":
                assert threshold_key in params
                assert 0.1 <= choice["attention_kwargs"]["threshold"] <= 0.7
                assert choice["attention_kwargs"]["reduce"] in ("mean", "max")
            else:
                assert threshold_key not in params
            if choice["attention"] == "se":
                assert choice["attention_kwargs"] == {"rd_ratio": 0.25}  # a fixed value
            assert choice["aw_conv"] in (None, {})
    assert seen == {"none", "se", "dsa"}


def test_tie_stage_shares_one_decision_per_stage(tmp_path):
    space = loads(GOOD.replace("aw_conv: {choices: [false, true]}", "aw_conv: {choices: [false, true]}\n    tie: stage"))
    assert [(d.unit, d.blocks) for d in space.decisions] == [("layer1", ["layer1.0", "layer1.1"]),
                                                             ("layer2", ["layer2.0", "layer2.1"])]
    for arch, params in sample_many(space, n=15):
        assert arch["blocks"]["layer1.0"] == arch["blocks"]["layer1.1"]
        assert arch["blocks"]["layer2.0"] == arch["blocks"]["layer2.1"]
        assert all(not k.startswith("layer1.0") for k in params)


def test_later_glob_overrides_earlier(tmp_path):
    text = GOOD.replace("    search:", "") + ""
    text = GOOD.replace('search: {', '  "layer2.1":\n    attention: {choices: [eca]}\nsearch: {')
    space = loads(text)
    last = [d for d in space.decisions if d.unit == "layer2.1"][0]
    assert list(last.rule.attention) == ["eca"]
    for arch, _ in sample_many(space, n=5):
        assert arch["blocks"]["layer2.1"]["attention"] == "eca"


def test_baseline_params_reach_the_baseline(tmp_path):
    space = load(write(tmp_path, GOOD))
    trial = optuna.trial.FixedTrial(space.baseline_params())
    assert space.sample(trial) == space.baseline()


def test_arch_is_json_serialisable(tmp_path):
    space = load(write(tmp_path, GOOD))
    for arch, _ in sample_many(space, n=10):
        assert json.loads(json.dumps(arch)) == arch


def test_validate_prints_summary_and_exits_zero():
    result = run_cli("validate", "digits_resnet")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "digits_resnet: OK" in out
    assert "4 of 8 searched" in out
    assert "layer1.0" in out and "dsa(threshold=[0.0, 0.8]" in out
    assert "architectures infinite" in out and "module structures" in out
    assert "MACs per image" in out and "cheapest" in out and "dearest" in out


def test_validate_error_exits_2_without_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("epochs: 1", "epochs: 0"))
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path}:4: train.epochs" in result.stderr


def test_space_show_lists_every_block():
    result = run_cli("space", "show", "digits_resnet")
    assert result.returncode == 0, result.stderr
    for block in ("layer1.0", "layer2.1", "layer3.0", "layer4.1"):
        assert block in result.stdout
    assert "not searched" in result.stdout


def test_shipped_spaces_are_found_after_a_non_editable_install(tmp_path):
    # Build from a copy: setuptools writes build/ next to the sources it builds.
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "nas_attn", "search_spaces"):
        copy = shutil.copytree if (root / name).is_dir() else shutil.copy
        copy(root / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (root / name).is_dir() else {}))
    target = tmp_path / "site"
    # --no-build-isolation: the venv's own setuptools builds it (pyproject's build-system asks for
    # setuptools and wheel, which the venv has); an isolated build first installs them into a
    # throw-away environment, half of this test's time, and tests nothing about nas_attn.
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    probe = ("import nas_attn.space as s; print(s.__file__); "
             "print(sorted(s.shipped_spaces())); print(s.load('digits_resnet').name)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    assert result.returncode == 0, result.stderr
    file, names, loaded = result.stdout.strip().splitlines()[-3:]
    assert file.startswith(str(target))
    assert "digits_resnet" in names and "imagenet_resnet50" in names and loaded == "digits_resnet"
