"""The Optuna side of the search: samplers, the define-by-run Arch sampler and the searcher."""
from __future__ import annotations

import itertools
import json
import logging
import math
from typing import Any, Dict, List, Optional

from ..results import PickledState, read_trials, trial_status
from ..samplers import sampler_class, sampler_settings
from ..space import SearchSpace
from ._base import SearchError


def constraint_values(frozen_trial) -> List[float]:
    """Optuna 4 ``constraints_func``: <= 0 is feasible (relative excess over each limit)."""
    return frozen_trial.user_attrs.get("constraints", [0.0])


def _has_set_constraint() -> bool:
    # Optuna 5 stores constraints on the trial (Trial.set_constraint) and deprecates the
    # samplers' constraints_func; Optuna 4 has only the latter.
    import optuna
    return hasattr(optuna.trial.Trial, "set_constraint")


def make_sampler(name: str, seed: int, trials: int = 16, population: Optional[int] = None,
                 startup_trials: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
    """The Optuna sampler ``search.sampler`` names, seeded and sized to a budget of ``trials``
    (:mod:`nas_attn.samplers` states the rule; ``population``/``startup_trials`` override it;
    ``options`` are further constructor arguments, ``search.sampler_options``)."""
    try:
        cls = sampler_class(name)
    except KeyError:
        raise SearchError(f"--sampler must be tpe, nsga2 or random, got {name!r}") from None
    # Random sampling has no use for constraints; Optuna 5 reads them from the trial instead.
    constraints = {} if name == "random" or _has_set_constraint() else {"constraints_func": constraint_values}
    return cls(seed=seed, **sampler_settings(name, trials, population, startup_trials, options), **constraints)


def _measured_or_worst(value, objective: Dict[str, Any]) -> float:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if objective["metric"] == "accuracy":
        return 0.0 if objective["direction"] == "maximize" else 1.0
    return -1e30 if objective["direction"] == "maximize" else 1e30


class ArchSampler:
    """The define-by-run function the searcher samples an Arch with (a class: Ray pickles the searcher)."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> Dict[str, Any]:
        return {"arch": self.space.sample(trial)}


def _arch_key(arch) -> str:
    """``arch`` as canonical JSON, for comparing Archs: the same for an Arch and for the copy a
    JSON storage gives back (tuples become lists)."""
    return json.dumps(arch, sort_keys=True)


#: How many proposals in a row the searcher answers from the record (or sets aside, for a
#: running architecture) before it lets a repeat train. Measured: TPE over the default space
#: (synthetic objectives, 96 trials, 3 seeds) repeated at most 3 times in a row; in a space of
#: 3 architectures, every suggest after the third cost 0.4-0.9 CPU-s with this cap (journal
#: storage, 12 trials), against seconds to minutes for the training a repeat would cost.
MAX_REPEAT_PROPOSALS = 100


def searcher_class():
    import optuna
    from ray.tune.search import Searcher

    # Ray checkpoints the searcher with the experiment (for --resume): the study (its storage is
    # the journal file), the sampler's state and the trials asked so far (PickledState).
    class StudySearcher(PickledState, Searcher):
        """A Ray Tune searcher that drives an Optuna study through its public ask/tell API.

        Ray's OptunaSearch tells every trial with values as COMPLETE and keeps its study in
        private attributes; ours tells a trial the scheduler stopped as PRUNED, a failed one as
        FAIL with its reason, and an infeasible one as COMPLETE with a positive constraint value
        (so the sampler steers away from it and ``best_trials`` leaves it out). The trial's
        status (:func:`nas_attn.results.trial_status`, computed here once) and its Arch are
        stored as user attributes: the study alone is a full record, and trials.jsonl copies
        the status from it.
        """

        def __init__(self, space: ArchSampler, *, sampler, storage, study_name: str,
                     objectives: List[Dict[str, Any]], points_to_evaluate=None, epochs: int,
                     constraint_keys: List[str], run_dir: str, budget: int,
                     max_repeat_proposals: int = MAX_REPEAT_PROPOSALS):
            super().__init__(metric=[o["metric"] for o in objectives],
                             mode=["max" if o["direction"] == "maximize" else "min" for o in objectives])
            self._space = space
            self._study = optuna.create_study(storage=storage, sampler=sampler, study_name=study_name,
                                              directions=[o["direction"] for o in objectives], load_if_exists=True)
            for point in points_to_evaluate or []:
                self._study.enqueue_trial(point)
            self._epochs = epochs
            self._objectives = objectives
            self._constraint_keys = constraint_keys
            self._run_dir = run_dir
            self._budget = budget
            self._asked: Dict[str, Any] = {}  # Ray trial id -> optuna.Trial
            self._completed = set()
            self._max_repeat_proposals = max_repeat_proposals

        def suggest(self, trial_id: str):
            if trial_id not in self._asked:
                # The budget counts recorded trials, not Ray's: after a driver crash Ray's
                # periodic snapshot may miss trials that trials.jsonl already holds.
                recorded = {r["number"] for r in read_trials(self._run_dir)}
                running = [t for tid, t in self._asked.items()
                           if tid not in self._completed and t.number not in recorded]
                if len(recorded) + len(running) >= self._budget:
                    return Searcher.FINISHED
                ot_trial, arch = self._ask_unseen()
                self._asked[trial_id] = ot_trial
            else:  # asked before: the same draws again
                ot_trial = self._asked[trial_id]
                arch = self._space(ot_trial)["arch"]
                ot_trial.set_user_attr("arch", arch)
            return {"arch": arch, "trial_number": ot_trial.number}

        def _ask_unseen(self):
            """``(trial, arch)``: a new study trial, with its Arch, that no trained or running trial
            has, asked for again while the sampler repeats one (at most ``max_repeat_proposals``
            times in a row).

            A trial's result is a function of (Arch, seed) and every trial of a search has the
            same seed, so a repeat would train the same model again. A repeat of a finished
            trial is told that trial's values (Optuna's own advice for duplicated parameters:
            the sampler learns the point again, nothing is trained); a repeat of a running one
            is told FAIL, which samplers ignore. Both keep ``repeat_of`` (the trained trial's
            number) in the study and never reach Ray, so they use no budget.
            """
            for proposals in itertools.count(1):
                ot_trial = self._study.ask()
                arch = self._space(ot_trial)["arch"]
                ot_trial.set_user_attr("arch", arch)
                earlier = self._trained_or_running(arch, ot_trial.number)
                if earlier is None:
                    return ot_trial, arch
                # getattr: a searcher pickled before the cap existed comes back without it (--resume).
                if proposals > getattr(self, "_max_repeat_proposals", MAX_REPEAT_PROPOSALS):
                    # Every architecture the sampler favours is trained or running (a space with
                    # fewer architectures than the budget): train the repeat rather than ask forever.
                    logging.getLogger(__name__).warning(
                        "the sampler proposed trained or running architectures %d times in a row; trial %d "
                        "trains the architecture of trial %d again", proposals, ot_trial.number, earlier.number)
                    return ot_trial, arch
                self._answer_repeat(ot_trial, earlier)

        def _trained_or_running(self, arch, number: int):
            """The first study trial, other than ``number``, that trained ``arch`` (COMPLETE: the
            first one is never an answered repeat, which comes after its original) or is
            training it now in this search; None if there is none.

            A trial RUNNING in the study but not in this searcher (asked by a driver that died
            before it started) trains nothing, so it does not count.
            """
            running = {t.number for tid, t in self._asked.items() if tid not in self._completed}
            COMPLETE, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING
            # A trial's Arch never changes once set: its key is computed once (a searcher pickled
            # before this cache existed comes back without it).
            keys = self.__dict__.setdefault("_arch_keys", {})
            found = None
            wanted = _arch_key(arch)
            for frozen in self._study.get_trials(deepcopy=False, states=(COMPLETE, RUNNING)):
                if frozen.number == number or "arch" not in frozen.user_attrs:
                    continue
                if frozen.number not in keys:
                    keys[frozen.number] = _arch_key(frozen.user_attrs["arch"])
                if keys[frozen.number] != wanted:
                    continue
                if frozen.state == COMPLETE:
                    return frozen
                if found is None and frozen.number in running:
                    found = frozen
            return found

        def _answer_repeat(self, ot_trial, earlier) -> None:
            ot_trial.set_user_attr("repeat_of", earlier.number)
            if earlier.state != optuna.trial.TrialState.COMPLETE:
                self._study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                return
            for key in ("status", "constraints"):
                if key in earlier.user_attrs:
                    ot_trial.set_user_attr(key, earlier.user_attrs[key])
            if _has_set_constraint():
                for key, value in earlier.constraints.items():
                    ot_trial.set_constraint(key, value)
            self._study.tell(ot_trial, earlier.values)

        def _is_finished(self, number: int) -> bool:
            return any(t.number == number and t.state.is_finished()
                       for t in self._study.get_trials(deepcopy=False))

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._completed or trial_id not in self._asked:
                return
            self._completed.add(trial_id)
            ot_trial = self._asked[trial_id]
            if self._is_finished(ot_trial.number):
                return  # told before the driver died; after --resume Ray replays the trial's end
            status = trial_status(result, self._epochs, errored=error)
            ot_trial.set_user_attr("status", status)
            # Ray hands searchers flattened results: {"violations/max_params": 0.2}.
            violations = {k.split("/", 1)[1]: v for k, v in (result or {}).items() if k.startswith("violations/")}
            if _has_set_constraint():
                for key in self._constraint_keys:
                    ot_trial.set_constraint(key, violations.get(key, 0.0))
            else:
                ot_trial.set_user_attr("constraints", [violations.get(k, 0.0) for k in self._constraint_keys] or [0.0])
            values, state = None, optuna.trial.TrialState.FAIL
            if status == "ok":
                values, state = [float(result[o["metric"]]) for o in self._objectives], optuna.trial.TrialState.COMPLETE
            elif status == "infeasible":
                # Optuna needs finite values; what was never measured (accuracy) gets its worst
                # value. The positive constraint value is what marks the trial infeasible.
                values = [_measured_or_worst(result.get(o["metric"]), o) for o in self._objectives]
                state = optuna.trial.TrialState.COMPLETE
            elif status == "stopped":
                state = optuna.trial.TrialState.PRUNED
            else:
                ot_trial.set_user_attr("error", str((result or {}).get("error", "the trial raised"))[:2000])
            try:
                self._study.tell(ot_trial, values, state=state, skip_if_finished=True)
            except Exception as exc:  # a sampler or storage error must not end the search
                logging.getLogger(__name__).warning("could not tell trial %s: %s", ot_trial.number, exc)

    return StudySearcher
