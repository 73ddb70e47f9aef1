"""What a figure shows, independent of how it is drawn: points, front, labels, legend texts."""
from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..arch import arch_summary
from ..metrics import METRICS, X_METRICS, format_value, is_number
from ..results import objective_value
from ..space import SearchSpace
from ..units import si_scale
from ._run import PlotError, Run, count_text, hypervolume_text

PathLike = Union[str, os.PathLike]

Y_LABEL = "validation accuracy (top-1)"
DEFAULT_X = "effective_macs"
FORMATS = ("png", "svg", "html")
HISTORY_FORMATS = ("png", "svg")
#: Figure size (inches) and resolution (dots per inch) of the PNG/SVG figures.
FIGSIZE = (11.0, 7.5)
HISTORY_FIGSIZE = (10.0, 6.0)
DPI = 120
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
          "#bcbd22", "#7f7f7f")



def x_axis_label(x: str, prefix: str) -> str:
    metric = METRICS[x]
    unit = f"{prefix}{metric.axis_unit}"
    return f"{metric.axis} ({unit})" if unit else metric.axis


def x_scale(x: str, values: Sequence[float]) -> Tuple[float, str]:
    """(divisor, SI prefix) of the x axis: counts are scaled to [1, 1000), times stay in ms."""
    return si_scale(values) if METRICS[x].kind == "count" else (1.0, "")


def default_x(space: SearchSpace) -> str:
    """The first cost objective of the space that the x axis can show, else effective MACs."""
    for objective in space.objectives:
        if objective["metric"] in X_METRICS:
            return objective["metric"]
    return DEFAULT_X


def _output_format(out: PathLike, allowed: Sequence[str]) -> str:
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix == "htm":
        suffix = "html"
    if suffix not in allowed:
        raise PlotError(f"--out must end in {', '.join('.' + a for a in allowed)}, got {str(out)!r}")
    return suffix


def _check_x(x: str) -> str:
    if x not in X_METRICS:
        raise PlotError(f"--x must be one of {', '.join(X_METRICS)}, got {x!r}")
    return x


@dataclass
class Series:
    """One run as plotted: its points (x in the metric's own units) and its labels."""
    run: Run
    color: str
    points: List[Dict[str, Any]]      # number, x, y, pareto, baseline, summary, record
    missing_x: int                    # finished trials without a value for the x metric
    hv_on_axes: bool                  # the objectives are exactly (accuracy, x)

    @property
    def front_xy(self) -> List[Tuple[float, float]]:
        return [(p["x"], p["y"]) for p in self.points if p["pareto"]]


def accuracy_interval(record: Dict[str, Any]) -> Tuple[Optional[float], Optional[float]]:
    """The 95% interval drawn around a point: over seeds once confirmed, else Wilson's over the
    validation images (None, None when the record has neither)."""
    confirmed = record.get("confirm")
    if isinstance(confirmed, dict) and is_number(confirmed.get("low")):
        return float(confirmed["low"]), float(confirmed["high"])
    m = record.get("metrics") or {}
    if is_number(m.get("accuracy_low")) and is_number(m.get("accuracy_high")):
        return float(m["accuracy_low"]), float(m["accuracy_high"])
    return None, None


def _series(runs: Sequence[Run], x: str) -> List[Series]:
    series = []
    for index, run in enumerate(runs):
        front_ids = {id(r) for r in run.front}
        # The baseline is one trial (trial 0 of a search); the anchors (trials 1-2) have no
        # attention either, but other widths, so is_baseline alone would mark them too.
        baseline_number = run.baseline["number"] if run.baseline is not None else None
        points, missing = [], 0
        for record in run.ok:
            value = (record.get("metrics") or {}).get(x)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                missing += 1
                continue
            low, high = accuracy_interval(record)
            points.append({"number": record["number"], "x": float(value),
                           "y": float(objective_value(record, "accuracy")), "y_low": low, "y_high": high,
                           "pareto": id(record) in front_ids, "baseline": record["number"] == baseline_number,
                           "summary": arch_summary(record["arch"]) if record.get("arch") else "-",
                           "record": record})
        metrics = [o["metric"] for o in run.objectives]
        series.append(Series(run, COLORS[index % len(COLORS)], points, missing,
                             hv_on_axes=sorted(metrics) == sorted(["accuracy", x])))
    if not any(s.points for s in series):
        raise PlotError(f"no finished trial has a value for --x {x}; choose another metric "
                        f"({', '.join(X_METRICS)})")
    return series


def _staircase(front: Sequence[Tuple[float, float]], x_right: float, y_bottom: float):
    """The outline of what the front dominates in the (cost, accuracy) plane, as x and y lists.

    It rises from the bottom of the axes at the cheapest point, steps right then up through each
    point that raises the best accuracy so far, and runs right to ``x_right``.
    """
    xs, ys, best = [], [], -math.inf
    for x, y in sorted(front):
        if y > best:
            if not xs:
                xs.append(x)
                ys.append(y_bottom)
            else:
                xs.append(x)
                ys.append(best)
            xs.append(x)
            ys.append(y)
            best = y
    if xs:
        xs.append(x_right)
        ys.append(best)
    return xs, ys


def _label_text(point: Dict[str, Any]) -> str:
    summary = point["summary"] + (" (baseline)" if point["baseline"] else "")
    return "\n".join(textwrap.wrap(f"#{point['number']} {summary}", width=30)) or f"#{point['number']}"


def _limits(values: Sequence[float], log: bool, low_pad: float, high_pad: float) -> Tuple[float, float]:
    lo, hi = min(values), max(values)
    if log:
        lo_l, hi_l = math.log10(lo), math.log10(hi)
        span = (hi_l - lo_l) or 0.1
        return 10 ** (lo_l - low_pad * span), 10 ** (hi_l + high_pad * span)
    span = (hi - lo) or (abs(hi) * 0.1 or 1.0)
    return lo - low_pad * span, hi + high_pad * span


def _reference_in_view(run: Run, x: str, x_lim: Tuple[float, float], y_lim: Tuple[float, float], log: bool):
    """The reference point's (x, y) in plotted units if the axes show its metrics and it is near."""
    metrics = [o["metric"] for o in run.objectives]
    if sorted(metrics) != sorted(["accuracy", x]):
        return None
    ref_x = run.reference[metrics.index(x)]
    ref_y = run.reference[metrics.index("accuracy")]
    if log:
        near_x = ref_x > 0 and math.log10(ref_x) <= math.log10(x_lim[1]) + 0.5 * math.log10(x_lim[1] / x_lim[0])
    else:
        near_x = ref_x <= x_lim[1] + 0.6 * (x_lim[1] - x_lim[0])
    near_y = ref_y >= y_lim[0] - 0.3 * (y_lim[1] - y_lim[0])
    return ref_x if near_x else None, ref_y if near_y else None


def _figure_text(series: Sequence[Series], x: str) -> Tuple[str, str]:
    runs = [s.run for s in series]
    x_short = METRICS[x].short
    names = sorted({r.space.name for r in runs})
    title = f"{', '.join(names)}: validation accuracy vs {x_short}"
    if len(runs) > 1:
        title += f" ({len(runs)} runs)"
    objective_sets = sorted({" × ".join(o["metric"] for o in r.objectives) for r in runs})
    if all(s.hv_on_axes for s in series):
        subtitle = f"Pareto front and hypervolume (HV) on the objectives {' / '.join(objective_sets)}"
    else:
        subtitle = (f"Pareto front and hypervolume (HV) on the space's objectives {' / '.join(objective_sets)}, "
                    f"not on the plotted axes (x shows {x})")
    return title, subtitle


def _legend_texts(s: Series, x: str) -> Dict[str, str]:
    run = s.run
    shown = len(s.points)
    trials = f"{run.name}: {shown} finished trial{'s' if shown != 1 else ''}"
    hidden = count_text(run.counts)
    if hidden:
        trials += f"; not shown (no final accuracy): {hidden}"
    if s.missing_x:
        trials += f"; {s.missing_x} finished without {x}"
    if any(p.get("y_low") is not None for p in s.points):
        confirmed = any("confirm" in p["record"] for p in s.points)
        trials += ("; bars: 95% interval (" + ("over seeds for confirmed trials, " if confirmed else "")
                   + "Wilson over validation images)")
    hv = hypervolume_text(run.hypervolume, run.objectives, run.reference)
    if not s.hv_on_axes:
        hv += " (on the objectives, not the x axis)"
    front = f"Pareto front ({len(run.front)} trial{'s' if len(run.front) != 1 else ''})\n{hv}"
    baseline = run.baseline
    if baseline is None:
        base = f"{run.name}: no baseline trial"
    elif baseline["status"] != "ok":
        base = f"baseline (trial {baseline['number']}): {baseline['status']}"
    else:
        m = baseline["metrics"]
        base = (f"baseline (trial {baseline['number']}, no attention): acc {format_value('accuracy', m.get('accuracy'))}, "
                f"{format_value(x, m.get(x))}")
    return {"trials": trials, "front": front, "baseline": base}


