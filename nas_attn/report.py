"""``nas-attn report RUN_DIR``: a Markdown summary of one results folder.

:func:`write_report` writes ``REPORT.md`` into the results folder, with ``pareto.png`` (accuracy
against the space's cost objective, see :func:`nas_attn.plot.plot_runs`) and ``hypervolume.png``
(hypervolume by trial, :func:`nas_attn.plot.plot_history`) beside it. The report holds:

* the trials by status (ok, stopped, infeasible, failed) and why the unfinished ones stopped;
* the hypervolume of the finished trials on the space's objectives, with its reference point;
* the baseline row (the trial with no attention and no AW-conv in any block);
* the Pareto table: trial, accuracy (top-1, a fraction of the validation images), MACs and
  effective MACs per image, parameters, architecture summary;
* how often each module sits on the front, overall and per stage (a stage is a block name
  without its last component: ``layer2.1`` is in stage ``layer2``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .arch import arch_summary, stage_of
from .metrics import METRICS, accuracy_text, format_value
from .plot import PlotError, Run, default_x, hypervolume_text, load_run, parse_ref, plot_history, plot_runs
from .results import write_atomic

REPORT_FILE = "REPORT.md"
PARETO_FIGURE = "pareto.png"
HISTORY_FIGURE = "hypervolume.png"
#: The module name under which a block's AW-conv (a conv replacement, not an attention) is counted.
AW_CONV = "aw_conv"

STATUS_MEANING = {
    "ok": "trained for every epoch within the constraints: has a final accuracy",
    "stopped": "stopped early by the scheduler: no final accuracy",
    "infeasible": "broke a constraint (measured before training): not trained",
    "failed": "raised an error: no result",
}


def module_counts(records: Sequence[Dict[str, Any]]) -> Tuple[Dict[str, int], Dict[str, Dict[str, int]], Dict[str, int]]:
    """How often each module appears in the blocks of ``records`` (e.g. the Pareto set).

    Returns ``(overall, per_stage, trials_using)``: ``overall[module]`` counts (trial, block)
    pairs whose block carries the module (``none`` for a block without attention);
    ``per_stage[stage][module]`` the same within one stage; ``trials_using[module]`` the number
    of trials with the module in at least one block. An AW-conv is counted as ``aw_conv``
    besides the block's attention (a block may carry both), so a block adds one to its
    attention and, with an AW-conv, one to ``aw_conv``.
    """
    overall: Dict[str, int] = {}
    per_stage: Dict[str, Dict[str, int]] = {}
    trials_using: Dict[str, int] = {}
    for record in records:
        used = set()
        for block, choice in ((record.get("arch") or {}).get("blocks") or {}).items():
            stage = per_stage.setdefault(stage_of(block), {})
            names = [choice.get("attention", "none")]
            if choice.get("aw_conv") is not None:
                names.append(AW_CONV)
            for name in names:
                overall[name] = overall.get(name, 0) + 1
                stage[name] = stage.get(name, 0) + 1
                used.add(name)
        for name in used:
            trials_using[name] = trials_using.get(name, 0) + 1
    return overall, per_stage, trials_using


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str]) -> List[str]:
    rule = ["---:" if a == "r" else "---" for a in align]
    return (["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
            + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows])


def _trial_row(record: Dict[str, Any]) -> List[str]:
    m = record.get("metrics") or {}
    return [str(record["number"]), accuracy_text(record),
            format_value("macs", m.get("macs")), format_value("effective_macs", m.get("effective_macs")),
            format_value("params", m.get("params")),
            arch_summary(record["arch"]) if record.get("arch") else "-"]


TRIAL_HEADER = ("trial", "accuracy (top-1) [95% interval]", "MACs per image", "effective MACs per image", "parameters",
                "architecture")
TRIAL_ALIGN = ("r", "r", "r", "r", "r", "l")


def _why(record: Dict[str, Any]) -> str:
    status = record["status"]
    if status == "failed":
        error = str(record.get("error") or "no error recorded").strip().splitlines()
        return (error[-1] if error else "no error recorded")[:200]
    if status == "infeasible":
        violations = record.get("violations") or {}
        return ", ".join(f"{key} exceeded by {value:.1%}" if isinstance(value, (int, float)) else f"{key}"
                         for key, value in violations.items()) or "broke a constraint"
    if status == "stopped":
        m = record.get("metrics") or {}
        acc = m.get("accuracy")
        return f"after epoch {m.get('epoch', '?')}" + (f" (accuracy then {acc:.4f})"
                                                        if isinstance(acc, (int, float)) and math.isfinite(acc) else "")
    return ""


def report_text(run: Run, figures: Dict[str, str]) -> str:
    """The Markdown of the report; ``figures`` maps a caption to a file name beside REPORT.md."""
    space = run.space
    lines = [f"# nas-attn report: {space.name}", ""]
    objectives = ", ".join(f"{o['metric']} ({o['direction']})" for o in run.objectives)
    lines += [f"Results folder `{run.name}`: {len(run.records)} trials, {len(run.ok)} finished, "
              f"{len(run.front)} on the Pareto front. Objectives: {objectives}. Accuracy is top-1 on the "
              f"validation split, as a fraction; MACs are multiply-accumulates per image, effective MACs "
              f"skip the pixels DSA prunes.", ""]

    lines += ["## Hypervolume", ""]
    units = " × ".join(o["metric"] for o in run.objectives)
    ref = ", ".join(f"{o['metric']} = {v:g}" for o, v in zip(run.objectives, run.reference))
    lines += [f"- {hypervolume_text(run.hypervolume, run.objectives, run.reference)}",
              f"- exact value {run.hypervolume:.6g} in units of {units}, over the {len(run.ok)} finished trials "
              f"(`nas_attn.pareto.hypervolume`)",
              f"- reference point: {ref}"
              + (" (declared in space.yaml)" if run.reference == space.reference_point() else " (given with --ref)"),
              ""]

    lines += ["## Trials by status", ""]
    lines += _table(("status", "trials", "meaning"),
                    [(status, n, STATUS_MEANING.get(status, "")) for status, n in run.counts.items()],
                    ("l", "r", "l"))
    unfinished = [r for r in run.records if r["status"] != "ok"]
    if unfinished:
        lines += ["", "Trials without a final result:", ""]
        lines += [f"- trial {r['number']} {r['status']}: {_why(r)}" for r in unfinished]
    lines.append("")

    lines += ["## Baseline", ""]
    baseline = run.baseline
    if baseline is None:
        lines += ["No trial of this run is the baseline (no attention and no AW-conv in any block).", ""]
    else:
        on_front = any(r is baseline for r in run.front)
        lines += [f"Trial {baseline['number']}, no attention and no AW-conv in any block; status "
                  f"{baseline['status']}; {'on' if on_front else 'not on'} the Pareto front.", ""]
        lines += _table(TRIAL_HEADER, [_trial_row(baseline)], TRIAL_ALIGN)
        lines.append("")

    lines += ["## Pareto front", "",
              f"The {len(run.front)} finished trials no other finished trial beats in every objective "
              f"({objectives}), by trial number.", ""]
    lines += _table(TRIAL_HEADER, [_trial_row(r) for r in run.front], TRIAL_ALIGN)
    lines.append("")

    overall, per_stage, trials_using = module_counts(run.front)
    stages = list(per_stage)
    slots = {stage: sum(count for name, count in per_stage[stage].items() if name != AW_CONV) for stage in stages}
    total_slots = sum(slots.values())
    lines += ["## Modules on the Pareto front", "",
              f"Each count is the number of (Pareto trial, block) pairs whose block carries the module: "
              f"{len(run.front)} trials × their searched blocks = {total_slots} block slots "
              + "(" + ", ".join(f"{stage}: {slots[stage]}" for stage in stages) + "). "
              f"`none` is a block without attention. `{AW_CONV}` replaces the block's conv and can sit beside "
              f"an attention module, so it is counted on its own and not within the slots.", ""]
    attention_names = sorted((n for n in overall if n != AW_CONV), key=lambda n: (-overall[n], n))
    names = attention_names + ([AW_CONV] if AW_CONV in overall else [])
    rows = [[name, overall[name], trials_using.get(name, 0)] + [per_stage[s].get(name, 0) for s in stages]
            for name in names]
    lines += _table(["module", "blocks overall", "Pareto trials using it"] + [f"{s} blocks" for s in stages],
                    rows, ["l", "r", "r"] + ["r"] * len(stages))
    lines.append("")

    if figures:
        lines += ["## Figures", ""]
        for caption, file in figures.items():
            lines += [f"![{caption}]({file})", "", f"*{caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir, ref=None) -> Path:
    """Write REPORT.md, pareto.png and hypervolume.png into ``run_dir``; returns REPORT.md's path.

    ``ref``: hypervolume reference point, one value per objective in the space's order (default:
    the space's declared ``ref`` values). Raises :class:`nas_attn.plot.PlotError` for a folder
    that is not a results folder, one without finished trials, or a space without a reference.
    """
    reference = parse_ref(ref) if ref is not None else None
    run = load_run(run_dir, reference)
    folder = Path(run_dir)
    x = default_x(run.space)
    plot_runs([folder], folder / PARETO_FIGURE, x=x, ref=reference)
    plot_history([folder], folder / HISTORY_FIGURE, ref=reference)
    figures = {f"Validation accuracy against {METRICS[x].axis}: every finished trial, the Pareto front "
               f"and the baseline (star)": PARETO_FIGURE,
               "Hypervolume of the trials finished so far, by trial number": HISTORY_FIGURE}
    path = folder / REPORT_FILE
    write_atomic(path, report_text(run, figures))
    return path


__all__ = ["write_report", "report_text", "module_counts", "PlotError", "REPORT_FILE", "PARETO_FIGURE",
           "HISTORY_FIGURE"]
