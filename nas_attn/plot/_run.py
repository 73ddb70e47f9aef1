"""A results folder as the figures and the report read it: its runs, Pareto set and hypervolume."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .. import pareto as pareto_mod
from ..arch import is_baseline
from ..metrics import METRICS, short_name
from ..results import (SPACE_FILE, ResultsError, check_folder, finished_records, load_space, objective_value,
                       pareto_records,
                       read_trials, status_counts)
from ..space import SearchSpace
from ..units import format_count

PathLike = Union[str, os.PathLike]


class PlotError(ValueError):
    """A plot or report that cannot be made: not a results folder, no finished trial, bad flag."""

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
        # objective_value: a confirmed trial counts with its mean accuracy over seeds
        return [[float(objective_value(r, o["metric"])) for o in self.objectives] for r in records]

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
    try:
        path = check_folder(run_dir)
        space = load_space(path)
        records = sorted(read_trials(path), key=lambda r: r["number"])
        ok = finished_records(path, records, space.objectives)
    except ResultsError as exc:
        raise PlotError(str(exc)) from None
    counts = status_counts(records)
    if not ok:
        raise PlotError(f"{str(run_dir)!r} has no finished trial (status ok) to plot; trials by status: "
                        + ", ".join(f"{n} {s}" for s, n in counts.items()))
    name = path.resolve().name
    reference = resolve_reference(space, ref, where=f"{name}/{SPACE_FILE}")
    directions = [o["direction"] for o in space.objectives]
    run = Run(path=path, name=name, space=space, records=records, ok=ok,
              front=pareto_records(ok, space.objectives), reference=reference, hypervolume=0.0,
              counts=counts)
    # After a confirmation step only the confirmed trials (by mean accuracy) compete.
    scored = [r for r in ok if "confirm" in r] or ok
    run.hypervolume = pareto_mod.hypervolume(run.objective_points(scored), directions, reference)
    return run


def load_runs(run_dirs, ref=None) -> List[Run]:
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise PlotError("give at least one results folder")
    return [load_run(d, ref) for d in run_dirs]



# --------------------------------------------------------------------------------------------
# Hypervolume as text

def _format_ref_value(metric: str, value: float) -> str:
    kind = METRICS[metric].kind if metric in METRICS else "count"
    if kind == "fraction":
        return f"{short_name(metric)} {value:g}"
    if kind == "ms":
        return f"{short_name(metric)} {value:g} ms"
    return format_count(value, short_name(metric), digits=3 if abs(value) < 1e3 else 2)


def ideal_box_volume(objectives: Sequence[Dict[str, Any]], reference: Sequence[float]) -> Optional[float]:
    """Volume of the box between the reference point and the ideal point, or None.

    The ideal point needs no data: accuracy (a fraction) is at best 1 and every cost metric at
    best 0. None when an objective has another direction or the reference lies beyond the ideal.
    """
    volume = 1.0
    for objective, ref in zip(objectives, reference):
        metric = METRICS.get(objective["metric"])
        if metric is None or metric.ideal is None or objective["direction"] != metric.direction:
            return None
        width = metric.ideal - ref if metric.direction == "maximize" else ref - metric.ideal
        if not width > 0:
            return None
        volume *= width
    return volume


def hypervolume_text(hypervolume: float, objectives: Sequence[Dict[str, Any]], reference: Sequence[float]) -> str:
    """``HV 3.412e+07 [acc × eff. MACs] = 85.3% of the ref-to-ideal box; ref: acc 0, 40.00 M eff. MACs``."""
    units = " × ".join(short_name(o["metric"]) for o in objectives)
    text = f"HV {hypervolume:.4g} [{units}]"
    box = ideal_box_volume(objectives, reference)
    if box:
        text += f" = {hypervolume / box:.1%} of the ref-to-ideal box"
    ref_text = ", ".join(_format_ref_value(o["metric"], v) for o, v in zip(objectives, reference))
    return f"{text}; ref: {ref_text}"


def count_text(counts: Dict[str, int]) -> str:
    """``1 stopped, 1 infeasible, 1 failed`` (statuses other than ok with a non-zero count)."""
    return ", ".join(f"{n} {status}" for status, n in counts.items() if status != "ok" and n)


