"""UnifiedCache: the one way bars get into and out of the cache folder.

Each (symbol, timeframe, UTC year) is a `YEAR.csv.gz` plus its `YEAR.metadata.json` commit
record. A commit goes: pending metadata → data (atomic rename, or an appended gzip member) →
metadata → drop pending. Whatever instant a crash hits, `_recover` turns what is on disk back
into the old or the new state: a pending record that matches the data is promoted, any other
is dropped, and bytes past the committed size are a torn tail that readers ignore.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marketcache.actions import (
    ADJUST_MODES,
    CorporateActions,
    Dividend,
    Split,
    adj_close,
    adjust,
    merge_actions,
)
from marketcache.calendars import calendar_for, expected_bars
from marketcache.config import Settings, load_settings
from marketcache.errors import CorruptFile, StorageError, UsageError
from marketcache.models import parse_date
from marketcache.storage import csvgz
from marketcache.storage.atomic import append_durable, write_atomic
from marketcache.storage.layout import (
    DATA_SUFFIX,
    LOCK_NAME,
    META_SUFFIX,
    QUARANTINE_MARK,
    TEMP_MARK,
    CacheLayout,
)
from marketcache.storage.lock import hold
from marketcache.storage.metadata import (
    SCHEMA_VERSION,
    read_json,
    read_metadata,
    write_json,
    write_metadata,
)
from marketcache.symbols import AssetClass, classify, normalize_symbol
from marketcache.timeframes import parse_timeframe
from marketcache.validate import (
    OHLCVValidator,
    TailContext,
    ValidationCounts,
    ValidationResult,
    score_counts,
    sound_rows,
    unfilled_bars,
)

MAX_MEMBERS = 64  # compact a year file once this many appended gzip members pile up
PENDING_SUFFIX = ".pending"
ACTIONS_FILE = "corporate_actions.json"
ACTIONS_LOCK = ".actions.lock"
SAME = 1e-9  # relative difference below which a re-fetched value is the stored one


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(ts: Any) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class YearWrite:
    """What one put did to one year file."""

    year: int
    mode: str  # new | append | rewrite | unchanged
    rows_before: int
    rows_after: int
    rows_added: int
    rows_updated: int
    quality: float


@dataclass
class PutResult:
    symbol: str
    timeframe: str
    years: list[YearWrite] = field(default_factory=list)

    @property
    def rows_added(self) -> int:
        return sum(y.rows_added for y in self.years)

    @property
    def rows_updated(self) -> int:
        return sum(y.rows_updated for y in self.years)


@dataclass
class CleanupAction:
    path: str
    action: str  # delete-year | trim-year | remove-leftover
    symbol: str = ""
    timeframe: str = ""
    year: int | None = None
    rows_removed: int = 0
    reason: str = ""


@dataclass
class YearCheck:
    """validate's verdict on one year file."""

    symbol: str
    timeframe: str
    year: int
    path: str
    status: str  # ok | low-score | corrupt | fixed
    score: float | None = None
    rows: int = 0
    lost: int = 0  # committed rows a repair could not recover (populate fetches them again)
    problems: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SymbolProfile:
    symbol: str
    asset_class: AssetClass
    calendar: str


class UnifiedCache:
    """Read and write OHLCV bars under `root` (see the module docstring for the commit order)."""

    def __init__(
        self,
        root: str | os.PathLike[str] = "data-cache",
        *,
        settings: Settings | None = None,
        lock_wait: float | None = None,
    ) -> None:
        self.layout = CacheLayout(root)
        self.root = self.layout.root
        self.settings = settings if settings is not None else load_settings(None)
        self.lock_wait = lock_wait if lock_wait is not None else self.settings.options.lock_wait

    # ---- symbols -------------------------------------------------------------------------

    def profile(self, symbol: str) -> SymbolProfile:
        sym = normalize_symbol(symbol)
        conf = self.settings.symbol(sym)
        asset = classify(sym, conf.type.value if conf.type else None)
        return SymbolProfile(sym, asset, calendar_for(sym, asset, conf.calendar))

    def validator(self, symbol: str, timeframe: str) -> OHLCVValidator:
        prof = self.profile(symbol)
        splits = {}
        if prof.asset_class is not AssetClass.CRYPTO:
            splits = {s.date: s.ratio for s in self.get_actions(prof.symbol).splits}
        return OHLCVValidator(
            parse_timeframe(timeframe), prof.calendar, prof.asset_class, splits=splits
        )

    def adjusts(self, symbol: str, timeframe: str) -> bool:
        """Whether this series carries an `adj_close` (daily or longer, not crypto)."""
        tf = parse_timeframe(timeframe)
        return not tf.is_intraday and self.profile(symbol).asset_class is not AssetClass.CRYPTO

    # ---- corporate actions ---------------------------------------------------------------

    def _actions_path(self, sym: str) -> Path:
        return self.layout.symbol_dir(sym) / ACTIONS_FILE

    def get_actions(self, symbol: str) -> CorporateActions:
        """Every split and dividend known for `symbol` (empty when none was ever seen)."""
        sym = normalize_symbol(symbol)
        path = self._actions_path(sym)
        data = read_json(path, None)
        if data is None:
            if path.exists():
                raise CorruptFile(path, "corporate actions are not valid JSON")
            return CorporateActions(sym)
        try:
            return CorporateActions.from_json(data)
        except (TypeError, ValueError, AttributeError) as exc:
            raise CorruptFile(path, f"corporate actions are malformed ({exc})") from None

    def record_actions(
        self,
        symbol: str,
        splits: list[Split],
        dividends: list[Dividend],
        *,
        source: str,
        checked_through: str | None = None,
    ) -> bool:
        """Merge newly seen actions into SYMBOL/corporate_actions.json (written atomically);
        True when a price-adjusting fact changed, so stored `adj_close` must be redone."""
        sym = normalize_symbol(symbol)
        path = self._actions_path(sym)
        with hold(self.layout.symbol_dir(sym) / ACTIONS_LOCK, wait=self.lock_wait, what=sym):
            known = self.get_actions(sym)
            merged, changed = merge_actions(
                known, splits, dividends, source=source, checked_through=checked_through,
                now=_now(),
            )  # fmt: skip
            if merged.as_json() != known.as_json():
                write_metadata(path, merged.as_json())
        return changed

    def readjust(self, symbol: str, timeframe: str) -> list[int]:
        """Recompute `adj_close` of every stored year from the closes and the known actions;
        rewrite (crash-safe) the years whose values changed. Returns those years."""
        sym = normalize_symbol(symbol)
        tf = parse_timeframe(timeframe).name
        if not self.adjusts(sym, tf):
            return []
        actions = self.get_actions(sym)
        rewritten: list[int] = []
        with self.lock(sym, tf):
            years = self.layout.years(sym, tf)
            frames = [self.read_year(sym, tf, y) for y in years]
            if not frames:
                return []
            series = pd.concat(frames, ignore_index=True)
            if series.empty:
                return []
            fresh = adj_close(series, actions)
            offset = 0
            for year, df in zip(years, frames, strict=True):
                values = fresh[offset : offset + len(df)]
                offset += len(df)
                if df.empty:
                    continue
                if "adj_close" in df.columns and np.allclose(
                    df["adj_close"].to_numpy("float64"), values, rtol=SAME, atol=0.0
                ):
                    continue
                df = df.assign(adj_close=values)
                meta = self.metadata(sym, tf, year)
                self._rewrite(
                    sym, tf, year, meta, None, df, meta.get("data_source", "unknown"),
                    allow_shrink=True, record_source=False,
                )  # fmt: skip
                rewritten.append(year)
            if rewritten:
                self._refresh_index(sym, tf)
        return rewritten

    def lock(self, symbol: str, timeframe: str) -> contextlib.AbstractContextManager[None]:
        """The per symbol/timeframe lock (re-entrant in this process)."""
        sym = normalize_symbol(symbol)
        return hold(
            self.layout.lock_path(sym, timeframe), wait=self.lock_wait, what=f"{sym} {timeframe}"
        )

    # ---- write ---------------------------------------------------------------------------

    def put(
        self,
        df: pd.DataFrame,
        symbol: str,
        timeframe: str,
        provider: str = "unknown",
    ) -> PutResult:
        """Merge `df` into the cache: new values win at equal timestamps, but a missing (NaN or
        absent) new value never erases a stored one; nothing cached is lost. A tz-aware daily
        frame is stored under its local session dates."""
        sym = normalize_symbol(symbol)
        tf = parse_timeframe(timeframe).name
        frame = normalize_frame(df, sessions=not parse_timeframe(tf).is_intraday)
        result = PutResult(sym, tf)
        if frame.empty:
            return result
        years = frame["timestamp"].dt.year.to_numpy()
        with self.lock(sym, tf):
            for year in np.unique(years):
                part = frame[years == year].reset_index(drop=True)
                result.years.append(self._put_year(sym, tf, int(year), part, provider))
            self._refresh_index(sym, tf)
        return result

    def _put_year(
        self, sym: str, tf: str, year: int, part: pd.DataFrame, provider: str
    ) -> YearWrite:
        self._recover(sym, tf, year)
        meta_path = self.layout.meta_path(sym, tf, year)
        meta = read_metadata(meta_path) if meta_path.exists() else None
        if meta is not None:
            part = _drop_unchanged_last_row(meta, part)
            if part.empty:
                rows = int(meta["file_info"]["rows"])
                score = meta["data_quality"]["score"]
                return YearWrite(year, "unchanged", rows, rows, 0, 0, score)
        if meta is not None and self._can_append(sym, tf, year, meta, part):
            return self._append(sym, tf, year, meta, part, provider)
        old = self.read_year(sym, tf, year) if meta is not None else None
        return self._rewrite(sym, tf, year, meta, old, part, provider)

    def _can_append(
        self, sym: str, tf: str, year: int, meta: dict[str, Any], part: pd.DataFrame
    ) -> bool:
        info = meta["file_info"]
        data_path = self.layout.data_path(sym, tf, year)
        try:
            on_disk = data_path.stat().st_size
        except FileNotFoundError:
            return False
        part_columns = set(csvgz.columns_for(part))
        return (
            int(info.get("rows", 0)) > 0
            and part_columns <= set(info["columns"])
            and on_disk >= int(info["size_bytes"])
            and int(info.get("members", 1)) < MAX_MEMBERS
            and pd.Timestamp(meta["end_date"]) < part["timestamp"].iloc[0]
        )

    def _append(
        self,
        sym: str,
        tf: str,
        year: int,
        meta: dict[str, Any],
        part: pd.DataFrame,
        provider: str,
    ) -> YearWrite:
        info = meta["file_info"]
        columns: list[str] = info["columns"]
        part = part.reindex(columns=columns)
        member, raw_len = csvgz.encode(part, columns, header=False)
        data_path = self.layout.data_path(sym, tf, year)
        committed = int(info["size_bytes"])
        sha = _sha256_prefix(data_path, committed)
        sha.update(member)
        dq = meta["data_quality"]
        tail = TailContext(**dq["tail"]) if dq.get("tail") else None
        check = self.validator(sym, tf).validate(part, tail)
        counts = ValidationCounts.from_json(dq.get("counts", {})) + check.counts
        new_meta = self._build_meta(
            sym,
            tf,
            year,
            previous=meta,
            start=meta["start_date"],
            end=part["timestamp"].iloc[-1],
            size=committed + len(member),
            raw_bytes=int(info.get("raw_bytes", 0)) + raw_len,
            rows=int(info["rows"]) + len(part),
            columns=columns,
            sha256=sha.hexdigest(),
            members=int(info.get("members", 1)) + 1,
            counts=counts,
            errors=(dq.get("validation_errors", []) + check.errors)[-20:],
            tail=check.tail,
            provider=provider,
            new_span=(part["timestamp"].iloc[0], part["timestamp"].iloc[-1]),
            last_row=_last_row(part),
        )
        # no pending record: until the metadata names the new size, the member is a torn tail
        append_durable(data_path, member, committed)
        write_metadata(self.layout.meta_path(sym, tf, year), new_meta)
        return YearWrite(
            year, "append", int(info["rows"]), int(info["rows"]) + len(part), len(part), 0,
            new_meta["data_quality"]["score"],
        )  # fmt: skip

    def _rewrite(
        self,
        sym: str,
        tf: str,
        year: int,
        meta: dict[str, Any] | None,
        old: pd.DataFrame | None,
        part: pd.DataFrame,
        provider: str,
        *,
        allow_shrink: bool = False,
        record_source: bool = True,
    ) -> YearWrite:
        rows_before = 0 if old is None else len(old)
        added = updated = 0
        if old is None or old.empty:
            merged = part
            added = len(part)
        else:
            merged = part if allow_shrink else _merge(old, part)
            old_ts = old["timestamp"].to_numpy()
            new_ts = part["timestamp"].to_numpy()
            added = int((~np.isin(new_ts, old_ts)).sum())
            updated = _count_changed(old, part)
            if not allow_shrink and added == 0 and updated == 0 and meta is not None:
                return YearWrite(
                    year, "unchanged", rows_before, rows_before, 0, 0,
                    meta["data_quality"]["score"],
                )  # fmt: skip
        columns = csvgz.columns_for(merged)
        merged = merged.reindex(columns=columns)
        data, raw_len = csvgz.encode(merged, columns, header=True)
        check = self.validator(sym, tf).validate(merged)
        new_meta = self._build_meta(
            sym,
            tf,
            year,
            previous=meta,
            start=merged["timestamp"].iloc[0] if len(merged) else None,
            end=merged["timestamp"].iloc[-1] if len(merged) else None,
            size=len(data),
            raw_bytes=raw_len,
            rows=len(merged),
            columns=columns,
            sha256=hashlib.sha256(data).hexdigest(),
            members=1,
            counts=check.counts,
            errors=check.errors,
            tail=check.tail,
            provider=provider,
            new_span=(part["timestamp"].iloc[0], part["timestamp"].iloc[-1])
            if len(part) and record_source
            else None,
            last_row=_last_row(merged),
        )
        pending = self._write_pending(sym, tf, year, new_meta)
        write_atomic(self.layout.data_path(sym, tf, year), data)
        self._finish_commit(sym, tf, year, new_meta, pending)
        mode = "new" if meta is None else "rewrite"
        return YearWrite(
            year, mode, rows_before, len(merged), added, updated, new_meta["data_quality"]["score"]
        )

    def _build_meta(
        self,
        sym: str,
        tf: str,
        year: int,
        *,
        previous: dict[str, Any] | None,
        start: Any,
        end: Any,
        size: int,
        raw_bytes: int,
        rows: int,
        columns: list[str],
        sha256: str,
        members: int,
        counts: ValidationCounts,
        errors: list[str],
        tail: TailContext | None,
        provider: str,
        new_span: tuple[Any, Any] | None,
        last_row: dict[str, Any] | None,
    ) -> dict[str, Any]:
        prov = self.settings.providers.get(provider)
        coverage = dict((previous or {}).get("coverage") or {})
        coverage.setdefault("missing_ranges", [])
        coverage.setdefault("verified_empty", [])
        counts = self._with_unfilled(sym, tf, counts, coverage["missing_ranges"], start, end)
        score, breakdown = score_counts(counts)
        coverage["calendar"] = self.profile(sym).calendar
        sources = list(coverage.get("sources") or [])
        if new_span is not None:
            calendar, timeframe = coverage["calendar"], parse_timeframe(tf)

            def adjacent(a: str, b: str) -> bool:
                after = pd.Timestamp(a) + pd.Timedelta(1, "ns")
                return after <= pd.Timestamp(b) and not len(
                    expected_bars(calendar, timeframe, after, pd.Timestamp(b))
                )

            sources = _merge_sources(
                sources, provider, _iso(new_span[0]), _iso(new_span[1]), adjacent
            )
        coverage["sources"] = sources
        now = _now()
        return {
            "schema_version": SCHEMA_VERSION,
            "symbol": sym,
            "timeframe": tf,
            "year": year,
            "data_source": provider,
            "created_at": (previous or {}).get("created_at", now),
            "last_updated": now,
            "start_date": _iso(start) if start is not None else None,
            "end_date": _iso(end) if end is not None else None,
            "data_quality": {
                "score": score,
                "breakdown": breakdown,
                "validation_errors": errors,
                "gaps": counts.gap_runs,
                "duplicates": counts.duplicates,
                "missing_bars": counts.missing_bars,
                "counts": asdict(counts),
                "tail": asdict(tail) if tail else None,
            },
            "file_info": {
                "format": "csv.gz",
                "size_bytes": size,
                "raw_bytes": raw_bytes,
                "rows": rows,
                "columns": columns,
                "sha256": sha256,
                "members": members,
                "last_row": last_row,
            },
            "provider_info": {
                "name": provider,
                "reliability": prov.reliability if prov else None,
                "rate_limit": prov.rate_limit.describe() if prov else None,
            },
            "coverage": {
                "calendar": coverage["calendar"],
                "missing_ranges": coverage["missing_ranges"],
                "verified_empty": coverage["verified_empty"],
                "sources": coverage["sources"],
            },
        }

    def _with_unfilled(
        self,
        sym: str,
        tf: str,
        counts: ValidationCounts,
        missing_ranges: list[dict[str, Any]],
        start: Any,
        end: Any,
    ) -> ValidationCounts:
        """`counts` with the expected bars of `missing_ranges` outside [start, end]."""
        first = pd.Timestamp(start) if start is not None else None
        last = pd.Timestamp(end) if end is not None else None
        unfilled = unfilled_bars(
            self.profile(sym).calendar, parse_timeframe(tf), missing_ranges, first, last
        )
        return ValidationCounts(**{**asdict(counts), "unfilled_bars": unfilled})

    def _pending_path(self, sym: str, tf: str, year: int) -> Path:
        meta_path = self.layout.meta_path(sym, tf, year)
        return meta_path.with_name(meta_path.name + PENDING_SUFFIX)

    def _write_pending(self, sym: str, tf: str, year: int, meta: dict[str, Any]) -> Path:
        pending = self._pending_path(sym, tf, year)
        write_metadata(pending, meta)
        return pending

    def _finish_commit(
        self, sym: str, tf: str, year: int, meta: dict[str, Any], pending: Path
    ) -> None:
        write_metadata(self.layout.meta_path(sym, tf, year), meta)
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()

    def _recover(self, sym: str, tf: str, year: int) -> None:
        """Finish or roll back a commit a crash interrupted (caller holds the lock)."""
        pending = self._pending_path(sym, tf, year)
        if not pending.exists():
            return
        try:
            new_meta = read_metadata(pending)
        except CorruptFile:
            pending.unlink()
            return
        data_path = self.layout.data_path(sym, tf, year)
        info = new_meta["file_info"]
        try:
            matches = (
                data_path.stat().st_size >= info["size_bytes"]
                and _sha256_prefix(data_path, info["size_bytes"]).hexdigest() == info["sha256"]
            )
        except FileNotFoundError:
            matches = False
        if matches:
            write_metadata(self.layout.meta_path(sym, tf, year), new_meta)
        pending.unlink()

    def remove_stale_temp_files(self, symbol: str, timeframe: str) -> list[Path]:
        """Delete temp files a killed writer left in this symbol/timeframe folder.

        Every writer holds the folder's lock, so while we hold it any temp file is stale.
        """
        sym = normalize_symbol(symbol)
        base = self.layout.timeframe_dir(sym, timeframe)
        removed: list[Path] = []
        with self.lock(sym, timeframe):
            for path in base.iterdir() if base.is_dir() else []:
                if TEMP_MARK in path.name:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def _recover_if_needed(self, sym: str, tf: str, year: int) -> None:
        if self._pending_path(sym, tf, year).exists():
            with self.lock(sym, tf):
                self._recover(sym, tf, year)

    # ---- read ----------------------------------------------------------------------------

    def metadata(self, symbol: str, timeframe: str, year: int) -> dict[str, Any]:
        sym = normalize_symbol(symbol)
        return read_metadata(self.layout.meta_path(sym, timeframe, year))

    def read_year(self, symbol: str, timeframe: str, year: int) -> pd.DataFrame:
        """One year's rows as committed; CorruptFile if the bytes do not match the metadata."""
        sym = normalize_symbol(symbol)
        self._recover_if_needed(sym, timeframe, year)
        meta = self.metadata(sym, timeframe, year)
        path = self.layout.data_path(sym, timeframe, year)
        return _read_committed(path, meta)

    def verify_year(self, symbol: str, timeframe: str, year: int) -> None:
        """Check a year's committed bytes against its metadata (size, sha256) without parsing;
        CorruptFile names the file when they differ."""
        sym = normalize_symbol(symbol)
        self._recover_if_needed(sym, timeframe, year)
        meta = self.metadata(sym, timeframe, year)
        path = self.layout.data_path(sym, timeframe, year)
        size = int(meta["file_info"]["size_bytes"])
        try:
            on_disk = path.stat().st_size
        except FileNotFoundError:
            raise CorruptFile(path, "data file is missing (metadata exists)") from None
        if on_disk < size:
            raise CorruptFile(path, f"file is truncated: {on_disk} of {size} bytes")
        if _sha256_prefix(path, size).hexdigest() != meta["file_info"]["sha256"]:
            raise CorruptFile(
                path, "sha256 does not match metadata (the file changed or is damaged)"
            )

    def get(
        self,
        symbol: str,
        timeframe: str,
        start: Any = None,
        end: Any = None,
        *,
        adjust: str = "none",
    ) -> pd.DataFrame:
        """Bars in [start, end) across years, sorted, with a `timestamp` column.

        `adjust`: "none" as stored (as traded); "splits" divides prices and multiplies volume
        by the splits after each bar; "all" also applies dividends (back-adjusted total return).
        """
        sym = normalize_symbol(symbol)
        tf = parse_timeframe(timeframe).name
        if adjust not in ADJUST_MODES:
            raise UsageError(f"adjust={adjust!r}: use one of {', '.join(ADJUST_MODES)}")
        lo = parse_date(start, option="start") if start is not None else None
        hi = parse_date(end, option="end") if end is not None else None
        if lo is not None and hi is not None and lo >= hi:
            raise UsageError(f"start {lo} is not before end {hi}")
        frames = []
        for year in self.layout.years(sym, tf):
            if (lo is not None and year < lo.year) or (hi is not None and year > hi.year):
                continue
            frames.append(self.read_year(sym, tf, year))
        if not frames:
            return csvgz.empty_frame()
        df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        if lo is not None or hi is not None:
            ts = df["timestamp"]
            mask = np.ones(len(df), dtype=bool)
            if lo is not None:
                mask &= (ts >= lo).to_numpy()
            if hi is not None:
                mask &= (ts < hi).to_numpy()
            df = df[mask].reset_index(drop=True)
        if adjust != "none":
            df = _adjusted(df, self.get_actions(sym), adjust)
        return df

    def list_symbols(self) -> list[str]:
        return [s for s in self.layout.symbols() if self.list_timeframes(s)]

    def list_timeframes(self, symbol: str) -> list[str]:
        sym = normalize_symbol(symbol)
        return [tf for tf in self.layout.timeframes(sym) if self.layout.years(sym, tf)]

    def list_years(self, symbol: str, timeframe: str) -> list[int]:
        return self.layout.years(normalize_symbol(symbol), parse_timeframe(timeframe).name)

    def iter_metadata(
        self, symbol: str | None = None, timeframe: str | None = None
    ) -> Iterator[tuple[str, str, int, dict[str, Any] | CorruptFile]]:
        """Every (symbol, tf, year, metadata-or-error) in scope; reads metadata files only."""
        symbols = [normalize_symbol(symbol)] if symbol else self.layout.symbols()
        for sym in symbols:
            tfs = [parse_timeframe(timeframe).name] if timeframe else self.layout.timeframes(sym)
            for tf in tfs:
                for year in self.layout.years(sym, tf):
                    try:
                        yield sym, tf, year, read_metadata(self.layout.meta_path(sym, tf, year))
                    except CorruptFile as exc:
                        yield sym, tf, year, exc

    def get_data_info(self, symbol: str, timeframe: str | None = None) -> dict[str, Any]:
        """Per timeframe and year: rows, range, provider, quality, gaps, size, and the
        symbol's corporate actions (metadata only)."""
        sym = normalize_symbol(symbol)
        out: dict[str, Any] = {"symbol": sym, "timeframes": {}}
        for _, tf, year, meta in self.iter_metadata(sym, timeframe):
            entry = out["timeframes"].setdefault(tf, {"years": []})
            if isinstance(meta, CorruptFile):
                entry["years"].append({"year": year, "error": str(meta)})
                continue
            dq, info = meta["data_quality"], meta["file_info"]
            entry["years"].append(
                {
                    "year": year,
                    "rows": info["rows"],
                    "start": meta["start_date"],
                    "end": meta["end_date"],
                    "provider": meta.get("data_source"),
                    "providers": sorted({s["provider"] for s in meta["coverage"]["sources"]}),
                    "quality": dq["score"],
                    "gaps": dq.get("gaps", 0),
                    "missing_bars": dq.get("missing_bars", 0),
                    "size_bytes": info["size_bytes"],
                    "last_updated": meta.get("last_updated"),
                    "missing_ranges": meta["coverage"].get("missing_ranges", []),
                }
            )
        for entry in out["timeframes"].values():
            good = [y for y in entry["years"] if "error" not in y]
            entry["rows"] = sum(y["rows"] for y in good)
            entry["size_bytes"] = sum(y["size_bytes"] for y in good)
            entry["start"] = min((y["start"] for y in good if y["start"]), default=None)
            entry["end"] = max((y["end"] for y in good if y["end"]), default=None)
            scores = [y["quality"] for y in good]
            entry["quality_min"] = min(scores, default=None)
            entry["quality_mean"] = round(sum(scores) / len(scores), 4) if scores else None
        out["corporate_actions"] = self.get_actions(sym).as_json()
        return out

    def get_stats(self) -> dict[str, Any]:
        """Cache-wide totals from the _metadata index alone (rebuilt from the per-year
        metadata when it is missing), so `info` costs the same for 10 or 10,000 files."""
        symbols = read_json(self.layout.index_dir / "symbols.json", None)
        if not isinstance(symbols, dict) or any(
            "bytes" not in tf_entry
            for entry in symbols.values()
            for tf_entry in entry.get("timeframes", {}).values()
        ):
            symbols = self.rebuild_index() if self.root.is_dir() else {}
        timeframes: set[str] = set()
        providers: set[str] = set()
        files = rows = size = raw = scored = 0
        score_sum = 0.0
        minima: list[float] = []
        starts: list[str] = []
        ends: list[str] = []
        for entry in symbols.values():
            for tf, e in entry["timeframes"].items():
                timeframes.add(tf)
                providers.update(e["providers"])
                files += len(e["years"])
                rows += e["rows"]
                size += e["bytes"]
                raw += e["raw_bytes"]
                if e["quality_min"] is not None:
                    minima.append(e["quality_min"])
                    score_sum += e["quality_sum"]
                    scored += e["quality_n"]
                if e.get("start"):
                    starts.append(e["start"])
                if e.get("end"):
                    ends.append(e["end"])
        return {
            "cache_dir": str(self.root),
            "symbols": len(symbols),
            "timeframes": sorted(timeframes, key=lambda t: parse_timeframe(t).minutes),
            "files": files,
            "rows": rows,
            "bytes_on_disk": size,
            "bytes_uncompressed": raw,
            "compression_ratio": round(raw / size, 2) if size else None,
            "start": min(starts, default=None),
            "end": max(ends, default=None),
            "quality_mean": round(score_sum / scored, 4) if scored else None,
            "quality_min": min(minima, default=None),
            "providers": sorted(providers),
        }

    # ---- cleanup -------------------------------------------------------------------------

    def cleanup_old_data(
        self,
        *,
        before: Any = None,
        keep_years: int | None = None,
        symbol: str | None = None,
        timeframe: str | None = None,
        dry_run: bool = False,
        now: pd.Timestamp | None = None,
    ) -> list[CleanupAction]:
        """Drop rows before a cutoff (`before`, or Jan 1 of the last `keep_years` years)."""
        cutoffs = []
        if before is not None:
            cutoffs.append(parse_date(before, option="--before"))
        if keep_years is not None:
            if keep_years < 1:
                raise UsageError("--keep-years must be at least 1")
            this_year = (now or pd.Timestamp.now(tz="UTC").tz_localize(None)).year
            cutoffs.append(pd.Timestamp(this_year - keep_years + 1, 1, 1))
        if not cutoffs:
            raise UsageError("give --before, --older-than or --keep-years")
        cutoff = max(cutoffs)
        actions: list[CleanupAction] = []
        touched: set[tuple[str, str]] = set()
        for sym, tf, year, meta in list(self.iter_metadata(symbol, timeframe)):
            if year > cutoff.year:
                continue
            path = self.layout.data_path(sym, tf, year)
            if isinstance(meta, CorruptFile):
                continue
            if year < cutoff.year:  # the whole year is older than the cutoff
                actions.append(
                    CleanupAction(str(path), "delete-year", sym, tf, year,
                                  int(meta["file_info"]["rows"]), f"before {cutoff.date()}")
                )  # fmt: skip
                if not dry_run:
                    with self.lock(sym, tf):
                        self._delete_year(sym, tf, year)
                    touched.add((sym, tf))
                continue
            if cutoff == pd.Timestamp(year, 1, 1) or not meta["start_date"]:
                continue  # nothing of this year lies before the cutoff
            if pd.Timestamp(meta["start_date"]) >= cutoff:
                continue
            with self.lock(sym, tf):
                df = self.read_year(sym, tf, year)
                keep = df[df["timestamp"] >= cutoff].reset_index(drop=True)
                removed = len(df) - len(keep)
                if not removed:
                    continue
                kind = "delete-year" if keep.empty else "trim-year"
                actions.append(
                    CleanupAction(str(path), kind, sym, tf, year, removed, f"before {cutoff}")
                )
                if dry_run:
                    continue
                if keep.empty:
                    self._delete_year(sym, tf, year)
                else:
                    self._rewrite(
                        sym, tf, year, meta, df, keep, meta.get("data_source", "unknown"),
                        allow_shrink=True,
                    )  # fmt: skip
                touched.add((sym, tf))
        for sym, tf in touched:
            self._refresh_index(sym, tf)
        return actions

    def _delete_year(self, sym: str, tf: str, year: int) -> None:
        # metadata first: a crash in between leaves data without metadata, a known leftover
        for path in (self.layout.meta_path(sym, tf, year), self.layout.data_path(sym, tf, year)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def cleanup_leftovers(self, *, dry_run: bool = False) -> list[CleanupAction]:
        """Remove temp files, metadata without data, data without metadata and empty folders."""
        actions: list[CleanupAction] = []
        if not self.root.is_dir():
            return actions
        for sym in self.layout.symbols():
            for tf in self.layout.timeframes(sym):
                for year in {*self.layout.years(sym, tf), *self._data_years(sym, tf)}:
                    self._recover_if_needed(sym, tf, year)
        for dirpath, _dirnames, filenames in os.walk(self.root, topdown=False):
            here = Path(dirpath)
            if here == self.layout.index_dir:
                continue
            for name in filenames:
                path = here / name
                reason = _leftover_reason(path)
                if reason:
                    actions.append(CleanupAction(str(path), "remove-leftover", reason=reason))
                    if not dry_run:
                        path.unlink(missing_ok=True)
            if here == self.root:
                continue
            removed = {Path(a.path) for a in actions}
            remaining = [p for p in here.iterdir() if p.name != LOCK_NAME and p not in removed]
            if not remaining:
                actions.append(CleanupAction(str(here), "remove-leftover", reason="empty folder"))
                if not dry_run:
                    with contextlib.suppress(OSError):
                        (here / LOCK_NAME).unlink(missing_ok=True)
                        here.rmdir()
        if not dry_run:
            self.rebuild_index()
        return actions

    def years_on_disk(
        self, symbol: str | None = None, timeframe: str | None = None
    ) -> list[tuple[str, str, int]]:
        """Every (symbol, tf, year) that has a data or a metadata file, in scope."""
        out: list[tuple[str, str, int]] = []
        symbols = [normalize_symbol(symbol)] if symbol else self.layout.symbols()
        for sym in symbols:
            tfs = [parse_timeframe(timeframe).name] if timeframe else self.layout.timeframes(sym)
            for tf in tfs:
                years = {*self.layout.years(sym, tf), *self._data_years(sym, tf)}
                out.extend((sym, tf, y) for y in sorted(years))
        return out

    def _data_years(self, sym: str, tf: str) -> list[int]:
        base = self.layout.timeframe_dir(sym, tf)
        out = []
        for p in base.iterdir() if base.is_dir() else []:
            stem = p.name.removesuffix(DATA_SUFFIX)
            if p.name.endswith(DATA_SUFFIX) and stem.isdigit():
                out.append(int(stem))
        return out

    # ---- verification (validate command) -------------------------------------------------

    def check_year(
        self,
        symbol: str,
        timeframe: str,
        year: int,
        *,
        min_score: float,
        fix: bool = False,
    ) -> YearCheck:
        """Re-read one year, verify it against its metadata, re-score it, optionally repair.

        Repairs (with `fix`): cut a torn tail; salvage the readable rows of a damaged file
        (the original is kept aside) and rebuild its metadata; drop invalid and duplicate
        rows and sort. Without `fix` nothing is written but the refreshed quality score.
        """
        sym = normalize_symbol(symbol)
        tf = parse_timeframe(timeframe).name
        data_path = self.layout.data_path(sym, tf, year)
        check = YearCheck(sym, tf, year, str(data_path), "ok")
        validator = self.validator(sym, tf)
        with self.lock(sym, tf):
            self._recover(sym, tf, year)
            meta: dict[str, Any] | None = None
            rewrite = False
            try:
                meta = read_metadata(self.layout.meta_path(sym, tf, year))
                df = _read_committed(data_path, meta)
            except CorruptFile as exc:
                check.problems.append(str(exc))
                check.path = str(exc.path)
                if not fix:
                    check.status = "corrupt"
                    return check
                salvaged = self._salvage(data_path, check)
                if salvaged is None:
                    check.status = "corrupt"
                    return check
                df, rewrite = salvaged, True  # keep readable metadata: coverage, created_at
            if meta is not None and data_path.stat().st_size > meta["file_info"]["size_bytes"]:
                check.problems.append(f"{data_path}: torn tail after the committed size")
                if fix:
                    with open(data_path, "r+b") as fh:
                        fh.truncate(meta["file_info"]["size_bytes"])
                    check.repairs.append("cut the torn tail")
            result = self._scored(sym, tf, validator.validate(df), meta, df)
            if fix and not result.is_valid:
                cleaned = clean_frame(df)
                check.repairs.append(
                    f"dropped {len(df) - len(cleaned)} invalid or duplicate rows and sorted"
                )
                df, rewrite = cleaned, True
            provider = (meta or {}).get("data_source", "unknown")
            if rewrite and df.empty:
                self._delete_year(sym, tf, year)
                check.repairs.append("no valid rows left: year removed (original kept aside)")
            elif rewrite:
                self._rewrite(sym, tf, year, meta, None, df, provider, allow_shrink=True)
                result = self._scored(sym, tf, validator.validate(df), meta, df)
            elif meta is not None:
                self._store_quality(sym, tf, year, meta, result.counts, result.errors, result.tail)
            self._refresh_index(sym, tf)
        check.score = result.score
        check.rows = len(df)
        committed = int(meta["file_info"]["rows"]) if meta is not None else 0
        if check.repairs and committed > len(df):
            check.lost = committed - len(df)
            check.problems.append(
                f"{check.lost:,} of {committed:,} committed rows could not be recovered:"
                f" run `marketcache populate {sym} -t {tf}` to fetch them again"
            )
        if check.repairs:
            check.status = "fixed"
        elif check.problems:
            check.status = "corrupt"
        if result.score < min_score and (not df.empty or result.counts.unfilled_bars):
            check.problems.append(f"quality {result.score:.4f} below {min_score:g}")
            if check.status == "ok":
                check.status = "low-score"
        return check

    def _rescore(self, sym: str, tf: str, meta: dict[str, Any]) -> None:
        """Recompute the stored score after the coverage (missing ranges) changed."""
        dq = meta["data_quality"]
        counts = self._with_unfilled(
            sym, tf, ValidationCounts.from_json(dq.get("counts", {})),
            meta["coverage"].get("missing_ranges", []), meta["start_date"], meta["end_date"],
        )  # fmt: skip
        dq["score"], dq["breakdown"] = score_counts(counts)
        dq["counts"] = asdict(counts)

    def _scored(
        self, sym: str, tf: str, result: ValidationResult, meta: dict[str, Any] | None,
        df: pd.DataFrame,
    ) -> ValidationResult:  # fmt: skip
        """`result` with the coverage's missing ranges counted into completeness."""
        missing = ((meta or {}).get("coverage") or {}).get("missing_ranges", [])
        first = df["timestamp"].min() if len(df) else None
        last = df["timestamp"].max() if len(df) else None
        result.counts = self._with_unfilled(sym, tf, result.counts, missing, first, last)
        result.score, result.breakdown = score_counts(result.counts)
        return result

    def _store_quality(
        self,
        sym: str,
        tf: str,
        year: int,
        meta: dict[str, Any],
        counts: ValidationCounts,
        errors: list[str],
        tail: TailContext | None,
    ) -> None:
        score, breakdown = score_counts(counts)
        dq = meta["data_quality"]
        if dq.get("counts") == asdict(counts) and dq.get("score") == score:
            return
        dq.update(
            score=score,
            breakdown=breakdown,
            validation_errors=errors,
            gaps=counts.gap_runs,
            duplicates=counts.duplicates,
            missing_bars=counts.missing_bars,
            counts=asdict(counts),
            tail=asdict(tail) if tail else None,
        )
        meta["last_validated"] = _now()
        write_metadata(self.layout.meta_path(sym, tf, year), meta)

    def _salvage(self, data_path: Path, check: YearCheck) -> pd.DataFrame | None:
        """Read what can be read of a damaged year file; the original is kept aside."""
        if not data_path.exists():
            check.problems.append(f"{data_path}: data file is missing")
            return None
        df, note = salvage_bytes(data_path.read_bytes())
        aside = self._quarantine(data_path, copy=True)
        if df is None:
            check.problems.append(f"{data_path}: no readable rows ({note})")
            check.repairs.append(f"kept the unreadable original as {aside.name}")
            return csvgz.empty_frame()
        check.repairs.append(f"salvaged {len(df)} rows ({note}); original kept as {aside.name}")
        return df

    def _quarantine(self, path: Path, *, copy: bool = False) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = path.with_name(f"{path.name}{QUARANTINE_MARK}{stamp}")
        if copy:
            write_atomic(aside, path.read_bytes())
        else:
            os.replace(path, aside)
        return aside

    def quarantine_year(self, symbol: str, timeframe: str, year: int) -> Path | None:
        """Move a corrupt year (data and metadata) aside so it can be fetched again."""
        sym = normalize_symbol(symbol)
        with self.lock(sym, timeframe):
            data = self.layout.data_path(sym, timeframe, year)
            aside = self._quarantine(data) if data.exists() else None
            meta = self.layout.meta_path(sym, timeframe, year)
            if meta.exists():
                self._quarantine(meta)
            self._refresh_index(sym, timeframe)
        return aside

    # ---- coverage (what is known empty or missing) --------------------------------------

    def update_coverage(
        self,
        symbol: str,
        timeframe: str,
        *,
        verified_empty: Iterable[tuple[Any, pd.Timestamp, str]] = (),
        missing: Iterable[tuple[Any, str]] = (),
        resolved: Iterable[Any] = (),
    ) -> None:
        """Record ranges a provider answered empty (with when), ranges still missing (with why),
        and drop missing entries a later fetch filled. Spans have `.start`/`.end`."""
        sym = normalize_symbol(symbol)
        tf = parse_timeframe(timeframe).name
        now = _now()
        per_year: dict[int, dict[str, list[dict[str, str]]]] = {}

        def pieces(span: Any) -> Iterator[tuple[int, str, str]]:
            start, end = pd.Timestamp(span.start), pd.Timestamp(span.end)
            while start < end:
                cut = min(end, pd.Timestamp(start.year + 1, 1, 1))
                yield start.year, _iso(start), _iso(cut)
                start = cut

        for span, checked, why in verified_empty:
            for year, a, b in pieces(span):
                per_year.setdefault(year, {"ve": [], "mr": [], "ok": []})["ve"].append(
                    {"start": a, "end": b, "checked_at": _iso(checked) + "Z", "answer": why}
                )
        for span, why in missing:
            for year, a, b in pieces(span):
                per_year.setdefault(year, {"ve": [], "mr": [], "ok": []})["mr"].append(
                    {"start": a, "end": b, "reason": why, "recorded_at": now}
                )
        for span in resolved:
            for year, a, b in pieces(span):
                per_year.setdefault(year, {"ve": [], "mr": [], "ok": []})["ok"].append(
                    {"start": a, "end": b}
                )
        with self.lock(sym, tf):
            for year, change in per_year.items():
                self._recover(sym, tf, year)
                meta_path = self.layout.meta_path(sym, tf, year)
                meta = read_metadata(meta_path) if meta_path.exists() else None
                cov = (meta or {}).get("coverage") or {}
                done = change["ok"] + change["ve"]
                kept_missing = [
                    m
                    for m in cov.get("missing_ranges", [])
                    if not any(d["start"] < m["end"] and m["start"] < d["end"] for d in done)
                ]
                new_spans = {(e["start"], e["end"]) for e in change["ve"]}
                kept_empty = [
                    e
                    for e in cov.get("verified_empty", [])
                    if (e["start"], e["end"]) not in new_spans
                ]
                cov = {
                    "calendar": cov.get("calendar", self.profile(sym).calendar),
                    "missing_ranges": _dedupe_spans(kept_missing + change["mr"]),
                    "verified_empty": sorted(kept_empty + change["ve"], key=lambda e: e["start"]),
                    "sources": cov.get("sources", []),
                }
                if meta is None:
                    if not (change["ve"] or change["mr"]):
                        continue
                    empty = csvgz.empty_frame()
                    self._rewrite(sym, tf, year, {"coverage": cov}, None, empty, "none")
                elif cov != meta.get("coverage"):
                    meta["coverage"] = cov
                    self._rescore(sym, tf, meta)
                    write_metadata(meta_path, meta)
            self._refresh_index(sym, tf)

    # ---- _metadata/ index ----------------------------------------------------------------

    def _index_entry(self, sym: str, tf: str) -> tuple[dict[str, Any], dict[str, float]]:
        """One symbol/timeframe's line of the index, from its per-year metadata."""
        entry: dict[str, Any] = {
            "years": [], "rows": 0, "bytes": 0, "raw_bytes": 0, "start": None, "end": None,
            "providers": [], "quality_min": None, "quality_sum": 0.0, "quality_n": 0,
        }  # fmt: skip
        scores: dict[str, float] = {}
        provs: set[str] = set()
        for _, _, year, meta in self.iter_metadata(sym, tf):
            if isinstance(meta, CorruptFile):
                continue
            info = meta["file_info"]
            entry["years"].append(year)
            entry["rows"] += int(info["rows"])
            entry["bytes"] += int(info["size_bytes"])
            entry["raw_bytes"] += int(info.get("raw_bytes", 0))
            if meta["start_date"] and entry["start"] is None:
                entry["start"] = meta["start_date"]
            if meta["end_date"]:
                entry["end"] = meta["end_date"]
            # a year verified empty has no score to count; one whose ranges failed has
            if info["rows"] or meta["data_quality"].get("counts", {}).get("unfilled_bars"):
                score = float(meta["data_quality"]["score"])
                scores[str(year)] = score
                entry["quality_sum"] += score
                entry["quality_n"] += 1
            provs.update(s["provider"] for s in meta["coverage"].get("sources", []))
        entry["providers"] = sorted(provs)
        entry["quality_min"] = min(scores.values(), default=None)
        return entry, scores

    def _write_index(self, symbols: dict[str, Any], quality: dict[str, Any]) -> None:
        index = self.layout.index_dir
        write_json(index / "symbols.json", symbols)
        write_json(index / "quality_scores.json", quality)
        write_json(index / "providers.json", _providers_index(symbols, self.settings))

    def _set_entry(
        self, symbols: dict[str, Any], quality: dict[str, Any], sym: str, tf: str
    ) -> None:
        entry, scores = self._index_entry(sym, tf)
        sym_entry = symbols.setdefault(sym, {"timeframes": {}})
        sym_entry["asset_class"] = self.profile(sym).asset_class.value
        if entry["years"]:
            sym_entry["timeframes"][tf] = entry
            quality.setdefault(sym, {})[tf] = scores
        else:
            sym_entry["timeframes"].pop(tf, None)
            quality.get(sym, {}).pop(tf, None)
        if not sym_entry["timeframes"]:
            symbols.pop(sym, None)
            quality.pop(sym, None)

    def _refresh_index(self, sym: str, tf: str) -> None:
        """Keep _metadata/symbols.json, quality_scores.json and providers.json current."""
        index = self.layout.index_dir
        with hold(index / LOCK_NAME, wait=self.lock_wait, what="the cache index"):
            symbols = read_json(index / "symbols.json", {})
            quality = read_json(index / "quality_scores.json", {})
            self._set_entry(symbols, quality, sym, tf)
            self._write_index(symbols, quality)

    def rebuild_index(self) -> dict[str, Any]:
        """Recompute the whole _metadata index from the per-year metadata files."""
        index = self.layout.index_dir
        with hold(index / LOCK_NAME, wait=self.lock_wait, what="the cache index"):
            symbols: dict[str, Any] = {}
            quality: dict[str, Any] = {}
            for sym in self.layout.symbols():
                for tf in self.layout.timeframes(sym):
                    self._set_entry(symbols, quality, sym, tf)
            self._write_index(symbols, quality)
        return symbols


# ---- helpers -------------------------------------------------------------------------------


def _adjusted(df: pd.DataFrame, actions: CorporateActions, mode: str) -> pd.DataFrame:
    return adjust(df, actions, mode).reset_index(drop=True)


def normalize_frame(df: pd.DataFrame, *, sessions: bool = False) -> pd.DataFrame:
    """Canonical columns and dtypes, UTC-naive timestamps, unique (last wins) and sorted.

    With `sessions` (daily and longer bars) a tz-aware timestamp keeps its local date: a
    yfinance frame stamped 2024-01-02 00:00 New York is the 2024-01-02 session, not 05:00 UTC.
    """
    if not isinstance(df, pd.DataFrame):
        raise UsageError("put() takes a pandas DataFrame")
    frame = df
    if "timestamp" not in frame.columns:
        if isinstance(frame.index, pd.DatetimeIndex):
            frame = frame.rename_axis("timestamp").reset_index()
        else:
            raise UsageError("frame has no 'timestamp' column or DatetimeIndex")
    missing = [c for c in csvgz.BASE_COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(f"frame lacks columns: {', '.join(missing)}")
    columns = csvgz.columns_for(frame)
    raw = frame["timestamp"]
    if sessions and isinstance(raw.dtype, pd.DatetimeTZDtype):
        ts = raw.dt.tz_localize(None).dt.normalize()
    else:
        ts = pd.to_datetime(raw, errors="coerce", utc=True).dt.tz_localize(None)
    out = pd.DataFrame({"timestamp": ts.astype("datetime64[ns]")})
    for col in columns[1:]:
        out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64").to_numpy()
    out = out[out["timestamp"].notna().to_numpy()]
    ts_values = out["timestamp"].to_numpy()
    if len(ts_values) > 1 and not (np.diff(ts_values.astype("int64")) > 0).all():
        out = out.drop_duplicates("timestamp", keep="last").sort_values("timestamp", kind="stable")
    return out.reset_index(drop=True)


def clean_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Drop rows with bad values, dedupe (last wins) and sort — what `validate --fix` keeps."""
    frame = normalize_frame(df)
    cleaned: pd.DataFrame = frame[sound_rows(frame)].reset_index(drop=True)
    return cleaned


SALVAGE_CHUNK = 4096  # compressed bytes fed at a time: output before a damaged block is kept


def salvage_bytes(raw: bytes) -> tuple[pd.DataFrame | None, str]:
    """Decode the rows before the damage of a damaged csv.gz, streaming.

    Each gzip member is decompressed a few KB at a time, so everything produced before the
    block where decoding fails is kept (a one-shot decompress loses it all). The output of the
    failing chunk and anything after the damage in that member are not trusted; the last,
    cut line is dropped and the remaining lines must parse, be sound and rise in time.
    """
    text = bytearray()
    pos = 0
    note = "all members readable"
    damaged = False
    while pos < len(raw) and not damaged:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        cursor = pos
        while cursor < len(raw) and not d.eof:
            chunk = raw[cursor : cursor + SALVAGE_CHUNK]
            try:
                text += d.decompress(chunk)
            except zlib.error as exc:
                note = f"stopped at a damaged block near byte {cursor:,}: {exc}"
                damaged = True
                break
            cursor += len(chunk)
        if damaged:
            break
        if not d.eof:
            note = "last member truncated"
            break
        pos = cursor - len(d.unused_data)
    lines = bytes(text).split(b"\n")
    if not lines or not lines[0].startswith(b"timestamp,"):
        return None, "header unreadable"
    header = lines[0]
    body = lines[1:] if text.endswith(b"\n") and not damaged else lines[1:-1]
    # the damage is where the first line stops looking like a row: nothing after it is trusted
    shape = re.compile(
        rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d" + rb",[-+0-9.eEnaif]*" * header.count(b",")
    )
    good = 0
    while good < len(body) and shape.fullmatch(body[good]):
        good += 1
    if good < len(body):
        note += f"; rows from line {good + 2:,} on are not trusted"
    try:
        df = csvgz.parse_csv(b"\n".join([header, *body[:good]]) + b"\n")
    except ValueError as exc:
        return None, f"unparsable: {exc}"
    if len(df):  # and up to the first row that is unsound or does not rise in time
        stamps = df["timestamp"].to_numpy("datetime64[ns]").astype("int64")
        ok = np.r_[True, np.diff(stamps) > 0] & sound_rows(df) & df["timestamp"].notna().to_numpy()
        cut = int(np.argmin(ok)) if not ok.all() else len(df)
        df = df.iloc[:cut].reset_index(drop=True)
    return (df if len(df) else None), note


def _read_committed(path: Path, meta: dict[str, Any]) -> pd.DataFrame:
    info = meta["file_info"]
    size = int(info["size_bytes"])
    try:
        with open(path, "rb") as fh:
            data = fh.read(size)
    except FileNotFoundError:
        raise CorruptFile(path, "data file is missing (metadata exists)") from None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) < size:
        raise CorruptFile(path, f"file is truncated: {len(data)} of {size} bytes")
    # hash while decoding (hashlib releases the GIL); nothing is returned before it matches
    digest: list[str] = []
    hasher = threading.Thread(target=lambda: digest.append(hashlib.sha256(data).hexdigest()))
    hasher.start()
    try:
        df = csvgz.decode(data)
        error = None
    except (ValueError, OSError, EOFError) as exc:
        error = str(exc)
    hasher.join()
    if digest[0] != info["sha256"]:
        raise CorruptFile(path, "sha256 does not match metadata (the file changed or is damaged)")
    if error is not None:
        raise CorruptFile(path, f"cannot decode: {error}")
    if len(df) != int(info["rows"]):
        raise CorruptFile(path, f"holds {len(df)} rows, metadata says {info['rows']}")
    return df


def _sha256_prefix(path: Path, size: int) -> Any:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        remaining = size
        while remaining > 0:
            chunk = fh.read(min(remaining, 8 << 20))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
    return h


def _last_row(df: pd.DataFrame) -> dict[str, Any] | None:
    """The last stored bar, kept in metadata so a re-fetched copy can be recognised."""
    if df.empty:
        return None
    row = df.iloc[-1]
    out: dict[str, Any] = {"timestamp": _iso(row["timestamp"])}
    for col in df.columns[1:]:
        value = float(row[col])
        out[col] = None if np.isnan(value) else value
    return out


def _drop_unchanged_last_row(meta: dict[str, Any], part: pd.DataFrame) -> pd.DataFrame:
    """Drop the first row of `part` when it repeats the stored last bar exactly.

    A refresh re-asks for the last stored bar (it may have been revised); when it was not,
    the new bars can still be appended instead of rewriting the year.
    """
    last = meta["file_info"].get("last_row")
    if not last or part.empty or pd.Timestamp(last["timestamp"]) != part["timestamp"].iloc[0]:
        return part
    first = part.iloc[0]
    for col in part.columns[1:]:
        stored = last.get(col)
        value = float(first[col])
        same = (stored is None and np.isnan(value)) or (
            stored is not None and bool(np.isclose(value, stored, rtol=SAME, atol=0.0))
        )
        if not same:
            return part
    return part.iloc[1:].reset_index(drop=True)


def _merge(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Rows of both, new values winning at equal timestamps — except where the new value is
    missing (NaN, or a column the new frame lacks): there the stored value stays."""
    columns = csvgz.columns_for(old if len(old.columns) >= len(new.columns) else new)
    fresh = new.set_index("timestamp").reindex(columns=columns[1:])
    stored = old.set_index("timestamp").reindex(columns=columns[1:])
    merged = fresh.combine_first(stored).reindex(columns=columns[1:])
    merged.index.name = "timestamp"
    return merged.reset_index()


def _count_changed(old: pd.DataFrame, new: pd.DataFrame) -> int:
    joined = new.merge(old, on="timestamp", how="inner", suffixes=("", "_old"))
    if joined.empty:
        return 0
    changed = np.zeros(len(joined), dtype=bool)
    for col in csvgz.BASE_COLUMNS[1:] + csvgz.OPTIONAL_COLUMNS:
        if col in new.columns and f"{col}_old" in joined.columns:
            a = joined[col].to_numpy("float64")
            b = joined[f"{col}_old"].to_numpy("float64")
            # a missing new value keeps the stored one (see _merge): not a change
            changed |= ~(np.isclose(a, b, rtol=SAME, atol=0.0, equal_nan=True) | np.isnan(a))
        elif col in new.columns and col in old.columns:
            continue
        elif col in new.columns:
            changed |= ~np.isnan(joined[col].to_numpy())
    return int(changed.sum())


def _merge_sources(
    sources: list[dict[str, str]],
    provider: str,
    start: str,
    end: str,
    adjacent: Callable[[str, str], bool] = lambda a, b: False,
) -> list[dict[str, str]]:
    """Record that `provider` filled the bars [start, end] (inclusive ISO stamps).

    Its values won there, so other providers' claims on those bars are cut back (dropped
    when wholly covered); a span of the same provider that overlaps it, or is `adjacent`
    (no expected bar between), is joined. No bar is ever claimed by two providers.
    """
    out: list[dict[str, str]] = []
    for s in sources:
        touching = s["provider"] == provider and (
            adjacent(s["end"], start) or adjacent(end, s["start"])
        )
        if (s["end"] < start or s["start"] > end) and not touching:
            out.append(dict(s))
        elif s["provider"] == provider:
            start, end = min(start, s["start"]), max(end, s["end"])
        else:
            if s["start"] < start:
                out.append({**s, "end": _iso(pd.Timestamp(start) - pd.Timedelta(seconds=1))})
            if s["end"] > end:
                out.append({**s, "start": _iso(pd.Timestamp(end) + pd.Timedelta(seconds=1))})
    out.append({"provider": provider, "start": start, "end": end})
    out.sort(key=lambda s: s["start"])
    return out


def _dedupe_spans(entries: list[dict[str, str]]) -> list[dict[str, str]]:
    """Latest entry wins for the same span."""
    by_span: dict[tuple[str, str], dict[str, str]] = {}
    for entry in entries:
        by_span[(entry["start"], entry["end"])] = entry
    return sorted(by_span.values(), key=lambda e: e["start"])


def _providers_index(symbols: dict[str, Any], settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sym, entry in symbols.items():
        for tf_entry in entry.get("timeframes", {}).values():
            for prov in tf_entry.get("providers", []):
                p = out.setdefault(prov, {"symbols": [], "datasets": 0})
                if sym not in p["symbols"]:
                    p["symbols"].append(sym)
                p["datasets"] += 1
    for name, p in out.items():
        conf = settings.providers.get(name)
        p["symbols"].sort()
        if conf is not None:
            p["reliability"] = conf.reliability
            p["rate_limit"] = conf.rate_limit.describe()
    return out


def _leftover_reason(path: Path) -> str:
    name = path.name
    if TEMP_MARK in name:
        return "temporary file of an interrupted write"
    if name.endswith(META_SUFFIX + PENDING_SUFFIX):
        return "pending metadata of an interrupted write"
    stem = name.removesuffix(DATA_SUFFIX)
    if name.endswith(DATA_SUFFIX) and stem.isdigit():
        return "" if path.with_name(stem + META_SUFFIX).exists() else "data without metadata"
    stem = name.removesuffix(META_SUFFIX)
    if name.endswith(META_SUFFIX) and stem.isdigit():
        return "" if path.with_name(stem + DATA_SUFFIX).exists() else "metadata without data"
    return ""
