"""Binance's public klines archive: monthly and daily zip files that cost no API weight.

    ARCHIVE/data/spot/monthly/klines/SYMBOL/TF/SYMBOL-TF-YYYY-MM.zip      (+ .zip.CHECKSUM)
    ARCHIVE/data/spot/daily/klines/SYMBOL/TF/SYMBOL-TF-YYYY-MM-DD.zip     (+ .zip.CHECKSUM)

A month is taken from its monthly file once the month is over (the file may cover more than
the range asked; the rows are cut), the days of the running month from daily files. Each zip
is checked against its `.CHECKSUM` (sha256) before use; a missing file or a bad checksum makes
that file's range fall back to REST. Rows are the REST klines' columns; spot files switched to
microsecond timestamps in 2025 and some files carry a header line — both are handled.
Downloads go through their own rate-limited session (`archive_rate_limit`), with the
provider's timeout (a deadline for the whole file), retry budget and answer size cap; the CSV
inside is read only up to `settings.max_archive_member_mb` (a zip bomb is refused, unread).
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marketcache.config.schema import ProviderSettings
from marketcache.core.timeframes import Timeframe
from marketcache.errors import ProviderError, ProviderUnavailable, RangeUnavailable
from marketcache.providers.bounded import MiB, describe_size
from marketcache.providers.http import (
    TimeoutSession,
    make_session,
    map_requests_error,
    raise_for_status,
    with_retries,
)

ARCHIVE_TIMEFRAMES = frozenset(
    {"1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"}
)
SOURCE = "binance-archive"
REST_PAGE = 1000  # klines per REST request


@dataclass(frozen=True)
class ArchiveFile:
    url: str
    start: pd.Timestamp  # the rows this file holds
    end: pd.Timestamp


def plan_files(
    base: str, symbol: str, tf: str, start: pd.Timestamp, end: pd.Timestamp, today: pd.Timestamp
) -> list[ArchiveFile]:
    """The files that cover [start, end): whole finished months monthly, other days daily."""
    files: list[ArchiveFile] = []
    month = pd.Timestamp(start.year, start.month, 1)
    this_month = pd.Timestamp(today.year, today.month, 1)
    root = f"{base}/data/spot"
    while month < end:
        nxt = month + pd.DateOffset(months=1)
        if nxt <= this_month:  # the month is over: its monthly file exists
            name = f"{symbol}-{tf}-{month:%Y-%m}"
            files.append(ArchiveFile(f"{root}/monthly/klines/{symbol}/{tf}/{name}.zip", month, nxt))
        else:
            day = max(month, start.normalize())
            while day < min(nxt, end):
                name = f"{symbol}-{tf}-{day:%Y-%m-%d}"
                files.append(
                    ArchiveFile(
                        f"{root}/daily/klines/{symbol}/{tf}/{name}.zip",
                        day,
                        day + pd.Timedelta(days=1),
                    )
                )
                day += pd.Timedelta(days=1)
        month = nxt
    return files


def archive_pays(
    files: list[ArchiveFile],
    start: pd.Timestamp,
    end: pd.Timestamp,
    timeframe: Timeframe,
    cached: Callable[[ArchiveFile], bool] = lambda f: False,
) -> list[ArchiveFile]:
    """The files worth downloading: those of a kind (monthly, daily) whose downloads — two
    requests a file, its CHECKSUM included; none for a file already read — are fewer than the
    REST pages the same bars would take. So 1m and 3m months come from the archive, while
    1h or 1d years (9 and 1 pages against 24 downloads) and daily files (1,440 1m bars, about
    1.4 pages, against 2 downloads) go to REST."""
    chosen: list[ArchiveFile] = []
    for daily in (False, True):
        group = [f for f in files if ("/daily/" in f.url) is daily]
        if not group:
            continue
        lo, hi = max(group[0].start, start), min(group[-1].end, end)
        bars = max(0, math.ceil((hi - lo) / pd.Timedelta(minutes=timeframe.minutes)))
        downloads = 2 * sum(1 for f in group if not cached(f))
        if downloads < math.ceil(bars / REST_PAGE):
            chosen += group
    return sorted(chosen, key=lambda f: f.start)


def bare_stretches(
    stamps: pd.Series, lo: pd.Timestamp, hi: pd.Timestamp, timeframe: Timeframe
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The runs [a, b) of bar opens in [lo, hi) that a file has no row for."""
    step = pd.Timedelta(minutes=timeframe.minutes).value
    first = lo.value + (-(lo.value % step)) % step  # the first bar open at or after lo
    grid = np.arange(first, hi.value, step, dtype=np.int64)
    have = np.sort(stamps.to_numpy("datetime64[ns]").astype(np.int64))
    missing = np.flatnonzero(~np.isin(grid, have))
    if not len(missing):
        return []
    breaks = np.flatnonzero(np.diff(missing) > 1)
    starts, ends = np.r_[missing[0], missing[breaks + 1]], np.r_[missing[breaks], missing[-1]]
    return [
        (pd.Timestamp(grid[a]), min(pd.Timestamp(grid[b] + step), hi))
        for a, b in zip(starts, ends, strict=True)
    ]


def page_clusters(
    stretches: list[tuple[pd.Timestamp, pd.Timestamp]], timeframe: Timeframe
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """Stretches joined while one REST page still covers them all: one request per cluster."""
    width = pd.Timedelta(minutes=timeframe.minutes) * (REST_PAGE - 1)
    out: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    for a, b in sorted(stretches):
        if out and b - out[-1][0] <= width:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class Archive:
    """Downloads and reads archive files (one session of its own, rate-limited apart)."""

    def __init__(
        self, settings: ProviderSettings, state_dir: Path | None, sleep: Callable[[float], None]
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.sleep = sleep
        self._session: TimeoutSession | None = None
        # the last file read on each thread: populate commits a range in chunks, and a month
        # file straddling two chunks is downloaded once
        self._last = threading.local()
        # files the archive answered 404 for, this run: a missing month is not asked again
        # for the next chunk of the same range, nor by another worker
        self._missing: set[str] = set()
        self._missing_lock = threading.Lock()

    @property
    def session(self) -> TimeoutSession:
        if self._session is None:
            from dataclasses import replace

            limited = replace(
                self.settings, name=SOURCE, rate_limit=self.settings.archive_rate_limit
            )
            self._session = make_session(limited, self.state_dir)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def cached(self, file: ArchiveFile) -> bool:
        """Whether `file` is the one this thread read last (reading it again is free)."""
        last = getattr(self._last, "file", None)
        return (last is not None and last[0] == file.url) or file.url in self._missing

    def read(self, file: ArchiveFile, symbol: str) -> pd.DataFrame:
        """The file's klines, checksum-verified; RangeUnavailable when it is not there or does
        not match its checksum (the caller asks REST instead)."""
        last = getattr(self._last, "file", None)
        if last is not None and last[0] == file.url:
            frame: pd.DataFrame = last[1]
            return frame
        if file.url in self._missing:
            raise self._not_there(file.url, symbol)
        try:
            body = self._get(file.url, symbol)
        except RangeUnavailable:
            with self._missing_lock:
                self._missing.add(file.url)
            raise
        digest = self._get(file.url + ".CHECKSUM", symbol).decode("ascii", "replace").split()
        if not digest or digest[0].lower() != hashlib.sha256(body).hexdigest():
            raise RangeUnavailable(
                f"binance archive file {file.url.rsplit('/', 1)[-1]} does not match its checksum",
                provider="binance",
                symbol=symbol,
            )
        frame = parse_zip(body, symbol, self.settings.max_member_bytes)
        self._last.file = (file.url, frame)
        return frame

    @staticmethod
    def _not_there(url: str, symbol: str) -> RangeUnavailable:
        return RangeUnavailable(
            f"binance archive has no {url.rsplit('/', 1)[-1]}", provider="binance", symbol=symbol
        )

    def _get(self, url: str, symbol: str) -> bytes:
        def once() -> bytes:
            try:
                response = self.session.get(url)
            except Exception as exc:
                raise map_requests_error(exc, "binance", symbol) from None
            if response.status_code == 404:
                raise self._not_there(url, symbol)
            raise_for_status(response, "binance", symbol)
            if response.status_code >= 400:
                raise ProviderError(
                    f"binance archive answered HTTP {response.status_code}", provider="binance"
                )
            content: bytes = response.content
            return content

        return with_retries(once, budget=self.settings.retry_budget, sleep=self.sleep)


def parse_zip(body: bytes, symbol: str, max_member: int = 64 * MiB) -> pd.DataFrame:
    """Klines CSV inside a zip → a frame (timestamp from open time, ms or µs).

    The CSV is inflated only up to `max_member` bytes, whatever its header claims: a member
    that inflates further (a zip bomb) is refused with a ProviderError that is not retried.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            infos = [i for i in zf.infolist() if i.filename.endswith(".csv")]
            raw = b""
            if infos:
                info = infos[0]
                if info.file_size <= max_member:  # its header may lie: read no more anyway
                    with zf.open(info) as member:
                        raw = member.read(max_member + 1)
                if info.file_size > max_member or len(raw) > max_member:
                    cap = describe_size(max_member)
                    size = (
                        describe_size(info.file_size)
                        if info.file_size > max_member
                        else f"more than {cap}"  # its header said less
                    )
                    raise ProviderError(
                        f"binance archive member {info.filename} inflates to {size}, over the"
                        f" {cap} cap (settings.max_archive_member_mb):"
                        " refused — check providers.binance.archive_url",
                        provider="binance",
                        symbol=symbol,
                    )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, OSError, EOFError) as exc:
        raise ProviderUnavailable(
            f"binance archive zip is unreadable: {exc}", provider="binance", symbol=symbol
        ) from None
    lines = raw.splitlines()
    if lines and not lines[0][:1].isdigit():  # a header line
        lines = lines[1:]
    if not lines:
        return pd.DataFrame(columns=["timestamp", "open", "high", "low", "close", "volume"])
    table = pd.read_csv(
        io.BytesIO(b"\n".join(lines)),
        header=None,
        usecols=range(6),
        names=["t", "open", "high", "low", "close", "volume"],
    )
    t = table["t"].to_numpy(np.int64)
    unit: Any = np.where(t >= 10**14, 1_000, 1_000_000)  # µs from 2025 on, ms before
    table["timestamp"] = pd.to_datetime(t * unit, unit="ns")
    return table.drop(columns="t")[["timestamp", "open", "high", "low", "close", "volume"]]
