"""``mlpipe score``: batch scoring from files, folders or databases into Parquet or a table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mlpipe.cli import render
from mlpipe.cli.common import Verbose, settings, user_errors


@user_errors
def score(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model folder."
        ),
    ],
    input: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="a CSV or Parquet file or folder, local or s3://BUCKET/KEY-or-PREFIX/; or a "
            "database: postgresql://USER@HOST/DB, sqlite:///FILE, env:VARIABLE or "
            "secret:PREFECT_SECRET (with --table or --query).",
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="the Parquet file to write (local or s3://BUCKET/KEY.parquet), or a database "
            "(with --output-table).",
        ),
    ],
    table: Annotated[str | None, typer.Option(help="the input table (database input).")] = None,
    query: Annotated[
        str | None,
        typer.Option(help="the input query, with :name parameters (database input)."),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE for the query's :KEY (repeat).")
    ] = None,
    output_table: Annotated[
        str | None, typer.Option(help="the table to write (database output).")
    ] = None,
    partition: Annotated[
        str | None,
        typer.Option(
            help="KEY=VALUE: the output partition a rerun replaces (column KEY); also bound as "
            ":KEY in --query. Default: the whole table."
        ),
    ] = None,
    id_column: Annotated[
        list[str] | None,
        typer.Option(
            "--id-column", help="column(s) copied to the output (repeat); default: row number."
        ),
    ] = None,
    max_rejects: Annotated[
        int,
        typer.Option(help="stop (writing nothing) past this many bad rows; -1: no limit."),
    ] = 1000,
    onnx: Annotated[
        bool, typer.Option("--onnx/--no-onnx", help="use the ONNX fast path when it matches.")
    ] = True,
    workers: Annotated[int, typer.Option(help="batches predicted at once; 0: one per core.")] = 0,
    drift_report: Annotated[
        str | None,
        typer.Option(
            help="write the drift report (HTML) here (a file or s3://...); needs a model with a "
            "profile."
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option("--allow-pickle", help="load pickled models (runs their code: trust them)."),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar.")] = False,
    verbose: Verbose = False,
) -> None:
    """Score a file, folder, table or query into Parquet or a table in bounded memory; bad rows
    to rejects; the inputs' drift from the training data."""
    from mlpipe import drift
    from mlpipe.batch import files, locations
    from mlpipe.batch import score as scoring
    from mlpipe.batch.locations import resolve_ends
    from mlpipe.cli import PROCESS_STARTED
    from mlpipe.drift_report import html_report
    from mlpipe.predictor import open_model

    out = render.console()
    environment = settings()
    source, target = resolve_ends(input, output, table, query, param or (), output_table, partition)
    loaded = open_model(model, environment.tracking_uri, allow_pickle=allow_pickle, fast=onnx)
    total = files.count_rows(source) if isinstance(source, Path) else None
    monitor = drift.Counts(loaded.profile) if loaded.profile else None
    with render.row_progress(out, total, enabled=not quiet) as advance:
        summary = scoring.score(
            loaded,
            source,
            target,
            id_columns=id_column or (),
            max_rejects=None if max_rejects < 0 else max_rejects,
            on_progress=advance,
            workers=workers or None,
            monitor=monitor,
        )
    render.score_summary(summary, out, time.perf_counter() - PROCESS_STARTED)
    if monitor is None:
        out.print("drift: not checked (the model version has no training profile)")
        return
    result = drift.compare(monitor)
    out.print(f"drift: {render.drift_line(result)}")
    if drift_report is not None:
        title = f"Drift of {summary.input} from {summary.model_name} v{summary.model_version}"
        locations.write_text(drift_report, html_report(result, monitor.profile, title))
        out.print(f"drift report {drift_report}")
