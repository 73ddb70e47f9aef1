"""Bad input on the command line: one line naming file/line/key/flag and the bad value, exit 2,
no traceback, nothing in a results folder changed. Runs nas_attn.cli.main in-process (no Ray:
every failure here must happen before Ray starts)."""
import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from nas_attn.cli import main

GOOD = textwrap.dedent("""\
    name: tiny
    model: {name: resnet18, args: {num_classes: 10, in_chans: 1}}
    data: {dataset: digits, image_size: 16}
    train: {epochs: 1, batch_size: 64}
    blocks:
      "layer1.*":
        attention: {choices: [none, se]}
        aw_conv: {choices: [false, true]}
    """)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


# (bad space text, what the one-line error must contain)
BAD_SPACES = [
    (b"name: tiny\xff\n" + GOOD.encode()[len("name: tiny\n"):], ["space.yaml:1", "not UTF-8", "0xff"]),
    (GOOD.replace("in_chans: 1}", "in_chans: 1, drop_rate: 2.0}"), ["space.yaml:2", "model.args.drop_rate", "2.0"]),
    (GOOD.replace("in_chans: 1", "in_chans: 3"), ["space.yaml:2", "model.args.in_chans", "in_chans: 3", "1 channel"]),
    (GOOD.replace(", in_chans: 1", ""), ["space.yaml:2", "model.args.in_chans", "timm's default 3"]),
    (GOOD.replace("num_classes: 10", "num_classes: 5"), ["space.yaml:2", "model.args.num_classes", "5", "10 classes"]),
    (GOOD.replace("image_size: 16", "image_size: 4"), ["space.yaml:3", "data.image_size", "4x4", "too small"]),
    (GOOD.replace("batch_size: 64", "batch_size: 1").replace("image_size: 16", "image_size: 32"),
     ["space.yaml:4", "train.batch_size", "batch_size 1"]),
    (GOOD.replace("aw_conv: {choices: [false, true]}", "aw_conv: {choices: [false, maybe]}"),
     ["space.yaml:8", "aw_conv.choices[1]", "'maybe'"]),
    (GOOD.replace("choices: [none, se]", "choices: []"), ["space.yaml:7", "attention.choices", "empty list"]),
    # CPSAM's key_groups (added in issue 11): an int >= 1
    (GOOD.replace("attention: {choices: [none, se]}", "attention: {choices: [none, cpsam], cpsam: {key_groups: {choices: [0, 4]}}}"),
     ["space.yaml:7", "attention.cpsam.key_groups", "int in [1, inf)", "got 0"]),
    (GOOD.replace("attention: {choices: [none, se]}", "attention: {choices: [none, cpsam], cpsam: {key_groups: {choices: [x]}}}"),
     ["space.yaml:7", "attention.cpsam.key_groups", "got 'x'"]),
    (GOOD.replace("epochs: 1", "epochs: four"), ["space.yaml:4", "train.epochs", "'four'"]),
    (GOOD.replace("resnet18", "vit_tiny_patch16_224"), ["space.yaml:2", "vit_tiny_patch16_224", "not supported"]),
    ("model: [", ["space.yaml", "YAML syntax error"]),
    ("", ["space.yaml", "expected a mapping"]),
]


@pytest.mark.parametrize("text,expected", BAD_SPACES, ids=[e[0] for _, e in BAD_SPACES])
def test_validate_names_file_line_key_and_value(tmp_path, capsys, text, expected):
    code, out, err = run(capsys, "validate", write(tmp_path, text))
    assert code == 2, (out, err)
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1, err
    for piece in expected:
        assert piece in err, (piece, err)


def test_validate_a_folder_says_it_is_a_folder(tmp_path, capsys):
    code, _, err = run(capsys, "validate", str(tmp_path))
    assert code == 2 and "is a folder" in err and "no such file" not in err


def test_cost_checks_the_attention_name_before_measuring(monkeypatch, capsys):
    import nas_attn.describe as describe

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured before checking --attn")
    monkeypatch.setattr(describe, "measure", no_measuring)
    code, _, err = run(capsys, "cost", "--model", "resnet18", "--attn", "nope")
    assert code == 2 and "--attn" in err and "'nope'" in err and "Traceback" not in err


def test_cost_with_aw_conv_adds_up_per_block(capsys):
    code, out, err = run(capsys, "cost", "--model", "resnet18", "--attn", "aw_conv", "--input", "3x32x32", "--json")
    assert code == 0, err
    report = json.loads(out)
    blocks = report["blocks"]
    assert report["macs"] > report["baseline"]["macs"]
    assert sum(b["macs"] for b in blocks.values()) == report["macs"] - report["baseline"]["macs"]
    assert sum(b["params"] for b in blocks.values()) == report["params"] - report["baseline"]["params"]
    assert blocks["layer1.0"]["feature_map"] == [64, 8, 8]   # conv2's input at 32x32 with the ImageNet stem


def test_cost_names_the_unsupported_model(capsys):
    code, _, err = run(capsys, "cost", "--model", "vit_tiny_patch16_224")
    assert code == 2 and "vit_tiny_patch16_224" in err


# --------------------------------------------------------------------------------------------
# property: every subcommand, every malformed input -> exit 2 (argparse or ours), no traceback,
# and a results folder that is read is left byte for byte as it was.

def _results_folder(tmp_path, trials_text):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "space.yaml").write_text(GOOD)
    (run_dir / "trials.jsonl").write_text(trials_text)
    (run_dir / "pareto.json").write_text("[]")
    (run_dir / "ray").mkdir()
    return run_dir


def _checksum(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def malformed_commands(tmp_path):
    bad_space = write(tmp_path, BAD_SPACES[0][0], "bad.yaml")
    folder = str(tmp_path)
    return [
        ["validate", bad_space], ["validate", folder], ["validate", "no_such_space"],
        ["space", "show", bad_space], ["space", "show", folder],
        ["cost", "--model", "resnet18", "--attn", "nope"], ["cost", "--model", "nope"],
        ["cost", "--model", "resnet18", "--input", "3x0x0"], ["cost", "--model", "resnet18", "--batch-size", "0"],
        ["search", "--space", bad_space, "--out", str(tmp_path / "out")],
        ["search", "--space", folder], ["search", "--trials", "0"], ["search", "--cpus-per-trial", "-1"],
        ["search", "--resume", str(tmp_path / "missing")],
        ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--pareto"],
        ["export", "RUN", "--out", str(tmp_path / "x"), "--trial", "1", "--best", "accuracy"],
        ["plot", str(tmp_path / "missing")], ["plot", "RUN", "--ref", "nope"],
        ["report", str(tmp_path / "missing")],
        ["nope"], [],
    ]


def test_no_subcommand_prints_a_traceback_or_exits_1(tmp_path, capsys):
    for argv in malformed_commands(tmp_path):
        try:
            code = main(argv)
        except SystemExit as exc:   # argparse: usage error
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 2, (argv, code, err)
        assert "Traceback" not in out + err, (argv, err)
        assert err.strip(), argv


TRUNCATED = '{"number": 0, "status": "ok", "arch": null, "metrics": {}}\n{"number": 1, "sta'


@pytest.mark.parametrize("argv", [["export", "RUN", "--out", "OUT", "--pareto"], ["plot", "RUN"], ["report", "RUN"]])
def test_truncated_trials_file_is_named_with_its_line_and_left_untouched(tmp_path, capsys, argv):
    run_dir = _results_folder(tmp_path, TRUNCATED)
    before = _checksum(run_dir)
    argv = [str(run_dir) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and "Traceback" not in out + err, err
    assert "trials.jsonl:2" in err, err
    assert _checksum(run_dir) == before


# ------------------------------------------------------------------ search outcomes (no Ray)
def test_resume_refuses_every_override_it_would_ignore(tmp_path, capsys):
    from nas_attn import cli
    run_dir = tmp_path / "run"
    (run_dir / "ray").mkdir(parents=True)
    (run_dir / "space.yaml").write_text("unused: the flags are refused first\n")
    before = sorted(p.name for p in run_dir.rglob("*"))
    for flag, value in (("--trials", "30"), ("--epochs", "9"), ("--concurrent", "1"), ("--confirm", "2")):
        assert cli.main(["search", "--resume", str(run_dir), flag, value]) == 2
        err = capsys.readouterr().err
        assert flag in err and "cannot change" in err and "Traceback" not in err
    assert sorted(p.name for p in run_dir.rglob("*")) == before


@pytest.mark.parametrize("per_trial, cluster, words", [
    ({"cpu": 1, "gpu": 1}, {"CPU": 2.0}, ["1 GPU(s)", "--gpus-per-trial", "has 0"]),
    ({"cpu": 4, "gpu": 0}, {"CPU": 2.0, "GPU": 1.0}, ["4 CPU(s)", "--cpus-per-trial", "has 2"]),
])
def test_resources_no_cluster_can_give_are_refused(per_trial, cluster, words):
    from nas_attn.search import SearchError
    from nas_attn.search._driver import check_resources
    with pytest.raises(SearchError) as info:
        check_resources(per_trial, cluster)
    assert all(word in str(info.value) for word in words)
    check_resources({"cpu": 2, "gpu": 0.5}, {"CPU": 2.0, "GPU": 1.0})  # fits: no error


@pytest.mark.parametrize("statuses, interrupted, code", [
    (["ok", "failed"], False, 0), (["failed", "infeasible"], False, 3), (["ok"], True, 130), ([], True, 130)])
def test_search_exit_code_says_whether_any_trial_finished(monkeypatch, statuses, interrupted, code):
    from nas_attn import cli, search
    from nas_attn.search import SearchResult

    def fake_run(*args, **kwargs):
        return SearchResult(run_dir=Path("x"), trials=[{"status": s} for s in statuses], pareto=[],
                            space=None, interrupted=interrupted)
    monkeypatch.setattr(search, "run", fake_run)
    assert cli.main(["search"]) == code
