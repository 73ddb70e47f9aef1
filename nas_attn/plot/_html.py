"""The interactive HTML figure: one self-contained page."""
from __future__ import annotations

import html
import json
import math
from typing import Any, Dict, Sequence

from ._figure import Series, Y_LABEL, _figure_text, _label_text, _legend_texts, x_axis_label, x_scale

def _json_for_script(value) -> str:
    # Inside <script> the text must not close the element or open a comment; \u escapes are
    # still valid JSON, so the embedded data parses back to the same value.
    text = json.dumps(value, sort_keys=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def html_data(series: Sequence[Series], x: str, logx: bool) -> Dict[str, Any]:
    """The JSON the HTML page embeds: runs, points with their whole Arch and metrics, texts."""
    all_x = [p["x"] for s in series for p in s.points]
    divisor, prefix = x_scale(x, all_x)
    title, subtitle = _figure_text(series, x)
    runs = []
    for s in series:
        legend = _legend_texts(s, x)
        runs.append({
            "name": s.run.name, "color": s.color, "legend": legend,
            "hypervolume": s.run.hypervolume, "reference": s.run.reference,
            "objectives": [{"metric": o["metric"], "direction": o["direction"]} for o in s.run.objectives],
            "counts": s.run.counts,
            "points": [{"number": p["number"], "x": p["x"], "y": p["y"], "y_low": p.get("y_low"),
                        "y_high": p.get("y_high"), "pareto": p["pareto"],
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


