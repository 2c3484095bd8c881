"""Data drift: a profile of the training data, and how far new inputs have moved from it.

- ``build_profile`` (at training time) cuts every feature, and the model's predictions, into up to
  ten bins at the training data's deciles and keeps each bin's share, the count, the missing
  count and a few quantiles; for a classifier, the predicted class (one bin a class) and the
  probability of each class (deciles again). The profile is a small JSON file stored beside the
  registered model.
- ``Counts`` adds up new rows into the same bins (a batch run: every row; the server: a sliding
  ``Window`` of the last N rows), and ``compare`` turns counts into a ``DriftResult``: per feature
  the population stability index, ``PSI = sum((a - e) * ln(a / e))`` over the bins, and the
  Kolmogorov-Smirnov distance of the binned distributions, ``max |A(x) - E(x)|`` at the cut points
  (a lower bound of the exact KS statistic, exact at the cuts).
- The verdict accounts for the sample size. PSI on ten bins has a large sampling spread at small
  ``n`` (100 in-distribution rows of the bundled data pass PSI 0.2 in a third of the draws), so a
  column counts as drifted only when its shift is both *real* and *large*: real, a chi-square test
  of homogeneity between the training rows' bin counts and the new rows' (bins too small for the
  test at this size merged with a neighbour, Cochran's rule of five) with a p-value under
  ``p_value / columns`` (Bonferroni: an in-distribution sample flags any column with probability
  at most ``p_value``); large, a figure over its threshold (``Thresholds``, from the spec's
  ``monitoring`` section), so that a tiny shift in a large window is no alarm either.
- ``drift_report.html_report`` renders one result as a small self-contained HTML page (a table
  and an SVG bar chart per feature), for MLflow's artifact view.

Pure: numpy and the standard library (the chi-square distribution is ``chi2_sf`` here: the
serving image has no SciPy); no Prefect, no MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mlpipe.drift_stats import binned_ks, homogeneity_p, psi

BINS = 10
PREDICTION = "prediction"
PROFILE_FILE = "profile.json"
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass(frozen=True)
class Thresholds:
    """When a feature counts as drifted; None turns a figure's check off."""

    psi: float | None = 0.2  # the usual reading: < 0.1 stable, 0.1-0.2 moderate, > 0.2 shifted
    ks: float | None = None
    min_rows: int = 100  # fewer rows than this: figures are reported, nothing is flagged
    window: int = 1000  # the server's sliding window, in rows
    # the chance that in-distribution rows raise an alarm at all; None: fixed thresholds only
    p_value: float | None = 0.01


@dataclass(frozen=True)
class FeatureProfile:
    """One column of the training data: bin cut points and each bin's share of the rows."""

    name: str
    cuts: list[float]  # bin k holds cuts[k-1] < x <= cuts[k]; len(cuts) + 1 bins
    shares: list[float]
    count: int
    missing: int
    mean: float
    std: float
    quantiles: dict[str, float]
    # a categorical feature's frequent categories, a bin each, then the rest (columns.py);
    # ``codes``: the bin of each category code the input contract gives (unseen: the last)
    categories: list[str] | None = None
    codes: list[int] | None = None

    def bins_of(self, values: np.ndarray) -> np.ndarray:
        if self.codes is not None:  # a category code's bin (NaN, missing, stays NaN)
            lookup = np.asarray([*self.codes, np.nan], dtype=np.float64)
            values = lookup[np.where(np.isnan(values), len(self.codes), values).astype(np.intp)]
        return np.searchsorted(np.asarray(self.cuts), values, side="left")


@dataclass(frozen=True)
class Profile:
    """The training data's features and the model's predictions on it (a classifier's: the
    predicted class, and each class's probability in ``probabilities``, in class order)."""

    features: list[FeatureProfile]
    prediction: FeatureProfile
    rows: int
    thresholds: Thresholds = field(default_factory=Thresholds)
    probabilities: list[FeatureProfile] = field(default_factory=list)

    @property
    def columns(self) -> list[FeatureProfile]:
        """The features, the prediction, the probabilities: the order of ``Counts``' rows."""
        return [*self.features, self.prediction, *self.probabilities]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        raw = json.loads(text)
        return cls(
            features=[FeatureProfile(**f) for f in raw["features"]],
            prediction=FeatureProfile(**raw["prediction"]),
            rows=raw["rows"],
            thresholds=Thresholds(**raw.get("thresholds", {})),
            probabilities=[FeatureProfile(**f) for f in raw.get("probabilities", [])],
        )

    def with_thresholds(self, thresholds: Thresholds) -> Profile:
        return Profile(self.features, self.prediction, self.rows, thresholds, self.probabilities)


def profile_column(
    name: str,
    values: np.ndarray,
    cuts: np.ndarray | None = None,
    categories: tuple[list[str], list[int]] | None = None,
) -> FeatureProfile:
    """Deciles as cut points (repeated ones merged: a 0/1 column gets two bins), or ``cuts``;
    for category codes, ``categories``: the frequent ones, a bin each, then one for the rest,
    and each code's bin."""
    values = np.asarray(values, dtype=np.float64)
    if categories is not None:
        cuts = np.arange(len(categories[0])) + 0.5
        lookup = np.asarray(categories[1], dtype=np.float64)
        values = np.where(np.isnan(values), np.nan, lookup[np.nan_to_num(values).astype(np.intp)])
    present = values[np.isfinite(values)]
    if present.size == 0:
        return FeatureProfile(name, [], [1.0], int(values.size), int(values.size), 0, 0, {})
    if cuts is None:
        cuts = np.unique(np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1]))
    shares = np.bincount(np.searchsorted(cuts, present, side="left"), minlength=cuts.size + 1)
    return FeatureProfile(
        name=name,
        cuts=[float(c) for c in cuts],
        shares=[float(s) for s in shares / present.size],
        count=int(values.size),
        missing=int(values.size - present.size),
        mean=float(present.mean()),
        std=float(present.std()),
        quantiles={f"p{round(q * 100):02d}": float(np.quantile(present, q)) for q in _QUANTILES},
        categories=None if categories is None else categories[0],
        codes=None if categories is None else categories[1],
    )


def build_profile(
    names: Sequence[str],
    matrix: np.ndarray,
    predictions: np.ndarray,
    thresholds: Thresholds | None = None,
    probabilities: dict[str, np.ndarray] | None = None,
    categories: dict[str, tuple[list[str], list[int]]] | None = None,
) -> Profile:
    """The profile of a training matrix (rows x ``names``) and the model's predictions on it;
    a classifier's are its predicted class codes (one bin a class, cut halfway between codes),
    with ``probabilities``: each class's column of ``predict_proba`` by its column name. A
    column named in ``categories`` holds category codes (the rest: one code more)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    probabilities, categories = probabilities or {}, categories or {}
    by_class = np.arange(len(probabilities) - 1) + 0.5 if probabilities else None
    return Profile(
        features=[
            profile_column(n, matrix[:, i], categories=categories.get(n))
            for i, n in enumerate(names)
        ],
        prediction=profile_column(PREDICTION, np.asarray(predictions).ravel(), by_class),
        rows=int(matrix.shape[0]),
        thresholds=thresholds or Thresholds(),
        probabilities=[profile_column(n, v) for n, v in probabilities.items()],
    )


class Counts:
    """Rows added up into the profile's bins, per feature, for the prediction and for a
    classifier's probabilities (``proba``: rows x classes, required when profiled)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        # two slots past the widest column's bins: each column's missing values, and a
        # categorical column's unseen categories (their own figure; "the rest" in the tests)
        self.missing_slot = max(len(c.shares) for c in profile.columns)
        self.unseen_slot = self.missing_slot + 1
        self.table = np.zeros((len(profile.columns), self.unseen_slot + 1), dtype=np.int64)
        self.rows = 0

    def bins(
        self, matrix: np.ndarray, predictions: np.ndarray, proba: np.ndarray | None = None
    ) -> np.ndarray:
        """Each row's bin per column: rows x (features + 1 + profiled probabilities)."""
        columns = [*np.asarray(matrix, dtype=np.float64).T, np.asarray(predictions).ravel()]
        if self.profile.probabilities:
            if proba is None:
                raise ValueError("the profile has each class's probability: pass proba")
            columns.extend(np.asarray(proba, dtype=np.float64).T)
        return np.stack(
            [self._bins(c, v) for c, v in zip(self.profile.columns, columns, strict=True)],
            axis=1,
        )

    def _bins(self, column: FeatureProfile, values: np.ndarray) -> np.ndarray:
        bins = np.where(np.isnan(values), self.missing_slot, column.bins_of(values))
        if column.codes is not None:  # the contract's code for an unseen category: the last
            bins[values == len(column.codes) - 1] = self.unseen_slot
        return bins

    def add(
        self, matrix: np.ndarray, predictions: np.ndarray, proba: np.ndarray | None = None
    ) -> None:
        self.add_bins(self.bins(matrix, predictions, proba), +1)

    def add_bins(self, bins: np.ndarray, sign: int) -> None:
        for column in range(bins.shape[1]):
            self.table[column] += sign * np.bincount(bins[:, column], minlength=self.table.shape[1])
        self.rows += sign * bins.shape[0]


class Window(Counts):
    """The last ``size`` rows only: what a server compares, so old traffic ages out."""

    def __init__(self, profile: Profile, size: int) -> None:
        super().__init__(profile)
        self.size = size
        self.ring = np.zeros((size, len(profile.columns)), dtype=np.int64)
        self.next = 0

    def add_bins(self, bins: np.ndarray, sign: int = 1) -> None:
        bins = bins[-self.size :]
        slots = (self.next + np.arange(len(bins))) % self.size
        if self.rows + len(bins) > self.size:  # the oldest rows leave the window
            # the first (size - rows) slots are still empty; the rest hold the oldest rows
            super().add_bins(self.ring[slots[self.size - self.rows :]], -1)
        self.ring[slots] = bins
        super().add_bins(bins, +1)
        self.next = int((self.next + len(bins)) % self.size)


@dataclass(frozen=True)
class ColumnDrift:
    name: str
    psi: float
    ks: float
    p_value: float  # of the chi-square test of homogeneity with the training rows
    drifted: bool
    expected: list[float]
    observed: list[float]
    missing: float = 0.0  # the share of the rows where the value was missing
    unseen: float | None = None  # a categorical feature's: the share of unseen categories


@dataclass(frozen=True)
class DriftResult:
    """Every feature's figures, the prediction's (and a classifier's probabilities'), and
    whether any threshold was crossed."""

    features: list[ColumnDrift]
    prediction: ColumnDrift
    rows: int
    thresholds: Thresholds
    probabilities: list[ColumnDrift] = field(default_factory=list)

    @property
    def columns(self) -> list[ColumnDrift]:
        """In the profile's order: features, prediction, probabilities."""
        return [*self.features, self.prediction, *self.probabilities]

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @property
    def drifted_outputs(self) -> list[str]:
        """The prediction and the probability columns that drifted."""
        return [c.name for c in (self.prediction, *self.probabilities) if c.drifted]

    @property
    def drifted(self) -> bool:
        return bool(self.drifted_features) or bool(self.drifted_outputs)

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow: ``drift_psi_<name>``, ``drift_ks_<name>``, counts."""
        figures: dict[str, float] = {"drift_rows": self.rows}
        for column in self.columns:
            figures[f"drift_psi_{column.name}"] = column.psi
            figures[f"drift_ks_{column.name}"] = column.ks
            figures[f"drift_p_{column.name}"] = column.p_value
            if column.missing:
                figures[f"drift_missing_{column.name}"] = column.missing
            if column.unseen is not None:
                figures[f"drift_unseen_{column.name}"] = column.unseen
        figures["drift_features"] = len(self.drifted_features)
        return figures

    def summary(self) -> dict[str, Any]:
        """What an event or a webhook carries: the flags and the worst figures."""
        worst = max(self.features, key=lambda f: f.psi, default=None)
        return {
            "rows": self.rows,
            "drifted": self.drifted,
            "drifted_features": self.drifted_features,
            "prediction_drifted": self.prediction.drifted,
            "drifted_outputs": self.drifted_outputs,
            "max_psi": round(worst.psi, 4) if worst else None,
            "max_psi_feature": worst.name if worst else None,
            "prediction_psi": round(self.prediction.psi, 4),
            "min_p_value": min(c.p_value for c in self.columns),
            "psi_threshold": self.thresholds.psi,
            "ks_threshold": self.thresholds.ks,
            "p_value_threshold": self.thresholds.p_value,
        }


def verdict(summary: dict[str, Any] | None) -> str:
    """One line from a ``DriftResult.summary()`` (None: the version has no profile)."""
    if summary is None:
        return "not checked (the version has no training profile)"
    detail = (
        f"max PSI {summary['max_psi']:.3f} ({summary['max_psi_feature']}), "
        f"prediction PSI {summary['prediction_psi']:.3f}"
    )
    if summary["drifted"]:
        drifted = summary["drifted_features"] + [
            name for name in summary["drifted_outputs"] if name != PREDICTION
        ]
        return f"DRIFT in {', '.join(drifted) or 'the predictions'}; {detail}"
    return f"none past the thresholds; {detail}"


def compare(counts: Counts) -> DriftResult:
    """The drift of the rows in ``counts`` from their profile."""
    profile, rows = counts.profile, counts.rows
    limits = profile.thresholds
    flagged = rows >= limits.min_rows
    columns = []
    for k, column in enumerate(profile.columns):
        expected = np.asarray(column.shares)
        observed_counts = counts.table[k, : expected.size].copy()
        unseen = int(counts.table[k, counts.unseen_slot])
        observed_counts[-1] += unseen  # an unseen category is one of "the rest"
        # the shares of the rows that have a value (a missing one is counted on its own)
        observed = observed_counts / max(int(observed_counts.sum()), 1)
        p, d = psi(expected, observed), binned_ks(expected, observed)
        chance = homogeneity_p(expected, column.count - column.missing, observed_counts)
        large = (limits.psi is not None and p > limits.psi) or (
            limits.ks is not None and d > limits.ks
        )
        real = limits.p_value is None or chance < limits.p_value / len(profile.columns)
        columns.append(
            ColumnDrift(
                column.name,
                p,
                d,
                chance,
                flagged and large and real,
                expected.tolist(),
                observed.tolist(),
                float(counts.table[k, counts.missing_slot] / max(rows, 1)),
                unseen / max(rows, 1) if column.codes is not None else None,
            )
        )
    n = len(profile.features)
    return DriftResult(columns[:n], columns[n], rows, limits, columns[n + 1 :])
