#!/usr/bin/env python
"""Search quality: random search, TPE, NSGA-II and the best of them with early stopping.

On one space (default: ``cluttered_resnet``, the default of ``nas-attn search``), for every seed, the same trial budget
is searched by each method with :func:`nas_attn.search.run` (Ray Tune + Optuna, the space's
trials at once). Methods are ``random``, ``tpe``, ``nsga2``, any of them with ``+es`` (the
multi-objective ASHA scheduler, ``early_stopping=True``: grace 1 epoch, reduction factor 3) and
``best+es``: whichever of the methods run without early stopping has the highest mean
hypervolume, run again with early stopping.

Per search it records (all from the results folder the search writes):

* hypervolume of the finished (status ``ok``) trials, with :func:`nas_attn.pareto.hypervolume`
  against the reference point the space declares (``objectives[i].ref``; for cluttered_resnet
  accuracy 0.0 and 6.0e6 effective MACs), in accuracy (a fraction) x effective MACs per
  image. Trials an early stopper ended have no final accuracy and do not count;
* the largest share of that hypervolume one trial carries alone (its exclusive contribution:
  the hypervolume lost when it is left out, over the whole);
* the span of the Pareto front in effective MACs (dearest / cheapest Pareto trial);
* epochs spent: the sum over all trials of the last reported ``epoch`` in ``trials.jsonl``;
* wall time of the ``run`` call (``time.perf_counter``; one Ray instance serves every search,
  so Ray's own start-up is not in it);
* whether the Pareto set holds an architecture that dominates the baseline (trial 0, the
  space's base model with no attention, which every search trains first) by more than the 95%
  interval: accuracy above the baseline's Wilson upper bound, at lower or equal effective MACs;
* the hypervolume after each trial against the epochs spent so far (trials in the order the
  sampler proposed them, i.e. trial number), for the plot;
* the 1/5/15-minute load averages before and after, and the mean 1-minute load during it (the
  machine may be shared).

What attention adds (``--ablate``, on by default): every Pareto design of the searches without
early stopping that holds attention or a gate is trained again with every attention module,
AW-conv and gate removed (same width, depth, kernels; same seed), and a table gives the
accuracy and effective-MAC difference per design.

    python scripts/bench_search_quality.py                       # the space's trials, seeds 0,1,2
    python scripts/bench_search_quality.py --quick               # tiny smoke run
    python scripts/bench_search_quality.py --write-md BENCHMARKS.md --plot benchmarks/search_quality.png
    python scripts/bench_search_quality.py --out DIR ...         # an interrupted run continues in DIR
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

SECTION_HEADING = "## Search quality: random, TPE, NSGA-II, early stopping"
SAMPLERS = ("random", "tpe", "nsga2")
DONE_FILE = "bench_summary.json"
TARGET_ES_EPOCH_SAVING = 0.40
TARGET_ES_HV_SHARE = 0.95


def _bench_search_module():
    """scripts/bench_search.py (load averages, machine facts, Markdown section writer)."""
    path = Path(__file__).resolve().with_name("bench_search.py")
    spec = importlib.util.spec_from_file_location("bench_search", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _bench_search_module()


# --------------------------------------------------------------------------------------------
# Methods

def parse_methods(text: str) -> List[str]:
    """``"random,tpe,nsga2,best+es"`` -> validated list; ValueError names a bad entry."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ValueError(f"--methods must name at least one method, got {text!r}")
    for m in methods:
        base = m[:-3] if m.endswith("+es") else m
        if base not in SAMPLERS + ("best",) or m == "best":
            raise ValueError(f"--methods: {m!r} is not one of random, tpe, nsga2, "
                             f"random+es, tpe+es, nsga2+es, best+es")
    if "best+es" in methods and not any(m in SAMPLERS for m in methods):
        raise ValueError("--methods: best+es needs at least one of random, tpe, nsga2 to choose from")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods lists a method twice: {text!r}")
    return methods


def split_method(method: str):
    """``"tpe+es"`` -> ("tpe", True)."""
    return (method[:-3], True) if method.endswith("+es") else (method, False)


# --------------------------------------------------------------------------------------------
# One search

def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def analyse(run_dir: Path, space) -> Dict[str, Any]:
    """Hypervolume, epochs, baseline dominance and hypervolume history of one results folder."""
    from nas_attn import pareto
    from nas_attn.arch import is_baseline
    from nas_attn.results import pareto_records, read_trials
    records = read_trials(run_dir)
    metrics, directions = space.objective_metrics(), space.objective_directions()
    reference = space.reference_point()
    if reference is None:
        raise ValueError(f"space {space.name} declares no reference point (objectives[i].ref); "
                         f"hypervolumes of different runs would not be comparable")
    ok = [r for r in records if r["status"] == "ok"]
    points = [[r["metrics"][m] for m in metrics] for r in ok]
    volume = pareto.hypervolume(points, directions, reference) if points else 0.0
    # History: after each trial (in proposal order), epochs so far and hypervolume so far.
    history, spent, finished = [], 0, []
    for r in records:
        spent += int(r["metrics"].get("epoch", 0) or 0)
        if r["status"] == "ok":
            finished.append([r["metrics"][m] for m in metrics])
        history.append([spent, pareto.hypervolume(finished, directions, reference) if finished else 0.0])
    front = pareto_records(records, space.objectives)
    # Trial 0 is the enqueued baseline: with cost knobs more than one trial can lack attention.
    base = next((r for r in records if r["number"] == 0 and r.get("arch") and is_baseline(r["arch"])), None)
    dominating = []
    if base is not None and base["status"] == "ok":
        b = base["metrics"]
        bar = b.get("accuracy_high", b["accuracy"])
        dominating = [r["number"] for r in front if r is not base
                      and r["metrics"]["accuracy"] > bar and r["metrics"]["effective_macs"] <= b["effective_macs"]]
    share = 0.0
    if points and volume > 0:
        share = max((volume - pareto.hypervolume(points[:i] + points[i + 1:], directions, reference)) / volume
                    if len(points) > 1 else 1.0 for i in range(len(points)))
    macs = [r["metrics"]["effective_macs"] for r in front if _finite(r["metrics"].get("effective_macs"))]
    span = max(macs) / min(macs) if macs and min(macs) > 0 else float("nan")
    return {
        "trials": len(records), "statuses": {s: sum(r["status"] == s for r in records)
                                             for s in sorted({r["status"] for r in records})},
        "hypervolume": volume, "epochs": spent, "history": history, "pareto": [r["number"] for r in front],
        "baseline": None if base is None else {"number": base["number"], "status": base["status"],
                                               "accuracy": base["metrics"].get("accuracy"),
                                               "effective_macs": base["metrics"].get("effective_macs")},
        "dominating_baseline": dominating, "max_trial_share": share, "front_span": span,
        "front": [{"number": r["number"], "arch": r["arch"], "accuracy": r["metrics"]["accuracy"],
                   "effective_macs": r["metrics"]["effective_macs"]} for r in front],
        "best_accuracy": max((r["metrics"]["accuracy"] for r in ok), default=float("nan")),
        # Dominating the baseline needs lower effective MACs than it: the lowest any other trial reached.
        "lowest_other_effective_macs": min((r["metrics"]["effective_macs"] for r in records
                                            if r is not base and _finite(r["metrics"].get("effective_macs"))),
                                           default=float("nan")),
        "archs": [r.get("arch") for r in records],
    }


def run_one(space, method: str, seed: int, out: Path) -> Dict[str, Any]:
    """Run (or reuse, when finished before) one search; returns its summary."""
    from nas_attn import results, search
    done = out / DONE_FILE
    if done.exists():
        print(f"--- {method} seed {seed}: finished before, reusing {out}", flush=True)
        summary = json.loads(done.read_text())
        summary.setdefault("started_unix", done.stat().st_mtime - summary["wall_s"])
        summary.update(analyse(out, space))  # the results folder is the truth; analysis may be newer
        return summary
    if out.exists():
        shutil.rmtree(out)  # an interrupted search: start it again from nothing
    sampler, early_stopping = split_method(method)
    print(f"--- {method} seed {seed} ({out})", flush=True)
    started_unix = time.time()
    code = common.code_version()  # workers import nas_attn when the search starts
    with common.LoadSampler() as load:
        start = time.perf_counter()
        search.run(space, sampler=sampler, seed=seed, early_stopping=early_stopping, out=str(out))
        wall = time.perf_counter() - start
    recorded = len(results.read_trials(out))
    if recorded < space.search["trials"]:
        # Ray Tune ends a run early on Ctrl+C and returns normally: that search is not a result.
        raise RuntimeError(f"{method} seed {seed}: only {recorded} of {space.search['trials']} trials were "
                           f"recorded in {out} (interrupted?); rerun with the same --out to redo it")
    summary = {"method": method, "sampler": sampler, "early_stopping": early_stopping, "seed": seed,
               "wall_s": wall, "started_unix": started_unix, "code": code, "load": load.summary(), **analyse(out, space)}
    done.write_text(json.dumps(summary, indent=1))
    return summary


# --------------------------------------------------------------------------------------------
# What attention adds

def without_attention(arch: Dict[str, Any]) -> Dict[str, Any]:
    """The same structure (width, depth, kernels) with every attention module, AW-conv and gate removed."""
    stripped = json.loads(json.dumps(arch))
    for choice in stripped.get("blocks", {}).values():
        choice.update(attention="none", attention_kwargs={}, aw_conv=None)
        choice.pop("gate", None)
    return stripped


def ablate(space, runs: List[Dict[str, Any]], out: Path) -> List[Dict[str, Any]]:
    """Train every Pareto design that holds attention or a gate again without them (same seed),
    two at a time as Ray tasks; cached in ``out/ablation.json`` so a rerun continues."""
    import ray
    from nas_attn.arch import is_baseline
    from nas_attn.search._confirm import _retrain
    from nas_attn.trial import settings_from_space
    cache_file = out / "ablation.json"
    cache = {f"{c['method']}/{c['seed']}/{c['number']}": c for c in
             (json.loads(cache_file.read_text()) if cache_file.exists() else [])}
    todo = []
    for r in runs:
        for design in r.get("front", []):
            key = f"{r['method']}/{r['seed']}/{design['number']}"
            if key in cache:
                continue
            if is_baseline(design["arch"]) and not any(c.get("gate") for c in design["arch"]["blocks"].values()):
                continue  # no attention to remove
            todo.append((key, r, design))
    settings = settings_from_space(space)
    cpu = space.search["resources"]["cpu"]
    task = ray.remote(num_cpus=cpu)(_retrain)
    pending = {}
    while todo or pending:
        while todo and len(pending) < space.search["concurrent"]:
            key, r, design = todo.pop(0)
            pending[task.remote(without_attention(design["arch"]), {**settings, "threads": cpu}, r["seed"])] = (key, r, design)
        done, _ = ray.wait(list(pending), num_returns=1)
        key, r, design = pending.pop(done[0])
        plain = ray.get(done[0])
        cache[key] = {"method": r["method"], "seed": r["seed"], "number": design["number"],
                      "summary": _summary(design["arch"]),
                      "accuracy": design["accuracy"], "effective_macs": design["effective_macs"],
                      "plain_accuracy": plain.get("accuracy"), "plain_effective_macs": plain.get("effective_macs"),
                      "plain_status": plain.get("status")}
        print(f"--- ablation {key}: {design['accuracy']:.4f} with attention, "
              f"{plain.get('accuracy', float('nan')):.4f} without", flush=True)
        cache_file.write_text(json.dumps(list(cache.values()), indent=1))
    return list(cache.values())


def _summary(arch) -> str:
    from nas_attn.arch import arch_summary
    return arch_summary(arch)


def ablation_text(rows: List[Dict[str, Any]]) -> List[str]:
    if not rows:
        return []
    lines = ["What attention adds: each Pareto design (searches without early stopping) that holds attention or a "
             "gate, trained again with all of them removed (same width, depth and seed). Differences are "
             "with minus without.", "",
             "| method | seed | trial | design | accuracy with / without (diff) | eff. MACs with / without (diff) |",
             "|---|---|---|---|---|---|"]
    for c in sorted(rows, key=lambda c: (c["method"], c["seed"], c["number"])):
        a, b = c["accuracy"], c.get("plain_accuracy")
        m, n = c["effective_macs"], c.get("plain_effective_macs")
        acc = f"{a:.4f} / {b:.4f} ({a - b:+.4f})" if _finite(b) else f"{a:.4f} / - ({c.get('plain_status')})"
        mac = f"{m / 1e6:.3f} M / {n / 1e6:.3f} M ({(m - n) / 1e6:+.3f} M)" if _finite(n) else f"{m / 1e6:.3f} M / -"
        lines.append(f"| {c['method']} | {c['seed']} | {c['number']} | {c['summary']} | {acc} | {mac} |")
    diffs = [c["accuracy"] - c["plain_accuracy"] for c in rows if _finite(c.get("plain_accuracy"))]
    if diffs:
        lines += ["", f"Mean accuracy difference over {len(diffs)} designs: {statistics.fmean(diffs):+.4f} "
                      f"(min {min(diffs):+.4f}, max {max(diffs):+.4f})."]
    return lines


# --------------------------------------------------------------------------------------------
# Aggregation, targets, table, plot

def spread(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def aggregate(runs: List[Dict[str, Any]], methods: List[str]) -> Dict[str, Dict[str, Any]]:
    table = {}
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        if not mine:
            continue
        table[m] = {"sampler": mine[0]["sampler"], "early_stopping": mine[0]["early_stopping"],
                    "hypervolume": spread([r["hypervolume"] for r in mine]),
                    "epochs": spread([r["epochs"] for r in mine]),
                    "wall_s": spread([r["wall_s"] for r in mine]),
                    "dominates_baseline": sum(bool(r["dominating_baseline"]) for r in mine),
                    "front_span": spread([r["front_span"] for r in mine if _finite(r.get("front_span"))] or [float("nan")]),
                    "max_trial_share": max(r.get("max_trial_share", 0.0) for r in mine),
                    "seeds": [r["seed"] for r in mine],
                    "same_archs_as_random": [_same_archs(r, runs) for r in mine]}
    return table


def _same_archs(run: Dict[str, Any], runs: List[Dict[str, Any]]) -> Optional[int]:
    """How many trials (position by position) trained the architecture random search's did, same seed."""
    twin = next((r for r in runs if r["method"] == "random" and r["seed"] == run["seed"]), None)
    if twin is None or "archs" not in twin or "archs" not in run:
        return None
    return sum(a == b for a, b in zip(run["archs"], twin["archs"]))


def fmt(s: Dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    return (f"{s['mean'] / scale:.{digits}f} +- {s['std'] / scale:.{digits}f} "
            f"[{s['min'] / scale:.{digits}f}, {s['max'] / scale:.{digits}f}]")


def markdown_table(agg: Dict[str, Dict[str, Any]], labels: Dict[str, str]) -> str:
    header = ("| method | hypervolume (accuracy x M eff. MACs) | epochs spent | wall (s) "
              "| front span (x, eff. MACs) | largest one-trial share of the hypervolume "
              "| Pareto set dominates the baseline beyond its 95% interval "
              "| trials identical to random search's (per seed) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for m, a in agg.items():
        lines.append(f"| {labels.get(m, m)} | {fmt(a['hypervolume'], 1e6, digits=4)} | {fmt(a['epochs'], digits=1)} "
                     f"| {fmt(a['wall_s'], digits=0)} | {fmt(a['front_span'], digits=1)} | {100 * a['max_trial_share']:.0f}% "
                     f"| {a['dominates_baseline']}/{len(a['seeds'])} seeds "
                     f"| {', '.join('-' if n is None else str(n) for n in a['same_archs_as_random'])} |")
    return "\n".join(lines)


def per_run_table(runs: List[Dict[str, Any]], labels: Dict[str, str]) -> str:
    header = ("| method | seed | hypervolume (acc x M MACs) | epochs | trials ok / stopped / other | wall (s) "
              "| best accuracy | baseline accuracy | eff. MACs: baseline / lowest other trial "
              "| Pareto trials dominating the baseline "
              "| load avg 1/5/15 min before -> after |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in runs:
        st = r["statuses"]
        other = sum(v for k, v in st.items() if k not in ("ok", "stopped"))
        base_acc = (r["baseline"] or {}).get("accuracy")
        base_text = f"{base_acc:.3f}" if isinstance(base_acc, float) and math.isfinite(base_acc) else "-"
        base_macs = (r["baseline"] or {}).get("effective_macs")
        macs_text = (f"{base_macs:,.0f} / {r.get('lowest_other_effective_macs', float('nan')):,.0f}"
                     if isinstance(base_macs, (int, float)) else "-")
        lines.append(
            f"| {labels.get(r['method'], r['method'])} | {r['seed']} | {r['hypervolume'] / 1e6:.4f} | {r['epochs']} "
            f"| {st.get('ok', 0)} / {st.get('stopped', 0)} / {other} | {r['wall_s']:.0f} "
            f"| {r['best_accuracy']:.3f} | {base_text} | {macs_text} | {', '.join(map(str, r['dominating_baseline'])) or 'none'} "
            f"| {common.format_load(r['load'])} |")
    return "\n".join(lines)


def choose_best(runs: List[Dict[str, Any]], plain: List[str]):
    """(best, tied, candidates): the method without early stopping with the highest mean
    hypervolume over its runs (a tie goes to the first in ``plain``), the others tied with it,
    and each candidate's mean hypervolume (accuracy x MACs)."""
    candidates = {m: statistics.fmean(r["hypervolume"] for r in runs if r["method"] == m)
                  for m in plain if m in SAMPLERS}
    best = max(candidates, key=candidates.get)
    tied = [m for m in candidates if m != best and candidates[m] == candidates[best]]
    return best, tied, candidates


def verdicts(agg: Dict[str, Dict[str, Any]], best: Optional[str]) -> List[str]:
    out = []
    hv = {m: a["hypervolume"]["mean"] for m, a in agg.items()}
    if "random" in hv and ("tpe" in hv or "nsga2" in hv):
        guided = [m for m in ("tpe", "nsga2") if m in hv]
        # "Above by more than the spread": the mean difference exceeds the larger standard
        # deviation over seeds of the two methods.
        margin = {m: max(agg[m]["hypervolume"]["std"], agg["random"]["hypervolume"]["std"]) for m in guided}
        ok = any(hv[m] - hv["random"] > margin[m] for m in guided)
        out.append(f"- TPE or NSGA-II mean hypervolume above random's by more than the spread over seeds: "
                   f"**{'MET' if ok else 'MISSED'}** ("
                   + "; ".join(f"{m} {hv[m] / 1e6:.4f} - random {hv['random'] / 1e6:.4f} = "
                               f"{(hv[m] - hv['random']) / 1e6:+.4f} vs spread {margin[m] / 1e6:.4f}" for m in guided)
                   + " accuracy x M MACs).")
    else:
        out.append("- TPE or NSGA-II vs random: not measured (needs random and tpe or nsga2 in --methods).")
    spans = {m: a["front_span"]["mean"] for m, a in agg.items() if not a["early_stopping"]}
    if spans:
        # The target is about the default search, whose sampler is TPE; the other methods'
        # spans are reported beside it.
        judged = "tpe" if "tpe" in spans else None
        listing = "; ".join(f"{m} {v:.2f}x" for m, v in spans.items()) + ", means over seeds"
        if judged:
            ok = math.isfinite(spans[judged]) and spans[judged] >= 3
            out.append(f"- The default search's (TPE) Pareto front spans >= 3x in effective MACs: "
                       f"**{'MET' if ok else 'MISSED'}** ({listing}).")
        else:
            out.append(f"- Pareto front span (the target is judged on TPE, the default, which did not run): {listing}.")
    for m, a in agg.items():
        if not a["early_stopping"]:
            n = len(a["seeds"])
            out.append(f"- {m}: Pareto set dominates the baseline beyond its 95% interval in >= 2 of 3 seeds: "
                       f"**{'MET' if a['dominates_baseline'] >= min(2, n) else 'MISSED'}** "
                       f"({a['dominates_baseline']}/{n}).")
    es_pairs = [(m, split_method(m)[0]) for m in agg if agg[m]["early_stopping"]]
    for es, plain in es_pairs:
        if plain not in agg:
            out.append(f"- Early stopping ({es}): no {plain} run without it to compare with.")
            continue
        saving = 1 - agg[es]["epochs"]["mean"] / agg[plain]["epochs"]["mean"]
        share = hv[es] / hv[plain] if hv[plain] else float("nan")
        ok = saving >= TARGET_ES_EPOCH_SAVING and share >= TARGET_ES_HV_SHARE and agg[es]["max_trial_share"] <= 0.5
        out.append(f"- Early stopping ({plain} + MO-ASHA) spends >= {TARGET_ES_EPOCH_SAVING:.0%} fewer epochs for "
                   f">= {TARGET_ES_HV_SHARE:.0%} of the hypervolume: **{'MET' if ok else 'MISSED'}** "
                   f"({100 * saving:.0f}% fewer epochs: {agg[es]['epochs']['mean']:.1f} vs "
                   f"{agg[plain]['epochs']['mean']:.1f}; {100 * share:.1f}% of the hypervolume: "
                   f"{hv[es] / 1e6:.4f} vs {hv[plain] / 1e6:.4f}; no trial carries more than half of it: "
                   f"largest share {100 * agg[es]['max_trial_share']:.0f}%).")
    return out


def plot(runs: List[Dict[str, Any]], methods: List[str], labels: Dict[str, str], path: Path, title: str) -> None:
    """Hypervolume against epochs spent: mean over seeds per method, min-max band.

    The first trial of every search is the baseline and brings the hypervolume from 0 to most
    of its final value; the y axis is zoomed on what comes after it.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    after_first = []
    drawn: Dict[str, Any] = {}  # method -> (grid, mean curve), to name curves that coincide
    styles = ["-", "--", ":", "-."]
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        if not mine:
            continue
        # Every run's hypervolume is a step function of epochs spent; evaluate all of them at
        # every epoch count where any of them steps (a finished run keeps its final value).
        grid = np.array(sorted({0} | {h[0] for r in mine for h in r["history"]}), dtype=float)
        curves = []
        for r in mine:
            spent = np.array([0] + [h[0] for h in r["history"]], dtype=float)
            volume = np.array([0.0] + [h[1] for h in r["history"]]) / 1e6
            index = np.searchsorted(spent, grid, side="right") - 1
            curves.append(volume[np.clip(index, 0, len(volume) - 1)])
            after_first += [v for v in volume[1:] if v > 0]
        curves = np.array(curves)
        mean = curves.mean(axis=0)
        twin = next((other for other, (g, c) in drawn.items() if np.array_equal(g, grid) and np.allclose(c, mean)),
                    None)
        drawn[m] = (grid, mean)
        label = f"{labels.get(m, m)} (n={len(mine)}" + (f"; same curve as {labels.get(twin, twin)})" if twin else ")")
        line, = ax.step(grid, mean, where="post", label=label, linestyle=styles[(len(drawn) - 1) % len(styles)],
                        linewidth=2.2 if twin is None else 1.4)
        if len(mine) > 1:
            ax.fill_between(grid, curves.min(axis=0), curves.max(axis=0), step="post", alpha=0.15,
                            color=line.get_color())
    if after_first:
        low, high = min(after_first), max(after_first)
        pad = max(0.1 * (high - low), 1e-3 * high)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("training epochs spent (sum over trials, in trial order)")
    ax.set_ylabel("hypervolume (accuracy x M effective MACs)\n(zoomed: the baseline trial starts it from 0)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="cluttered_resnet", help="shipped space name or YAML path")
    parser.add_argument("--trials", type=int, default=None,
                        help="trial budget per search (default: the space's; 3 with --quick)")
    parser.add_argument("--no-ablate", dest="ablate", action="store_false",
                        help="skip retraining the Pareto designs without attention")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; 0 with --quick)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated: random, tpe, nsga2, X+es, best+es "
                             "(default random,tpe,nsga2,best+es; random,best+es with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the space's; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke config (16x16 digits, 3 trials, 2 epochs, 1 seed)")
    parser.add_argument("--out", help="working folder; rerun with the same --out to continue an interrupted run")
    parser.add_argument("--write-md", metavar="FILE", help="put the result section into this Markdown file")
    parser.add_argument("--plot", metavar="PNG", help="plot path (default: benchmarks/search_quality.png next to "
                                                      "--write-md's file, else in --out)")
    parser.add_argument("--note", default="", help="Markdown text added to the section (an analysis of the numbers)")
    args = parser.parse_args(argv)

    try:
        methods = parse_methods(args.methods or ("random,best+es" if args.quick else "random,tpe,nsga2,best+es"))
        seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    if not seeds:
        parser.error("--seeds must name at least one seed")
    trials = args.trials if args.trials is not None else (3 if args.quick else None)
    if trials is not None and trials < 1:
        parser.error(f"--trials must be >= 1, got {trials}")
    epochs = args.epochs if args.epochs is not None else (2 if args.quick else None)
    if epochs is not None and epochs < 1:
        parser.error(f"--epochs must be >= 1, got {epochs}")

    # One private Ray for every search (see bench_search.isolated_ray_env), started before any
    # search; a Ray this process already runs (a caller of main(), such as the test suite) is
    # used instead and left running, as nas_attn.search.run does.
    own_ray = not ("ray" in sys.modules and sys.modules["ray"].is_initialized())
    if own_ray:
        os.environ.update({k: v for k, v in common.isolated_ray_env().items()
                           if k in ("RAY_TMPDIR", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")})
        os.environ.pop("RAY_ADDRESS", None)
    space = common.bench_space(args.space, trials, epochs, args.quick)
    trials = space.search["trials"]
    out = Path(args.out) if args.out else Path(f"/tmp/bench_search_quality-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    command = common.recorded_command("scripts/bench_search_quality.py", argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now()
    print(f"{space.name}: {trials} trials x {space.train['epochs']} epochs, {space.search['concurrent']} at once, "
          f"seeds {seeds}, methods {methods}; working folder {out}", flush=True)

    import ray
    from nas_attn import search
    if own_ray:
        search.init_ray(None, verbose=False)
    runs: List[Dict[str, Any]] = []
    total_start = time.perf_counter()
    try:
        plain = [m for m in methods if m != "best+es"]
        for seed in seeds:  # seeds outside: load drifts hit every method alike
            for m in plain:
                runs.append(run_one(space, m, seed, out / f"{m.replace('+', '_')}-seed{seed}"))
        best, tied = None, []
        if "best+es" in methods:
            best, tied, candidates = choose_best(runs, plain)
            print(f"--- best without early stopping: {best} (mean hypervolume "
                  f"{candidates[best] / 1e6:.2f} accuracy x M MACs)", flush=True)
            for seed in seeds:
                r = run_one(space, f"{best}+es", seed, out / f"{best}_es-seed{seed}")
                runs.append(r)
        ablation = ablate(space, [r for r in runs if not r["early_stopping"]], out) if args.ablate else []
    finally:
        if own_ray:
            ray.shutdown()
    total_wall = time.perf_counter() - total_start

    ran = [m for m in methods if m != "best+es"] + ([f"{best}+es"] if best else [])
    labels = {m: (f"{split_method(m)[0]} + early stopping" + (" (best+es)" if best and m == f"{best}+es" else "")
                  if split_method(m)[1] else m) for m in ran}
    agg = aggregate(runs, ran)
    codes = {r.get("code", "unknown") for r in runs}
    code = " / ".join(sorted(codes)) if "unknown" not in codes else "unknown"
    first = min((r["started_unix"] for r in runs), default=started.timestamp())
    last = max((r["started_unix"] + r["wall_s"] for r in runs), default=started.timestamp())
    span = (f"{datetime.datetime.fromtimestamp(first).isoformat(timespec='minutes')} to "
            f"{datetime.datetime.fromtimestamp(last).isoformat(timespec='minutes')}")
    result = {"command": command.strip(), "date": span,
              "machine": common.machine_facts(), "code": code, "space": space.name, "trials": trials,
              "epochs": space.train["epochs"], "concurrent": space.search["concurrent"], "seeds": seeds,
              "reference": space.reference_point(), "objectives": space.objectives, "best": best, "tied": tied,
              "total_wall_s": total_wall, "quick": args.quick, "methods": ran, "aggregate": agg, "runs": runs,
              "ablation": ablation}
    (out / "summary.json").write_text(json.dumps(result, indent=1))

    if args.plot:
        png = Path(args.plot)
    elif args.write_md:
        png = Path(args.write_md).resolve().parent / "benchmarks" / "search_quality.png"
    else:
        png = out / "search_quality.png"
    title = (f"{space.name}: {trials} trials x {space.train['epochs']} epochs, seeds {','.join(map(str, seeds))}"
             f" (mean, band = min-max over seeds)")
    plot(runs, ran, labels, png, title)
    body = section_text(result, agg, runs, labels, best, png, args.write_md, args.note)
    print("\n" + body, flush=True)
    if args.write_md:
        common.replace_section(Path(args.write_md), SECTION_HEADING, body)
        print(f"\nwrote section {SECTION_HEADING!r} of {args.write_md}")
    return 0


def section_text(result, agg, runs, labels, best, png: Path, md_file: Optional[str], note: str) -> str:
    link = os.path.relpath(png.resolve(), Path(md_file).resolve().parent) if md_file else str(png)
    ref = result["reference"]
    lines = [
        f"Command: `{result['command']}`  ",
        f"Date: searches ran {result['date']}; they took {sum(r['wall_s'] for r in runs) / 60:.0f} min of wall time "
        f"in all  ",
        f"Machine: {result['machine']}. The machine was shared with other jobs during the run; "
        f"load averages (`uptime`) per search are in the second table.  ",
        *([f"Code: nas_attn at {result['code']}.  "] if result.get("code", "unknown") != "unknown" else []),
        f"Workload: space `{result['space']}`, {result['trials']} trials x {result['epochs']} epochs per search, "
        f"{result['concurrent']} trials at once, seeds {', '.join(map(str, result['seeds']))} (the seed drives the "
        f"sampler, the train/validation split and the training)."
        + (" **--quick smoke config: not a measurement.**" if result["quick"] else ""),
    ]
    lines += [
        "",
        f"Hypervolume of the finished trials against the declared reference point "
        f"(accuracy {ref[0]:g}, {ref[1]:.3g} effective MACs per image), in accuracy (fraction) x million effective "
        f"MACs; mean +- standard deviation [min, max] over seeds. Epochs spent: sum over all trials of the last "
        f"reported epoch. Wall: `time.perf_counter` around `nas_attn.search.run` (one Ray instance for all "
        f"searches, so Ray's start-up is outside it). The baseline (no attention, no AW-conv) is trial 0 of every "
        f"search; \"dominates\" means a Pareto-set trial with strictly higher accuracy and strictly lower effective "
        f"MACs than that trial."
        + (f" `best+es` ran {best} (highest mean hypervolume without early stopping"
           + (f", tied with {', '.join(result.get('tied') or [])}; a tie goes to the first in --methods"
              if result.get("tied") else "")
           + ") with MO-ASHA (grace 1 epoch, reduction factor 3)." if best else ""),
        "",
        markdown_table(agg, labels),
        "",
        "Targets:",
        "",
        *verdicts(agg, best),
        "",
        *([note, ""] if note else []),
        f"![hypervolume against epochs spent]({link})",
        "",
        "Per search:",
        "",
        per_run_table(runs, labels),
        "",
        *ablation_text(result.get("ablation") or []),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
