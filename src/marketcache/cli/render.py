"""Everything the CLI shows: Rich tables, or one JSON document (progress: cli/progress.py).

With cli/progress.py the only modules that import Rich, and only when something is drawn, so
that `--json`, CSV and shell completion never pay for it. Off a terminal nothing is cut or
wrapped whatever `COLUMNS` says (cron mail and grep get whole lines); at a terminal a table
too wide for the window folds its cells instead of cutting them.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from marketcache.cli.cells import elapsed, field_value, flat, plain, score, short, size
from marketcache.cli.progress import ProgressSink, progress_bar
from marketcache.errors import one_line

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

UNBOUNDED = 1_000_000  # off a terminal: wide enough that no table or line is ever cut


def _console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr): the window's width at a terminal, unbounded off one."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    at_terminal = stream.isatty()
    return Console(
        file=stream,
        width=None if at_terminal else UNBOUNDED,
        highlight=False,
        markup=False,  # cells are data: a path or symbol with `[x]` or `:x:` is shown as is
        emoji=False,
        soft_wrap=False,
    )


def _table(title: str | None, columns: list[str], right: tuple[str, ...] = ()) -> Table:
    """A table whose cells fold rather than end in `…` when the terminal is too narrow."""
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", overflow="fold")
    return table


class Renderer:
    def __init__(
        self,
        *,
        as_json: bool = False,
        quiet: bool = False,
        csv_out: bool = False,
        verbose: bool = False,
    ) -> None:
        self.as_json = as_json
        self.csv_out = csv_out
        self.quiet = quiet
        self.verbose = verbose  # progress as log lines, so no bar to tear them apart
        self._out: Console | None = None

    @property
    def out(self) -> Console:
        """The stdout console, made on first use (JSON and CSV never import Rich)."""
        if self._out is None:
            self._out = _console()
        return self._out

    # ---- plumbing -------------------------------------------------------------------------

    def emit(self, document: Any) -> None:
        sys.stdout.write(json.dumps(plain(document), indent=2, default=str) + "\n")
        sys.stdout.flush()

    def show(self, renderable: Any) -> None:
        if self.quiet:
            return
        if isinstance(renderable, str):  # a message: one line, the terminal wraps it if need be
            sys.stdout.write(renderable + "\n")
            sys.stdout.flush()
            return
        _fit(renderable, self.out)
        self.out.print(renderable)

    def warn(self, message: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"warning: {one_line(message)}\n")

    def csv_rows(self, rows: list[dict[str, Any]]) -> None:
        """Rows as CSV on stdout (lists joined with spaces), a header from the first row."""
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
                )
        sys.stdout.write(buffer.getvalue())

    def error(self, message: str) -> None:
        """One unwrapped line on stderr, whatever the terminal width (cron mail, grep)."""
        sys.stderr.write(f"error: {one_line(message)}\n")
        sys.stderr.flush()

    @contextmanager
    def progress(
        self, total: int, label: str = "populating", unit: str = "bars"
    ) -> Iterator[ProgressSink]:
        """Done / expected, rate and ETA on stderr, only when it is a terminal (and not
        quiet, json or verbose); `total` is the number of jobs."""
        if self.quiet or self.as_json or self.verbose or not sys.stderr.isatty() or total <= 0:
            yield ProgressSink(None, None, total, unit)
            return
        with progress_bar(_console(stderr=True), total, label, unit) as sink:
            yield sink

    # ---- commands -------------------------------------------------------------------------

    def stats(self, stats: dict[str, Any]) -> None:
        if self.as_json:
            self.emit(stats)
            return
        if self.csv_out:
            self.csv_rows([{"what": k, "value": v} for k, v in flat(stats).items()])
            return
        table = _table("marketcache", ["what", "value"])
        table.show_header = False
        backend = stats.get("backend") or {}
        kind = backend.get("backend", "-") if isinstance(backend, dict) else str(backend)
        fmt = backend.get("format") if isinstance(backend, dict) else None
        rows = [
            ("cache", str(stats["cache_dir"])),
            ("backend", f"{kind} ({fmt})" if fmt and fmt != kind else kind),
            ("symbols", str(stats["symbols"])),
            ("timeframes", ", ".join(stats["timeframes"]) or "-"),
            ("files", str(stats["files"])),
            ("rows", f"{stats['rows']:,}"),
            ("on disk", size(stats["bytes_on_disk"])),
            ("compression", f"{stats['compression_ratio'] or '-'}x"),
            ("date span", f"{short(stats['start'])} → {short(stats['end'])}"),
            ("quality mean / min",
             f"{score(stats['quality_mean'])} / {score(stats['quality_min'])}"),
            ("providers", ", ".join(stats["providers"]) or "-"),
        ]  # fmt: skip
        for f in stats.get("followers") or []:
            for s in f.get("series", []):
                lag = "-" if s.get("lag") is None else f"{s['lag']}s"
                rows.append((f"follower {f['id']}", f"{s['symbol']} {s['timeframe']} last bar "
                             f"{s.get('last_bar') or '-'}, lag {lag}, reconnects "
                             f"{s.get('reconnects', 0)}"))  # fmt: skip
        for name, value in rows:
            table.add_row(name, value)
        self.show(table)

    def symbol_info(self, detail: dict[str, Any]) -> None:
        if self.as_json:
            self.emit(detail)
            return
        if self.csv_out:
            self.csv_rows(
                [
                    {"symbol": detail["symbol"], "timeframe": tf,
                     **{k: v for k, v in y.items() if k != "missing_ranges"}}
                    for tf, entry in detail["timeframes"].items()
                    for y in [*entry["years"], *([{"year": "live", **entry["live"]}]
                                                 if entry.get("live") else [])]
                ]
            )  # fmt: skip
            return
        table = _table(
            detail["symbol"],
            ["tf", "year", "rows", "start", "end", "provider", "quality", "gaps", "size"],
            right=("rows", "gaps", "size"),
        )
        for tf, entry in detail["timeframes"].items():
            for y in entry["years"]:
                if "error" in y:
                    table.add_row(tf, str(y["year"]), "-", "-", "-", "-", "corrupt", "-", "-")
                    continue
                table.add_row(
                    tf,
                    str(y["year"]),
                    f"{y['rows']:,}",
                    short(y["start"]),
                    short(y["end"]),
                    ",".join(y["providers"]) or (y["provider"] or "-"),
                    score(y["quality"]),
                    str(y["gaps"] + len(y["missing_ranges"])),  # holes in and around the data
                    size(y["size_bytes"]),
                )
            if live := entry.get("live"):  # bars a follower stored, not folded into a year yet
                table.add_row(tf, "live", f"{live['rows']:,}", short(live["start"]),
                              short(live["end"]), "live tail", "-", "-", "-")  # fmt: skip
            table.add_row(
                tf, "all", f"{entry['rows']:,}", short(entry["start"]), short(entry["end"]),
                "", f"min {score(entry['quality_min'])}", "", size(entry["size_bytes"]),
                end_section=True,
            )  # fmt: skip
        self.show(table)
        actions = detail.get("corporate_actions") or {}
        if actions.get("splits") or actions.get("dividends"):
            acts = _table(
                f"{detail['symbol']} corporate actions",
                ["kind", "date", "value", "source", "first seen"],
            )
            for sp in actions.get("splits", []):
                acts.add_row(
                    "split", sp["date"], f"{sp['ratio']:g}:1", sp["source"], sp["first_seen"]
                )
            for dv in actions.get("dividends", []):
                acts.add_row(
                    "dividend", dv["ex_date"], f"{dv['amount']:g}", dv["source"], dv["first_seen"]
                )
            self.show(acts)

    def listing(self, title: str, rows: list[dict[str, Any]]) -> None:
        if self.as_json:
            self.emit(rows)
            return
        if self.csv_out:
            self.csv_rows(rows)
            return
        if not rows:
            self.show("(empty)")
            return
        columns = [k for k in rows[0] if any(r.get(k) is not None for r in rows)]
        table = _table(title, columns)
        for r in rows:
            cells = []
            for col in columns:
                v = r.get(col)
                if isinstance(v, list):
                    cells.append(", ".join(str(x) for x in v))
                elif col in ("start", "end"):
                    cells.append(short(v))
                elif col == "quality":
                    cells.append(score(v))
                elif isinstance(v, int) and col == "rows":
                    cells.append(f"{v:,}")
                else:
                    cells.append("-" if v is None else str(v))
            table.add_row(*cells)
        self.show(table)

    def cleanup(self, actions: list[Any], *, dry_run: bool) -> None:
        for a in actions:
            if a.action in ("skip-corrupt", "skip-locked"):
                self.error(f"{a.path}: {a.reason}" if a.action == "skip-corrupt" else a.reason)
        if self.as_json:
            self.emit({"dry_run": dry_run, "actions": actions})
            return
        if not actions:
            self.show("nothing to clean up")
            return
        table = _table("would remove" if dry_run else "removed", ["action", "path", "rows", "why"])
        for a in actions:
            rows = str(a.rows_removed) if a.rows_removed else ""
            table.add_row(a.action, a.path, rows, a.reason)
        self.show(table)

    def validation(self, checks: list[Any], threshold: float) -> None:
        said: set[str] = set()
        for c in checks:
            if c.status == "corrupt":
                first = c.problems[0] if c.problems else c.path
                self.error(f"{first}; run `marketcache validate --fix`")
            elif c.status == "locked" and c.problems and c.problems[0] not in said:
                said.add(c.problems[0])  # once per series, not once per year
                self.error(c.problems[0])
            elif c.lost or c.status == "incomplete":
                self.error(f"{c.path}: {c.problems[-1]}")
        if self.as_json:
            self.emit({"min_score": threshold, "files": checks})
            return
        table = _table(
            f"validate (min score {threshold:g})",
            ["symbol", "tf", "year", "rows", "score", "status", "details"],
            right=("rows",),
        )
        for c in checks:
            details = "; ".join(c.problems + c.repairs)
            table.add_row(
                c.symbol, c.timeframe, str(c.year), f"{c.rows:,}", score(c.score), c.status,
                details or "-",
            )  # fmt: skip
        self.show(table)

    def restatements(self, report: Any) -> None:
        for y in report.years:
            if y.error:
                self.error(f"{y.symbol} {y.timeframe} {y.year}: {y.error}")
        if self.as_json:
            self.emit(report.as_json())
            return
        table = _table(
            "validate --against-source",
            ["symbol", "tf", "year", "provider", "compared", "restated", "volume", "missing",
             "extra", "max diff", "status"],
        )  # fmt: skip
        for y in report.years:
            table.add_row(
                y.symbol, y.timeframe, str(y.year), y.provider or "-", f"{y.compared:,}",
                str(y.restated), str(y.volume), str(y.missing), str(y.extra),
                f"{y.max_rel_diff:.2e}", y.status,
            )  # fmt: skip
        self.show(table)

    def stale(self, stale: list[Any], checked: int, *, max_age: str | None = None) -> None:
        """Series behind the calendar (with --max-age: older than that)."""
        if self.as_json:
            self.emit({"checked": checked, "max_age": max_age,
                       "stale": [f.as_json() for f in stale]})  # fmt: skip
            return
        for f in stale:
            since = f"due since {f.due_since}" if f.due_since else "no bars stored"
            self.error(f"{f.symbol} {f.timeframe} is stale: newest bar {f.last}, "
                       f"{f.behind} bars behind, {since}")  # fmt: skip
        self.show(f"{len(stale)} of {checked} series stale")

    def fundamentals(self, reports: list[dict[str, Any]], exit_code: int = 0) -> None:
        """Per symbol a table of fields (numbers and dates as people read them), then which
        snapshots were used; `--json`: the envelope of every command around the reports."""
        if self.as_json:
            self.emit({"ok": exit_code == 0, "exit_code": exit_code, "results": reports})
            return
        for report in reports:
            table = _table(f"{report['symbol']} fundamentals", ["field", "value", "provider"])
            for name, cell in report["fields"].items():
                table.add_row(name, field_value(name, cell["value"]), cell["provider"])
            self.show(table)
            used = ", ".join(
                f"{s['provider']} ({'reused' if s['reused'] else 'fetched'} {s['fetched_at']})"
                for s in report["snapshots"]
            )
            self.show(f"{report['symbol']} snapshots: {used or '-'}")

    def copy_report(self, report: Any) -> None:
        for y in report.years:
            if y.status == "failed":
                self.error(f"{y.symbol} {y.timeframe} {y.year}: {y.reason}")
        if self.as_json:
            self.emit(report.as_json())
            return
        summary = report.as_json()["summary"]
        self.show(
            f"copied {summary['copied']} years ({summary['rows']:,} rows), skipped"
            f" {summary['skipped']} already there, failed {summary['failed']}:"
            f" {report.source} → {report.destination} ({report.format})"
        )

    def interrupted(self, report: Any, jobs: int) -> None:
        """One line on stderr (even under -q) and, with --json, the partial report."""
        signal_name = "SIGTERM" if report.interrupted == 143 else "SIGINT"
        done = sum(r.status != "interrupted" for r in report.results)
        sys.stderr.write(
            f"interrupted ({signal_name}): {done} of {jobs} jobs finished; everything committed"
            " is kept — run the same command again to continue\n"
        )
        if self.as_json:
            self.emit(report.as_json())

    def populate_report(self, report: Any) -> None:
        for r in report.results:
            for e in r.errors:
                self.error(f"{r.symbol} {r.timeframe}: {e}")
        for message in report.unreachable.values():
            self.error(f"{message}")
        for message in report.warnings:
            self.warn(message)
        if self.as_json:
            self.emit(report.as_json())
            return
        if report.dry_run:
            self.show(_fetch_plan(report))
            return
        table = _table(
            "populate",
            ["symbol", "tf", "status", "providers", "added", "ranges", "gaps", "requests",
             "quality"],
            right=("added", "ranges", "gaps", "requests"),
        )  # fmt: skip
        for r in report.results:
            table.add_row(
                r.symbol, r.timeframe, r.status, ",".join(r.providers) or "-",
                f"{r.rows_added:,}", str(len(r.ranges_fetched)), str(len(r.gaps_left)),
                str(r.requests), score(r.quality),
            )  # fmt: skip
        results = report.results
        failed = sum(r.status in ("failed", "partial", "locked") for r in results)
        table.add_section()
        table.add_row(
            f"{len(results)} jobs", "", f"{failed} failed" if failed else "all ok", "",
            f"{sum(r.rows_added for r in results):,}",
            str(sum(len(r.ranges_fetched) for r in results)),
            str(sum(len(r.gaps_left) for r in results)),
            str(sum(r.requests for r in results)), "",
        )  # fmt: skip
        table.caption = f"elapsed {elapsed(report.started_at, report.finished_at)}"
        self.show(table)


def _fit(table: Any, console: Console) -> None:
    """A table wider than the terminal drops its cell padding before Rich folds any cell."""
    from rich.measure import Measurement
    from rich.table import Table

    if isinstance(table, Table):
        natural = Measurement.get(console, console.options.update(width=UNBOUNDED), table)
        if natural.maximum > console.width:
            table.padding = (0, 0)


def _fetch_plan(report: Any) -> Table:
    """The dry run's plan: each range it would fetch, with the provider asked first and the
    failover behind it; ranges beyond every provider's history window; jobs with nothing to do."""
    table = _table(
        "dry run: fetch plan", ["symbol", "tf", "from", "to", "provider", "failover", "status"]
    )
    ranges = 0
    for r in report.results:
        failover = ", ".join(r.providers[1:]) or "-"
        for span in r.ranges_fetched:
            ranges += 1
            first = span.get("provider") or (r.providers[0] if r.providers else "-")
            table.add_row(
                r.symbol, r.timeframe, short(span.get("start")), short(span.get("end")),
                first, failover, r.status,
            )  # fmt: skip
        for gap in r.gaps_left:
            table.add_row(
                r.symbol, r.timeframe, short(gap.get("start")), short(gap.get("end")), "-",
                "-", gap.get("reason") or "not reachable",
            )  # fmt: skip
        if not r.ranges_fetched and not r.gaps_left:
            status = "failed" if r.errors else "nothing to fetch"
            table.add_row(r.symbol, r.timeframe, "-", "-", "-", "-", status)
    table.add_section()
    table.add_row(f"{len(report.results)} jobs", "", "", "", f"{ranges} ranges", "", "")
    table.caption = "nothing was fetched or written"
    return table
