"""Wilson intervals, seed means and the budget rule of the samplers."""
import math

import pytest

from nas_attn.intervals import mean_interval, wilson_interval
from nas_attn.samplers import population_size, sampler_settings, startup_trials


def test_wilson_matches_published_values():
    # 50 of 100: the textbook Wilson 95% interval is (0.4038, 0.5962)
    low, high = wilson_interval(0.5, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    # 0 of 10: (0, 0.2775); 10 of 10: (0.7225, 1)
    assert wilson_interval(0.0, 10)[0] == 0.0 and round(wilson_interval(0.0, 10)[1], 4) == 0.2775
    assert round(wilson_interval(1.0, 10)[0], 4) == 0.7225 and wilson_interval(1.0, 10)[1] == 1.0


def test_wilson_narrows_with_more_images_and_passes_nan():
    w = [wilson_interval(0.8, n) for n in (100, 2100)]
    assert w[1][1] - w[1][0] < 0.35 * (w[0][1] - w[0][0])
    assert all(math.isnan(v) for v in wilson_interval(float("nan"), 100))
    with pytest.raises(ValueError, match="validation images"):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError, match="fraction"):
        wilson_interval(1.5, 10)


def test_mean_interval_uses_student_t():
    mean, low, high = mean_interval([0.80, 0.82, 0.84])
    # sd 0.02, se 0.01155, t(2) 4.303 -> half 0.0497
    assert mean == pytest.approx(0.82) and high - mean == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert math.isnan(mean_interval([0.9])[1]) and mean_interval([0.9])[0] == 0.9


def test_sampler_rule_follows_the_budget():
    assert [population_size(t) for t in (8, 12, 40, 100, 200, 1000)] == [4, 4, 10, 25, 50, 50]
    assert [startup_trials(t) for t in (8, 12, 16, 40, 1000)] == [3, 3, 4, 10, 10]
    assert sampler_settings("nsga2", 12) == {"population_size": 4}
    assert sampler_settings("nsga2", 12, population=6) == {"population_size": 6}
    assert sampler_settings("tpe", 100, startup=20) == {"n_startup_trials": 20}
    assert sampler_settings("random", 12) == {}


def test_search_builds_samplers_by_the_rule_and_validates_overrides():
    from nas_attn.search._optuna import make_sampler
    from nas_attn.space import SpaceError, loads
    assert make_sampler("nsga2", 0, 12)._population_size == 4
    assert make_sampler("nsga2", 0, 12, population=8)._population_size == 8
    assert make_sampler("tpe", 0, 16)._n_startup_trials == 4
    base = 'model: {name: resnet18, args: {in_chans: 1, num_classes: 10}}\nblocks: {"layer1.*": {attention: se}}\nsearch: '
    assert loads(base + "{population: 6, startup_trials: 2, confirm: 2}").search["confirm"] == 2
    for bad, key in (("{population: 1}", "search.population"), ("{confirm: -1}", "search.confirm"),
                     ("{startup_trials: 0}", "search.startup_trials")):
        with pytest.raises(SpaceError) as info:
            loads(base + bad)
        assert info.value.key_path == key


@pytest.mark.filterwarnings("ignore:Argument ``group`` is an experimental feature")
def test_sampler_options_reach_the_optuna_sampler_and_bad_ones_are_named():
    import optuna

    from nas_attn.search._optuna import make_sampler
    from nas_attn.space import SpaceError, loads
    base = ('model: {name: resnet18, args: {in_chans: 1, num_classes: 10}}\n'
            'blocks: {"layer1.*": {attention: se}}\nsearch: ')
    space = loads(base + "{sampler: tpe, sampler_options: {multivariate: true, group: true, n_ei_candidates: 48}}")
    options = space.search["sampler_options"]
    assert sampler_settings("tpe", 16, options=options) == {"n_startup_trials": 4, "multivariate": True,
                                                             "group": True, "n_ei_candidates": 48}
    sampler = make_sampler("tpe", 0, 16, options=options)
    # the options are the constructor's: a multi-objective study samples multivariate only when asked
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    assert sampler._is_multivariate(study) and sampler._n_ei_candidates == 48
    assert not make_sampler("tpe", 0, 16)._is_multivariate(study)
    nsga = make_sampler("nsga2", 0, 12, options={"crossover_prob": 0.5})
    assert nsga._population_size == 4 and nsga._child_generation_strategy._crossover_prob == 0.5
    assert loads(base + "{}").search["sampler_options"] == {}
    for bad, key, words in (
            ("{sampler_options: [1]}", "search.sampler_options", "expected a mapping"),
            ("{sampler_options: {constant_lair: true}}", "search.sampler_options.constant_lair",
             "not an argument of optuna.samplers.TPESampler; it takes"),
            ("{sampler_options: {multivariate: 'yes'}}", "search.sampler_options.multivariate",
             "expected true or false or null"),
            ("{sampler_options: {n_ei_candidates: 4.5}}", "search.sampler_options.n_ei_candidates", "an integer"),
            ("{sampler_options: {gamma: 0.1}}", "search.sampler_options.gamma", "takes a Python object"),
            ("{sampler_options: {n_startup_trials: 3}}", "search.sampler_options.n_startup_trials",
             "set by search.startup_trials"),
            ("{sampler: random, sampler_options: {seed: 3}}", "search.sampler_options.seed", "set by search.seed"),
            ("{sampler: nsga2, sampler_options: {mutation: uniform}}", "search.sampler_options.mutation",
             "takes a Python object")):
        with pytest.raises(SpaceError) as info:
            loads(base + bad, file="s.yaml")
        assert info.value.key_path == key and words in str(info.value), str(info.value)
        assert str(info.value).startswith("s.yaml:3: ")
