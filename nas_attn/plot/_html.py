"""The interactive HTML figure, drawn by plotly: one self-contained page (plotly.js inlined).

plotly places the points, zooms, switches the x axis between linear and log, and shows a
hover box per point: the run, trial number, its metrics with units and the whole Arch. The
Pareto staircase and the texts are the same as in the PNG/SVG figures (``_figure``).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, Sequence

from ..metrics import METRICS, format_value, is_number
from ._figure import Series, Y_LABEL, _figure_text, _legend_texts, _limits, _staircase, x_axis_label, x_scale


def _hover(s: Series, point: Dict[str, Any]) -> str:
    record = point["record"]
    metrics = record.get("metrics") or {}
    rows = [f"{name}: {format_value(name, metrics[name])}" for name in METRICS if is_number(metrics.get(name))]
    tags = (" · Pareto" if point["pareto"] else "") + (" · baseline" if point["baseline"] else "")
    arch = json.dumps(record.get("arch"), indent=1, sort_keys=True)
    # hovertext is HTML-like: escape what the Arch holds, keep line breaks as <br> and the
    # JSON's indentation as non-breaking spaces (plain ones collapse).
    lines = [_escape(line.lstrip(" ")) for line in arch.splitlines()]
    indents = ["&nbsp;" * (len(line) - len(line.lstrip(" "))) for line in arch.splitlines()]
    return "<br>".join([f"<b>{_escape(s.run.name)} · trial {point['number']}</b>{tags}",
                        _escape(point["summary"]), *map(_escape, rows), "",
                        *(indent + line for indent, line in zip(indents, lines))])


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def html_figure(series: Sequence[Series], x: str, logx: bool):
    """The plotly Figure of :func:`nas_attn.plot.plot_runs` for ``.html``; traces are named by run."""
    import plotly.graph_objects as go

    all_x = [p["x"] for s in series for p in s.points]
    all_y = [p["y"] for s in series for p in s.points]
    divisor, prefix = x_scale(x, all_x)
    x_lim = _limits(all_x, logx, 0.08, 0.06)
    y_lim = _limits(all_y, False, 0.08, 0.22)
    title, subtitle = _figure_text(series, x)
    figure = go.Figure()
    for s in series:
        legend = _legend_texts(s, x)
        for kind, name, marker in (
                ("others", legend["trials"], dict(size=7, color=s.color, opacity=0.45)),
                ("front", legend["front"], dict(size=11, color=s.color, line=dict(color="black", width=1))),
                ("baseline", legend["baseline"], dict(size=18, symbol="star", color="gold",
                                                      line=dict(color=s.color, width=1.5)))):
            points = [p for p in s.points if (p["baseline"] if kind == "baseline"
                                              else (p["pareto"] and not p["baseline"]) if kind == "front"
                                              else not p["pareto"] and not p["baseline"])]
            # 95% accuracy intervals: Wilson over the validation images, or over seeds once confirmed
            bars = all(p.get("y_low") is not None for p in points) and bool(points)
            error_y = dict(type="data", symmetric=False, array=[p["y_high"] - p["y"] for p in points],
                           arrayminus=[p["y"] - p["y_low"] for p in points], color=s.color, thickness=0.8,
                           width=2) if bars else None
            figure.add_trace(go.Scatter(
                x=[p["x"] / divisor for p in points], y=[p["y"] for p in points], error_y=error_y,
                mode="markers+text" if kind == "front" else "markers",
                text=[f"#{p['number']}" for p in points] if kind == "front" else None, textposition="top left",
                marker=marker, name=name.replace("\n", "<br>"), legendgroup=s.run.name,
                hovertext=[_hover(s, p) for p in points], hoverinfo="text",
                customdata=[p["number"] for p in points], meta={"run": s.run.name, "kind": kind}))
        stair_x, stair_y = _staircase(s.front_xy, x_lim[1], y_lim[0])
        figure.add_trace(go.Scatter(x=[v / divisor for v in stair_x], y=stair_y, mode="lines",
                                    line=dict(color=s.color, width=1.6), hoverinfo="skip", showlegend=False,
                                    legendgroup=s.run.name, meta={"run": s.run.name, "kind": "staircase"}))
    figure.update_layout(
        title=dict(text=f"{_escape(title)}<br><sup>{_escape(subtitle)}</sup>"),
        xaxis=dict(title=x_axis_label(x, prefix), type="log" if logx else "linear"),
        yaxis=dict(title=Y_LABEL, range=list(y_lim)),
        legend=dict(orientation="h", yanchor="top", y=-0.15, xanchor="left", x=0),
        hoverlabel=dict(align="left", font=dict(family="monospace", size=11)),
        template="plotly_white", width=1100, height=800)
    # A button flips the x axis between linear and logarithmic, as --logx sets it at first.
    figure.update_layout(updatemenus=[dict(type="buttons", direction="right", x=1.0, y=1.08, xanchor="right",
                                           buttons=[dict(label="linear x", method="relayout",
                                                         args=[{"xaxis.type": "linear"}]),
                                                    dict(label="log x", method="relayout",
                                                         args=[{"xaxis.type": "log"}])])])
    return figure


def write_html(series: Sequence[Series], x: str, logx: bool, out: Path) -> None:
    """Write the page to ``out``: plotly.js inlined, so it opens without a network."""
    out.parent.mkdir(parents=True, exist_ok=True)
    html_figure(series, x, logx).write_html(str(out), include_plotlyjs=True, full_html=True,
                                            config={"displaylogo": False})
