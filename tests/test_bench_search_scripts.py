"""Smoke tests of scripts/bench_search.py and scripts/bench_search_quality.py (--quick).

Each script runs once with its tiny --quick config (16x16 digits, 1-2 epochs, 2-3 trials; well
under 90 s each on an idle 2-core machine), its ``main`` called in this process (bench_search.py
measures child processes it starts itself; bench_search_quality.py searches on the session's
Ray), and the printed tables and the summary.json it writes are checked. No timing is
asserted: only that the numbers hang together.
"""
import copy
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replace_section_keeps_the_other_sections(tmp_path):
    bench = _load("bench_search")
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Attention modules in resnet50\n\nother table\n\n### sub\n\nkept\n")
    bench.replace_section(md, "## Search overhead: x", "first body")
    bench.replace_section(md, "## Search overhead: x", "second body\n")
    text = md.read_text()
    assert text.count("## Search overhead: x") == 1
    assert "second body" in text and "first body" not in text
    assert "## Attention modules in resnet50\n\nother table\n\n### sub\n\nkept\n" in text
    # A section in the middle is replaced in place, the one after it untouched.
    md.write_text("# B\n\n## Search overhead: x\n\nold\n\n## Later\n\nlater text\n")
    bench.replace_section(md, "## Search overhead: x", "new")
    assert md.read_text() == "# B\n\n## Search overhead: x\n\nnew\n\n## Later\n\nlater text\n"


def test_parse_methods_rejects_unknown_and_duplicates():
    quality = _load("bench_search_quality")
    assert quality.parse_methods("random, tpe,nsga2+es,best+es") == ["random", "tpe", "nsga2+es", "best+es"]
    assert quality.split_method("tpe+es") == ("tpe", True)
    for bad in ("grid", "best", "tpe,tpe", "", "best+es"):
        with pytest.raises(ValueError, match="--methods"):
            quality.parse_methods(bad)


def test_best_method_is_the_highest_mean_hypervolume_first_on_ties():
    quality = _load("bench_search_quality")
    runs = [{"method": "random", "hypervolume": 5.0}, {"method": "tpe", "hypervolume": 4.0},
            {"method": "random", "hypervolume": 1.0}, {"method": "tpe", "hypervolume": 4.0},
            {"method": "nsga2", "hypervolume": 2.0}, {"method": "nsga2", "hypervolume": 4.0}]
    # means: random 3.0, tpe 4.0, nsga2 3.0; a single best run (random's 5.0) does not win
    assert quality.choose_best(runs, ["random", "tpe", "nsga2"]) == (
        "tpe", [], {"random": 3.0, "tpe": 4.0, "nsga2": 3.0})
    best, tied, _ = quality.choose_best(runs, ["nsga2", "random"])
    assert (best, tied) == ("nsga2", ["random"])  # a tie goes to the first listed
    best, tied, _ = quality.choose_best(runs, ["random", "nsga2"])
    assert (best, tied) == ("random", ["nsga2"])


def test_bench_search_quick(tmp_path, capsys):
    # main() in this process: what the script measures runs in its two child processes (a
    # `nas-attn search` and the sequential loop), fresh interpreters as in a real run; the
    # interpreter around them only added its own imports (nas_attn.space, timm: ~7 s).
    out = tmp_path / "run"
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Attention modules in resnet50\n\nkept\n")
    assert _load("bench_search").main(["--quick", "--out", str(out), "--write-md", str(md)]) == 0
    stdout = capsys.readouterr().out
    assert "| nas-attn search --concurrent 2 | 2 x 1 |" in stdout
    assert "| sequential Optuna loop, 1 thread | 1 x 1 |" in stdout
    assert "Search overhead <= 5% of trial time: **" in stdout
    summary = json.loads((out / "summary.json").read_text())
    ray, seq = summary["rows"]
    assert summary["quick"] and summary["trials"] == 2 and summary["epochs"] == 1
    for row in (ray, seq):
        assert row["trials"] == 2 and row["epochs"] == 2  # 2 trials x 1 epoch each
        assert 0 < row["train_eval_s"] <= row["trial_s"]
        assert len(row["load"]["before"]) == 3
    # The loop replays the Ray run's architectures exactly (checked trial by trial).
    assert seq["same_archs"] == 2
    assert seq["wall_s"] > 0  # measured; no comparison of two clock readings (load decides those)
    text = md.read_text()
    assert "## Attention modules in resnet50\n\nkept\n" in text
    assert text.count("## Search overhead: Ray Tune vs a sequential loop") == 1


def test_bench_search_quality_quick(tmp_path, capsys, shared_ray):
    # In this process, on the session's Ray: the script's searches and ablation run as in a
    # fresh process (each search starts its own trial workers), without a fresh interpreter's
    # imports and a Ray start and stop (~10-15 s) that check nothing of the script's. Not run
    # here: its branch that starts a Ray of its own (nas_attn.search.init_ray, which every
    # search driver calls, then ray.shutdown).
    # The default space (cluttered_resnet) one trial at a time: every concurrent slot of a
    # search starts a trial worker that imports Ray Tune, torch and timm (~7 CPU-s), and this
    # test checks the script's tables, summary and ablation, not two trials at once (the
    # bench_search.py smoke test above and the search tests run two at once).
    shipped = SCRIPTS.parent / "search_spaces" / "cluttered_resnet.yaml"
    one_at_a_time = tmp_path / "cluttered_resnet.yaml"
    one_at_a_time.write_text(shipped.read_text().replace("concurrent: 2,", "concurrent: 1,", 1))
    assert "concurrent: 1," in one_at_a_time.read_text()
    out = tmp_path / "run"
    assert _load("bench_search_quality").main(["--quick", "--space", str(one_at_a_time), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "| random |" in stdout
    assert "| random + early stopping (best+es) |" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["space"] == "cluttered_resnet" and summary["concurrent"] == 1
    # --quick runs only random, so "best" is random by construction; choose_best's rule is
    # tested on its own (test_best_method_is_the_highest_mean_hypervolume_first_on_ties).
    assert summary["best"] == "random" and summary["reference"] == [0.0, 6.0e6]  # cluttered_resnet
    plain, stopped = summary["runs"]
    assert plain["method"] == "random" and stopped["method"] == "random+es"
    for run in (plain, stopped):
        assert run["trials"] == 3 and run["baseline"]["number"] == 0
        assert run["hypervolume"] > 0
        # The last point of the history is the whole search.
        assert run["history"][-1] == [run["epochs"], run["hypervolume"]]
    assert plain["epochs"] == 3 * 2 and stopped["epochs"] <= 3 * 2
    assert (out / "search_quality.png").stat().st_size > 1000
    # What attention adds: each Pareto design with attention or a gate retrained without it,
    # same seed. The quick searches' 3 trials are the baseline and the two plain anchors, so
    # their fronts hold nothing to ablate (an empty table), and the ablation is run here on a
    # made-up front: the baseline with SE in one block and a DSA gate in the other. Stripped, it
    # is the baseline itself, so retrained with the same seed it must score exactly what the
    # baseline trial scored; a strip that leaves the SE or the gate in, or a retrain with
    # another seed or settings, scores otherwise.
    from nas_attn.arch import is_baseline
    script = _load("bench_search_quality")
    assert summary["ablation"] == [] and all(is_baseline(d["arch"]) for d in plain["front"])
    baseline = next(d for d in plain["front"] if d["number"] == 0)
    (layer1, layer2), arch = sorted(baseline["arch"]["blocks"]), copy.deepcopy(baseline["arch"])
    arch["blocks"][layer1].update(attention="se", attention_kwargs={"rd_ratio": 0.25})
    arch["blocks"][layer2]["gate"] = {"threshold": 0.3}
    design = {**baseline, "number": 7, "arch": arch}
    space = script._bench_search_module().bench_space("cluttered_resnet", 3, 2, True)  # --quick's space
    rows = script.ablate(space, [{**plain, "front": [design]}], tmp_path)
    assert len(rows) == 1 and rows[0]["number"] == 7 and rows[0]["plain_status"] == "ok"
    assert rows[0]["summary"].endswith("se x1, dsa_gate x1")
    assert rows[0]["plain_accuracy"] == baseline["accuracy"]
    assert rows[0]["plain_effective_macs"] == baseline["effective_macs"]
    for run in (plain, stopped):
        assert run["front_span"] >= 1 and 0 < run["max_trial_share"] <= 1
