"""The file backend's sweeps: what interrupted writes left (`leftovers`, each series folder
under its series lock, interrupted commits settled first) and quarantined copies past their
age (`purge_quarantine`). The commit protocol itself is in `backend.py`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from marketcache.core.symbols import decode_symbol
from marketcache.core.timeframes import TIMEFRAMES
from marketcache.storage.atomic import held_by_a_writer
from marketcache.storage.backend import Key, StorageBackend
from marketcache.storage.layout import (
    DATA_SUFFIXES,
    LOCK_NAME,
    QUARANTINE_MARK,
    TEMP_MARK,
    CacheLayout,
    year_file,
)
from marketcache.storage.lock import DEFAULT_WAIT


class FileSweeps(StorageBackend):
    """The sweeps of a file cache at `root` (see the module docstring)."""

    root: Path
    layout: CacheLayout

    def leftovers(self, *, dry_run: bool, wait: float = DEFAULT_WAIT) -> list[tuple[str, str]]:
        """What interrupted writes left, removed (or with dry_run only listed).

        A series folder is cleaned holding its series lock (waiting at most `wait`): a live
        commit holds it from its pending record to its last rename, so no part of one is ever
        taken for a leftover, and interrupted commits are settled first. Elsewhere (a symbol's
        documents) only temp files that no live writer holds go. A dry run takes no lock and
        writes nothing: it lists what it sees."""
        found: list[tuple[str, str]] = []
        gone: set[Path] = set()  # what this pass removed (or, dry, would remove)
        if not self.root.is_dir():
            return found
        for dirpath, _dirnames, _filenames in os.walk(self.root, topdown=False):
            here = Path(dirpath)
            if here == self.layout.index_dir or self.layout.index_dir in here.parents:
                continue
            series = self._series_folder(here)
            if series is None or dry_run:
                found += self._clean(here, None, gone, dry_run=dry_run)
                continue
            with self.lock(*series, wait=wait):
                found += self._clean(here, series, gone, dry_run=False)
        return found

    def _series_folder(self, here: Path) -> tuple[str, str] | None:
        """(symbol, timeframe) when `here` is a series folder ROOT/SYMBOL/TF."""
        if here.parent.parent != self.root or here.name not in TIMEFRAMES:
            return None
        symbol = decode_symbol(here.parent.name)
        return (symbol, here.name) if symbol is not None else None

    def _clean(
        self, here: Path, locked: tuple[str, str] | None, gone: set[Path], *, dry_run: bool
    ) -> list[tuple[str, str]]:
        """One folder's leftovers (added to `gone`); `locked`: the series whose lock the
        caller holds."""
        found: list[tuple[str, str]] = []
        if locked is not None:
            for year in self.layout.years(*locked, ("pending",)):
                self.recover(Key(*locked, year))
        for path in sorted(here.iterdir()) if here.is_dir() else []:
            if not path.is_file():
                continue
            why = _leftover_reason(path)
            if not why:
                continue
            live = TEMP_MARK in path.name and locked is None and not dry_run
            if live and held_by_a_writer(path):
                continue  # a live write of a document
            if why.startswith("pending") and locked is None and not dry_run:
                continue  # settled only under the series lock
            found.append((str(path), why))
            if not dry_run:
                path.unlink(missing_ok=True)
        if here == self.root:
            return found
        gone.update(Path(p) for p, _ in found)
        if here.is_dir() and not [
            p for p in here.iterdir() if p.name != LOCK_NAME and p not in gone
        ]:
            found.append((str(here), "empty folder"))
            gone.add(here)
            if not dry_run:
                with contextlib.suppress(OSError):  # not empty any more: a writer came
                    (here / LOCK_NAME).unlink(missing_ok=True)
                    here.rmdir()
        return found

    def purge_quarantine(self, days: float, *, dry_run: bool) -> list[tuple[str, str]]:
        """Copies set aside (`YEAR.<suffix>.corrupt-…`, `YEAR.metadata.json.corrupt-…`, beside
        the year) more than `days` days ago; no writer touches them, so no lock is needed."""
        import time

        found: list[tuple[str, str]] = []
        if not self.root.is_dir():
            return found
        oldest = time.time() - days * 86400
        for symbol in self.layout.symbols():
            for tf in self.layout.timeframes(symbol):
                folder = self.layout.timeframe_dir(symbol, tf)
                for path in sorted(folder.glob(f"*{QUARANTINE_MARK}*")):
                    try:
                        old = path.is_file() and path.stat().st_mtime < oldest
                    except FileNotFoundError:
                        continue
                    if old:
                        found.append((str(path), f"quarantined copy older than {days:g} days"))
                        if not dry_run:
                            path.unlink(missing_ok=True)
        return found


def _leftover_reason(path: Path) -> str:
    if TEMP_MARK in path.name:
        return "temporary file of an interrupted write"
    parsed = year_file(path.name)
    if parsed is None:
        return ""
    year, kind = parsed
    if kind == "pending":
        return "pending metadata of an interrupted write"
    records = path.with_name(f"{year}.metadata.json")
    if kind == "data":
        return "" if records.exists() else "data without metadata"
    data = [path.with_name(f"{year}{s}") for s in DATA_SUFFIXES]
    return "" if any(d.exists() for d in data) else "metadata without data"
