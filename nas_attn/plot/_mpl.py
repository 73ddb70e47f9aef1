"""The PNG/SVG figures, drawn with matplotlib, and the label placer that keeps labels readable."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence, Tuple

from ..metrics import METRICS, short_name
from ..units import si_scale
from ._figure import (COLORS, DPI, FIGSIZE, HISTORY_FIGSIZE, HISTORY_FORMATS, Y_LABEL, PathLike, Series,
                      _figure_text, _label_text, _legend_texts, _limits, _output_format, _reference_in_view,
                      _staircase, x_axis_label, x_scale)
from ._run import PlotError, count_text, hypervolume_text, ideal_box_volume, load_runs

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
    divisor, prefix = x_scale(x, all_x)
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
        # 95% intervals: Wilson over the validation images, or over seeds once confirmed
        bars = [p for p in s.points if p.get("y_low") is not None]
        if bars:
            ax.errorbar([p["x"] / divisor for p in bars], [p["y"] for p in bars],
                        yerr=[[p["y"] - p["y_low"] for p in bars], [p["y_high"] - p["y"] for p in bars]],
                        fmt="none", ecolor=s.color, elinewidth=0.8, capsize=2, alpha=0.55, zorder=2.5)
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
    scales = [si_scale([v]) if METRICS[o["metric"]].kind == "count" else (1.0, "")
              for o, v in zip(objectives, runs[0].reference)]
    divisor = math.prod(scale for scale, _ in scales)
    units = " × ".join(f"{prefix + ' ' if prefix else ''}{short_name(o['metric'])}"
                       + (" (ms)" if METRICS[o["metric"]].kind == "ms" else "")
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


