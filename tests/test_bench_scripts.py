"""Tests of the benchmark scripts in scripts/: they run, and write their section of the Markdown file."""
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH_MODULES = ROOT / "scripts" / "bench_modules.py"
SECTION = "## Attention modules in resnet50 (scripts/bench_modules.py)"


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _load_bench_modules():
    return _load_script(BENCH_MODULES)


def _run_main(script: Path, argv):
    """``python SCRIPT ARGV`` as the script's ``main(argv)`` in this process: its exit code.

    A fresh interpreter per run only added the ~4-5 s of importing torch and timm, which this
    process has done. The scripts set torch's thread count and seed its global generator; both
    are put back, so later tests see what they would have seen.
    """
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        try:
            return _load_script(script).main([str(a) for a in argv])
        finally:
            torch.set_num_threads(threads)


def _table_rows(section: str) -> dict:
    """First cell -> all cells of each body row of the section's first Markdown table."""
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| variant") and not line.startswith("| stage"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells)
        elif rows and not line.startswith("|"):
            break  # end of the first table
    return rows


def test_bench_modules_quick(tmp_path, capsys):
    out = tmp_path / "BENCH.md"
    out.write_text("# Benchmarks\n\n## Someone else's section\n\nkeep this line\n")
    code = _run_main(BENCH_MODULES, ["--quick", "--size", "32", "--batch-size", "2", "--repeats", "1",
                                     "--variants", "none,dsa", "--threads", "1", "--no-cpsam-stages", "--out", out])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    text = out.read_text()
    assert "## Someone else's section\n\nkeep this line\n" in text
    assert text.count(SECTION) == 1
    section = text[text.index(SECTION):]
    assert "Command: `python scripts/bench_modules.py --quick --size 32 --batch-size 2" in section
    assert re.search(r"Load averages \(1, 5, 15 min, as `uptime` shows them\): [\d.]+, [\d.]+, [\d.]+ at the start",
                     section)
    assert "taken under that load" in section
    rows = _table_rows(section)
    assert list(rows) == ["none", "dsa"]
    none, dsa = rows["none"], rows["dsa"]
    assert float(none[1].replace(",", "")) > 0  # median ms
    assert float(none[4].replace(",", "")) > 0  # CPU time ms
    assert none[7] == dsa[7] == "25,557,032"  # DSA adds no parameters
    assert float(none[8]) > 0  # GMACs per image at 32x32
    # se/cbam were not run: the targets say so instead of inventing a verdict
    assert "- not measured: dsa overhead < se overhead needs the variant(s) se in" in section
    assert "- not measured: cpsam overhead <= 2x cbam overhead needs the variant(s) cpsam, cbam in" in section
    assert rows["dsa"][-1] == "overhead < se's: not measured"
    assert "| none |" in printed.out  # the table is printed too
    stage_lines = [line for line in section.splitlines() if line.startswith("| layer")]
    assert [line.split()[1] for line in stage_lines] == ["layer1", "layer2", "layer3", "layer4"]
    assert "| 512->512, 1x1, stride 1 |" in stage_lines[3]  # layer4 conv2 at 32x32 input
    match = re.search(r"agree with AWConv2d's to a relative (\S+) at most", section)
    assert match and float(match.group(1)) < 1e-4


def test_write_section_replaces_only_its_own(tmp_path):
    bench = _load_bench_modules()
    path = tmp_path / "B.md"
    path.write_text(f"# Benchmarks\n\n## A\n\na\n\n{SECTION}\n\nold\n\n### sub\n\nold sub\n\n## B\n\nb\n")
    bench.write_section(path, f"{SECTION}\n\nnew\n")
    assert path.read_text() == f"# Benchmarks\n\n## A\n\na\n\n{SECTION}\n\nnew\n\n## B\n\nb\n"
    fresh = tmp_path / "new.md"
    bench.write_section(fresh, f"{SECTION}\n\nnew\n")
    assert fresh.read_text() == (
        f"# nas_attn benchmarks\n\nEach section gives the command that produced it.\n\n{SECTION}\n\nnew\n")


def test_targets_and_bad_variant():
    bench = _load_bench_modules()

    def row(name, median):
        return bench.VariantRow(name, bench.Timing([median - 1, median, median + 1]), 1, 1, 1)

    rows = {n: row(n, ms) for n, ms in
            [("none", 100.0), ("se", 110.0), ("cbam", 130.0), ("dsa", 105.0), ("sca", 130.0), ("cpsam", 170.0)]}
    verdicts = bench.target_verdicts(rows)
    assert verdicts["dsa"].startswith("MET: dsa overhead +5.0 ms (+5.0%) < se overhead +10.0 ms")
    assert verdicts["sca"].startswith("MET")  # equal overhead meets "at or under"
    assert verdicts["cpsam"].startswith("MISSED: cpsam overhead +70.0 ms (+70.0%) <= 2x cbam overhead +60.0 ms")
    rows["cpsam"] = row("cpsam", 160.0)
    assert bench.target_verdicts(rows)["cpsam"].startswith("MET")  # 60 ms <= 2 x 30 ms
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "none,bogus"])


def test_bench_sparse_smoke(tmp_path, capsys, monkeypatch):
    """scripts/bench_sparse.py runs on a tiny setting and writes its section, keeping others."""
    script = ROOT / "scripts" / "bench_sparse.py"
    # glibc's allocator tunables change dense times: the command line must show them
    for name in [n for n in os.environ if n.startswith("MALLOC_") or n == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "268435456")
    out = tmp_path / "BENCH.md"
    out.write_text("# Benchmarks\n\n## Someone else's section\n\nkeep this line\n")
    code = _run_main(script, ["--models", "resnet18", "--batch-sizes", "1", "--keeps", "0.5", "--image-size", "32",
                              "--rounds", "1", "--warmup", "0", "--threads", "1", "--out", out])
    assert code == 0, capsys.readouterr().err
    text = out.read_text()
    assert "keep this line" in text and "## DSA gate: sparse inference speed (scripts/bench_sparse.py)" in text
    assert "Command: `MALLOC_MMAP_THRESHOLD_=268435456 python scripts/bench_sparse.py --models resnet18 " in text
    for variant in ("| dense |", "| keep 0.5 |", "| keep 1.0 (gate overhead) |", "| keep 1.0, forced sparse |"):
        assert variant in text
    assert "Load average" in text and "gate overhead at keep 1.0" in text
    # the sparse-blocks column: forced sparse runs every gated block (8 in resnet18) sparse, the
    # plain-block overhead row none
    assert "| resnet18 | 1 | keep 1.0, forced sparse | 8 | 8 |" in text
    assert "| resnet18 | 1 | keep 1.0 (gate overhead) | 8 | 0 |" in text
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:  # argparse's exit on a bad flag: status 2, message on stderr
        _run_main(script, ["--keeps", "1.5", "--no-write"])
    assert bad.value.code == 2 and "--keeps" in capsys.readouterr().err


def test_cpsam_table_verdict_needs_fewer_macs_and_less_time():
    bench = _load_bench_modules()
    timing = lambda ms: bench.Timing([ms])  # noqa: E731
    rows = [bench.CpsamRow("layer1", (256, 56, 56), {"cpsam (gate)": 4e6, "cpsam (mix)": 2e8, "nl": 7e8},
                           {"cpsam (gate)": timing(10.0), "cpsam (mix)": timing(90.0), "nl": timing(50.0)}),
            bench.CpsamRow("layer4", (2048, 7, 7), {"cpsam (gate)": 7e7, "cpsam (mix)": 3e8, "nl": 1e8},
                           {"cpsam (gate)": timing(60.0), "cpsam (mix)": timing(90.0), "nl": timing(50.0)})]
    lines = bench.cpsam_table(rows).splitlines()
    assert lines[2].startswith("| layer1 | 256x56x56 | 4.00 | 200.00 | 700.00 | 10.0 (10.0 - 10.0) |")
    assert lines[2].endswith("| MET (0.01x MACs, 0.20x time) |")
    assert lines[3].endswith("| MISSED (0.70x MACs, 1.20x time) |")


def test_bench_sca_quick_compares_old_and_new(capsys):
    """scripts/bench_sca.py runs (in this process, tiny shapes) and its frozen copy of the
    previous SCA computes what nas_attn's SCA computes: the printed largest relative difference
    of outputs and gradients is below 1e-5 at every shape, and the ratio tables are printed."""
    spec = importlib.util.spec_from_file_location("bench_sca", ROOT / "scripts" / "bench_sca.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    text = capsys.readouterr().out
    diffs = [float(d) for d in re.findall(r"largest relative difference of output and gradients: (\S+)", text)]
    assert len(diffs) == len(module.QUICK_STAGES) and max(diffs) < 1e-5
    assert text.count("| slot shape | old | new | cbam | new/old | new/cbam | old/cbam |") == 2
    assert "| resnet50 blocks (1, 1) |" in text and "load average after" in text
