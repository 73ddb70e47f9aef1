"""The searcher answers an architecture the sampler proposes again from the record instead of
training it again (a trial's result is a function of its Arch and the search's one seed).

These drive the StudySearcher directly, as Ray would (suggest, on_trial_complete), with a
scripted sampler and a one-parameter define-by-run space: no Ray instance, no training.
"""
import logging

import optuna
import pytest

from nas_attn.results import open_study, read_trials, study_storage
from nas_attn.search._driver import _repeat_counts
from nas_attn.search._optuna import searcher_class
from nas_attn.search._text import repeats_text

OBJECTIVES = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "macs", "direction": "minimize"}]


class ScriptedSampler(optuna.samplers.BaseSampler):
    """Proposes the attention names of ``script`` in order, one per asked trial; raises past its
    end (a searcher that asks forever fails the test instead of hanging it)."""

    def __init__(self, script):
        self.script, self.asked = list(script), 0

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        if self.asked >= len(self.script):
            raise AssertionError(f"the searcher asked for more than the {len(self.script)} scripted proposals")
        self.asked += 1
        return self.script[self.asked - 1]


def tiny_space(trial):
    """A define-by-run space of three architectures (a tuple inside, as timm args may hold)."""
    return {"arch": {"model": "resnet18", "args": {"layers": (1, 1, 1, 1)},
                     "blocks": {"layer1.0": {"attention": trial.suggest_categorical("attention", ["none", "se", "eca"])}}}}


def make_searcher(tmp_path, script, budget=8, **kwargs):
    return searcher_class()(tiny_space, sampler=ScriptedSampler(script), storage=study_storage(tmp_path),
                            study_name="nas_attn", objectives=OBJECTIVES, epochs=1, constraint_keys=["max_params"],
                            run_dir=str(tmp_path), budget=budget, **kwargs)


def attention(config):
    return config["arch"]["blocks"]["layer1.0"]["attention"]


def finish(searcher, trial_id, accuracy, macs, violation=0.0):
    searcher.on_trial_complete(trial_id, {"status": "infeasible" if violation > 0 else "ok", "epoch": 1,
                                          "accuracy": accuracy, "macs": macs, "violations/max_params": violation})


def study_trials(tmp_path):
    return optuna.load_study(study_name="nas_attn", storage=study_storage(tmp_path)).get_trials(deepcopy=False)


def test_a_repeat_of_a_trained_arch_is_answered_from_its_record_and_not_returned(tmp_path):
    searcher = make_searcher(tmp_path, ["se", "se", "se", "eca"])
    first = searcher.suggest("t0")
    assert attention(first) == "se" and first["trial_number"] == 0
    finish(searcher, "t0", 0.75, 1.5e6)
    second = searcher.suggest("t1")
    assert attention(second) == "eca" and second["trial_number"] == 3
    trials = study_trials(tmp_path)
    repeats = [t for t in trials if "repeat_of" in t.user_attrs]
    assert [t.number for t in repeats] == [1, 2]
    for t in repeats:
        assert t.state == optuna.trial.TrialState.COMPLETE and t.values == [0.75, 1.5e6]
        assert t.user_attrs["repeat_of"] == 0 and t.user_attrs["status"] == "ok"
        assert t.user_attrs["arch"] == trials[0].user_attrs["arch"]
        assert t.constraints == {"max_params": 0.0}
    assert _repeat_counts(open_study(tmp_path)) == (2, 0)
    assert repeats_text(2, 0)[0] == ("2 proposals repeated a trained architecture and were answered "
                                     "from its record (not retrained)")


def test_a_repeat_of_an_infeasible_arch_keeps_it_infeasible(tmp_path):
    searcher = make_searcher(tmp_path, ["se", "se", "eca"])
    searcher.suggest("t0")
    finish(searcher, "t0", 0.0, 9e6, violation=0.4)
    assert attention(searcher.suggest("t1")) == "eca"
    repeat = study_trials(tmp_path)[1]
    assert repeat.user_attrs == {**repeat.user_attrs, "repeat_of": 0, "status": "infeasible"}
    assert repeat.constraints == {"max_params": 0.4} and repeat.values == [0.0, 9e6]
    study = optuna.load_study(study_name="nas_attn", storage=study_storage(tmp_path))
    assert study.best_trials == []  # both infeasible: neither on the study's Pareto set


def test_a_repeat_of_a_running_arch_is_failed_and_not_returned(tmp_path):
    searcher = make_searcher(tmp_path, ["se", "se", "none"])
    assert attention(searcher.suggest("t0")) == "se"
    second = searcher.suggest("t1")  # t0 is still training
    assert attention(second) == "none" and second["trial_number"] == 2
    repeat = study_trials(tmp_path)[1]
    assert repeat.state == optuna.trial.TrialState.FAIL and repeat.user_attrs["repeat_of"] == 0
    assert _repeat_counts(open_study(tmp_path)) == (0, 1)


def test_repeats_use_no_budget(tmp_path):
    searcher = make_searcher(tmp_path, ["se", "se", "se", "eca", "none", "none"], budget=3)
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert [attention(c) for c in configs[:3]] == ["se", "eca", "none"]
    assert configs[3] == searcher.FINISHED
    assert len(study_trials(tmp_path)) == 5  # three to train, two repeats of the running "se"


def test_the_cap_lets_a_repeat_train_when_every_arch_is_trained(tmp_path, caplog):
    # Three architectures, a budget of five: the fourth trial can only repeat one.
    searcher = make_searcher(tmp_path, ["none", "se", "eca"] + ["se"] * 10, budget=5, max_repeat_proposals=4)
    for i in range(3):
        searcher.suggest(f"t{i}")
        finish(searcher, f"t{i}", 0.5 + i / 10, 1e6 * (i + 1))
    with caplog.at_level(logging.WARNING, logger="nas_attn.search._optuna"):
        fourth = searcher.suggest("t3")
    assert attention(fourth) == "se" and fourth["trial_number"] == 7
    trials = study_trials(tmp_path)
    assert [t.user_attrs.get("repeat_of") for t in trials] == [None, None, None, 1, 1, 1, 1, None]
    assert "trial 7 trains the architecture of trial 1 again" in caplog.text
    # Later repeats name the first trial that trained the architecture.
    finish(searcher, "t3", 0.6, 2e6)
    fifth = searcher.suggest("t4")
    assert fifth["trial_number"] == 12 and study_trials(tmp_path)[8].user_attrs["repeat_of"] == 1


def test_suggest_again_for_one_trial_id_returns_the_same_trial_also_after_resume(tmp_path):
    searcher = make_searcher(tmp_path, ["se", "se", "eca", "eca", "se", "none"])
    searcher.suggest("t0")
    finish(searcher, "t0", 0.75, 1.5e6)
    config = searcher.suggest("t1")
    assert attention(config) == "eca" and config["trial_number"] == 2
    assert searcher.suggest("t1") == config
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = make_searcher(tmp_path, ["none"])
    restored.restore(str(tmp_path / "searcher.pkl"))  # the pickled sampler too: it goes on with "eca"
    assert restored.suggest("t1") == config
    assert len(study_trials(tmp_path)) == 3
    # After the restore "eca" (t1) still counts as running and "se" as trained.
    third = restored.suggest("t2")
    assert attention(third) == "none" and third["trial_number"] == 5
    trials = study_trials(tmp_path)
    assert [t.user_attrs.get("repeat_of") for t in trials] == [None, 0, None, 2, 0, None]
    assert trials[3].state == optuna.trial.TrialState.FAIL


def test_an_unstarted_trial_of_a_dead_driver_does_not_block_its_arch(tmp_path):
    searcher = make_searcher(tmp_path, ["se", "se"])
    orphan = optuna.load_study(study_name="nas_attn", storage=study_storage(tmp_path)).ask()
    tiny_space(orphan)
    orphan.set_user_attr("arch", tiny_space(orphan)["arch"])  # RUNNING in the study, in no searcher
    config = searcher.suggest("t0")
    assert attention(config) == "se" and config["trial_number"] == 1
    assert read_trials(tmp_path) == []
