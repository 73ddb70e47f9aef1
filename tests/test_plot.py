"""nas_attn.plot on a hand-made results folder: files written, hypervolume and history, errors."""
import importlib.util
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import pytest

from nas_attn import plot
from nas_attn.arch import is_baseline
from nas_attn.cli import build_parser
from nas_attn.pareto import hypervolume
from nas_attn.plot import PlotError

SPACE_SOURCE = Path(__file__).resolve().parents[1] / "search_spaces" / "digits_resnet.yaml"
BLOCKS = ("layer1.0", "layer1.1", "layer2.0", "layer2.1")
OBJECTIVES = ["maximize", "minimize"]
REF = [0.0, 40e6]


def space_text(with_ref=True):
    text = SPACE_SOURCE.read_text()
    # PyYAML reads YAML 1.1, where a float needs a signed exponent: "4.0e7" would load as a
    # string and fail validation, "4.0e+7" is the number.
    text = re.sub(r"(\d)e(\d)", r"\1e+\2", text)
    if not with_ref:
        text = re.sub(r",\s*ref:\s*[^}]*", "", text)
    return text


def arch(**choices):
    """An Arch of the digits space; ``choices[block] = (attention, aw_conv)``, blocks default to none."""
    blocks = {}
    for block in BLOCKS:
        attention, aw = choices.get(block.replace(".", "_"), ("none", False))
        blocks[block] = {"attention": attention,
                         "attention_kwargs": {"threshold": 0.5} if attention == "dsa" else {},
                         "aw_conv": {"mid": 8} if aw else None}
    return {"model": "resnet18", "model_args": {"num_classes": 10, "in_chans": 1}, "stem": "default",
            "blocks": blocks}


def ok(number, accuracy, effective_macs, macs=37.0e6, params=11.17e6, **choices):
    return {"number": number, "status": "ok", "arch": arch(**choices),
            "metrics": {"accuracy": accuracy, "macs": macs, "effective_macs": effective_macs, "params": params,
                        "elementwise_ops": 1.0e6, "latency_ms": 2.5, "epoch": 4, "train_time_s": 12.0}}


def records():
    """Eleven trials: baseline 0, eight finished, one failed, one infeasible, one stopped.

    Pareto set on (accuracy max, effective MACs min): trials 1, 2, 3, 8. Trial 3 dominates the
    baseline (0) and trial 9, trial 1 dominates 4, the baseline dominates 10.
    """
    return [
        ok(0, 0.90, 37.0e6),
        ok(1, 0.92, 37.2e6, macs=37.2e6, params=11.18e6, layer1_0=("se", False), layer1_1=("se", False)),
        ok(2, 0.88, 30.0e6, layer1_0=("dsa", False), layer1_1=("dsa", False), layer2_0=("dsa", False),
           layer2_1=("dsa", False)),
        ok(3, 0.91, 33.0e6, macs=37.5e6, params=11.3e6, layer1_0=("dsa", False), layer1_1=("dsa", False),
           layer2_0=("none", True)),
        ok(4, 0.915, 37.4e6, macs=37.4e6, layer1_0=("cbam", False), layer1_1=("cbam", False),
           layer2_0=("cbam", False), layer2_1=("cbam", False)),
        {"number": 5, "status": "failed", "arch": arch(layer1_0=("cpsam", False)), "metrics": {},
         "error": "Traceback ...\nRuntimeError: out of memory"},
        {"number": 6, "status": "infeasible", "arch": arch(layer1_0=("none", True), layer1_1=("none", True)),
         "metrics": {"macs": 60e6, "effective_macs": 60e6, "params": 13e6}, "violations": {"max_params": 0.0833}},
        {"number": 7, "status": "stopped", "arch": arch(layer2_1=("sca", False)),
         "metrics": {"accuracy": 0.7, "macs": 37.1e6, "effective_macs": 37.1e6, "params": 11.17e6, "epoch": 1}},
        ok(8, 0.935, 38.0e6, macs=38.0e6, params=11.4e6, layer1_0=("sca", False), layer1_1=("none", True),
           layer2_0=("eca", False), layer2_1=("eca", False)),
        ok(9, 0.895, 35.5e6, layer2_0=("dsa", False)),
        ok(10, 0.85, 39.0e6, macs=39.0e6, layer1_0=("none", True), layer1_1=("none", True),
           layer2_0=("none", True), layer2_1=("none", True)),
    ]


FRONT = [1, 2, 3, 8]
# Staircase by hand, effective MACs ascending: 2 (30 M, .88), 3 (33 M, .91), 1 (37.2 M, .92), 8 (38 M, .935).
HAND_HV = 3.0e6 * 0.88 + 4.2e6 * 0.91 + 0.8e6 * 0.92 + 2.0e6 * 0.935


def make_run(folder: Path, recs=None, with_ref=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(space_text(with_ref))
    recs = records() if recs is None else recs
    (folder / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (folder / "pareto.json").write_text(json.dumps([r for r in recs if r["number"] in FRONT]))
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "digits-run")


@pytest.fixture(scope="module")
def second_run(tmp_path_factory):
    recs = records()
    for r in recs:
        if r["status"] == "ok":
            r["metrics"]["accuracy"] -= 0.02
    return make_run(tmp_path_factory.mktemp("run") / "other-run", recs)


def ok_records():
    return [r for r in records() if r["status"] == "ok"]


# ---------------------------------------------------------------------------------------------

def test_is_baseline():
    assert is_baseline(arch())
    assert not is_baseline(arch(layer2_1=("se", False)))
    assert not is_baseline(arch(layer1_0=("none", True)))  # an AW-conv alone is not the baseline
    assert not is_baseline(None)


def test_load_run_front_counts_and_hypervolume(run_dir):
    run = plot.load_run(run_dir)
    assert [r["number"] for r in run.front] == FRONT
    assert run.counts == {"ok": 8, "stopped": 1, "infeasible": 1, "failed": 1}
    assert run.reference == REF
    assert run.baseline["number"] == 0
    points = [[r["metrics"]["accuracy"], r["metrics"]["effective_macs"]] for r in ok_records()]
    assert run.hypervolume == hypervolume(points, OBJECTIVES, REF)
    assert run.hypervolume == pytest.approx(HAND_HV, rel=1e-12)


def test_history_is_non_decreasing_and_ends_at_final_hypervolume(run_dir):
    run = plot.load_run(run_dir)
    numbers, values = run.history()
    assert numbers == list(range(11))
    assert values[0] == pytest.approx((40e6 - 37e6) * 0.90)  # the baseline alone
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[-1] == run.hypervolume
    assert values[4] == values[5] == values[6] == values[7]  # failed, infeasible, stopped add nothing


def test_png_is_written_with_the_expected_size(run_dir, tmp_path):
    out = plot.plot_runs([run_dir], tmp_path / "front.png")
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (round(plot.FIGSIZE[1] * plot.DPI), round(plot.FIGSIZE[0] * plot.DPI))
    assert image[..., :3].std() > 0.05  # not a blank canvas


def legend_hypervolumes(svg_text):
    return [float(v) for v in re.findall(r"HV ([0-9.]+(?:e[+-]\d+)?) \[", svg_text)]


def test_svg_has_axis_labels_counts_and_the_hypervolume(run_dir, tmp_path):
    out = plot.plot_runs([run_dir], tmp_path / "front.svg")
    text = out.read_text()
    assert "validation accuracy (top-1)" in text
    assert "effective MACs per image (DSA-pruned pixels skipped) (M)" in text
    assert "1 stopped, 1 infeasible, 1 failed" in text
    assert "8 finished trials" in text
    (hv,) = legend_hypervolumes(text)
    assert hv == pytest.approx(plot.load_run(run_dir).hypervolume, rel=1e-3)
    assert "ref: acc 0, 40.00 M eff. MACs" in text
    for number in FRONT:  # every Pareto point is labelled
        assert f"#{number} " in text
    assert "#4 " not in text


def test_x_other_than_the_objective_keeps_hypervolume_on_the_objectives(run_dir, tmp_path):
    text = plot.plot_runs([run_dir], tmp_path / "macs.svg", x="macs", logx=True).read_text()
    assert "MACs per image (M)" in text
    assert "not the x axis" in text
    (hv,) = legend_hypervolumes(text)
    assert hv == pytest.approx(HAND_HV, rel=1e-3)


def test_several_runs_in_one_figure(run_dir, second_run, tmp_path):
    text = plot.plot_runs([run_dir, second_run], tmp_path / "both.svg").read_text()
    assert "digits-run" in text and "other-run" in text
    hvs = legend_hypervolumes(text)
    assert len(hvs) == 2
    assert hvs[1] < hvs[0]  # the second run is the first one, 0.02 less accurate everywhere


def html_points(figure):
    """trial number -> (kind, x, y, hover text) of every marker in the plotly figure."""
    points = {}
    for trace in figure.data:
        if trace.meta["kind"] == "staircase":
            continue
        for number, x, y, hover in zip(trace.customdata, trace.x, trace.y, trace.hovertext):
            points[number] = (trace.meta["kind"], x, y, hover)
    return points


def test_html_figure_has_every_finished_trial_with_its_arch(run_dir):
    pytest.importorskip("plotly")
    figure = plot.html_figure(plot._series([plot.load_run(run_dir)], "effective_macs"), "effective_macs", False)
    points = html_points(figure)
    assert sorted(points) == [r["number"] for r in ok_records()]
    for record in ok_records():
        kind, x, y, hover = points[record["number"]]
        assert y == record["metrics"]["accuracy"] and x == record["metrics"]["effective_macs"] / 1e6
        assert f"trial {record['number']}</b>" in hover and '"attention": "' in hover
    assert sorted(n for n, p in points.items() if p[0] == "front") == FRONT
    assert [n for n, p in points.items() if p[0] == "baseline"] == [0]
    assert figure.layout.xaxis.title.text == "effective MACs per image (DSA-pruned pixels skipped) (M)"
    names = " ".join(trace.name or "" for trace in figure.data)
    assert f"HV {HAND_HV:.4g}" in names and "1 stopped, 1 infeasible, 1 failed" in names


def test_html_escapes_text_from_the_arch(tmp_path):
    pytest.importorskip("plotly")
    recs = records()
    recs[2]["arch"]["blocks"]["layer1.0"]["attention_kwargs"]["note"] = "</script><b>&"
    folder = make_run(tmp_path / "run", recs)
    hover = html_points(plot.html_figure(plot._series([plot.load_run(folder)], "macs"), "macs", True))[2][3]
    assert "&lt;/script&gt;&lt;b&gt;&amp;" in hover and "</script>" not in hover
    page = plot.plot_runs([folder], tmp_path / "front.html").read_text()
    assert "<script src=" not in page  # plotly.js is inlined: the page needs no network
    assert page.count("</script>") == page.count("<script")  # no script closed early by the data


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless browser check needs /usr/bin/chromium "
                                                   "(Debian package chromium)")
def test_html_page_draws_every_point_in_a_headless_browser(run_dir, tmp_path):
    # Slow-ish (~5-15 s): a real Chromium runs plotly.js and the DOM it builds is read back.
    pytest.importorskip("plotly")
    import subprocess
    page = plot.plot_runs([run_dir], tmp_path / "front.html")
    profile = tmp_path / "profile"
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=20000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    dom = result.stdout
    assert "main-svg" in dom, result.stderr[-2000:]  # plotly drew its SVG
    # One <path class="point"> per marker: 8 finished trials (the front, the rest, the baseline star).
    assert len(re.findall(r'<path class="point[ "]', dom)) == len(ok_records())
    for number in FRONT:
        assert f">#{number}</text>" in dom  # Pareto points are labelled
    assert "validation accuracy (top-1)" in dom and "effective MACs per image" in dom


def test_history_png(run_dir, second_run, tmp_path):
    out = plot.plot_history([run_dir, second_run], tmp_path / "history.png")
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (round(plot.HISTORY_FIGSIZE[1] * plot.DPI), round(plot.HISTORY_FIGSIZE[0] * plot.DPI))


def test_ref_override_changes_the_hypervolume(run_dir, tmp_path):
    run = plot.load_run(run_dir, ref="0.5,40e6")
    points = [[r["metrics"]["accuracy"], r["metrics"]["effective_macs"]] for r in ok_records()]
    assert run.hypervolume == hypervolume(points, OBJECTIVES, [0.5, 40e6])
    text = plot.plot_runs([run_dir], tmp_path / "ref.svg", ref=[0.5, 40e6]).read_text()
    assert "ref: acc 0.5, 40.00 M eff. MACs" in text


# ---------------------------------------------------------------------------------------------
# errors a user can make

def test_missing_reference_is_an_error_not_a_guess(tmp_path):
    folder = make_run(tmp_path / "noref", with_ref=False)
    with pytest.raises(PlotError, match="declares no hypervolume reference for accuracy, effective_macs.*--ref"):
        plot.plot_runs([folder], tmp_path / "x.png")
    out = plot.plot_runs([folder], tmp_path / "x.png", ref="0,4e7")
    assert out.exists()


@pytest.mark.parametrize("ref, message", [("0.0", "must give 2 values"), ("a,b", "finite numbers"),
                                          ("0,inf", "finite numbers"), ("0,1,2", "must give 2 values")])
def test_bad_ref(run_dir, tmp_path, ref, message):
    with pytest.raises(PlotError, match=message):
        plot.plot_runs([run_dir], tmp_path / "x.png", ref=ref)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(PlotError, match="does not exist"):
        plot.plot_runs([tmp_path / "nowhere"], tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlotError, match="not a nas-attn results folder: space.yaml, trials.jsonl missing"):
        plot.plot_runs([tmp_path / "empty"], tmp_path / "x.png")


def test_no_finished_trials(tmp_path):
    recs = [r for r in records() if r["status"] != "ok"]
    folder = make_run(tmp_path / "unfinished", recs)
    with pytest.raises(PlotError, match="no finished trial .*1 stopped, 1 infeasible, 1 failed"):
        plot.plot_runs([folder], tmp_path / "x.png")


def test_corrupt_trials_file(tmp_path):
    folder = make_run(tmp_path / "corrupt")
    (folder / "trials.jsonl").write_text('{"number": 0, "status": "ok"\n')
    with pytest.raises(PlotError, match="not one JSON record per line"):
        plot.load_run(folder)
    recs = records()
    del recs[1]["metrics"]["effective_macs"]
    folder = make_run(tmp_path / "incomplete", recs)
    with pytest.raises(PlotError, match="trial 1 has status ok but no finite effective_macs"):
        plot.load_run(folder)


def test_bad_output_and_axis(run_dir, tmp_path):
    with pytest.raises(PlotError, match=r"--out must end in \.png, \.svg, \.html, got .*x\.pdf"):
        plot.plot_runs([run_dir], tmp_path / "x.pdf")
    with pytest.raises(PlotError, match=r"--out must end in \.png, \.svg"):
        plot.plot_history([run_dir], tmp_path / "x.html")
    with pytest.raises(PlotError, match="--x must be one of"):
        plot.plot_runs([run_dir], tmp_path / "x.png", x="accuracy")


# ---------------------------------------------------------------------------------------------
# command line

def parse(argv):
    return build_parser().parse_args(argv)


def test_cli_plot_default_out_and_flags(tmp_path, capsys):
    folder = make_run(tmp_path / "cli-run")
    args = parse(["plot", str(folder)])
    assert args.func(args) == 0
    assert (folder / "pareto.png").is_file()
    args = parse(["plot", str(folder), "--history"])
    assert args.func(args) == 0
    assert (folder / "hypervolume.png").is_file()
    args = parse(["plot", str(folder), "--x", "params", "--logx", "--ref", "0.1,35e6", "--out",
                  str(tmp_path / "p.svg")])
    assert args.ref == [0.1, 35e6] and args.x == "params" and args.logx
    assert args.func(args) == 0
    assert "parameters (M)" in (tmp_path / "p.svg").read_text()
    assert "wrote" in capsys.readouterr().out


def test_cli_errors(run_dir, tmp_path):
    args = parse(["plot", str(run_dir), str(run_dir)])
    with pytest.raises(PlotError, match="--out is required"):
        args.func(args)
    with pytest.raises(SystemExit):
        parse(["plot", str(run_dir), "--ref", "zero,1"])
    with pytest.raises(SystemExit):
        parse(["plot", str(run_dir), "--x", "flops"])


def test_intervals_draw_as_error_bars_and_confirmed_means_move_the_points(tmp_path):
    from nas_attn.intervals import wilson_interval
    recs = records()
    for r in recs:
        if r["status"] == "ok":
            r["metrics"]["accuracy_low"], r["metrics"]["accuracy_high"] = wilson_interval(r["metrics"]["accuracy"], 2000)
    plain = plot.plot_runs([make_run(tmp_path / "a", recs)], tmp_path / "a.svg").read_text()
    assert "bars: 95% interval (Wilson over validation images)" in plain
    confirmed = json.loads(json.dumps(recs))
    top = max((r for r in confirmed if r["status"] == "ok"), key=lambda r: r["metrics"]["accuracy"])
    top["confirm"] = {"seeds": [0, 1, 2], "accuracy": [top["metrics"]["accuracy"], 0.5, 0.5],
                      "mean": 0.6, "low": 0.4, "high": 0.8}
    run = plot.load_run(make_run(tmp_path / "b", confirmed))
    assert [r["number"] for r in run.front] == [top["number"]]  # only confirmed trials compete
    text = plot.plot_runs([run.path], tmp_path / "b.svg").read_text()
    assert "over seeds for confirmed trials" in text


def test_only_the_first_plain_trial_is_the_baseline_not_the_anchors(tmp_path):
    # A search's anchors (trials 1-2: the cheapest and dearest widths) have no attention either;
    # they must not get the baseline's star or its "(baseline)" label.
    from nas_attn.plot._figure import _label_text
    recs = records()
    anchor = ok(11, 0.80, 20.0e6, macs=20.0e6)
    anchor["arch"]["model_args"]["channels"] = [32, 64, 128, 256]
    recs.append(anchor)
    series = plot._series([plot.load_run(make_run(tmp_path / "anchored", recs))], "effective_macs")
    points = {p["number"]: p for p in series[0].points}
    assert [n for n, p in points.items() if p["baseline"]] == [0]
    assert "(baseline)" in _label_text(points[0]) and "(baseline)" not in _label_text(points[11])
    if importlib.util.find_spec("plotly"):
        figure = plot.html_figure(series, "effective_macs", False)
        assert [n for n, p in html_points(figure).items() if p[0] == "baseline"] == [0]
