"""Multi-objective early stopping for Ray Tune: ASHA with non-dominated ranking.

Ray Tune ships no scheduler that stops multi-objective trials (its ASHA ranks one
metric), so this module provides :class:`MultiObjectiveASHA`, a Ray Tune scheduler in
the spirit of MO-ASHA (R. Schmucker, M. Donini, M. B. Zafar, D. Salinas, C. Archambeau,
"Multi-objective Asynchronous Successive Halving", arXiv:2106.12639, 2021) on top of
asynchronous successive halving (ASHA: L. Li et al., "A System for Massively Parallel
Hyperparameter Tuning", MLSys 2020, arXiv:1810.05934).

What comes from those papers: rungs at ``grace_period * reduction_factor**k`` units of
``time_attr``; asynchronous decisions taken as each trial reaches a rung, never waiting
for the rung to fill; at a rung a trial survives when it lies in the top
``1/reduction_factor`` of the trials recorded there; MO-ASHA's ranking of objective
vectors by non-dominated sorting with NSGA-II's crowding distance as the tie-break.

What is our reconstruction (the choices below are ours, made to match Ray Tune's
``AsyncHyperBandScheduler`` where it has one):

* Stopping, not promotion: like Ray's ASHA, a trial that falls below the cut is stopped
  (``TrialScheduler.STOP``); one that survives keeps running. There is no pausing.
* The cut rule (:func:`rung_decision`): with ``n`` trials recorded at the rung *including
  the new one*, the new trial continues iff fewer than ``n / reduction_factor`` of them
  rank strictly ahead of it, i.e. it is among the best ``ceil(n / reduction_factor)``.
  Ties go to the new trial. Consequences, all shared with Ray's ASHA: the first trial to
  reach a rung always continues; the second continues only if nothing recorded there
  ranks ahead of it (Ray's ASHA stops a second trial worse than the first, so "fewer than
  ``reduction_factor`` trials at the rung -> continue" is *not* what Ray does, and we do
  not do it either); an exact tie with the cut continues. Ray's ASHA interpolates a
  percentile between recorded values; with ranks there is nothing to interpolate, and
  ``ceil`` keeps at least the top ``1/reduction_factor`` share.
* "Ranks strictly ahead" means: in an earlier non-dominated front, or in the same front
  with a strictly larger crowding distance (so crowding only matters inside the front
  that straddles the cut). Crowding distance is computed over that front's members.
* Each trial is judged once per rung, at the highest rung it has reached, with the
  first result at or after that rung's time; a trial that skips a rung (reports
  sparsely) is not judged at the skipped rung.
* A result missing ``time_attr`` or any metric is ignored (CONTINUE, nothing recorded),
  as in Ray's ASHA. A result with a non-numeric or non-finite metric cannot be ranked:
  it is ignored too, with a warning.
* With one metric the ranking is plain ASHA ranking of that metric.
* A trial reaching ``max_t`` gets STOP (Ray's ASHA with ``stop_last_trials=True``);
  that is completion, not early stopping, so it is not listed in :attr:`stopped`.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from nas_attn.pareto import crowding_distance, non_dominated_sort, validate_directions
from nas_attn.results import PickledState

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

__all__ = ["rung_decision", "MultiObjectiveASHA", "MODES"]

logger = logging.getLogger(__name__)

MODES = ("max", "min")
_DIRECTION_OF_MODE = {"max": "maximize", "min": "minimize"}


def _check_reduction_factor(reduction_factor) -> float:
    if (
        isinstance(reduction_factor, bool)
        or not isinstance(reduction_factor, (int, float))
        or not math.isfinite(reduction_factor)
        or reduction_factor <= 1
    ):
        raise ValueError(
            f"reduction_factor must be a finite number > 1; got {reduction_factor!r}"
        )
    return reduction_factor


def rung_decision(
    rung_results: Sequence[Sequence[float]],
    new_vector: Sequence[float],
    directions: Sequence[str],
    reduction_factor: float,
) -> bool:
    """Whether a trial reaching a rung with ``new_vector`` should continue.

    Args:
        rung_results: objective vectors of the trials already recorded at this rung
            (not including the new one), in the objectives' own units.
        new_vector: the arriving trial's objective vector at this rung.
        directions: ``"maximize"`` / ``"minimize"`` per objective.
        reduction_factor: ASHA's eta (> 1); the top ``1/reduction_factor`` continue.

    All ``n = len(rung_results) + 1`` vectors are ranked by non-dominated sorting, then
    by crowding distance (larger first) within a front. The new trial continues iff the
    number of vectors ranked strictly ahead of it is < ``n / reduction_factor``; ties
    favour the new trial, and the first trial at a rung always continues.
    """
    directions = validate_directions(directions)
    reduction_factor = _check_reduction_factor(reduction_factor)
    vectors = [list(vector) for vector in rung_results] + [list(new_vector)]
    new_index = len(vectors) - 1
    ahead = 0
    for front in non_dominated_sort(vectors, directions):
        if new_index in front:
            distances = crowding_distance(vectors, front, directions)
            new_distance = distances[front.index(new_index)]
            ahead += sum(distance > new_distance for distance in distances)
            break
        ahead += len(front)
    # ahead < n / rf, written without division so a float rf cannot round it.
    return ahead * reduction_factor < len(vectors)


def _check_positive_number(name: str, value) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")


class MultiObjectiveASHA(PickledState, FIFOScheduler):
    """Asynchronous successive halving over several objectives (see module docstring).

    Args:
        metrics: names of the reported metrics that form the objective vector, e.g.
            ``["accuracy", "effective_macs"]`` (a single name also works: plain ASHA).
            Every report judged at a rung must contain all of them.
        modes: ``"max"`` or ``"min"`` per metric (Ray Tune's spelling).
        time_attr: the reported, monotonically increasing progress counter, in its own
            units (default ``"epoch"``: completed training epochs, 1 after the first).
        grace_period: time of the first rung (same units as ``time_attr``), > 0.
        reduction_factor: ASHA's eta, > 1: rungs at ``grace_period * rf**k`` and the top
            ``1/rf`` of each rung continues.
        max_t: time at which every trial is stopped (>= grace_period); rungs lie
            strictly below it.

    Attributes:
        stopped: ``trial_id -> time_attr value`` for every trial this scheduler stopped
            early at a rung (trials reaching ``max_t`` are not listed).
        rungs: the rung times, ascending.
    """

    def __init__(
        self,
        metrics: Union[str, Sequence[str]],
        modes: Union[str, Sequence[str]],
        time_attr: str = "epoch",
        grace_period: float = 1,
        reduction_factor: float = 3,
        max_t: float = 100,
    ):
        if isinstance(metrics, str):
            metrics = [metrics]
        if isinstance(modes, str):
            modes = [modes]
        metrics = tuple(metrics)
        modes = tuple(modes)
        if not metrics or not all(isinstance(m, str) and m for m in metrics):
            raise ValueError(f"metrics must be a non-empty list of metric names; got {list(metrics)!r}")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"metrics must not repeat a name; got {list(metrics)!r}")
        if len(modes) != len(metrics):
            raise ValueError(
                f"modes must give one of {list(MODES)} per metric ({len(metrics)}); "
                f"got {len(modes)} modes: {list(modes)!r}"
            )
        for position, mode in enumerate(modes):
            if mode not in MODES:
                raise ValueError(f"modes[{position}] must be one of {list(MODES)}; got {mode!r}")
        if not isinstance(time_attr, str) or not time_attr:
            raise ValueError(f"time_attr must be a non-empty result key; got {time_attr!r}")
        _check_positive_number("grace_period", grace_period)
        _check_reduction_factor(reduction_factor)
        _check_positive_number("max_t", max_t)
        if max_t < grace_period:
            raise ValueError(
                f"max_t must be >= grace_period ({grace_period}); got {max_t!r}"
            )
        super().__init__()
        self.metrics: Tuple[str, ...] = metrics
        self.modes: Tuple[str, ...] = modes
        self.directions: Tuple[str, ...] = tuple(_DIRECTION_OF_MODE[m] for m in modes)
        self.time_attr = time_attr
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.max_t = max_t
        rungs: List[float] = []
        level = 0
        while grace_period * reduction_factor**level < max_t:
            rungs.append(grace_period * reduction_factor**level)
            level += 1
        self.rungs: Tuple[float, ...] = tuple(rungs)
        # rung time -> trial_id -> objective vector recorded there, in arrival order.
        self._recorded: Dict[float, Dict[str, Tuple[float, ...]]] = {r: {} for r in rungs}
        self.stopped: Dict[str, float] = {}
        # Lets Tune's result validation check that the first metric is reported.
        self._metric = metrics[0]

    # ----- bookkeeping -----

    @property
    def recorded(self) -> Dict[float, Dict[str, Tuple[float, ...]]]:
        """Copy of ``rung time -> {trial_id: objective vector}``."""
        return {rung: dict(results) for rung, results in self._recorded.items()}

    def _parse(self, trial_id: str, result: Dict) -> Optional[Tuple[float, Tuple[float, ...]]]:
        if self.time_attr not in result or any(m not in result for m in self.metrics):
            return None
        try:
            time = float(result[self.time_attr])
            vector = tuple(float(result[m]) for m in self.metrics)
        except (TypeError, ValueError):
            logger.warning(
                "Trial %s reported a non-numeric %s or metric (%s); not ranked at any rung.",
                trial_id, self.time_attr, {m: result[m] for m in self.metrics},
            )
            return None
        if not all(math.isfinite(v) for v in vector) or not math.isfinite(time):
            logger.warning(
                "Trial %s reported non-finite metrics %s at %s=%s; not ranked at any rung.",
                trial_id, dict(zip(self.metrics, vector)), self.time_attr, time,
            )
            return None
        return time, vector

    def _rung_reached(self, time: float) -> Optional[float]:
        reached = [rung for rung in self.rungs if rung <= time]
        return reached[-1] if reached else None

    # ----- TrialScheduler interface -----

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec) -> bool:
        # Metrics and modes are fixed at construction; a second source would conflict,
        # and returning False makes Tune raise its own explanatory error.
        return metric is None and mode is None

    def on_trial_add(self, tune_controller: "TuneController", trial: "Trial"):
        pass

    def on_trial_result(self, tune_controller: "TuneController", trial: "Trial", result: Dict) -> str:
        parsed = self._parse(trial.trial_id, result)
        if parsed is None:
            return TrialScheduler.CONTINUE
        time, vector = parsed
        rung = self._rung_reached(time)
        if time >= self.max_t:
            if rung is not None:
                self._recorded[rung].setdefault(trial.trial_id, vector)
            return TrialScheduler.STOP
        if rung is None or trial.trial_id in self._recorded[rung]:
            return TrialScheduler.CONTINUE
        recorded = self._recorded[rung]
        keep = rung_decision(list(recorded.values()), vector, self.directions, self.reduction_factor)
        recorded[trial.trial_id] = vector
        if keep:
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = result[self.time_attr]
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: "TuneController", trial: "Trial", result: Dict):
        # A finished trial still informs later arrivals at the rung it reached.
        parsed = self._parse(trial.trial_id, result)
        if parsed is None:
            return
        rung = self._rung_reached(parsed[0])
        if rung is not None:
            self._recorded[rung].setdefault(trial.trial_id, parsed[1])

    def on_trial_error(self, tune_controller: "TuneController", trial: "Trial"):
        pass

    def on_trial_remove(self, tune_controller: "TuneController", trial: "Trial"):
        pass

    def debug_string(self) -> str:
        rungs = " | ".join(
            f"{self.time_attr} {rung:g}: {len(self._recorded[rung])} trials" for rung in self.rungs
        )
        return (
            f"Using MultiObjectiveASHA over {list(self.metrics)} ({list(self.modes)}): "
            f"num_stopped={len(self.stopped)}; rungs: {rungs or 'none'}"
        )
