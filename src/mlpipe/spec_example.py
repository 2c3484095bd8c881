"""The spec `mlpipe init` writes: every key at its default (``spec.py`` defines them)."""

EXAMPLE_SPEC = """\
# mlpipe pipeline spec. Every key is optional; these are the defaults.
seed: 42
data:
  source: boston          # boston (bundled) | diabetes (sklearn) | synthetic | a CSV/Parquet path
  target: MEDV            # the column to predict
  test_size: 0.2          # held out for the final score
  # rows: 1000            # synthetic only
  # features: 10          # synthetic only
  # noise: 10.0           # synthetic only
  # categorical: [zone]   # integer-coded columns to take as categories (strings are already)
  # drop: [order_id]      # columns left out of the features
model:
  family: random_forest   # random_forest | extra_trees | hist_gradient_boosting | xgboost ...
search:
  strategy: grid          # grid | random or tpe (with n_trials) | halving (see the README)
  cv: 3                   # KFold splits of the training split
  # n_trials: 20          # random and tpe (halving: its random candidates)
  # batch_size: 4         # tpe: configs asked before their scores are told back
  # sampler: tpe          # tpe: Optuna's sampler, tpe | qmc
  retries: 0              # Prefect retries of a failed trial
  params:                 # a list of values, or (random) a range: {low: 0.01, high: 0.3, log: true}
    n_estimators: [50, 100, 200]
    max_depth: [null, 10, 20]
    min_samples_split: [2, 5, 10]
    min_samples_leaf: [1, 2, 4]
tracking:
  experiment: boston-rf   # the store: MLFLOW_TRACKING_URI, else ./mlflow.db (SQLite)
registry:
  model_name: boston-rf
monitoring:               # drift of new inputs from the training data (batch runs, the server)
  psi_threshold: 0.2      # population stability index per feature; null: off
  ks_threshold: null      # Kolmogorov-Smirnov distance per feature (0-1); null: off
  min_rows: 100           # fewer rows compared: figures only, nothing flagged
  window: 1000            # the server compares its last N rows
  p_value: 0.01           # false-alarm rate: a flag also needs a chi-square p-value under it
artifacts_dir: artifacts
n_jobs: -1                # trials at once; -1 = all cores
executor: process         # process | dask-local | dask://HOST:PORT (an existing Dask cluster)
"""
