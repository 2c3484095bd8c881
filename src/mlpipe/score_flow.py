"""Where the batch flows lived before the batch stage had its own folder. Deployments registered
by an earlier mlpipe name ``mlpipe.score_flow.batch_score`` and ``mlpipe.score_flow.watch_incoming``
as their entrypoints; this alias keeps them running. New code imports ``mlpipe.batch.flow``."""

from mlpipe.batch.flow import batch_score, watch_incoming

__all__ = ["batch_score", "watch_incoming"]
