"""Figures of a search: accuracy against cost with the Pareto front, and hypervolume by trial.

``plot_runs(run_dirs, out)`` draws every finished trial (status ``ok``) of one or more results
folders as a point: a cost metric on x (MACs, effective MACs or parameters per image, or latency
in milliseconds), validation accuracy (top-1, a fraction) on y. The Pareto set of each run (on the
run's own objectives, as in ``pareto.json``) is drawn larger, labelled with a short architecture
summary and joined by a step line; the baseline (no attention, no AW-conv anywhere) is a star.
Trials that were stopped early, broke a constraint or failed have no final accuracy: they are not
points, their counts are in the legend. PNG and SVG come from matplotlib; HTML is one
self-contained page (inline SVG drawn by a few lines of JavaScript, the data embedded as JSON, no
network) whose tooltips show each trial's whole Arch.

``plot_history(run_dirs, out)`` draws the hypervolume of the trials finished so far against the
trial number.

Every hypervolume is computed with :func:`nas_attn.pareto.hypervolume` on the space's objectives
(not on the plotted axes, when they differ) and printed with its reference point. The reference
point is the one the space declares (``objectives[i].ref``) or the one given with ``--ref``; it
is never derived from the data, so hypervolumes of different runs stay comparable.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union


from . import pareto as pareto_mod
from .arch import arch_summary
from .search import PARETO_FILE, SPACE_FILE, TRIALS_FILE, pareto_records, read_trials
from .space import SearchSpace, load
from .trial import STATUSES
from .units import format_count

PathLike = Union[str, os.PathLike]

#: Metrics the x axis can show: name -> (axis text, unit shown after the SI prefix, short name).
X_METRICS: Dict[str, Tuple[str, str, str]] = {
    "macs": ("MACs per image", "", "MACs"),
    "effective_macs": ("effective MACs per image (DSA-pruned pixels skipped)", "", "eff. MACs"),
    "params": ("parameters", "", "params"),
    "latency_ms": ("forward latency of one batch", "ms", "latency"),
}
#: Short names for legends and tables.
SHORT_NAMES = {"accuracy": "acc", "macs": "MACs", "effective_macs": "eff. MACs", "params": "params",
               "elementwise_ops": "elem. ops", "latency_ms": "latency"}
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


class PlotError(ValueError):
    """A plot or report that cannot be made: not a results folder, no finished trial, bad flag."""


# --------------------------------------------------------------------------------------------
# Reading a results folder

def is_baseline(arch: Optional[Dict[str, Any]]) -> bool:
    """True for the Arch with no attention module and no AW-conv in any block."""
    if not isinstance(arch, dict):
        return False
    return all(choice.get("attention", "none") == "none" and choice.get("aw_conv") is None
               for choice in (arch.get("blocks") or {}).values())


@dataclass
class Run:
    """One results folder, read and checked.

    ``ok`` holds the finished trials in trial order, ``front`` their Pareto set on the space's
    objectives, ``reference`` the hypervolume reference point (objectives' units and order) and
    ``hypervolume`` the volume the finished trials dominate (product of the objectives' units).
    """
    path: Path
    name: str
    space: SearchSpace
    records: List[Dict[str, Any]]
    ok: List[Dict[str, Any]]
    front: List[Dict[str, Any]]
    reference: List[float]
    hypervolume: float
    counts: Dict[str, int] = field(default_factory=dict)

    @property
    def objectives(self) -> List[Dict[str, Any]]:
        return self.space.objectives

    @property
    def baseline(self) -> Optional[Dict[str, Any]]:
        """The first baseline trial (any status), or None if the run has none."""
        return next((r for r in self.records if is_baseline(r.get("arch"))), None)

    def objective_points(self, records: Sequence[Dict[str, Any]]) -> List[List[float]]:
        return [[float(r["metrics"][o["metric"]]) for o in self.objectives] for r in records]

    def history(self) -> Tuple[List[int], List[float]]:
        """(trial numbers, hypervolume after each trial), over every recorded trial.

        Only finished trials add volume; a stopped, infeasible or failed trial repeats the
        previous value (0.0 before the first finished one).
        """
        ordered = sorted(self.records, key=lambda r: r["number"])
        ok_ids = {id(r) for r in self.ok}
        finished = [r for r in ordered if id(r) in ok_ids]
        directions = [o["direction"] for o in self.objectives]
        volumes = pareto_mod.hypervolume_history(self.objective_points(finished), directions, self.reference)
        numbers, values, done, current = [], [], 0, 0.0
        for record in ordered:
            if id(record) in ok_ids:
                current = volumes[done]
                done += 1
            numbers.append(record["number"])
            values.append(current)
        return numbers, values


def status_counts(records: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """Trials per status, in the order ok, stopped, infeasible, failed (then any other)."""
    counts = {status: 0 for status in STATUSES}
    for record in records:
        status = record.get("status", "failed")
        counts[status] = counts.get(status, 0) + 1
    return counts


def parse_ref(text: Union[str, Sequence[float]]) -> List[float]:
    """``"0.0,4e7"`` (or a sequence of numbers) -> ``[0.0, 40000000.0]``; finite values only."""
    if isinstance(text, str):
        try:
            values = [float(part) for part in text.split(",")]
        except ValueError:
            values = None
    else:
        try:
            values = [float(v) for v in text]
        except (TypeError, ValueError):
            values = None
    if not values or not all(math.isfinite(v) for v in values):
        raise PlotError(f"--ref must be finite numbers separated by commas, one per objective in the "
                        f"space's order (e.g. 0.0,4e7 for accuracy and MACs), got {text!r}")
    return values


def resolve_reference(space: SearchSpace, ref, where: str = "the space") -> List[float]:
    """The hypervolume reference point: ``ref`` if given, else the space's declared ``ref`` values."""
    names = [o["metric"] for o in space.objectives]
    if ref is not None:
        values = parse_ref(ref)
        if len(values) != len(names):
            raise PlotError(f"--ref must give {len(names)} values, one per objective of {where} "
                            f"({', '.join(names)}, in that order), got {len(values)}: {ref!r}")
        return values
    declared = space.reference_point()
    if declared is None:
        missing = [o["metric"] for o in space.objectives if o.get("ref") is None]
        example = ",".join("0.0" if o["metric"] == "accuracy" else "COST" for o in space.objectives)
        raise PlotError(f"{where} declares no hypervolume reference for {', '.join(missing)} "
                        f"(objectives[].ref in {SPACE_FILE}); pass --ref {example} with one value per "
                        f"objective ({', '.join(names)}). The reference point is declared, never "
                        f"derived from the data.")
    return declared


def load_run(run_dir: PathLike, ref=None) -> Run:
    """Read and check a results folder; ``ref`` overrides the space's reference point."""
    path = Path(run_dir)
    if not path.is_dir():
        raise PlotError(f"run folder {str(run_dir)!r} does not exist or is not a folder")
    missing = [name for name in (SPACE_FILE, TRIALS_FILE) if not (path / name).is_file()]
    if missing:
        raise PlotError(f"{str(run_dir)!r} is not a nas-attn results folder: {', '.join(missing)} "
                        f"missing (a results folder holds {SPACE_FILE}, {TRIALS_FILE} and {PARETO_FILE})")
    space = load(path / SPACE_FILE)
    try:
        records = read_trials(path)
    except json.JSONDecodeError as exc:
        raise PlotError(f"{path / TRIALS_FILE}: not one JSON record per line ({exc})") from None
    for position, record in enumerate(records):
        if not isinstance(record, dict) or "number" not in record or "status" not in record:
            raise PlotError(f"{path / TRIALS_FILE}: record {position + 1} lacks 'number' or 'status': "
                            f"{str(record)[:200]}")
    records.sort(key=lambda r: r["number"])
    counts = status_counts(records)
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        raise PlotError(f"{str(run_dir)!r} has no finished trial (status ok) to plot; trials by status: "
                        + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for record in ok:
        for objective in space.objectives:
            value = (record.get("metrics") or {}).get(objective["metric"])
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PlotError(f"{path / TRIALS_FILE}: trial {record['number']} has status ok but no finite "
                                f"{objective['metric']} (an objective); got {value!r}")
    name = path.resolve().name
    reference = resolve_reference(space, ref, where=f"{name}/{SPACE_FILE}")
    directions = [o["direction"] for o in space.objectives]
    run = Run(path=path, name=name, space=space, records=records, ok=ok,
              front=pareto_records(ok, space.objectives), reference=reference, hypervolume=0.0,
              counts=counts)
    run.hypervolume = pareto_mod.hypervolume(run.objective_points(ok), directions, reference)
    return run


def load_runs(run_dirs, ref=None) -> List[Run]:
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise PlotError("give at least one results folder")
    return [load_run(d, ref) for d in run_dirs]


# --------------------------------------------------------------------------------------------
# Numbers as text

def si_scale(values: Sequence[float]) -> Tuple[float, str]:
    """(divisor, prefix) that brings the largest magnitude into [1, 1000): 1e6 -> (1e6, "M")."""
    largest = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if largest >= scale:
            return scale, prefix
    return 1.0, ""


def format_metric(metric: str, value: Optional[float]) -> str:
    """A metric value with its unit: accuracy 4 decimals, counts with an SI prefix, latency in ms."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    if metric == "accuracy":
        return f"{value:.4f}"
    if metric == "latency_ms":
        return f"{value:.3g} ms"
    return format_count(value, SHORT_NAMES.get(metric, metric))


def _format_ref_value(metric: str, value: float) -> str:
    if metric == "accuracy":
        return f"{SHORT_NAMES['accuracy']} {value:g}"
    if metric == "latency_ms":
        return f"latency {value:g} ms"
    return format_count(value, SHORT_NAMES.get(metric, metric), digits=3 if abs(value) < 1e3 else 2)


def ideal_box_volume(objectives: Sequence[Dict[str, Any]], reference: Sequence[float]) -> Optional[float]:
    """Volume of the box between the reference point and the ideal point, or None.

    The ideal point needs no data: accuracy (a fraction) is at best 1 and every cost metric at
    best 0. None when an objective has another direction or the reference lies beyond the ideal.
    """
    volume = 1.0
    for objective, ref in zip(objectives, reference):
        metric, direction = objective["metric"], objective["direction"]
        if metric == "accuracy" and direction == "maximize":
            width = 1.0 - ref
        elif metric != "accuracy" and direction == "minimize":
            width = ref - 0.0
        else:
            return None
        if not width > 0:
            return None
        volume *= width
    return volume


def hypervolume_text(hypervolume: float, objectives: Sequence[Dict[str, Any]], reference: Sequence[float]) -> str:
    """``HV 3.412e+07 [acc × eff. MACs] = 85.3% of the ref-to-ideal box; ref: acc 0, 40.00 M eff. MACs``."""
    units = " × ".join(SHORT_NAMES.get(o["metric"], o["metric"]) for o in objectives)
    text = f"HV {hypervolume:.4g} [{units}]"
    box = ideal_box_volume(objectives, reference)
    if box:
        text += f" = {hypervolume / box:.1%} of the ref-to-ideal box"
    ref_text = ", ".join(_format_ref_value(o["metric"], v) for o, v in zip(objectives, reference))
    return f"{text}; ref: {ref_text}"


def count_text(counts: Dict[str, int]) -> str:
    """``1 stopped, 1 infeasible, 1 failed`` (statuses other than ok with a non-zero count)."""
    return ", ".join(f"{n} {status}" for status, n in counts.items() if status != "ok" and n)


def x_axis_label(x: str, prefix: str) -> str:
    text, unit, _ = X_METRICS[x]
    unit = f"{prefix}{unit}"
    return f"{text} ({unit})" if unit else text


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


# --------------------------------------------------------------------------------------------
# What a figure shows, independent of how it is drawn

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


def _series(runs: Sequence[Run], x: str) -> List[Series]:
    series = []
    for index, run in enumerate(runs):
        front_ids = {id(r) for r in run.front}
        points, missing = [], 0
        for record in run.ok:
            value = (record.get("metrics") or {}).get(x)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                missing += 1
                continue
            points.append({"number": record["number"], "x": float(value),
                           "y": float(record["metrics"]["accuracy"]),
                           "pareto": id(record) in front_ids, "baseline": is_baseline(record.get("arch")),
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
    x_short = X_METRICS[x][2]
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
        base = (f"baseline (trial {baseline['number']}, no attention): acc {format_metric('accuracy', m.get('accuracy'))}, "
                f"{format_metric(x, m.get(x))}")
    return {"trials": trials, "front": front, "baseline": base}


# --------------------------------------------------------------------------------------------
# matplotlib figures

def _new_figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, out: Path, fmt: str) -> None:
    import matplotlib
    out.parent.mkdir(parents=True, exist_ok=True)
    # Text stays text in SVG (searchable, selectable) rather than glyph outlines.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(out, format=fmt, dpi=DPI)


def _log_ticks(axis, lo: float, hi: float) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    subs = (1.0, 2.0, 5.0) if hi / lo >= 10 else (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _place_labels(ax, renderer, labels, obstacles) -> None:
    """Put each label next to its point where it covers no other label, point or axes edge.

    ``labels``: (x, y, text, color) in data units; ``obstacles``: (x, y) points in pixels.
    Greedy: candidate offsets ring the point at growing distances, up-left first (above and left
    of a front there are no points by definition); the first candidate that overlaps nothing
    wins, else the one that overlaps least. A thin leader line joins label and point.
    """
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox
    px = renderer.points_to_pixels(1.0)
    frame = ax.get_window_extent(renderer)
    marker = 6 * px
    obstacle_boxes = [Bbox.from_extents(u - marker, v - marker, u + marker, v + marker) for u, v in obstacles]
    directions = [(-1, 1), (0, 1), (-1, 0), (1, 1), (1, -1), (1, 0), (0, -1), (-1, -1)]
    offsets = [(dx * r * (0.75 if dx and dy else 1), dy * r * (0.75 if dx and dy else 1))
               for r in (16, 30, 46, 64, 86, 112) for dx, dy in directions]
    placed, leaders = [], []
    for x, y, text, color in sorted(labels, key=lambda item: (item[0], item[1])):
        annotation = ax.annotate(
            text, xy=(x, y), xytext=(0, 0), textcoords="offset points", fontsize=7.5, zorder=6, multialignment="left",
            bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor=color, linewidth=0.8, alpha=0.92),
            arrowprops=dict(arrowstyle="-", color=color, linewidth=0.7, shrinkA=0, shrinkB=3))
        best = None
        for dx, dy in offsets:
            annotation.set_position((dx, dy))
            annotation.set_horizontalalignment("right" if dx < 0 else "left" if dx > 0 else "center")
            annotation.set_verticalalignment("bottom" if dy > 0 else "top" if dy < 0 else "center")
            annotation.update_positions(renderer)
            box = Text.get_window_extent(annotation, renderer).padded(3 * px)
            cost = sum(_overlap(box, other) for other in placed) * 10
            cost += sum(_overlap(box, other) for other in obstacle_boxes)
            outside = box.width * box.height - _overlap(box, frame)
            cost += outside * 20
            # A leader line that crosses another label (or a label over another leader) reads
            # as the wrong pairing: as costly as a large overlap.
            anchor = ax.transData.transform((x, y))
            leader = _segment_samples(anchor, _nearest_on_box(anchor, box))
            cost += 400 * px * px * sum(any(_inside(u, v, other) for u, v in leader) for other in placed)
            cost += 400 * px * px * sum(any(_inside(u, v, box) for u, v in other) for other in leaders)
            if best is None or cost < best[0]:
                best = (cost, dx, dy, box, leader)
            if cost == 0:
                break
        _, dx, dy, box, leader = best
        annotation.set_position((dx, dy))
        annotation.set_horizontalalignment("right" if dx < 0 else "left" if dx > 0 else "center")
        annotation.set_verticalalignment("bottom" if dy > 0 else "top" if dy < 0 else "center")
        placed.append(box)
        leaders.append(leader)


def _inside(u: float, v: float, box) -> bool:
    return box.x0 < u < box.x1 and box.y0 < v < box.y1


def _nearest_on_box(point, box) -> Tuple[float, float]:
    return (min(max(point[0], box.x0), box.x1), min(max(point[1], box.y0), box.y1))


def _segment_samples(start, end, count: int = 12) -> List[Tuple[float, float]]:
    # Interior points only: the ends touch the point's own marker and the label's own box.
    return [(start[0] + (end[0] - start[0]) * t / count, start[1] + (end[1] - start[1]) * t / count)
            for t in range(1, count)]


def _draw_runs(series: Sequence[Series], x: str, logx: bool):
    from matplotlib.lines import Line2D
    figure = _new_figure(FIGSIZE)
    ax = figure.add_axes((0.08, 0.3, 0.9, 0.6))
    all_x = [p["x"] for s in series for p in s.points]
    all_y = [p["y"] for s in series for p in s.points]
    if logx and min(all_x) <= 0:
        raise PlotError(f"--logx needs positive {x} values; the smallest plotted is {min(all_x)}")
    divisor, prefix = (1.0, "") if x == "latency_ms" else si_scale(all_x)
    x_lim = _limits(all_x, logx, 0.08, 0.06)
    y_lim = _limits(all_y, False, 0.08, 0.22)
    refs = [_reference_in_view(s.run, x, x_lim, y_lim, logx) for s in series]
    extra_x = [r[0] for r in refs if r and r[0] is not None]
    if extra_x:
        x_lim = _limits(all_x + extra_x, logx, 0.08, 0.06)
    extra_y = [r[1] for r in refs if r and r[1] is not None]
    if extra_y:
        y_lim = _limits(all_y + extra_y, False, 0.08, 0.22)
    if logx:
        ax.set_xscale("log")
    scaled_lim = (x_lim[0] / divisor, x_lim[1] / divisor)
    ax.set_xlim(*scaled_lim)
    ax.set_ylim(*y_lim)
    if logx:
        _log_ticks(ax.xaxis, *scaled_lim)
    ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel(x_axis_label(x, prefix), fontsize=10)
    ax.set_ylabel(Y_LABEL, fontsize=10)

    handles, texts = [], []
    drawn_refs = set()
    for s, ref in zip(series, refs):
        legend = _legend_texts(s, x)
        others = [p for p in s.points if not p["pareto"]]
        front = [p for p in s.points if p["pareto"]]
        ax.scatter([p["x"] / divisor for p in others], [p["y"] for p in others], s=22, color=s.color,
                   alpha=0.45, linewidths=0, zorder=3)
        ax.scatter([p["x"] / divisor for p in front], [p["y"] for p in front], s=46, color=s.color,
                   edgecolors="black", linewidths=0.7, zorder=4)
        stair_x, stair_y = _staircase(s.front_xy, x_lim[1], y_lim[0])
        ax.plot([v / divisor for v in stair_x], stair_y, color=s.color, linewidth=1.4, zorder=3.5)
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=5, color=s.color, alpha=0.6))
        texts.append(legend["trials"])
        handles.append(Line2D([], [], color=s.color, linewidth=1.4, marker="o", markersize=6,
                              markeredgecolor="black"))
        texts.append(legend["front"])
        base = [p for p in s.points if p["baseline"]]
        if base:
            ax.scatter([base[0]["x"] / divisor], [base[0]["y"]], marker="*", s=260, color="gold",
                       edgecolors=s.color, linewidths=1.4, zorder=5)
        handles.append(Line2D([], [], linestyle="none", marker="*", markersize=13, color="gold",
                              markeredgecolor=s.color, markeredgewidth=1.2))
        texts.append(legend["baseline"])
        if ref:
            ref_x, ref_y = ref
            if ref_x is not None and ("x", ref_x) not in drawn_refs:
                ax.axvline(ref_x / divisor, color="#555555", linestyle=":", linewidth=1.0, zorder=2)
                drawn_refs.add(("x", ref_x))
            if ref_y is not None and ("y", ref_y) not in drawn_refs:
                ax.axhline(ref_y, color="#555555", linestyle=":", linewidth=1.0, zorder=2)
                drawn_refs.add(("y", ref_y))
    if drawn_refs:
        handles.append(Line2D([], [], color="#555555", linestyle=":", linewidth=1.0))
        texts.append("hypervolume reference (dotted where inside the view)")

    title, subtitle = _figure_text(series, x)
    figure.suptitle(title, fontsize=13, y=0.975)
    figure.text(0.5, 0.925, subtitle, ha="center", fontsize=9, color="#444444")
    legend = figure.legend(handles, texts, loc="lower left", bbox_to_anchor=(0.02, 0.01), fontsize=8,
                           frameon=False, ncol=1, handlelength=2.2, labelspacing=0.5)
    renderer = figure.canvas.get_renderer()
    legend_top = legend.get_window_extent(renderer).transformed(figure.transFigure.inverted()).y1
    bottom = legend_top + 0.085
    ax.set_position((0.08, bottom, 0.9, max(0.2, 0.9 - bottom)))

    labels = [(p["x"] / divisor, p["y"], _label_text(p), s.color) for s in series for p in s.points if p["pareto"]]
    obstacles = [tuple(ax.transData.transform((p["x"] / divisor, p["y"]))) for s in series for p in s.points]
    _place_labels(ax, renderer, labels, obstacles)
    return figure


def plot_runs(run_dirs, out: PathLike, x: Optional[str] = None, logx: bool = False, ref=None) -> Path:
    """Accuracy against cost for one or more results folders; writes ``out`` (.png, .svg or .html).

    ``x``: macs, effective_macs, params or latency_ms (default: the first run's cost objective,
    else effective_macs). ``ref``: hypervolume reference point, one value per objective in the
    space's order (a sequence or ``"0.0,4e7"``); default the space's declared ``ref`` values.
    Returns the path written.
    """
    out = Path(out)
    fmt = _output_format(out, FORMATS)
    if x is not None:
        _check_x(x)
    runs = load_runs(run_dirs, ref)
    x = x or default_x(runs[0].space)
    series = _series(runs, x)
    if fmt == "html":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_html_page(series, x, logx))
        return out
    figure = _draw_runs(series, x, logx)
    _save(figure, out, fmt)
    return out


def plot_history(run_dirs, out: PathLike, ref=None) -> Path:
    """Hypervolume of the trials finished so far against the trial number; writes ``out`` (.png/.svg).

    Every run must have the same objectives (otherwise their hypervolumes are in different
    units). Returns the path written.
    """
    out = Path(out)
    fmt = _output_format(out, HISTORY_FORMATS)
    runs = load_runs(run_dirs, ref)
    objective_sets = {tuple((o["metric"], o["direction"]) for o in r.objectives) for r in runs}
    if len(objective_sets) > 1:
        raise PlotError("--history needs runs with the same objectives (their hypervolumes are otherwise in "
                        "different units); got " + "; ".join(
                            f"{r.name}: {', '.join(o['metric'] for o in r.objectives)}" for r in runs))
    objectives = runs[0].objectives
    # Scale each cost objective by the SI prefix of its reference so the axis reads e.g. acc × M MACs.
    scales = [si_scale([v]) if o["metric"] not in ("accuracy", "latency_ms") else (1.0, "")
              for o, v in zip(objectives, runs[0].reference)]
    divisor = math.prod(scale for scale, _ in scales)
    units = " × ".join(f"{prefix + ' ' if prefix else ''}{SHORT_NAMES.get(o['metric'], o['metric'])}"
                       + (" (ms)" if o["metric"] == "latency_ms" else "")
                       for o, (_, prefix) in zip(objectives, scales))

    figure = _new_figure(HISTORY_FIGSIZE)
    ax = figure.add_axes((0.1, 0.3, 0.8, 0.6))
    handles, texts = [], []
    for index, run in enumerate(runs):
        color = COLORS[index % len(COLORS)]
        numbers, values = run.history()
        scaled = [v / divisor for v in values]
        line = ax.step(numbers, scaled, where="post", color=color, linewidth=1.6)[0]
        gains = [i for i in range(len(values)) if values[i] > (values[i - 1] if i else 0.0)]
        ax.scatter([numbers[i] for i in gains], [scaled[i] for i in gains], color=color, s=24, zorder=3)
        handles.append(line)
        texts.append(f"{run.name} ({len(run.records)} trials; {len(run.ok)} finished"
                     + (f"; {count_text(run.counts)}" if count_text(run.counts) else "") + ")\n"
                     + f"final {hypervolume_text(run.hypervolume, run.objectives, run.reference)}")
    handles.append(ax.scatter([], [], color="#444444", s=24))
    texts.append("a trial that enlarged the dominated region")
    ax.set_xlabel("trial number", fontsize=10)
    ax.set_ylabel(f"hypervolume ({units})", fontsize=10)
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_ylim(bottom=0)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    box = ideal_box_volume(objectives, runs[0].reference)
    if box and all(r.reference == runs[0].reference for r in runs):
        factor = divisor / box * 100.0
        secondary = ax.secondary_yaxis("right", functions=(lambda v: v * factor, lambda v: v / factor))
        secondary.set_ylabel("% of the ref-to-ideal box", fontsize=10)
    names = sorted({r.space.name for r in runs})
    figure.suptitle(f"{', '.join(names)}: hypervolume by trial", fontsize=13, y=0.975)
    figure.text(0.5, 0.925, "objectives " + " × ".join(f"{o['metric']} ({o['direction']})" for o in objectives),
                ha="center", fontsize=9, color="#444444")
    legend = figure.legend(handles, texts, loc="lower left", bbox_to_anchor=(0.02, 0.01), fontsize=8,
                           frameon=False, labelspacing=0.5)
    renderer = figure.canvas.get_renderer()
    legend_top = legend.get_window_extent(renderer).transformed(figure.transFigure.inverted()).y1
    bottom = legend_top + 0.1
    ax.set_position((0.1, bottom, 0.8, max(0.2, 0.9 - bottom)))
    _save(figure, out, fmt)
    return out


# --------------------------------------------------------------------------------------------
# HTML: one self-contained page

def _json_for_script(value) -> str:
    # Inside <script> the text must not close the element or open a comment; \u escapes are
    # still valid JSON, so the embedded data parses back to the same value.
    text = json.dumps(value, sort_keys=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def html_data(series: Sequence[Series], x: str, logx: bool) -> Dict[str, Any]:
    """The JSON the HTML page embeds: runs, points with their whole Arch and metrics, texts."""
    all_x = [p["x"] for s in series for p in s.points]
    divisor, prefix = (1.0, "") if x == "latency_ms" else si_scale(all_x)
    title, subtitle = _figure_text(series, x)
    runs = []
    for s in series:
        legend = _legend_texts(s, x)
        runs.append({
            "name": s.run.name, "color": s.color, "legend": legend,
            "hypervolume": s.run.hypervolume, "reference": s.run.reference,
            "objectives": [{"metric": o["metric"], "direction": o["direction"]} for o in s.run.objectives],
            "counts": s.run.counts,
            "points": [{"number": p["number"], "x": p["x"], "y": p["y"], "pareto": p["pareto"],
                        "baseline": p["baseline"], "summary": p["summary"], "label": _label_text(p),
                        "arch": p["record"].get("arch"),
                        "metrics": {k: v for k, v in (p["record"].get("metrics") or {}).items()
                                    if isinstance(v, (int, float, str)) and not (isinstance(v, float) and not math.isfinite(v))}}
                       for p in s.points],
        })
    return {"title": title, "subtitle": subtitle, "x_metric": x, "x_label": x_axis_label(x, prefix),
            "y_label": Y_LABEL, "x_divisor": divisor, "logx": bool(logx), "runs": runs}


_HTML_STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px 24px; color: #222; }
h1 { font-size: 19px; margin: 0 0 2px; }
.sub { color: #555; margin: 0 0 8px; }
#plot svg { border: 1px solid #ddd; background: #fff; }
.tip { position: absolute; background: #fff; border: 1px solid #888; border-radius: 4px; padding: 6px 8px;
       font-size: 12px; max-width: 520px; box-shadow: 0 2px 6px rgba(0,0,0,.2); pointer-events: none; }
.tip pre { margin: 4px 0 0; font-size: 11px; white-space: pre-wrap; max-height: 420px; overflow: hidden; }
ul.legend { list-style: none; padding: 0; font-size: 13px; }
ul.legend li { margin: 3px 0; white-space: pre-line; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 6px; margin-right: 6px; vertical-align: -1px; }
.pt { cursor: pointer; }
"""

_HTML_SCRIPT = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("nas-attn-data").textContent);
  var W = 980, H = 600, M = {l: 72, r: 24, t: 16, b: 56};
  var plotW = W - M.l - M.r, plotH = H - M.t - M.b;
  var logBox = document.getElementById("logx");
  logBox.checked = D.logx;

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function fmt(v) { return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : String(+v.toPrecision(4)); }
  function niceTicks(lo, hi, n) {
    var raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw))), r = raw / mag;
    var step = (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag, out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }
  function logTicks(lo, hi) {
    var subs = hi / lo >= 10 ? [1, 2, 5] : [1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9], out = [];
    for (var e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
      subs.forEach(function (s) { var v = +(s * Math.pow(10, e)).toPrecision(12); if (v >= lo && v <= hi) out.push(v); });
    // A narrow range holds too few round log ticks: evenly spaced values still mark it.
    return out.length >= 3 ? out : niceTicks(lo, hi, 6);
  }
  function limits(vals, log, lowPad, highPad) {
    var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
    if (log) {
      var a = Math.log10(lo), b = Math.log10(hi), span = (b - a) || 0.1;
      return [Math.pow(10, a - lowPad * span), Math.pow(10, b + highPad * span)];
    }
    var sp = (hi - lo) || (Math.abs(hi) * 0.1 || 1);
    return [lo - lowPad * sp, hi + highPad * sp];
  }
  function star(cx, cy, r) {
    var pts = [];
    for (var i = 0; i < 10; i++) {
      var a = -Math.PI / 2 + i * Math.PI / 5, rr = i % 2 ? r * 0.45 : r;
      pts.push((cx + rr * Math.cos(a)).toFixed(1) + "," + (cy + rr * Math.sin(a)).toFixed(1));
    }
    return pts.join(" ");
  }
  function overlap(a, b) {
    var w = Math.min(a.x1, b.x1) - Math.max(a.x0, b.x0), h = Math.min(a.y1, b.y1) - Math.max(a.y0, b.y0);
    return w > 0 && h > 0 ? w * h : 0;
  }

  function draw() {
    var log = logBox.checked, div = D.x_divisor, all = [], ally = [];
    D.runs.forEach(function (run) { run.points.forEach(function (p) { all.push(p.x / div); ally.push(p.y); }); });
    if (log && Math.min.apply(null, all) <= 0) { log = false; logBox.checked = false; }
    var xl = limits(all, log, 0.08, 0.06), yl = limits(ally, false, 0.08, 0.22);
    function sx(v) {
      var t = log ? (Math.log10(v) - Math.log10(xl[0])) / (Math.log10(xl[1]) - Math.log10(xl[0])) : (v - xl[0]) / (xl[1] - xl[0]);
      return M.l + t * plotW;
    }
    function sy(v) { return M.t + (1 - (v - yl[0]) / (yl[1] - yl[0])) * plotH; }
    var s = [];
    s.push('<svg xmlns="http://www.w3.org/2000/svg" width="' + W + '" height="' + H + '" font-family="sans-serif">');
    var xt = log ? logTicks(xl[0], xl[1]) : niceTicks(xl[0], xl[1], 8), yt = niceTicks(yl[0], yl[1], 8);
    xt.forEach(function (v) {
      var X = sx(v).toFixed(1);
      s.push('<line x1="' + X + '" x2="' + X + '" y1="' + M.t + '" y2="' + (M.t + plotH) + '" stroke="#e4e4e4"/>');
      s.push('<text x="' + X + '" y="' + (M.t + plotH + 16) + '" font-size="11" text-anchor="middle">' + fmt(v) + '</text>');
    });
    yt.forEach(function (v) {
      var Y = sy(v).toFixed(1);
      s.push('<line x1="' + M.l + '" x2="' + (M.l + plotW) + '" y1="' + Y + '" y2="' + Y + '" stroke="#e4e4e4"/>');
      s.push('<text x="' + (M.l - 6) + '" y="' + Y + '" dy="4" font-size="11" text-anchor="end">' + fmt(v) + '</text>');
    });
    s.push('<rect x="' + M.l + '" y="' + M.t + '" width="' + plotW + '" height="' + plotH + '" fill="none" stroke="#444"/>');
    s.push('<text x="' + (M.l + plotW / 2) + '" y="' + (H - 14) + '" font-size="13" text-anchor="middle">' + esc(D.x_label) + '</text>');
    s.push('<text transform="translate(18,' + (M.t + plotH / 2) + ') rotate(-90)" font-size="13" text-anchor="middle">' + esc(D.y_label) + '</text>');
    s.push('<svg x="' + M.l + '" y="' + M.t + '" width="' + plotW + '" height="' + plotH + '" viewBox="' + M.l + ' ' + M.t + ' ' + plotW + ' ' + plotH + '" overflow="hidden">');
    var labels = [], obstacles = [];
    D.runs.forEach(function (run, ri) {
      var front = run.points.filter(function (p) { return p.pareto; }).map(function (p) { return [p.x / div, p.y]; });
      front.sort(function (a, b) { return a[0] - b[0] || a[1] - b[1]; });
      var path = [], best = -Infinity;
      front.forEach(function (q) {
        if (q[1] > best) {
          path.push(path.length ? sx(q[0]).toFixed(1) + "," + sy(best).toFixed(1) : sx(q[0]).toFixed(1) + "," + sy(yl[0]).toFixed(1));
          path.push(sx(q[0]).toFixed(1) + "," + sy(q[1]).toFixed(1));
          best = q[1];
        }
      });
      if (path.length) {
        path.push(sx(xl[1]).toFixed(1) + "," + sy(best).toFixed(1));
        s.push('<polyline points="' + path.join(" ") + '" fill="none" stroke="' + run.color + '" stroke-width="1.6"/>');
      }
      run.points.forEach(function (p, pi) {
        var X = sx(p.x / div), Y = sy(p.y), attrs = ' class="pt" data-run="' + ri + '" data-i="' + pi + '"';
        obstacles.push({x0: X - 6, x1: X + 6, y0: Y - 6, y1: Y + 6});
        if (p.baseline) {
          s.push('<polygon points="' + star(X, Y, 11) + '" fill="gold" stroke="' + run.color + '" stroke-width="1.5"' + attrs + '/>');
        } else if (p.pareto) {
          s.push('<circle cx="' + X.toFixed(1) + '" cy="' + Y.toFixed(1) + '" r="5" fill="' + run.color + '" stroke="#000" stroke-width="0.8"' + attrs + '/>');
        } else {
          s.push('<circle cx="' + X.toFixed(1) + '" cy="' + Y.toFixed(1) + '" r="3.5" fill="' + run.color + '" fill-opacity="0.45"' + attrs + '/>');
        }
        if (p.pareto) labels.push({X: X, Y: Y, text: p.label.split("\n"), color: run.color});
      });
    });
    s.push('</svg>');
    // Greedy label placement: offsets around the point, up-left first; text width estimated.
    var placed = [], leaders = [], frame = {x0: M.l, x1: M.l + plotW, y0: M.t, y1: M.t + plotH};
    function inside(q, b) { return b.x0 < q[0] && q[0] < b.x1 && b.y0 < q[1] && q[1] < b.y1; }
    function samples(X, Y, b) {
      var ex = Math.min(Math.max(X, b.x0), b.x1), ey = Math.min(Math.max(Y, b.y0), b.y1), out = [];
      for (var t = 1; t < 12; t++) out.push([X + (ex - X) * t / 12, Y + (ey - Y) * t / 12]);
      return out;
    }
    var dirs = [[-1, -1], [0, -1], [-1, 0], [1, -1], [1, 1], [1, 0], [0, 1], [-1, 1]];
    labels.sort(function (a, b) { return a.X - b.X; });
    labels.forEach(function (lab) {
      var w = 6.2 * Math.max.apply(null, lab.text.map(function (t) { return t.length; })) + 8, h = 13 * lab.text.length + 4, best = null;
      [18, 34, 52, 72, 96, 124].some(function (r) {
        return dirs.some(function (d) {
          var k = d[0] && d[1] ? 0.75 : 1, ax = lab.X + d[0] * r * k, ay = lab.Y + d[1] * r * k;
          var x0 = d[0] < 0 ? ax - w : d[0] > 0 ? ax : ax - w / 2, y0 = d[1] < 0 ? ay - h : d[1] > 0 ? ay : ay - h / 2;
          var box = {x0: x0, x1: x0 + w, y0: y0, y1: y0 + h, ax: ax, ay: ay}, cost = 0;
          placed.forEach(function (o) { cost += 10 * overlap(box, o); });
          obstacles.forEach(function (o) { cost += overlap(box, o); });
          cost += 20 * (w * h - overlap(box, frame));
          var lead = samples(lab.X, lab.Y, box);
          placed.forEach(function (o) { if (lead.some(function (q) { return inside(q, o); })) cost += 400; });
          leaders.forEach(function (l) { if (l.some(function (q) { return inside(q, box); })) cost += 400; });
          box.lead = lead;
          if (!best || cost < best.cost) { best = box; best.cost = cost; }
          return cost === 0;
        });
      });
      placed.push(best);
      leaders.push(best.lead);
      var cx = Math.min(Math.max(lab.X, best.x0), best.x1), cy = Math.min(Math.max(lab.Y, best.y0), best.y1);
      s.push('<line x1="' + lab.X.toFixed(1) + '" y1="' + lab.Y.toFixed(1) + '" x2="' + cx.toFixed(1) + '" y2="' + cy.toFixed(1) + '" stroke="' + lab.color + '" stroke-width="0.8"/>');
      s.push('<rect x="' + best.x0.toFixed(1) + '" y="' + best.y0.toFixed(1) + '" width="' + w.toFixed(1) + '" height="' + h + '" rx="3" fill="#fff" fill-opacity="0.92" stroke="' + lab.color + '"/>');
      lab.text.forEach(function (t, i) {
        s.push('<text x="' + (best.x0 + 4).toFixed(1) + '" y="' + (best.y0 + 13 + 13 * i).toFixed(1) + '" font-size="11">' + esc(t) + '</text>');
      });
    });
    s.push('</svg>');
    document.getElementById("plot").innerHTML = s.join("");
  }

  var tip = document.getElementById("tip");
  document.getElementById("plot").addEventListener("mousemove", function (ev) {
    var t = ev.target;
    if (!t.getAttribute || t.getAttribute("data-i") === null) { tip.hidden = true; return; }
    var run = D.runs[+t.getAttribute("data-run")], p = run.points[+t.getAttribute("data-i")], m = p.metrics, rows = [];
    Object.keys(m).sort().forEach(function (k) { rows.push(esc(k) + ": " + esc(typeof m[k] === "number" ? fmt(m[k]) : m[k])); });
    tip.innerHTML = "<b>" + esc(run.name) + " &middot; trial " + p.number + "</b>" +
      (p.pareto ? " &middot; Pareto" : "") + (p.baseline ? " &middot; baseline" : "") +
      "<br>" + esc(p.summary) + "<br>" + rows.join("<br>") +
      "<pre>" + esc(JSON.stringify(p.arch, null, 1)) + "</pre>";
    tip.hidden = false;
    tip.style.left = (ev.pageX + 14) + "px";
    tip.style.top = (ev.pageY + 10) + "px";
  });
  document.getElementById("plot").addEventListener("mouseleave", function () { tip.hidden = true; });
  logBox.addEventListener("change", draw);
  draw();
})();
"""


def _html_page(series: Sequence[Series], x: str, logx: bool) -> str:
    data = html_data(series, x, logx)
    legend_items = []
    for run in data["runs"]:
        color = html.escape(run["color"])
        for key in ("trials", "front", "baseline"):
            legend_items.append(f'<li><span class="swatch" style="background:{color}"></span>'
                                f'{html.escape(run["legend"][key])}</li>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(data["title"])}</title>
<style>{_HTML_STYLE}</style>
</head>
<body>
<h1>{html.escape(data["title"])}</h1>
<p class="sub">{html.escape(data["subtitle"])}. Hover a point for its trial, metrics and whole Arch;
large points with a label are the Pareto set, the star is the baseline (no attention).</p>
<label><input type="checkbox" id="logx"> logarithmic x axis</label>
<div id="plot"></div>
<div id="tip" class="tip" hidden></div>
<ul class="legend">
{chr(10).join(legend_items)}
</ul>
<script type="application/json" id="nas-attn-data">{_json_for_script(data)}</script>
<script>{_HTML_SCRIPT}</script>
</body>
</html>
"""


# --------------------------------------------------------------------------------------------
# Command line

def _ref_argument(text: str) -> List[float]:
    try:
        return parse_ref(text)
    except PlotError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_plot_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``nas-attn plot`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "plot", help="accuracy vs cost with the Pareto front (PNG, SVG or interactive HTML)",
        description="Plot every finished trial of one or more results folders: cost on x, validation "
                    "accuracy on y, the Pareto front, the baseline and the hypervolume with its "
                    "reference point. --history plots hypervolume against trial number instead.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="results folder(s) of nas-attn search")
    p.add_argument("--out", help="output file: .png, .svg or .html (--history: .png or .svg); default "
                                 "RUN_DIR/pareto.png or RUN_DIR/hypervolume.png for one run")
    p.add_argument("--x", choices=tuple(X_METRICS), default=None,
                   help="cost on the x axis (default: the space's cost objective, else effective_macs)")
    p.add_argument("--logx", action="store_true", help="logarithmic x axis")
    p.add_argument("--ref", type=_ref_argument, metavar="ACC,COST",
                   help="hypervolume reference point, one value per objective in the space's order "
                        "(default: the space's declared ref values)")
    p.add_argument("--history", action="store_true", help="plot hypervolume against trial number")
    p.set_defaults(func=cmd_plot)
    return p


def cmd_plot(args) -> int:
    out = args.out
    if out is None:
        if len(args.run_dirs) > 1:
            raise PlotError("--out is required with several results folders (one figure holds them all)")
        out = Path(args.run_dirs[0]) / ("hypervolume.png" if args.history else "pareto.png")
    if args.history:
        if args.x is not None or args.logx:
            raise PlotError("--x and --logx apply to the accuracy plot, not to --history")
        written = plot_history(args.run_dirs, out, ref=args.ref)
    else:
        written = plot_runs(args.run_dirs, out, x=args.x, logx=args.logx, ref=args.ref)
    print(f"wrote {written}")
    return 0
