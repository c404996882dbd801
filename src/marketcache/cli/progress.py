"""Progress at a terminal: a Rich bar over the bars the fetch plans expect, or log lines.

Drawing is cosmetic: it never decides a run. Rich keeps a task's total as None until we know
one, so nothing here formats a total that may be None; should Rich ever fail to draw, the bar
is dropped and the run goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


class ProgressSink:
    """What the library's progress callback talks to: a Rich bar over bars, log lines, or
    nothing. The total is the bars the fetch plans expect: jobs not yet planned are
    estimated from the ones that are, so the ETA settles as the run goes on. With another
    `unit` (validate's years) the bar counts jobs instead.

    Drawing is cosmetic: should the bar ever fail, it is dropped and the run goes on."""

    def __init__(self, progress: Progress | None, task: Any, jobs: int = 0, unit: str = "bars"):
        self._progress = progress
        self._task = task
        self._log = logging.getLogger("marketcache.progress")
        self._lock = threading.Lock()
        self.unit = unit
        self.started = time.monotonic()
        self.jobs, self.jobs_done = jobs, 0
        self.planned, self.planned_jobs = 0, 0
        self.bars = 0
        self.requests = 0
        self._open: dict[str, list[int]] = {}  # job -> [bars planned, bars done]

    def _refresh(self, current: str) -> None:
        if self._progress is None:
            return
        if self.unit == "bars":
            unplanned = max(self.jobs - self.planned_jobs, 0)
            per_job = self.planned / self.planned_jobs if self.planned_jobs else 0
            total = max(self.planned + per_job * unplanned, self.bars, 1)
            done = float(self.bars)
            rate = self.requests / max(time.monotonic() - self.started, 1e-6)
            what = f"{self.jobs_done}/{self.jobs} jobs · {rate:,.1f} req/s · {current}"
        else:
            total, done, what = max(self.jobs, 1), float(self.jobs_done), current
        try:
            self._progress.update(self._task, total=total, completed=done, description=what)
        except Exception as exc:  # a Rich we did not foresee: lose the bar, not the run
            self._log.warning("progress display stopped: %s: %s", type(exc).__name__, exc)
            self._progress = None

    def plan(self, current: str, bars: int) -> None:
        """A job's fetch plan is known: `bars` expected bars to fetch."""
        with self._lock:
            self.planned += bars
            self.planned_jobs += 1
            self._open[current] = [bars, 0]
            self._refresh(current)
        self._log.info("%s: %s bars to fetch", current, f"{bars:,}")

    def note(self, current: str, bars: int = 0, requests: int = 0) -> None:
        """Work inside the current job: a range fetched and committed."""
        with self._lock:
            self.bars += bars
            self.requests += requests
            if current in self._open:
                self._open[current][1] += bars
            self._refresh(current)
        self._log.info("%s: +%s bars (%d requests)", current, f"{bars:,}", requests)

    def advance(self, current: str = "") -> None:
        """One symbol × timeframe done: bars it planned but did not get count as done."""
        with self._lock:
            self.jobs_done += 1
            planned, done = self._open.pop(current, [0, 0])
            self.bars += max(planned - done, 0)
            self._refresh(current)
        self._log.info("%s: done (%d/%d jobs)", current, self.jobs_done, self.jobs)


def _progress_columns(label: str, unit: str, width: int) -> list[Any]:
    """label, bar, `done/expected UNIT · jobs · current · rate`, ETA, elapsed — sized so the
    line fits `width` (the middle part is shortened, never the counts before it). An expected
    total not known yet (Rich keeps None) shows as `?`."""
    from rich.progress import (
        BarColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    bar = 40 if width >= 140 else max(10, width // 8)
    room = max(width - len(label) - bar - 2 * len("0:00:00") - 5, 12)

    class StatusColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            total = "?" if task.total is None else f"{task.total:,.0f}"
            text = f"{task.completed or 0:,.0f}/{total} {unit}"
            if task.description:
                text += f" · {task.description}"
            return Text(text if len(text) <= room else text[: room - 1] + "…")

    return [
        TextColumn(label),
        BarColumn(bar_width=bar),
        StatusColumn(),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    ]


@contextmanager
def progress_bar(console: Console, jobs: int, label: str, unit: str) -> Iterator[ProgressSink]:
    """A transient Rich bar on `console` for `jobs` jobs, fed through the sink it yields."""
    from rich.progress import Progress

    with Progress(
        *_progress_columns(label, unit, console.width), console=console, transient=True
    ) as bar:
        task = bar.add_task("", total=None)
        yield ProgressSink(bar, task, jobs, unit)
