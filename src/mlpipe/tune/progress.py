"""What a person sees while a search runs: a rich progress bar on a terminal, plain log lines
otherwise, nothing with --quiet. The flow reports to an ``Observer``; it never prints itself.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

from mlpipe.trial import TrialResult


class Observer(Protocol):
    """Receives progress from a running search."""

    def backends(self, text: str) -> None: ...
    def start(self, total: int, reused: int) -> None: ...
    def trial_done(self, result: TrialResult, best: TrialResult | None) -> None: ...
    def finish(self) -> None: ...


class NullObserver:
    """Shows nothing (--quiet, deployments)."""

    def backends(self, text: str) -> None:
        pass

    def start(self, total: int, reused: int) -> None:
        pass

    def trial_done(self, result: TrialResult, best: TrialResult | None) -> None:
        pass

    def finish(self) -> None:
        pass


def _best_text(best: TrialResult | None) -> str:
    return "-" if best is None else f"{best.mean_score:.4g}"


class PlainObserver:
    """One line per finished trial, for logs and pipes."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.done = self.failed = self.total = 0

    def backends(self, text: str) -> None:
        self._write(text)

    def start(self, total: int, reused: int) -> None:
        self.total = total
        self.done = reused
        note = f" ({reused} reused from an earlier run)" if reused else ""
        self._write(f"tuning {total} trials{note}")

    def trial_done(self, result: TrialResult, best: TrialResult | None) -> None:
        self.done += 1
        self.failed += result.status != "completed"
        score = (
            f"cv_{result.scoring}={result.mean_score:.4g}"
            if result.status == "completed"
            else f"FAILED {result.error}"
        )
        self._write(
            f"trial {self.done}/{self.total} {result.trial_id} {score} best={_best_text(best)}"
        )

    def finish(self) -> None:
        self._write(f"trials done: {self.done - self.failed} ok, {self.failed} failed")

    def _write(self, line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", file=self.stream, flush=True)


class RichObserver:
    """A live progress bar: trials done/total, failures, best so far, ETA."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.progress: Any = None
        self.failed = 0

    def backends(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/]", markup=True, highlight=False)

    def start(self, total: int, reused: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]tuning"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}  best cv mse {task.fields[best]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "tune", total=total, completed=reused, failed=0, best="-"
        )
        if reused:
            self.console.print(
                f"reused {reused} finished trials from an earlier run (--fresh reruns them)"
            )

    def trial_done(self, result: TrialResult, best: TrialResult | None) -> None:
        if result.status != "completed":
            self.failed += 1
            self.console.print(f"[red]trial {result.trial_id} failed:[/] {result.error}")
        self.progress.update(self.task, advance=1, failed=self.failed, best=_best_text(best))

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
