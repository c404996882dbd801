"""The per-year record (YEAR.metadata.json): typed, and round-tripping its JSON exactly. Pure.

A record is the commit point of a year: the data it names (format, size, sha256, rows) is what
readers trust; its quality block holds additive counts, its coverage block what is known to be
missing or empty and which provider filled which bars.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from marketcache.core.columns import BASE_COLUMNS, OPTIONAL_COLUMNS
from marketcache.core.quality import TailContext, ValidationCounts, score_counts
from marketcache.core.timeframes import TIMEFRAMES
from marketcache.errors import CorruptFile

SCHEMA_VERSION = 1
REQUIRED = ("schema_version", "symbol", "timeframe", "year", "file_info", "data_quality")
FILE_INFO_REQUIRED = ("size_bytes", "rows", "columns", "sha256")
_KNOWN = (
    "schema_version", "symbol", "timeframe", "year", "data_source", "created_at",
    "last_updated", "start_date", "end_date", "data_quality", "file_info", "provider_info",
    "coverage",
)  # fmt: skip
MAX_RECORD_BYTES = 16 << 20  # a year's record is kilobytes; more is not a record
MAX_COUNT = 1 << 53  # rows, bytes and counts beyond this are no real year's
_SHA256 = re.compile(r"(?:[0-9a-f]{64})?")


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
    def from_json(cls, data: Any) -> FileInfo:
        """Typed and checked: ValueError (or TypeError) says what is wrong. The columns
        must be the ones a year stores, in their order — backends build SQL and read frames
        from them, so a record naming any other column is corrupt."""
        if not isinstance(data, dict):
            raise ValueError("file_info is not an object")
        names = set(cls.__dataclass_fields__) - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        out = cls(**known, extra={k: v for k, v in data.items() if k not in names})
        out.format = _text(out.format, "file_info.format")
        for name in ("size_bytes", "raw_bytes", "rows", "members"):
            setattr(out, name, _count(getattr(out, name), f"file_info.{name}"))
        out.columns = check_columns(out.columns)
        if not isinstance(out.sha256, str) or not _SHA256.fullmatch(out.sha256):
            raise ValueError("file_info.sha256 is not a hex sha256")
        if out.last_row is not None:
            if not isinstance(out.last_row, dict) or not set(out.last_row) <= set(out.columns):
                raise ValueError("file_info.last_row is not a row of the year's columns")
            for k, v in out.last_row.items():
                if v is not None and not isinstance(v, (str, int, float)):
                    raise ValueError(f"file_info.last_row.{k} is not a value")
        return out


def check_columns(columns: Any) -> list[str]:
    """The stored columns of a year — the base ones, then the optional ones it has — or
    ValueError naming the first that is not one (shown shortened: it may be an attack)."""
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ValueError("file_info.columns is not a list of column names")
    known = BASE_COLUMNS + OPTIONAL_COLUMNS
    for col in columns:
        if col not in known:
            shown = col if len(col) <= 40 else col[:40] + "…"
            raise ValueError(f"file_info.columns names an unknown column {shown!r}")
    expected = BASE_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in columns]
    if columns != expected:
        raise ValueError(f"file_info.columns are not {', '.join(expected)}")
    return list(columns)


def _text(value: Any, name: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise ValueError(f"{name} is not a string")
    return value


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} is not a count")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} is not a finite number")
    return float(value)


def _stamp(value: Any, name: str) -> str:
    """An ISO date-time (what pandas and datetime read back)."""
    text = _text(value, name)
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} is not an ISO date-time") from None
    return text


def _spans(value: Any, name: str, stamps: tuple[str, ...]) -> list[dict[str, Any]]:
    """A list of objects whose `stamps` fields are ISO date-times (other fields kept)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{name} is not a list")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"{name}[{i}] is not an object")
        for key in stamps:
            _stamp(item.get(key), f"{name}[{i}].{key}")
    return value


def _quality(value: Any) -> dict[str, Any]:
    """The quality block: what `score`, `counts` and `tail` read must be of their type."""
    if not isinstance(value, dict):
        raise ValueError("data_quality is not an object")
    if "score" in value:
        score = _number(value["score"], "data_quality.score")
        if not 0.0 <= score <= 1.0:
            raise ValueError("data_quality.score is not between 0 and 1")
    counts = value.get("counts")
    if counts is not None:
        if not isinstance(counts, dict):
            raise ValueError("data_quality.counts is not an object")
        names = {f.name for f in fields(ValidationCounts)}
        for k, v in counts.items():
            if k in names:
                _count(v, f"data_quality.counts.{k}")
    for k in ("gaps", "duplicates", "missing_bars"):
        if k in value:
            _count(value[k], f"data_quality.{k}")
    errors = value.get("validation_errors", [])
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise ValueError("data_quality.validation_errors is not a list of strings")
    tail = value.get("tail")
    if tail is not None:
        if not isinstance(tail, dict) or not set(tail) <= {"timestamp", "close", "stale_run"}:
            raise ValueError("data_quality.tail is not a tail")
        _stamp(tail.get("timestamp"), "data_quality.tail.timestamp")
        _number(tail.get("close"), "data_quality.tail.close")
        _count(tail.get("stale_run", 0), "data_quality.tail.stale_run")
    return dict(value)


def parse_json(data: bytes | str, where: Any) -> Any:
    """A stored JSON document (a record), decoded strictly: CorruptFile naming `where` for
    bytes that are not UTF-8 JSON, nesting deeper than the parser goes, or a size no
    record has."""
    if len(data) > MAX_RECORD_BYTES:
        raise CorruptFile(where, f"metadata is larger than {MAX_RECORD_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise CorruptFile(where, f"metadata is not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise CorruptFile(where, "metadata is nested too deeply to be a record") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise CorruptFile(where, f"metadata is not valid JSON ({exc})") from None


@dataclass
class Coverage:
    calendar: str = ""
    missing_ranges: list[dict[str, str]] = field(default_factory=list)
    verified_empty: list[dict[str, str]] = field(default_factory=list)
    sources: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Coverage:
        """Typed and checked (ValueError): the spans' stamps are ISO, sources name providers."""
        data = data or {}
        if not isinstance(data, dict):
            raise ValueError("coverage is not an object")
        sources = _spans(data.get("sources"), "coverage.sources", ("start", "end"))
        for i, s in enumerate(sources):
            _text(s.get("provider"), f"coverage.sources[{i}].provider", empty=False)
        return cls(
            _text(data.get("calendar", ""), "coverage.calendar"),
            _spans(data.get("missing_ranges"), "coverage.missing_ranges", ("start", "end")),
            _spans(
                data.get("verified_empty"),
                "coverage.verified_empty",
                ("start", "end", "checked_at"),
            ),
            sources,
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
        """Shape-check and type one record; CorruptFile names `where` on any problem, so a
        crafted or damaged record is that one year's corrupt file and nothing else: every
        field the code reads later (columns, counts, stamps, sizes) is checked here."""
        try:
            return cls._from_json(data, where)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise CorruptFile(where, f"metadata is not a valid record: {exc}") from None

    @classmethod
    def _from_json(cls, data: Any, where: Any) -> YearRecord:
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
        version = data["schema_version"]
        if isinstance(version, bool) or version != SCHEMA_VERSION:
            raise CorruptFile(where, f"unknown schema_version {str(version)[:20]!r}")
        year = data["year"]
        if isinstance(year, bool) or not isinstance(year, int) or not 1 <= year <= 9999:
            raise ValueError("year is not a year")
        if data["timeframe"] not in TIMEFRAMES:
            raise ValueError("timeframe is not a timeframe")
        provider_info = data.get("provider_info") or {}
        if not isinstance(provider_info, dict):
            raise ValueError("provider_info is not an object")
        dates = [data.get(k) for k in ("start_date", "end_date")]
        return cls(
            symbol=_text(data["symbol"], "symbol", empty=False),
            timeframe=data["timeframe"],
            year=year,
            data_source=_text(data.get("data_source", "unknown"), "data_source"),
            created_at=_text(data.get("created_at", ""), "created_at"),
            last_updated=_text(data.get("last_updated", ""), "last_updated"),
            start_date=None if dates[0] is None else _stamp(dates[0], "start_date"),
            end_date=None if dates[1] is None else _stamp(dates[1], "end_date"),
            data_quality=_quality(data["data_quality"]),
            file_info=FileInfo.from_json(info),
            provider_info=dict(provider_info),
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
    from marketcache.core.frames import iso

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
