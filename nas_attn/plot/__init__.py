"""Figures of a search: accuracy against cost with the Pareto front, and hypervolume by trial.

``plot_runs(run_dirs, out)`` draws every finished trial (status ``ok``) of one or more results
folders as a point: a cost metric on x (MACs, effective MACs or parameters per image, or latency
in milliseconds), validation accuracy (top-1, a fraction) on y. The Pareto set of each run (on the
run's own objectives, as in ``pareto.json``) is drawn larger, labelled with a short architecture
summary and joined by a step line; the baseline (no attention, no AW-conv anywhere) is a star.
Trials that were stopped early, broke a constraint or failed have no final accuracy: they are not
points, their counts are in the legend. PNG and SVG come from matplotlib; HTML is one
self-contained plotly page (plotly.js inlined, no network) whose hover boxes show each trial's
metrics and whole Arch.

``plot_history(run_dirs, out)`` draws the hypervolume of the trials finished so far against the
trial number.

The public front is this module; the private modules read a results folder (``_run``), say
what a figure shows (``_figure``) and draw it with matplotlib (``_mpl``) or as HTML (``_html``).

Every hypervolume is computed with :func:`nas_attn.pareto.hypervolume` on the space's objectives
(not on the plotted axes, when they differ) and printed with its reference point. The reference
point is the one the space declares (``objectives[i].ref``) or the one given with ``--ref``; it
is never derived from the data, so hypervolumes of different runs stay comparable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ._figure import (DPI, FIGSIZE, FORMATS, HISTORY_FIGSIZE, PathLike, Series, _check_x, _output_format,
                      _series, default_x, x_axis_label)
from ._html import html_figure, write_html
from ._mpl import _draw_runs, _save, plot_history
from ._run import (PlotError, Run, count_text, hypervolume_text, ideal_box_volume, load_run, load_runs,
                   parse_ref, resolve_reference)


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
        write_html(series, x, logx, out)
        return out
    figure = _draw_runs(series, x, logx)
    _save(figure, out, fmt)
    return out




__all__ = ["plot_runs", "plot_history", "load_run", "load_runs", "Run", "Series", "PlotError", "parse_ref",
           "resolve_reference", "default_x", "x_axis_label", "hypervolume_text", "count_text",
           "ideal_box_volume", "html_figure", "FIGSIZE", "HISTORY_FIGSIZE", "DPI", "FORMATS"]
