"""Tables the tests make: a table as users have them (strings, a pandas category, booleans,
integer codes, an identifier, empty cells in every kind), and the scikit-learn pipeline each
family's search on it equals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpipe.columns import Columns, encoder, make_pipeline
from mlpipe.spec import Spec

CITIES = ["paris", "rome", "oslo", "lima", "kyiv"]
SHOPS = 40


def make_table(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """Strings, a pandas category, booleans, integer codes, numbers, an identifier; missing
    values in every kind; a rare category; a column of many categories; a target with a few
    missing values."""
    rng = np.random.default_rng(seed)
    city = rng.choice(CITIES, rows, p=[0.4, 0.3, 0.2, 0.09, 0.01]).astype(object)
    city[rng.random(rows) < 0.08] = None
    frame = pd.DataFrame(
        {
            "city": city,
            "size": pd.Categorical(rng.choice(["s", "m", "l"], rows)),
            "flag": rng.choice([True, False], rows),
            "zone": rng.integers(1, 12, rows),
            "x": rng.normal(size=rows),
            "order_id": [f"o-{i}" for i in range(rows)],
        }
    )
    frame.loc[rng.random(rows) < 0.1, "x"] = np.nan
    frame.loc[rng.random(rows) < 0.05, "size"] = np.nan
    effect = frame["city"].map({"paris": 2.0, "rome": 1.0, "oslo": -1.0, "lima": 3.0}).fillna(0)
    frame["y"] = effect + frame["x"].fillna(0) + frame["zone"] % 3 + rng.normal(size=rows) * 0.3
    frame.loc[rng.random(rows) < 0.03, "y"] = np.nan
    # a column of more categories than the forests one-hot (columns.MAX_ONE_HOT): target-encoded
    shop = rng.integers(0, SHOPS, rows)
    frame.insert(5, "shop", [f"shop-{s}" for s in shop])
    frame.loc[rng.random(rows) < 0.04, "shop"] = None
    frame["y"] += np.sin(shop)
    return frame


def documented_pipeline(spec: Spec, columns: Columns, X_train: pd.DataFrame):
    """The scikit-learn pipeline the README names for the family on ``X_train``: cast, encode,
    estimate."""
    family = spec.family
    encoding = encoder(family.name, columns, X_train, family.task, spec.seed)
    return make_pipeline(columns, encoding, family.build(encoding.model_params, spec.seed))
