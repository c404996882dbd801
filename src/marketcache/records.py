"""The per-year record (YEAR.metadata.json): typed, and round-tripping its JSON exactly. Pure.

A record is the commit point of a year: the data it names (format, size, sha256, rows) is what
readers trust; its quality block holds additive counts, its coverage block what is known to be
missing or empty and which provider filled which bars.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from marketcache.errors import CorruptFile
from marketcache.quality import TailContext, ValidationCounts, score_counts

SCHEMA_VERSION = 1
REQUIRED = ("schema_version", "symbol", "timeframe", "year", "file_info", "data_quality")
FILE_INFO_REQUIRED = ("size_bytes", "rows", "columns", "sha256")
_KNOWN = (
    "schema_version", "symbol", "timeframe", "year", "data_source", "created_at",
    "last_updated", "start_date", "end_date", "data_quality", "file_info", "provider_info",
    "coverage",
)  # fmt: skip


def now_stamp() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FileInfo:
    format: str = "csv.gz"
    size_bytes: int = 0
    raw_bytes: int = 0
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    sha256: str = ""
    members: int = 1
    last_row: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileInfo:
        names = set(cls.__dataclass_fields__) - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


@dataclass
class Coverage:
    calendar: str = ""
    missing_ranges: list[dict[str, str]] = field(default_factory=list)
    verified_empty: list[dict[str, str]] = field(default_factory=list)
    sources: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Coverage:
        data = data or {}
        return cls(
            str(data.get("calendar", "")),
            list(data.get("missing_ranges", [])),
            list(data.get("verified_empty", [])),
            list(data.get("sources", [])),
        )


@dataclass
class YearRecord:
    """One year's commit record. `extra` keeps keys this version does not know, in order."""

    symbol: str
    timeframe: str
    year: int
    data_source: str = "unknown"
    created_at: str = ""
    last_updated: str = ""
    start_date: str | None = None
    end_date: str | None = None
    data_quality: dict[str, Any] = field(default_factory=dict)
    file_info: FileInfo = field(default_factory=FileInfo)
    provider_info: dict[str, Any] = field(default_factory=dict)
    coverage: Coverage = field(default_factory=Coverage)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def rows(self) -> int:
        return int(self.file_info.rows)

    @property
    def counts(self) -> ValidationCounts:
        return ValidationCounts.from_json(self.data_quality.get("counts") or {})

    @property
    def score(self) -> float:
        return float(self.data_quality.get("score", 1.0))

    @property
    def scored(self) -> bool:
        """Whether the score means something: rows stored, or ranges that failed."""
        return bool(self.rows or self.counts.unfilled_bars)

    @property
    def tail(self) -> TailContext | None:
        tail = self.data_quality.get("tail")
        return TailContext(**tail) if tail else None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "year": self.year,
            "data_source": self.data_source,
            "created_at": self.created_at,
            "last_updated": self.last_updated,
            "start_date": self.start_date,
            "end_date": self.end_date,
            "data_quality": self.data_quality,
            "file_info": self.file_info.to_json(),
            "provider_info": self.provider_info,
            "coverage": self.coverage.to_json(),
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: Any, where: Any = "record") -> YearRecord:
        """Shape-check and type one record; CorruptFile names `where` on any problem."""
        if not isinstance(data, dict):
            raise CorruptFile(where, "metadata is not a JSON object")
        missing = [k for k in REQUIRED if k not in data]
        info = data.get("file_info")
        if isinstance(info, dict):
            missing += [f"file_info.{k}" for k in FILE_INFO_REQUIRED if k not in info]
        elif "file_info" not in missing:
            missing.append("file_info")
        if missing:
            raise CorruptFile(where, f"metadata lacks {', '.join(missing)}")
        if data["schema_version"] != SCHEMA_VERSION:
            raise CorruptFile(where, f"unknown schema_version {data['schema_version']!r}")
        return cls(
            symbol=data["symbol"],
            timeframe=data["timeframe"],
            year=int(data["year"]),
            data_source=data.get("data_source", "unknown"),
            created_at=data.get("created_at", ""),
            last_updated=data.get("last_updated", ""),
            start_date=data.get("start_date"),
            end_date=data.get("end_date"),
            data_quality=dict(data["data_quality"]),
            file_info=FileInfo.from_json(info),  # type: ignore[arg-type]
            provider_info=dict(data.get("provider_info") or {}),
            coverage=Coverage.from_json(data.get("coverage")),
            extra={k: v for k, v in data.items() if k not in _KNOWN},
        )

    def set_quality(
        self, counts: ValidationCounts, errors: list[str], tail: TailContext | None
    ) -> None:
        """The one place the quality block is written."""
        score, breakdown = score_counts(counts)
        self.data_quality = {
            "score": score,
            "breakdown": breakdown,
            "validation_errors": errors,
            "gaps": counts.gap_runs,
            "duplicates": counts.duplicates,
            "missing_bars": counts.missing_bars,
            "counts": asdict(counts),
            "tail": asdict(tail) if tail else None,
        }


def merge_sources(
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
    from marketcache.frames import iso

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
            import pandas as pd

            if s["start"] < start:
                out.append({**s, "end": iso(pd.Timestamp(start) - pd.Timedelta(seconds=1))})
            if s["end"] > end:
                out.append({**s, "start": iso(pd.Timestamp(end) + pd.Timedelta(seconds=1))})
    out.append({"provider": provider, "start": start, "end": end})
    out.sort(key=lambda s: s["start"])
    return out
