"""Export: trial results folders -> timm folders that plain timm loads with the trained weights.

The results folder the tests export from is written by :func:`write_run_in_process`: real
trials (:func:`nas_attn.trial.run_trial`, the function a search's Ray workers run) trained in
this process, recorded with the search's own writer (``results.write_trials``). Export reads
only that folder, so a Ray search around the trials checked nothing more here and cost ~20 CPU-s
(two trial workers importing torch and timm); the search -> export path itself is run in
test_plugins.py (a real search in a fresh process, exported and reloaded in plain timm)."""
import copy
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from nas_attn import results
from nas_attn.export import ExportError, export, select

from conftest import run_cli_in_process


def export_space(tiny_space):
    from nas_attn.space import loads
    return loads(tiny_space(name="export_digits", attention="{choices: [none, dsa, sca]}",
                            aw_conv="{choices: [false, true]}", constraints=None, trials=3, seed=2))


def export_archs(space):
    """Trial 0 the baseline; trial 1 DSA and AW-conv in layer1.0 and SCA in layer1.1 (every
    module export must carry); trial 2 a DSA gate in layer1.1 with AW-conv in layer1.0."""
    baseline = space.baseline()
    both = copy.deepcopy(baseline)
    both["blocks"]["layer1.0"] = {"attention": "dsa", "attention_kwargs": {"threshold": 0.5}, "aw_conv": {}}
    both["blocks"]["layer1.1"] = {"attention": "sca", "attention_kwargs": {"kernel_size": 3}, "aw_conv": None}
    other = copy.deepcopy(baseline)
    other["blocks"]["layer1.0"] = {"attention": "none", "attention_kwargs": {}, "aw_conv": {}}
    other["blocks"]["layer1.1"] = {"attention": "dsa", "attention_kwargs": {"threshold": 0.2}, "aw_conv": None}
    return [baseline, both, other]


def write_run_in_process(space, archs, run_dir):
    """A results folder laid out as a search writes it (space.yaml, trials.jsonl, pareto.json,
    each trial's weights in ``ray/trial_NNNN/checkpoint_000000``), its trials run in this process."""
    from nas_attn.trial import run_trial, settings_from_space
    run_dir.mkdir()
    (run_dir / results.SPACE_FILE).write_text(space.to_yaml())
    records = []
    for number, arch in enumerate(archs):
        checkpoint = f"ray/trial_{number:04d}/checkpoint_000000"

        def report(metrics, checkpoint_dir=None):
            if checkpoint_dir is not None:  # run_trial deletes its folder after the report
                shutil.copytree(checkpoint_dir, run_dir / checkpoint)

        final = run_trial(arch, settings_from_space(space), report, gpu_ids=[])
        assert final["status"] == "ok", final
        metrics = {k: v for k, v in final.items() if k not in ("status", "device")}
        records.append({"number": number, "status": "ok", "arch": arch, "checkpoint": checkpoint,
                        "device": final["device"], "metrics": metrics, "retries": 0})
    results.write_trials(run_dir, records, space.objectives)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_space):
    space = export_space(tiny_space)
    return write_run_in_process(space, export_archs(space), tmp_path_factory.mktemp("export") / "run")


LOAD_AND_EVALUATE = textwrap.dedent("""\
    import json, sys, torch
    torch.set_num_threads(1)
    import timm, nas_attn
    from nas_attn import data, train
    dataset, size, fraction, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    bundle = data.load(dataset, image_size=size, val_fraction=fraction, seed=seed)
    for folder in sys.argv[5:]:
        model = timm.create_model("local-dir:" + folder, pretrained=True)
        again = nas_attn.load(folder)
        a, b = model.state_dict(), again.state_dict()
        same = list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # same keys, then same values
        accuracy, _ = train.evaluate(model, bundle)
        print(json.dumps({"folder": folder, "accuracy": accuracy, "same": same, "cls": type(model).__name__}))
    """)


def test_exported_pareto_folders_load_in_plain_timm_with_the_trial_accuracy(run_dir, tmp_path):
    out = tmp_path / "models"
    folders = export(run_dir, out, pareto=True)
    pareto = json.loads((run_dir / results.PARETO_FILE).read_text())
    assert [f.name for f in folders] == [f"trial-{r['number']:04d}" for r in pareto]
    for folder, record in zip(folders, pareto):
        config = json.loads((folder / "config.json").read_text())
        assert config["architecture"] == "nas_attn_cnn"
        assert config["model_args"]["arch"] == record["arch"]
        assert config["pretrained_cfg"]["input_size"] == [1, 16, 16]
        card = (folder / "README.md").read_text()
        assert f"{record['metrics']['accuracy']:.4f}" in card and "MACs" in card
    # One fresh interpreter (no nas_attn model class in memory before timm loads the folder)
    # loads every folder in turn: one per folder only repeated the ~5 s of importing torch and timm.
    result = subprocess.run([sys.executable, "-c", LOAD_AND_EVALUATE, "digits", "16", "0.2", "2", *map(str, folders)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = [json.loads(line) for line in result.stdout.strip().splitlines() if line.startswith("{")]
    assert [entry["folder"] for entry in loaded] == [str(folder) for folder in folders]
    for entry, record in zip(loaded, pareto):
        assert entry["same"] and entry["cls"] == "ResNet"
        assert entry["accuracy"] == pytest.approx(record["metrics"]["accuracy"], abs=1e-9)


def test_cli_export_best_and_config_only(run_dir, tmp_path):
    records = results.read_trials(run_dir)
    best = max(records, key=lambda r: (r["metrics"]["accuracy"], -r["number"]))
    # In this process (conftest's run_cli_in_process): what is checked is the command's result,
    # and a fresh interpreter only added the imports of torch and timm.
    result = run_cli_in_process("export", run_dir, "--out", tmp_path / "m", "--best", "accuracy", "--no-weights")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "m" / f"trial-{best['number']:04d}"
    assert (folder / "config.json").is_file() and not (folder / "model.safetensors").exists()
    import timm
    import nas_attn  # noqa: F401
    model = timm.create_model(f"local-dir:{folder}", pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == best["metrics"]["params"]


def test_select_by_trial_and_by_mac_budget(run_dir):
    records = results.read_trials(run_dir)
    assert select(run_dir, trial=1) == [r for r in records if r["number"] == 1]
    cheapest = min(records, key=lambda r: r["metrics"]["macs"])
    assert select(run_dir, max_macs=cheapest["metrics"]["macs"])[0]["metrics"]["macs"] == cheapest["metrics"]["macs"]
    with pytest.raises(ExportError, match="the cheapest has"):
        select(run_dir, max_macs=1)


def test_export_errors_write_nothing(run_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="choose exactly one"):
        export(run_dir, out)
    with pytest.raises(ExportError, match="trial 42 does not exist"):
        export(run_dir, out, trial=42)
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="--force"):
        export(run_dir, out, trial=0)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export(run_dir, out, trial=0, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "trial-0000"]


def test_run_without_finished_trials_is_refused(run_dir, tmp_path):
    empty = tmp_path / "failed_run"
    empty.mkdir()
    (empty / results.SPACE_FILE).write_text((run_dir / results.SPACE_FILE).read_text())
    (empty / results.TRIALS_FILE).write_text(json.dumps({"number": 0, "status": "failed", "arch": None,
                                                        "metrics": {}, "error": "boom"}) + "\n")
    with pytest.raises(ExportError, match="no finished trials"):
        export(empty, tmp_path / "o", pareto=True)
    with pytest.raises(ExportError, match="not a nas-attn results folder"):
        export(tmp_path, tmp_path / "o", pareto=True)
    assert not (tmp_path / "o").exists()


def test_export_of_a_trial_holding_dsa_sca_and_aw_conv(run_dir, tmp_path):
    """Trial 1 of the module's run holds DSA, SCA and AW-conv: the export reloads in timm with
    those modules and the trained weights, and scores what the trial scored."""
    import timm
    import torch

    from nas_attn import data, train
    from nas_attn.modules import DSA, SCA, AWConv2d

    record = next(r for r in results.read_trials(run_dir) if r["number"] == 1)
    folder, = export(run_dir, tmp_path / "models", trial=1)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert isinstance(model.layer1[0].se, DSA) and model.layer1[0].se.threshold == 0.5
    assert isinstance(model.layer1[0].conv2, AWConv2d)
    assert isinstance(model.layer1[1].se, SCA) and model.layer1[1].se.kernel_size == 3
    from safetensors.torch import load_file
    trained = load_file(str(run_dir / record["checkpoint"] / results.WEIGHTS_FILE))
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(trained) and all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert any("attention.fc2" in k for k in trained)  # AW-conv's MLP weights travelled too
    bundle = data.load("digits", image_size=16, val_fraction=0.2, seed=2)
    accuracy, _ = train.evaluate(model, bundle)
    assert accuracy == pytest.approx(record["metrics"]["accuracy"], abs=1e-9)


def test_cli_export_onnx_beside_the_folder_matches_the_timm_model(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra (onnx, onnxscript)")
    onnxruntime = pytest.importorskip("onnxruntime", reason="checking the ONNX file needs onnxruntime")
    import timm
    import torch
    from nas_attn import cli
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "m"), "--trial", "0", "--format", "onnx"]) == 0
    folder = tmp_path / "m" / "trial-0000"
    assert f"wrote {folder} and {folder}.onnx" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["trial-0000", "trial-0000.onnx"]
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # batch 1, the space's input size
    session = onnxruntime.InferenceSession(str(tmp_path / "m" / "trial-0000.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)
    backbone = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True)
    card = (folder / "README.md").read_text()
    assert "features_only=True" in card
    assert f"channels {backbone.feature_info.channels()}, reductions {backbone.feature_info.reduction()}" in card
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "n"), "--trial", "0", "--format", "onnx",
                     "--no-weights"]) == 2
    assert "cannot go with --no-weights" in capsys.readouterr().err and not (tmp_path / "n").exists()
