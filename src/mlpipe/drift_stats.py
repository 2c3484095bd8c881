"""The statistics drift is judged by: the population stability index, the binned
Kolmogorov-Smirnov distance, and the chi-square test of homogeneity with its survival function
(``chi2_sf``: stdlib only, the serving image has no SciPy). ``drift.py`` applies them.
"""

from __future__ import annotations

import math

import numpy as np

_EPSILON = 1e-4  # an empty bin's share, so that ln(a / e) stays finite
_LEAST_EXPECTED = 5  # Cochran's rule: the chi-square test wants five expected rows a cell


def psi(expected: np.ndarray, observed: np.ndarray) -> float:
    e = np.clip(expected, _EPSILON, None)
    a = np.clip(observed, _EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def binned_ks(expected: np.ndarray, observed: np.ndarray) -> float:
    return float(np.max(np.abs(np.cumsum(expected) - np.cumsum(observed)), initial=0.0))


def homogeneity_p(shares: np.ndarray, reference_rows: int, counts: np.ndarray) -> float:
    """The p-value of Pearson's chi-square test that ``counts`` (new rows per bin) and the
    reference (``shares`` of ``reference_rows``) come from one distribution. Neighbouring bins are
    merged until each holds five expected rows of the smaller sample; one bin left: 1.0."""
    rows = int(counts.sum())
    smaller = min(rows, reference_rows)
    groups: list[list[int]] = [[]]
    mass = 0.0
    for k, share in enumerate(shares):
        groups[-1].append(k)
        mass += share
        if smaller * mass >= _LEAST_EXPECTED and k < len(shares) - 1:
            groups.append([])
            mass = 0.0
    if smaller * mass < _LEAST_EXPECTED and len(groups) > 1:  # a small last group joins its left
        groups[-2].extend(groups.pop())
    if len(groups) < 2 or rows == 0:
        return 1.0
    table = np.array(
        [[shares[g].sum() * reference_rows, counts[g].sum()] for g in groups], dtype=np.float64
    ).T
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / np.where(expected > 0, expected, 1.0)))
    return chi2_sf(statistic, len(groups) - 1)


def chi2_sf(x: float, df: int) -> float:
    """The chi-square distribution's survival function, P(X > x) with ``df`` degrees of
    freedom (SciPy's ``chdtrc(df, x)``, to ~1e-14): the regularized upper incomplete gamma
    function Q(df/2, x/2), by its power series below a + 1 and by its continued fraction
    (modified Lentz) above, as in Numerical Recipes' ``gammq``."""
    a, z = df / 2.0, x / 2.0
    if z <= 0.0:
        return 1.0
    log_prefactor = -z + a * math.log(z) - math.lgamma(a)
    if z < a + 1.0:  # P(a, z) by its series; Q = 1 - P is not small here
        term = total = 1.0 / a
        n = a
        for _ in range(_MAX_TERMS):
            n += 1.0
            term *= z / n
            total += term
            if abs(term) < abs(total) * _PRECISION:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefactor))
    b = z + 1.0 - a
    c, d = 1.0 / _TINY, 1.0 / b
    fraction = d
    for i in range(1, _MAX_TERMS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        fraction *= d * c
        if abs(d * c - 1.0) < _PRECISION:
            break
    return math.exp(log_prefactor) * fraction


_MAX_TERMS, _PRECISION, _TINY = 10_000, 1e-15, 1e-300
