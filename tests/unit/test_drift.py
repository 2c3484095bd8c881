"""The training profile, PSI and KS, the sliding window, the server's watch and the report."""

from __future__ import annotations

import html.parser

import numpy as np
import pytest

from mlpipe import drift, drift_report, drift_stats
from mlpipe.errors import SpecError
from mlpipe.serve.metrics import Metrics
from mlpipe.serve.monitor import DriftWatch
from mlpipe.spec import load_spec

NAMES = ["a", "b", "flag"]


def sample(rng: np.random.Generator, rows: int, shift: float = 0.0) -> np.ndarray:
    matrix = rng.normal(size=(rows, 3))
    matrix[:, 0] += shift
    matrix[:, 2] = rng.integers(0, 2, rows)  # a 0/1 column
    return matrix


@pytest.fixture(scope="module")
def profile():
    matrix = sample(np.random.default_rng(0), 5000)
    return drift.build_profile(NAMES, matrix, matrix[:, 0] * 2 + matrix[:, 1])


def counts_of(profile, matrix) -> drift.Counts:
    counts = drift.Counts(profile)
    counts.add(matrix, matrix[:, 0] * 2 + matrix[:, 1])
    return counts


def test_the_profile_cuts_at_deciles_and_merges_repeated_cuts(profile):
    a, _, flag = profile.features
    assert len(a.cuts) == 9 and np.allclose(a.shares, 0.1, atol=0.002)
    assert flag.cuts == [0.0, 1.0] and flag.shares[2] == 0  # repeated deciles merged
    assert a.count == 5000 and a.missing == 0 and abs(a.quantiles["p50"]) < 0.1
    assert profile.prediction.name == "prediction" and len(profile.prediction.cuts) == 9
    assert drift.Profile.from_json(profile.to_json()) == profile


def test_missing_values_are_counted_not_binned():
    column = drift.profile_column("x", np.array([1.0, 2.0, np.nan, 4.0]))
    assert column.count == 4 and column.missing == 1 and sum(column.shares) == pytest.approx(1)


def test_same_distribution_is_quiet_and_a_shifted_mean_is_flagged(profile):
    rng = np.random.default_rng(1)
    calm = drift.compare(counts_of(profile, sample(rng, 2000)))
    assert not calm.drifted and max(f.psi for f in calm.features) < 0.05
    moved = drift.compare(counts_of(profile, sample(rng, 2000, shift=1.0)))
    assert moved.drifted_features == ["a"] and moved.prediction.drifted
    assert moved.features[0].psi > 0.5 and 0.3 < moved.features[0].ks < 0.5
    summary = moved.summary()
    assert summary["max_psi_feature"] == "a" and summary["drifted"] is True
    assert moved.metrics()["drift_psi_a"] == moved.features[0].psi


def test_psi_and_ks_match_their_definitions():
    expected, observed = np.array([0.5, 0.5]), np.array([0.8, 0.2])
    psi = 0.3 * np.log(0.8 / 0.5) + (-0.3) * np.log(0.2 / 0.5)
    assert drift_stats.psi(expected, observed) == pytest.approx(psi)
    assert drift_stats.binned_ks(expected, observed) == pytest.approx(0.3)
    assert drift_stats.psi(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0  # empty bins are finite


def test_thresholds_and_min_rows_decide_the_flag(profile):
    moved = sample(np.random.default_rng(2), 2000, shift=1.0)
    few = profile.with_thresholds(drift.Thresholds(min_rows=5000))
    assert not drift.compare(counts_of(few, moved)).drifted  # figures only below min_rows
    ks_only = profile.with_thresholds(drift.Thresholds(psi=None, ks=0.9))
    assert not drift.compare(counts_of(ks_only, moved)).drifted
    ks_low = profile.with_thresholds(drift.Thresholds(psi=None, ks=0.2))
    assert drift.compare(counts_of(ks_low, moved)).drifted_features == ["a"]


def test_the_window_holds_only_the_last_rows(profile):
    rng = np.random.default_rng(3)
    rows = [sample(rng, 70, shift=k % 2) for k in range(9)]
    window = drift.Window(profile, 200)
    for matrix in rows:
        window.add(matrix, matrix[:, 0])
    last = np.concatenate(rows)[-200:]
    reference = drift.Counts(profile)
    reference.add(last, last[:, 0])
    assert window.rows == 200 and (window.table == reference.table).all()


def test_the_server_watch_queues_requests_and_flags_a_crossing_once(profile):
    class Model:
        def __init__(self, profile):
            self.profile = profile

    watch, sent = DriftWatch(Metrics(), window_rows=300), []
    model = Model(profile)
    rng = np.random.default_rng(4)
    for _ in range(10):
        rows = sample(rng, 50)
        watch.observe(model, rows, rows[:, 0] * 2 + rows[:, 1])
    assert watch.queued <= 300 + 50  # requests older than the window are dropped unbinned
    assert not watch.check(lambda m, r: sent.append(r)).drifted and not sent
    for _ in range(10):
        rows = sample(rng, 50, shift=1.5)
        watch.observe(model, rows, rows[:, 0] * 2 + rows[:, 1])
    watch.check(lambda m, r: sent.append(r))
    watch.check(lambda m, r: sent.append(r))
    assert len(sent) == 1 and sent[0].drifted_features == ["a"]  # once per crossing
    watch.observe(Model(None), rows, rows[:, 0])  # a version without a profile: ignored
    assert watch.window is not None and watch.window.rows == 300


def test_single_row_requests_are_binned_at_once_into_the_last_window_of_rows(profile):
    """Many one-row requests (the server's usual traffic) are binned in one call when the
    window is checked: the same counts as the last ``window_rows`` rows binned directly."""

    class Model:
        def __init__(self, profile):
            self.profile = profile

    watch, model = DriftWatch(Metrics(), window_rows=300), Model(profile)
    rows = sample(np.random.default_rng(5), 1000)
    for row in rows:
        watch.observe(model, row[None, :], row[None, 0] * 2 + row[None, 1])
    watch.evaluate()
    assert not watch.queue and watch.window.rows == 300
    expected = counts_of(profile, rows[-300:])
    assert np.array_equal(watch.window.table, expected.table)


@pytest.mark.parametrize("df", [1, 2, 3, 5, 9, 10, 30, 99])
def test_the_chi_square_survival_function_equals_scipys(df):
    from scipy.special import chdtrc

    for x in [0.0, 1e-6, 0.01, 0.5, 1.0, df - 1.0, df, df + 1.5, 2.0 * df, 5.0 * df + 20, 300.0]:
        expected = float(chdtrc(df, max(x, 0.0)))
        got = drift_stats.chi2_sf(max(x, 0.0), df)
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-300)


def test_the_servers_first_drift_check_imports_nothing():
    """The server's first check runs on its event loop: nothing it needs is imported there (a
    lazy SciPy import once stalled every request in flight for ~140 ms; a fresh interpreter:
    this one has imported everything already)."""
    import subprocess
    import sys

    check = (
        "import sys\n"
        "import mlpipe.serve.monitor\n"
        "before = set(sys.modules)\n"
        "from mlpipe import drift_stats\n"
        "import numpy as np\n"
        "drift_stats.homogeneity_p(np.array([0.5, 0.5]), 100, np.array([40, 60]))\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)


def test_the_report_is_a_page_with_a_table_row_and_a_chart_per_column(profile):
    result = drift.compare(counts_of(profile, sample(np.random.default_rng(5), 500, 1.0)))
    page = drift_report.html_report(result, profile, "Drift of <today>")
    parser = _Page()
    parser.feed(page)
    assert parser.tags.count("tr") == 1 + 4 and parser.tags.count("svg") == 4
    assert "Drift of &lt;today&gt;" in page and '<tr class="drifted"><td>a</td>' in page


def test_the_spec_carries_monitoring_thresholds(tmp_path):
    spec = load_spec(None, {"monitoring.psi_threshold": 0.3, "monitoring.window": 500})
    assert spec.monitoring.psi_threshold == 0.3 and spec.monitoring.window == 500
    path = tmp_path / "spec.yaml"
    path.write_text("monitoring:\n  psi_threshold: null\n  ks_threshold: null\n")
    with pytest.raises(SpecError, match="set one of them"):
        load_spec(path)


@pytest.fixture(scope="module")
def boston():
    """The bundled data, the default split's training profile, and a model's predictions."""
    from sklearn.linear_model import LinearRegression

    from mlpipe.data import load_dataset, split_dataset

    spec = load_spec()
    split = split_dataset(load_dataset(spec.data, spec.seed), spec.data.test_size, spec.seed)
    names = list(split.X_train.columns)
    train = split.X_train.to_numpy(np.float64)
    model = LinearRegression().fit(train, split.y_train)
    full = np.vstack([train, split.X_test.to_numpy(np.float64)])
    return names, drift.build_profile(names, train, model.predict(train)), full, model


def alarm_rate(boston, rows, draws, change=None, thresholds=None) -> float:
    """The share of ``draws`` random samples of the bundled data (``rows`` each; with
    replacement past its size) that raise an alarm, after ``change`` (column, function)."""
    names, profile, full, model = boston
    profile = profile.with_thresholds(thresholds) if thresholds else profile
    rng = np.random.default_rng(rows)
    alarms = 0
    for _ in range(draws):
        picked = rng.choice(len(full), rows, replace=rows > len(full))
        matrix = full[picked].copy()
        if change:
            column, move = change
            matrix[:, names.index(column)] = move(matrix[:, names.index(column)])
        counts = drift.Counts(profile)
        counts.add(matrix, model.predict(matrix))
        alarms += drift.compare(counts).drifted
    return alarms / draws


@pytest.mark.parametrize("rows", [100, 300, 1000])
def test_in_distribution_samples_raise_an_alarm_at_most_once_in_a_hundred(boston, rows):
    assert alarm_rate(boston, rows, draws=1000) <= 0.01


def test_a_fixed_psi_cut_off_alone_pages_on_noise_at_small_samples(boston):
    """Why the verdict has a test: PSI > 0.2 on its own flags 100 in-distribution rows often."""
    assert alarm_rate(boston, 100, draws=300, thresholds=drift.Thresholds(p_value=None)) > 0.1


@pytest.mark.parametrize(
    "change", [("RM", lambda v: v + 1), ("LSTAT", lambda v: v * 2)], ids=["RM+1", "LSTATx2"]
)
def test_a_real_shift_is_caught_at_one_hundred_rows(boston, change):
    assert alarm_rate(boston, 100, draws=200, change=change) >= 0.99


def test_the_p_value_merges_bins_too_small_for_the_test():
    shares = np.array([0.5, 0.49, 0.01])
    assert drift_stats.homogeneity_p(shares, 1000, np.array([50, 49, 1])) == pytest.approx(1.0)
    # an empty rare bin is no evidence at 100 rows: it merges with its neighbour
    assert drift_stats.homogeneity_p(shares, 1000, np.array([50, 50, 0])) > 0.5
    assert drift_stats.homogeneity_p(shares, 1000, np.array([90, 10, 0])) < 1e-6
    one_bin = drift_stats.homogeneity_p(np.array([1.0]), 1000, np.array([100]))
    assert one_bin == 1.0  # one bin: no test


@pytest.fixture(scope="module")
def houses():
    """A table with categories: its training profile built as `mlpipe train` builds it (the
    contract's codes, the 9 most frequent categories a bin each), the contract that codes new
    rows, and the whole table's rows as the contract codes them."""
    import pandas as pd
    from tables import make_table

    from mlpipe.columns import categories, decide_columns, prepare, profile_matrix
    from mlpipe.contract import InputContract

    frame = make_table(4000, seed=3).drop(columns=["y", "order_id"])
    columns = decide_columns(frame)
    prepared = prepare(frame, columns)
    train = prepared.iloc[:3000]
    matrix, profiled = profile_matrix(train, drift.BINS - 1)
    names = list(prepared.columns)
    predictions = np.nan_to_num(matrix[:, names.index("x")])
    profile = drift.build_profile(names, matrix, predictions, categories=profiled)
    mapping = categories(train, columns)
    contract = InputContract(
        tuple(names),
        tuple({"categorical": "string", "boolean": "boolean"}.get(columns.kinds[c], "double")
              for c in names),
        optional=frozenset(names), categories={k: tuple(v) for k, v in mapping.items()},
    )  # fmt: skip
    rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in
            frame.astype(object).to_dict(orient="records")]  # fmt: skip
    coded = contract.matrix_from_records(rows)
    return names, profile, coded


def categorical_alarm_rate(houses, draws: int, change=None) -> float:
    names, profile, coded = houses
    rng = np.random.default_rng(11)
    alarms = 0
    for _ in range(draws):
        matrix = coded[rng.choice(len(coded), 100)].copy()
        if change is not None:
            column, value = change
            matrix[: len(matrix) // 2, names.index(column)] = value
        counts = drift.Counts(profile)
        counts.add(matrix, np.nan_to_num(matrix[:, names.index("x")]))
        alarms += drift.compare(counts).drifted
    return alarms / draws


def test_categories_are_profiled_by_their_shares_with_missing_counted_apart(houses):
    names, profile, coded = houses
    city = profile.features[names.index("city")]
    assert city.categories == ["paris", "rome", "oslo", "lima", "kyiv"]  # by frequency
    assert len(city.shares) == len(city.categories) + 1  # and one bin for the rest
    assert city.missing > 0 and sum(city.shares) == pytest.approx(1.0)
    counts = drift.Counts(profile)
    counts.add(coded[:500], np.zeros(500))
    result = drift.compare(counts)
    column = result.features[names.index("city")]
    assert column.missing == pytest.approx(np.isnan(coded[:500, names.index("city")]).mean())


def test_in_distribution_categories_raise_an_alarm_at_most_once_in_a_hundred(houses):
    assert categorical_alarm_rate(houses, draws=500) <= 0.01


def test_a_category_taking_over_half_the_rows_is_caught(houses):
    assert categorical_alarm_rate(houses, draws=100, change=("city", 3.0)) >= 0.99  # "lima"


def test_the_unseen_category_rate_is_its_own_figure_and_one_of_the_rest_in_the_test(houses):
    names, profile, coded = houses
    j = names.index("city")
    city = profile.features[j]
    matrix = coded[:400].copy()
    matrix[:100, j] = len(city.codes) - 1  # the contract's code for a category never seen
    counts = drift.Counts(profile)
    counts.add(matrix, np.zeros(len(matrix)))
    column = drift.compare(counts).features[j]
    assert column.unseen == pytest.approx(0.25)
    rest = matrix[:, j][~np.isnan(matrix[:, j])]
    in_rest = np.asarray(city.codes)[rest.astype(int)] == len(city.categories)
    assert column.observed[-1] == pytest.approx(in_rest.mean())  # unseen ones counted there
    assert drift.compare(counts).metrics()["drift_unseen_city"] == pytest.approx(0.25)
    assert drift.compare(counts).features[names.index("x")].unseen is None  # a number
