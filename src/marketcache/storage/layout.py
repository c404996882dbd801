"""Where every file of the cache lives. No input may resolve outside the cache root."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from marketcache.core.symbols import decode_symbol, encode_symbol
from marketcache.core.timeframes import TIMEFRAMES
from marketcache.errors import UsageError
from marketcache.storage.codecs import SUFFIXES

INDEX_DIR = "_metadata"
DATA_SUFFIXES = SUFFIXES  # every codec's year-file suffix
META_SUFFIX = ".metadata.json"
PENDING_SUFFIX = ".pending"
TEMP_MARK = ".tmp-"
LOCK_NAME = ".lock"
QUARANTINE_MARK = ".corrupt-"


def quarantine_mark(now: datetime | None = None) -> str:
    """`.corrupt-<UTC time to the microsecond>Z-<random>`: what a copy set aside is named with
    (after the name it had). Unique, so that no copy ever overwrites another; a year's data and
    record set aside together share one mark."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{QUARANTINE_MARK}{stamp}-{secrets.token_hex(3)}"


def year_file(name: str) -> tuple[int, str] | None:
    """(year, "data" | "meta" | "pending") for a year file's name, else None — the one parser
    of year-file names."""
    for suffix, kind in (
        (META_SUFFIX + PENDING_SUFFIX, "pending"), (META_SUFFIX, "meta"),
        *((s, "data") for s in DATA_SUFFIXES),
    ):  # fmt: skip
        stem = name[: -len(suffix)] if name.endswith(suffix) else ""
        if len(stem) == 4 and stem.isdigit():
            return int(stem), kind
    return None


class CacheLayout:
    """Maps (symbol, timeframe, year) to paths under one root."""

    def __init__(self, root: str | os.PathLike[str], suffix: str = ".csv.gz") -> None:
        self.root = Path(root).expanduser().absolute()
        self.suffix = suffix

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        root = self.root.resolve()
        if resolved != root and root not in resolved.parents:
            raise UsageError(f"path {path} would leave the cache root {root}")
        return path

    def symbol_dir(self, symbol: str) -> Path:
        return self._inside(self.root / encode_symbol(symbol))

    def timeframe_dir(self, symbol: str, timeframe: str) -> Path:
        if timeframe not in TIMEFRAMES:
            raise UsageError(f"unknown timeframe '{timeframe}'")
        return self._inside(self.symbol_dir(symbol) / timeframe)

    def data_path(self, symbol: str, timeframe: str, year: int) -> Path:
        return self.timeframe_dir(symbol, timeframe) / f"{int(year)}{self.suffix}"

    def meta_path(self, symbol: str, timeframe: str, year: int) -> Path:
        return self.timeframe_dir(symbol, timeframe) / f"{int(year)}{META_SUFFIX}"

    def pending_path(self, symbol: str, timeframe: str, year: int) -> Path:
        return self.timeframe_dir(symbol, timeframe) / f"{int(year)}{META_SUFFIX}{PENDING_SUFFIX}"

    def lock_path(self, symbol: str, timeframe: str) -> Path:
        """The series lock lives in the index folder, so that taking it (a dry run does not,
        a run for a symbol no provider knows does) never creates the symbol's folder."""
        return self.index_dir / "locks" / encode_symbol(symbol) / f"{timeframe}{LOCK_NAME}"

    @property
    def index_dir(self) -> Path:
        return self.root / INDEX_DIR

    def symbols(self) -> list[str]:
        """Symbols that have a folder here (decoded), sorted."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name != INDEX_DIR:
                symbol = decode_symbol(entry.name)
                if symbol is not None:
                    found.append(symbol)
        return sorted(found)

    def timeframes(self, symbol: str) -> list[str]:
        base = self.symbol_dir(symbol)
        if not base.is_dir():
            return []
        names = {p.name for p in base.iterdir() if p.is_dir()}
        return [tf for tf in TIMEFRAMES if tf in names]

    def years(self, symbol: str, timeframe: str, kinds: tuple[str, ...] = ("meta",)) -> list[int]:
        """Years with a file of these kinds (by default the record: committed years)."""
        base = self.timeframe_dir(symbol, timeframe)
        if not base.is_dir():
            return []
        found = set()
        for p in base.iterdir():
            parsed = year_file(p.name)
            if parsed is not None and parsed[1] in kinds:
                found.add(parsed[0])
        return sorted(found)
