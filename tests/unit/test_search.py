from sklearn.model_selection import ParameterGrid

from mlpipe.models import get_family
from mlpipe.search import expand, make_search_id, make_trials, plan_units, select_best
from mlpipe.spec import load_spec
from mlpipe.trial import TrialResult

SPACE = load_spec().search_space


def test_grid_is_sklearns_grid_in_order():
    configs = expand(SPACE, "grid", seed=42)
    assert configs == list(ParameterGrid(SPACE))
    assert len(configs) == 81


def test_random_is_seeded_and_drawn_from_the_grid():
    first = expand(SPACE, "random", seed=7, n_trials=10)
    assert first == expand(SPACE, "random", seed=7, n_trials=10)
    assert first != expand(SPACE, "random", seed=8, n_trials=10)
    assert len(first) == 10 and all(c in list(ParameterGrid(SPACE)) for c in first)
    assert len(expand(SPACE, "random", seed=7, n_trials=500)) == 81  # never more than the grid


def test_trial_ids_are_stable_and_distinct():
    trials = make_trials(expand(SPACE, "grid", 42), "random_forest", "fp", 3, 42)
    again = make_trials(expand(SPACE, "grid", 42), "random_forest", "fp", 3, 42)
    assert [t.trial_id for t in trials] == [t.trial_id for t in again]
    assert len({t.trial_id for t in trials}) == 81
    other_data = make_trials(expand(SPACE, "grid", 42), "random_forest", "fp2", 3, 42)
    assert trials[0].trial_id != other_data[0].trial_id
    ids = [t.trial_id for t in trials]
    assert make_search_id("random_forest", ids, "fp", 3) == make_search_id(
        "random_forest", reversed(ids), "fp", 3
    )


def test_units_group_sizes_and_put_costliest_first():
    family = get_family("random_forest")
    units = plan_units(make_trials(expand(SPACE, "grid", 42), family.name, "fp", 3, 42), family)
    assert len(units) == 27
    assert all(u.sizes == [50, 100, 200] for u in units)
    assert units[0].largest_params["max_depth"] is None
    assert units[0].cost >= units[-1].cost
    assert sorted(t.trial_id for u in units for t in u.trials) == sorted(
        t.trial_id for t in make_trials(expand(SPACE, "grid", 42), family.name, "fp", 3, 42)
    )


def test_unit_without_size_param_uses_the_default_size():
    family = get_family("random_forest")
    [unit] = plan_units(make_trials([{"max_depth": 3}], family.name, "fp", 3, 0), family)
    assert unit.sizes == [100] and unit.trials[0].params == {"max_depth": 3}


def test_select_best_breaks_ties_by_grid_order_and_skips_failures():
    def result(index, score, status="completed"):
        return TrialResult(
            trial_id=str(index), index=index, params={}, mean_score=score, status=status
        )

    results = [result(3, 1.0), result(1, 1.0), result(0, 0.5, "failed"), result(2, 2.0)]
    assert select_best(results).index == 1
    assert select_best([result(0, 0.1, "failed")]) is None
