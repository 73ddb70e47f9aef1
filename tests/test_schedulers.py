import logging

import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from nas_attn.schedulers import MultiObjectiveASHA, rung_decision

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
ACC_MACS = ["maximize", "minimize"]


class FakeTrial:
    """The only part of ray.tune.experiment.Trial the schedulers read."""

    def __init__(self, trial_id):
        self.trial_id = trial_id


def _report(scheduler, trial_id, epoch, **metrics):
    return scheduler.on_trial_result(None, FakeTrial(trial_id), {"epoch": epoch, **metrics})


# ---------- rung_decision ----------

def test_first_trial_at_a_rung_continues():
    assert rung_decision([], [0.0], ["maximize"], 3)
    assert rung_decision([], [0.1, 1e9], ACC_MACS, 3)


def test_single_objective_cut():
    # n = 2, rf = 3: only the best (ceil(2/3) = 1) continues; a tie continues.
    assert not rung_decision([[0.5]], [0.4], ["maximize"], 3)
    assert rung_decision([[0.5]], [0.6], ["maximize"], 3)
    assert rung_decision([[0.5]], [0.5], ["maximize"], 3)
    # n = 4, rf = 2: the best two continue.
    previous = [[0.1], [0.2], [0.3]]
    assert rung_decision(previous, [0.25], ["maximize"], 2)
    assert not rung_decision(previous, [0.15], ["maximize"], 2)
    # Minimised metric: the same ranking mirrored.
    assert rung_decision(previous, [0.15], ["minimize"], 2)
    assert not rung_decision(previous, [0.25], ["minimize"], 2)


def test_cut_is_top_ceil_share_of_the_rung():
    # n = 7, rf = 3: ceil(7/3) = 3 continue: ranks 0, 1, 2 (counting from the best).
    previous = [[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]]
    assert rung_decision(previous, [0.75], ["maximize"], 3)  # 2 ahead
    assert not rung_decision(previous, [0.65], ["maximize"], 3)  # 3 ahead
    # Float reduction factor: n = 7, rf = 3.5 -> 2 continue.
    assert rung_decision(previous, [0.85], ["maximize"], 3.5)
    assert not rung_decision(previous, [0.75], ["maximize"], 3.5)


def test_ties_with_the_cut_continue():
    # Three identical results then a fourth identical: nobody ranks strictly ahead.
    assert rung_decision([[0.5], [0.5], [0.5]], [0.5], ["maximize"], 3)
    assert rung_decision([[0.8, 10], [0.8, 10]], [0.8, 10], ACC_MACS, 3)
    # Tie in a later front: two better results ahead at n = 4, rf = 3 (keep 2) -> stop.
    assert not rung_decision([[0.9], [0.95], [0.5]], [0.5], ["maximize"], 3)


def test_non_dominated_front_decides_before_crowding():
    # accuracy (max), MACs (min). The new trial is dominated by (0.9, 10) -> front 2,
    # behind the 2 points of front 1; n = 4, rf = 2 keeps 2 -> stop, despite being an
    # extreme (cheapest? no: most expensive) point that would have infinite crowding.
    previous = [[0.9, 10], [0.95, 50], [0.5, 5]]
    assert not rung_decision(previous, [0.85, 60], ACC_MACS, 2)
    # Trading off instead (best accuracy) puts it in the first front as a boundary point.
    assert rung_decision(previous, [0.97, 60], ACC_MACS, 2)


def test_crowding_distance_breaks_the_straddling_front():
    # All four points are mutually non-dominated; n = 4, rf = 2 keeps 2.
    previous = [[0.9, 100], [0.5, 10], [0.7, 50]]
    # New (0.71, 52) is interior: the two boundary points (infinite distance) are ahead.
    assert not rung_decision(previous, [0.71, 52], ACC_MACS, 2)
    # New (0.95, 120) is the accuracy/MACs extreme: infinite distance, nobody strictly ahead.
    assert rung_decision(previous, [0.95, 120], ACC_MACS, 2)
    # n = 4, rf = 4/3 keeps 3: interior (0.71, 52) has distance
    # (0.9-0.7)/0.4 + (100-50)/90 = 1.056 > that of (0.7, 50):
    # (0.71-0.5)/0.4 + (52-10)/90 = 0.992, so only the two boundaries are ahead -> continue.
    assert rung_decision(previous, [0.71, 52], ACC_MACS, 4 / 3)
    # (0.69, 48) is the more crowded interior point: 3 ahead, 3 * 4/3 = 4 is not < 4 -> stop.
    assert not rung_decision(previous, [0.69, 48], ACC_MACS, 4 / 3)


def test_rung_decision_validates_arguments():
    with pytest.raises(ValueError, match="reduction_factor must be a finite number > 1; got 1"):
        rung_decision([], [0.5], ["maximize"], 1)
    with pytest.raises(ValueError, match="'max'"):
        rung_decision([], [0.5], ["max"], 3)
    with pytest.raises(ValueError, match="to match 2 directions"):
        rung_decision([[0.5]], [0.5], ACC_MACS, 3)


# ---------- the scheduler ----------

def test_constructor_validation():
    with pytest.raises(ValueError, match="modes must give one of"):
        MultiObjectiveASHA(["accuracy", "macs"], ["max"])
    with pytest.raises(ValueError, match=r"modes\[1\] must be one of \['max', 'min'\]; got 'minimize'"):
        MultiObjectiveASHA(["accuracy", "macs"], ["max", "minimize"])
    with pytest.raises(ValueError, match="reduction_factor"):
        MultiObjectiveASHA(["accuracy"], ["max"], reduction_factor=0.5)
    with pytest.raises(ValueError, match="grace_period must be a finite number > 0; got 0"):
        MultiObjectiveASHA(["accuracy"], ["max"], grace_period=0)
    with pytest.raises(ValueError, match="max_t must be >= grace_period"):
        MultiObjectiveASHA(["accuracy"], ["max"], grace_period=5, max_t=4)
    with pytest.raises(ValueError, match="repeat"):
        MultiObjectiveASHA(["accuracy", "accuracy"], ["max", "max"])
    with pytest.raises(ValueError, match="non-empty"):
        MultiObjectiveASHA([], [])


def test_rungs_lie_below_max_t():
    assert MultiObjectiveASHA(["a"], ["max"], grace_period=1, reduction_factor=3, max_t=27).rungs == (1, 3, 9)
    assert MultiObjectiveASHA(["a"], ["max"], grace_period=1, reduction_factor=3, max_t=28).rungs == (1, 3, 9, 27)
    assert MultiObjectiveASHA(["a"], ["max"], grace_period=2, reduction_factor=2, max_t=10).rungs == (2, 4, 8)
    assert MultiObjectiveASHA(["a"], ["max"], grace_period=4, max_t=4).rungs == ()


def test_scheduler_decisions_two_objectives():
    scheduler = MultiObjectiveASHA(
        ["accuracy", "macs"], ["max", "min"], grace_period=1, reduction_factor=2, max_t=8
    )
    for trial_id in "abcdef":
        scheduler.on_trial_add(None, FakeTrial(trial_id))
    # Rung 1 (epoch 1).
    assert _report(scheduler, "a", 1, accuracy=0.6, macs=100) == CONTINUE  # first
    assert _report(scheduler, "b", 1, accuracy=0.5, macs=120) == STOP  # dominated by a; n=2 keeps 1
    assert _report(scheduler, "c", 1, accuracy=0.4, macs=50) == CONTINUE  # front 1, cheapest: boundary
    # Front 1 is {a, c, d}; d is interior, the boundaries a and c are ahead; n=4 keeps 2.
    assert _report(scheduler, "d", 1, accuracy=0.55, macs=80) == STOP
    # (0.3, 200) is dominated by everything: 4 ahead, 5 trials keep 3.
    assert _report(scheduler, "e", 1, accuracy=0.3, macs=200) == STOP
    # Most accurate so far: a boundary of front 1, nobody strictly ahead.
    assert _report(scheduler, "f", 1, accuracy=0.7, macs=150) == CONTINUE
    # Epoch 2 is rung 2; "a" first there.
    assert _report(scheduler, "a", 2, accuracy=0.7, macs=100) == CONTINUE
    # Epoch 3 is no new rung and "a" was judged at rung 2 already.
    assert _report(scheduler, "a", 3, accuracy=0.1, macs=1000) == CONTINUE
    assert _report(scheduler, "c", 2, accuracy=0.45, macs=50) == CONTINUE  # trade-off, n=2, nobody ahead
    assert _report(scheduler, "f", 2, accuracy=0.65, macs=150) == STOP  # dominated by a: 2 ahead of 3
    assert scheduler.stopped == {"b": 1, "d": 1, "e": 1, "f": 2}
    assert set(scheduler.recorded[1]) == set("abcdef")
    assert scheduler.recorded[2] == {"a": (0.7, 100.0), "c": (0.45, 50.0), "f": (0.65, 150.0)}


def test_single_metric_agrees_with_rays_asha_on_a_sequence():
    ours = MultiObjectiveASHA("accuracy", "max", time_attr="training_iteration",
                              grace_period=1, reduction_factor=3, max_t=9)
    rays = AsyncHyperBandScheduler(time_attr="training_iteration", metric="accuracy", mode="max",
                                   grace_period=1, reduction_factor=3, max_t=9)
    sequence = [("a", 0.5), ("b", 0.4), ("c", 0.45), ("d", 0.3), ("e", 0.5), ("f", 0.9), ("g", 0.2)]
    decisions = []
    for trial_id, accuracy in sequence:
        trial = FakeTrial(trial_id)
        rays.on_trial_add(None, trial)
        ours.on_trial_add(None, trial)
        result = {"training_iteration": 1, "accuracy": accuracy}
        decision = ours.on_trial_result(None, trial, result)
        assert decision == rays.on_trial_result(None, trial, dict(result)), trial_id
        decisions.append(decision)
    assert decisions == [CONTINUE, STOP, STOP, STOP, CONTINUE, CONTINUE, STOP]
    assert ours.stopped == {"b": 1, "c": 1, "d": 1, "g": 1}


def test_max_t_stops_without_marking_early_stop():
    scheduler = MultiObjectiveASHA(["accuracy"], ["max"], grace_period=1, reduction_factor=3, max_t=3)
    assert _report(scheduler, "a", 1, accuracy=0.9) == CONTINUE
    assert _report(scheduler, "a", 3, accuracy=0.95) == STOP
    assert scheduler.stopped == {}


def test_incomplete_or_unrankable_results_are_ignored(caplog):
    scheduler = MultiObjectiveASHA(["accuracy", "macs"], ["max", "min"], reduction_factor=2, max_t=8)
    assert _report(scheduler, "a", 1, accuracy=0.9) == CONTINUE  # no macs
    assert scheduler.on_trial_result(None, FakeTrial("a"), {"accuracy": 0.9, "macs": 1}) == CONTINUE
    with caplog.at_level(logging.WARNING, logger="nas_attn.schedulers"):
        assert _report(scheduler, "a", 1, accuracy=float("nan"), macs=10) == CONTINUE
        assert _report(scheduler, "a", 1, accuracy=None, macs=10) == CONTINUE
    assert "non-finite" in caplog.text and "non-numeric" in caplog.text
    assert scheduler.recorded[1] == {}
    # A later well-formed report is judged normally.
    assert _report(scheduler, "a", 1, accuracy=0.9, macs=10) == CONTINUE
    assert scheduler.recorded[1] == {"a": (0.9, 10.0)}


def test_before_grace_period_no_decision():
    scheduler = MultiObjectiveASHA(["accuracy"], ["max"], grace_period=2, reduction_factor=2, max_t=8)
    assert _report(scheduler, "a", 1, accuracy=0.9) == CONTINUE
    assert _report(scheduler, "b", 1, accuracy=0.1) == CONTINUE
    assert _report(scheduler, "a", 2, accuracy=0.9) == CONTINUE
    assert _report(scheduler, "b", 2, accuracy=0.1) == STOP
    assert scheduler.stopped == {"b": 2}


def test_skipped_rung_is_judged_at_the_highest_rung_reached():
    scheduler = MultiObjectiveASHA(["loss"], ["min"], grace_period=1, reduction_factor=2, max_t=16)
    assert _report(scheduler, "a", 5, loss=0.2) == CONTINUE  # rung 4, first there
    assert _report(scheduler, "b", 4, loss=0.3) == STOP
    assert set(scheduler.recorded[4]) == {"a", "b"}
    assert scheduler.recorded[1] == {} and scheduler.recorded[2] == {}


def test_completed_trials_inform_the_rung():
    scheduler = MultiObjectiveASHA(["accuracy"], ["max"], grace_period=1, reduction_factor=3, max_t=9)
    # "a" finished (e.g. its report reached the scheduler only on completion).
    scheduler.on_trial_complete(None, FakeTrial("a"), {"epoch": 1, "accuracy": 0.8})
    scheduler.on_trial_complete(None, FakeTrial("a"), {"epoch": 1, "accuracy": 0.1})  # no overwrite
    assert scheduler.recorded[1] == {"a": (0.8,)}
    assert _report(scheduler, "b", 1, accuracy=0.7) == STOP
    recorded = {rung: dict(trials) for rung, trials in scheduler.recorded.items()}
    stopped = dict(scheduler.stopped)
    scheduler.on_trial_error(None, FakeTrial("b"))
    scheduler.on_trial_remove(None, FakeTrial("c"))
    # An errored or removed trial keeps its place in the rungs it reached (as Ray's ASHA does):
    # later arrivals are still judged against it.
    assert {rung: dict(trials) for rung, trials in scheduler.recorded.items()} == recorded
    assert scheduler.recorded[1] == {"a": (0.8,), "b": (0.7,)}
    assert scheduler.stopped == stopped == {"b": 1}


def test_set_search_properties_refuses_a_second_metric_source():
    scheduler = MultiObjectiveASHA(["accuracy", "macs"], ["max", "min"])
    assert scheduler.set_search_properties(None, None)
    assert not scheduler.set_search_properties("accuracy", None)
    assert not scheduler.set_search_properties(None, "max")
    assert scheduler.metric == "accuracy"


def test_save_restore_round_trip(tmp_path):
    scheduler = MultiObjectiveASHA(["accuracy"], ["max"], reduction_factor=3, max_t=9)
    _report(scheduler, "a", 1, accuracy=0.9)
    _report(scheduler, "b", 1, accuracy=0.1)
    path = str(tmp_path / "scheduler.pkl")
    scheduler.save(path)
    restored = MultiObjectiveASHA(["x"], ["min"])
    restored.restore(path)
    assert restored.metrics == ("accuracy",)
    assert restored.stopped == {"b": 1}
    assert restored.recorded == scheduler.recorded
    assert _report(restored, "c", 1, accuracy=0.5) == STOP


def test_debug_string_counts_stops():
    scheduler = MultiObjectiveASHA(["accuracy"], ["max"], reduction_factor=3, max_t=9)
    _report(scheduler, "a", 1, accuracy=0.9)
    _report(scheduler, "b", 1, accuracy=0.1)
    text = scheduler.debug_string()
    assert "num_stopped=1" in text and "epoch 1: 2 trials" in text and "epoch 3: 0 trials" in text
