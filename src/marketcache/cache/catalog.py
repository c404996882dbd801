"""The catalog: what the cache holds, from records alone — never the data.

Keeps the derived index (`symbols.json`, `quality_scores.json`, `providers.json`) current,
one series at a time, and answers `list`, `info` and `get_stats` from it or from the year
records. Light on purpose (no pandas, numpy or pyarrow): metadata-only commands start fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from marketcache.core.records import YearRecord
from marketcache.core.symbols import classify
from marketcache.core.timeframes import parse_timeframe
from marketcache.errors import CorruptFile, LockTimeout, StorageError
from marketcache.storage.backend import Key, StorageBackend

if TYPE_CHECKING:
    from marketcache.config.schema import Settings


def _no_years() -> dict[str, Any]:
    """A timeframe entry of `data_info` for a series that only has a live tail."""
    return {"years": [], "rows": 0, "size_bytes": 0, "start": None, "end": None,
            "quality_min": None, "quality_mean": None}  # fmt: skip


class Catalog:
    def __init__(self, backend: StorageBackend, settings: Settings, *, lock_wait: float) -> None:
        self.backend = backend
        self.settings = settings
        self.lock_wait = lock_wait

    def records(
        self, symbol: str | None = None, timeframe: str | None = None
    ) -> Iterator[tuple[Key, YearRecord | CorruptFile]]:
        """Every (key, record-or-error) in scope; reads records only."""
        for key in self.backend.keys(symbol, timeframe):
            try:
                yield key, self.backend.read_record(key)
            except CorruptFile as exc:
                yield key, exc

    # ---- the index -----------------------------------------------------------------------

    def _entry(self, sym: str, tf: str) -> tuple[dict[str, Any], dict[str, float]]:
        """One series' line of the index, from its year records."""
        entry: dict[str, Any] = {
            "years": [],
            "rows": 0,
            "bytes": 0,
            "raw_bytes": 0,
            "start": None,
            "end": None,
            "providers": [],
            "quality_min": None,
            "quality_sum": 0.0,
            "quality_n": 0,
        }
        scores: dict[str, float] = {}
        providers: set[str] = set()
        for key, rec in self.records(sym, tf):
            if isinstance(rec, CorruptFile):
                continue
            info = rec.file_info
            entry["years"].append(key.year)
            entry["rows"] += info.rows
            entry["bytes"] += info.size_bytes
            entry["raw_bytes"] += info.raw_bytes
            if rec.start_date and entry["start"] is None:
                entry["start"] = rec.start_date
            if rec.end_date:
                entry["end"] = rec.end_date
            if rec.scored:  # a year verified empty has no score; one whose ranges failed has
                scores[str(key.year)] = rec.score
                entry["quality_sum"] += rec.score
                entry["quality_n"] += 1
            providers.update(s["provider"] for s in rec.coverage.sources)
        entry["providers"] = sorted(providers)
        entry["quality_min"] = min(scores.values(), default=None)
        return entry, scores

    def _set(self, symbols: dict[str, Any], quality: dict[str, Any], sym: str, tf: str) -> None:
        entry, scores = self._entry(sym, tf)
        sym_entry = symbols.setdefault(sym, {"timeframes": {}})
        conf = self.settings.symbol(sym)
        sym_entry["asset_class"] = classify(sym, conf.type.value if conf.type else None).value
        if entry["years"]:
            sym_entry["timeframes"][tf] = entry
            quality.setdefault(sym, {})[tf] = scores
        else:
            sym_entry["timeframes"].pop(tf, None)
            quality.get(sym, {}).pop(tf, None)
        if not sym_entry["timeframes"]:
            symbols.pop(sym, None)
            quality.pop(sym, None)

    def _write(self, symbols: dict[str, Any], quality: dict[str, Any]) -> None:
        self.backend.write_index("symbols.json", symbols)
        self.backend.write_index("quality_scores.json", quality)
        self.backend.write_index("providers.json", self._providers(symbols))

    def refresh(self, sym: str, tf: str) -> None:
        """Bring one series' index entries up to date (once per commit)."""
        with self.backend.index_lock(wait=self.lock_wait):
            symbols = self.backend.read_index("symbols.json") or {}
            quality = self.backend.read_index("quality_scores.json") or {}
            self._set(symbols, quality, sym, tf)
            self._write(symbols, quality)

    def rebuild(self) -> dict[str, Any]:
        """Recompute the whole index from the year records."""
        with self.backend.index_lock(wait=self.lock_wait):
            symbols, quality = self._compute()
            self._write(symbols, quality)
        return symbols

    def _compute(self) -> tuple[dict[str, Any], dict[str, Any]]:
        symbols: dict[str, Any] = {}
        quality: dict[str, Any] = {}
        for sym in self.backend.symbols():
            for tf in self.backend.timeframes(sym):
                self._set(symbols, quality, sym, tf)
        return symbols, quality

    def _read_only_rebuild(self) -> dict[str, Any]:
        """The index for a reader (`info`): computed from the records, stored only when that
        costs no wait and is allowed — a read never waits for a writer's index lock, and a
        read-only cache (a read-only mount, read-only object-storage keys) still answers."""
        symbols, quality = self._compute()
        try:
            with self.backend.index_lock(wait=0):
                self._write(symbols, quality)
        except (LockTimeout, OSError, StorageError):
            pass  # the next writer brings it up to date
        return symbols

    def _providers(self, symbols: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sym, entry in symbols.items():
            for tf_entry in entry.get("timeframes", {}).values():
                for prov in tf_entry.get("providers", []):
                    p = out.setdefault(prov, {"symbols": [], "datasets": 0})
                    if sym not in p["symbols"]:
                        p["symbols"].append(sym)
                    p["datasets"] += 1
        for name, p in out.items():
            conf = self.settings.providers.get(name)
            p["symbols"].sort()
            if conf is not None:
                p["reliability"] = conf.reliability
                p["rate_limit"] = conf.rate_limit.describe()
        return out

    # ---- answers -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Cache-wide totals from the index alone (rebuilt when missing), so `info` costs the
        same for 10 or 10,000 years."""
        symbols = self.backend.read_index("symbols.json")
        if not isinstance(symbols, dict) or any(
            "bytes" not in tf_entry
            for entry in symbols.values()
            for tf_entry in entry.get("timeframes", {}).values()
        ):
            symbols = self._read_only_rebuild() if self.backend.exists() else {}
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
                starts += [e["start"]] if e.get("start") else []
                ends += [e["end"]] if e.get("end") else []
        return {
            "cache_dir": self.backend.location,
            "backend": self.backend.describe(),
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

    def data_info(self, sym: str, timeframe: str | None = None) -> dict[str, Any]:
        """Per timeframe and year: rows, range, provider, quality, gaps, size; and the bars a
        live tail holds past the years (`live`: rows, start, end), counted in the totals."""
        out: dict[str, Any] = {"symbol": sym, "timeframes": {}}
        tails = self._tails(sym, timeframe)  # before the records: a fold moves bars on
        for key, rec in self.records(sym, timeframe):
            entry = out["timeframes"].setdefault(key.timeframe, {"years": []})
            if isinstance(rec, CorruptFile):
                entry["years"].append({"year": key.year, "error": str(rec)})
                continue
            dq = rec.data_quality
            entry["years"].append(
                {
                    "year": key.year,
                    "rows": rec.rows,
                    "start": rec.start_date,
                    "end": rec.end_date,
                    "provider": rec.data_source,
                    "providers": sorted({s["provider"] for s in rec.coverage.sources}),
                    "quality": rec.score,
                    "gaps": dq.get("gaps", 0),
                    "missing_bars": dq.get("missing_bars", 0),
                    "size_bytes": rec.file_info.size_bytes,
                    "last_updated": rec.last_updated,
                    "missing_ranges": rec.coverage.missing_ranges,
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
        for tf, stamps in tails.items():
            entry = out["timeframes"].setdefault(tf, _no_years())
            after = [t for t in stamps if entry["end"] is None or t > entry["end"]]
            if not after:
                continue  # folded meanwhile, or a fold a crash cut short: the years hold them
            entry["live"] = {"rows": len(after), "start": after[0], "end": after[-1]}
            entry["rows"] += len(after)
            entry["start"] = entry["start"] or after[0]
            entry["end"] = after[-1]
        return out

    def _tails(self, sym: str, timeframe: str | None) -> dict[str, list[str]]:
        """The bar times (ISO, sorted) of each live tail of the symbol in scope."""
        from marketcache.storage.tail import open_tail, tail_series

        found = {}
        for _, tf in tail_series(self.backend, sym):
            if timeframe not in (None, tf):
                continue
            tail = open_tail(self.backend, sym, tf).read()
            if len(tail):
                found[tf] = list(tail["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S"))
        return found
