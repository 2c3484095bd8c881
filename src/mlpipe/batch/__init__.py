"""Batch scoring, one stage in one folder.

- ``files``: reading CSV/Parquet files and folders in batches; the atomic Parquet sink.
- ``sql``: database sources and sinks (SQLAlchemy; PostgreSQL's COPY both ways).
- ``score``: ``score(model, source, output)``: batches in, checked, predicted, written.
- ``locations``: what ``--input`` / ``--output`` name (a path, a database URL, a secret).
- ``flow``: the ``batch_score`` and ``watch_incoming`` Prefect flows.

Everything but ``flow`` is free of Prefect and MLflow.
"""
