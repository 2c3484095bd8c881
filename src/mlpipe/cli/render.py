"""Everything the commands print beyond one line: summaries, tables, progress bars (rich).

rich is imported inside the functions, so ``mlpipe --help`` stays instant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mlpipe import links

if TYPE_CHECKING:
    from rich.console import Console

    from mlpipe.settings import Settings
    from mlpipe.tune.sharded import ShardOutcome
    from mlpipe.tune.steps import TuneOutcome


def console() -> Console:
    """The console commands print to (stdout)."""
    from rich.console import Console

    return Console(stderr=False, soft_wrap=True)


def tune_summary(outcome: TuneOutcome, settings: Settings) -> None:
    """The top trials, the test scores, the registered version and its alias, where to look."""
    out = console()
    tracking_uri = settings.tracking_uri
    from rich.table import Table

    from mlpipe.search import ranked

    for note in outcome.data_notes:
        out.print(note, highlight=False)
    done = ranked(outcome.results)
    failed = len(outcome.results) - len(done)
    table = Table(
        title=f"top {min(5, len(done))} of {len(outcome.results)} trials ({failed} failed)"
    )
    table.add_column("rank", justify="right")
    table.add_column("trial")
    table.add_column("params")
    table.add_column(f"cv {outcome.best.scoring}", justify="right")
    table.add_column("± std", justify="right")
    for rank, r in enumerate(done[:5], 1):
        params = ", ".join(f"{k}={v}" for k, v in r.params.items())
        table.add_row(str(rank), r.trial_id, params, f"{r.mean_score:.4f}", f"{r.std_score:.4f}")
    out.print(table)
    p, t = outcome.promotion, outcome.test_metrics
    scores = "  ".join(f"{name} {value:.4f}" for name, value in t.items())
    out.print(f"test split: {scores}")
    if p.champion_score is None:
        verdict = (
            "already the champion"
            if outcome.unchanged
            else "first version: it becomes the champion"
        )
    else:
        better = "beats" if p.promoted else "does not beat"
        verdict = (
            f"test {p.scoring} {p.test_score:.4f} {better} champion v{p.champion_version}'s "
            f"{p.champion_score:.4f} on the same split"
        )
    name = outcome.model_name
    if outcome.unchanged:
        out.print(
            f"unchanged: every trial reused and this search is {name} version {p.version} "
            f"already -> alias [bold]{p.alias}[/] ({verdict}); nothing logged or registered "
            "again (--fresh reruns it)"
        )
    else:
        out.print(f"registered {name} version {p.version} -> alias [bold]{p.alias}[/] ({verdict})")
    out.print(f"mlflow parent run {parent_run(outcome, tracking_uri)}")
    trials = links.trials_page(
        tracking_uri, outcome.experiment_id, outcome.parent_run_id, outcome.best.scoring
    )
    if trials:
        out.print(f"mlflow trials, best first {trials}", markup=False)
    out.print(f"artifacts {outcome.artifacts_path}/")
    timings = "  ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())
    out.print(f"timings: {timings}")
    ui = (
        f"{_command('mlflow')} ui --backend-store-uri {tracking_uri}"
        if tracking_uri.startswith("sqlite")
        else tracking_uri
    )
    api = settings.prefect_api_url
    prefect_ui = api.removesuffix("/api") if api else f"{_command('prefect')} server start"
    out.print(f"open the MLflow UI: {ui}   the Prefect UI: {prefect_ui}")


def parent_run(outcome: TuneOutcome | ShardOutcome, tracking_uri: str) -> str:
    """The search's parent run: its page in the MLflow UI when the store is a server (the one
    link mlpipe prints for a search), else its id and the store."""
    page = links.run_page(tracking_uri, outcome.experiment_id, outcome.parent_run_id)
    return page or f"{outcome.parent_run_id}  ({tracking_uri})"


def _command(name: str) -> str:
    """``name`` as a user can type it: bare when it is on PATH, else from mlpipe's own venv."""
    import shutil
    import sys
    from pathlib import Path

    beside = Path(sys.executable).parent / name
    return name if shutil.which(name) or not beside.exists() else str(beside)


def shard_summary(outcome: ShardOutcome, settings: Settings) -> None:
    """What one shard did, and the finalize command to run when every shard is done."""
    out = console()
    tracking_uri = settings.tracking_uri
    results = outcome.results
    failed = sum(r.status != "completed" for r in results)
    out.print(
        f"shard {outcome.shard} of search {outcome.search_id}: {len(results)} trials "
        f"({outcome.reused} already in MLflow, {failed} failed), "
        f"{100 * outcome.expected_share:.1f}% of the search's expected cost, "
        f"fits {outcome.fit_seconds:.1f}s"
    )
    out.print(f"mlflow parent run {parent_run(outcome, tracking_uri)}")
    out.print(f"results {outcome.results_path}")
    timings = "  ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())
    out.print(f"timings: {timings}")
    out.print(f"when every shard is done: mlpipe train --finalize {outcome.search_id} (same spec)")


def score_summary(summary: Any, out: Console, total_seconds: float) -> None:
    """Rows scored and rejected (the first reasons), the input and output; the command's whole
    time beside the time spent reading, checking and predicting."""
    out.print(
        f"scored {summary.scored:,} of {summary.rows:,} rows with {summary.model_name or 'model'} "
        f"version {summary.model_version or '-'} ({summary.predictor}) in {total_seconds:.1f}s "
        f"(reading and predicting {summary.seconds:.2f}s: {summary.rows_per_second:,.0f} rows/s)"
    )
    out.print(f"input {summary.input}")
    out.print(f"output {summary.output}")
    for label, counts in (("unseen categories", summary.unseen), ("missing", summary.missing)):
        if counts:  # scored by the family's rule; counted where an operator looks
            shown = ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items()))
            out.print(f"{label}: {shown}", markup=False)
    if summary.rejected:
        out.print(f"[yellow]{summary.rejected:,} rows rejected[/] -> {summary.rejects}")
        shown = summary.first_rejects[:3]
        for line in shown:
            out.print(f"  {line}", markup=False)
        if summary.rejected > len(shown):
            out.print(f"  +{summary.rejected - len(shown):,} more in {summary.rejects}")


def drift_line(result: Any) -> str:
    from rich.markup import escape

    from mlpipe.drift import verdict

    line = escape(verdict(result.summary()))
    return f"[red]{line}[/]" if result.drifted else line


@contextlib.contextmanager
def row_progress(out: Console, total: int | None, enabled: bool) -> Iterator[Any]:
    """A rich progress bar over rows on a terminal; nothing in a pipe or with --quiet."""
    if not (enabled and out.is_terminal):
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=out,
        transient=True,
    ) as progress:
        task = progress.add_task("rows", total=total)
        yield lambda rows: progress.advance(task, rows)


def backfill_table(statuses: list[Any], title: str) -> None:
    """One row per partition: what the backfill did, how each run ended, its rows and drift;
    then each partition's flow run and message, a line each (80 columns hold no more)."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("partition", "action", "state", "rows"):
        table.add_column(column, no_wrap=True)
    table.add_column("drift", overflow="fold")
    for s in statuses:
        table.add_row(
            s.partition,
            s.action,
            s.state or "-",
            "-" if s.rows is None else f"{s.rows:,}",
            s.drift or "-",
            style="red" if s.drift and s.drift.startswith("DRIFT") else None,
        )
    out = console()
    out.print(table)
    for s in statuses:
        said = [f"flow run {s.flow_run_name}"] if s.flow_run_name else []
        said += [s.message] if s.message else []
        if said:
            out.print(f"{s.partition}: {'; '.join(said)}", markup=False)
