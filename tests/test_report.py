"""nas_attn.report on the hand-made results folder of test_plot: REPORT.md and its figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import pytest

from nas_attn import report
from nas_attn.arch import arch_summary, stage_of
from nas_attn.cli import build_parser
from nas_attn.plot import PlotError
from test_plot import FRONT, HAND_HV, make_run, records


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = make_run(tmp_path_factory.mktemp("run") / "digits-run")
    path = report.write_report(folder)
    return folder, path, path.read_text()


def by_number(number):
    return next(r for r in records() if r["number"] == number)


def test_report_and_figures_are_written_and_linked(written):
    folder, path, text = written
    assert path == folder / "REPORT.md"
    for figure in ("pareto.png", "hypervolume.png"):
        assert (folder / figure).is_file()
        assert matplotlib.image.imread(folder / figure).shape[0] > 100
        assert f"]({figure})" in text


def test_pareto_table_rows(written):
    _, _, text = written
    # Cells computed by hand from the records in test_plot.
    numbers = {
        1: "| 1 | 0.9200 | 37.20 M MACs | 37.20 M eff. MACs | 11.18 M params |",
        2: "| 2 | 0.8800 | 37.00 M MACs | 30.00 M eff. MACs | 11.17 M params |",
        3: "| 3 | 0.9100 | 37.50 M MACs | 33.00 M eff. MACs | 11.30 M params |",
        8: "| 8 | 0.9350 | 38.00 M MACs | 38.00 M eff. MACs | 11.40 M params |",
    }
    assert sorted(numbers) == FRONT
    section = text.split("## Pareto front")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == [f"{numbers[n]} {arch_summary(by_number(n)['arch'])} |" for n in FRONT]
    assert "| trial | accuracy (top-1) [95% interval] | MACs per image | effective MACs per image | parameters | architecture |" \
        in section


def test_baseline_row(written):
    _, _, text = written
    section = text.split("## Baseline")[1].split("##")[0]
    assert "Trial 0" in section and "not on the Pareto front" in section
    assert "| 0 | 0.9000 | 37.00 M MACs | 37.00 M eff. MACs | 11.17 M params | no attention |" in section


def test_module_counts_by_hand(written):
    _, _, text = written
    # Front: 1 (se se | none none), 2 (dsa x4), 3 (dsa dsa | none+aw none), 8 (sca none+aw | eca eca).
    section = text.split("## Modules on the Pareto front")[1].split("##")[0]
    assert "16 block slots (layer1: 8, layer2: 8)" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| module")
            and not line.startswith("| ---")]
    assert rows == [
        "| dsa | 6 | 2 | 4 | 2 |",
        "| none | 5 | 3 | 1 | 4 |",
        "| eca | 2 | 1 | 0 | 2 |",
        "| se | 2 | 1 | 2 | 0 |",
        "| sca | 1 | 1 | 1 | 0 |",
        "| aw_conv | 2 | 2 | 1 | 1 |",
    ]


def test_module_counts_function():
    front = [by_number(n) for n in FRONT]
    overall, per_stage, trials_using = report.module_counts(front)
    assert overall == {"se": 2, "none": 5, "dsa": 6, "aw_conv": 2, "sca": 1, "eca": 2}
    assert per_stage == {"layer1": {"se": 2, "dsa": 4, "sca": 1, "none": 1, "aw_conv": 1},
                         "layer2": {"none": 4, "dsa": 2, "aw_conv": 1, "eca": 2}}
    assert trials_using == {"se": 1, "none": 3, "dsa": 2, "aw_conv": 2, "sca": 1, "eca": 1}


def test_stage_of():
    assert stage_of("layer2.1") == "layer2"
    assert stage_of("blocks.4.0") == "blocks.4"
    assert stage_of("stem") == "stem"


def test_hypervolume_and_status_counts(written):
    _, _, text = written
    assert f"exact value {HAND_HV:.6g} in units of accuracy × effective_macs" in text
    assert "reference point: accuracy = 0, effective_macs = 4e+07 (declared in space.yaml)" in text
    assert "HV 9.068e+06 [acc × eff. MACs]" in text
    for row in ("| ok | 8 |", "| stopped | 1 |", "| infeasible | 1 |", "| failed | 1 |"):
        assert row in text
    assert "- trial 5 failed: RuntimeError: out of memory" in text
    assert "- trial 6 infeasible: max_params exceeded by 8.3%" in text
    assert "- trial 7 stopped: after epoch 1 (accuracy then 0.7000)" in text


def test_report_errors(tmp_path):
    with pytest.raises(PlotError, match="does not exist"):
        report.write_report(tmp_path / "nowhere")
    folder = make_run(tmp_path / "noref", with_ref=False)
    with pytest.raises(PlotError, match="declares no hypervolume reference"):
        report.write_report(folder)
    assert not (folder / "REPORT.md").exists()
    path = report.write_report(folder, ref="0,4e7")
    assert "(given with --ref)" in path.read_text()


def test_cli_report(tmp_path, capsys):
    folder = make_run(tmp_path / "cli-run")
    args = build_parser().parse_args(["report", str(folder), "--ref", "0.5,40e6"])
    assert args.func(args) == 0
    assert "reference point: accuracy = 0.5" in (folder / "REPORT.md").read_text()
    assert "REPORT.md" in capsys.readouterr().out
