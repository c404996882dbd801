"""Binance's public klines archive: monthly and daily zip files that cost no API weight.

    ARCHIVE/data/spot/monthly/klines/SYMBOL/TF/SYMBOL-TF-YYYY-MM.zip      (+ .zip.CHECKSUM)
    ARCHIVE/data/spot/daily/klines/SYMBOL/TF/SYMBOL-TF-YYYY-MM-DD.zip     (+ .zip.CHECKSUM)

A month is taken from its monthly file once the month is over (the file may cover more than
the range asked; the rows are cut), the days of the running month from daily files. Each zip
is checked against its `.CHECKSUM` (sha256) before use; a missing file or a bad checksum makes
that file's range fall back to REST. Rows are the REST klines' columns; spot files switched to
microsecond timestamps in 2025 and some files carry a header line — both are handled.
Downloads go through their own rate-limited session (`archive_rate_limit`), with the
provider's timeout and retry budget.
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from marketcache.config import ProviderSettings
from marketcache.errors import ProviderError, ProviderUnavailable, RangeUnavailable
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

    def read(self, file: ArchiveFile, symbol: str) -> pd.DataFrame:
        """The file's klines, checksum-verified; RangeUnavailable when it is not there or does
        not match its checksum (the caller asks REST instead)."""
        last = getattr(self._last, "file", None)
        if last is not None and last[0] == file.url:
            frame: pd.DataFrame = last[1]
            return frame
        body = self._get(file.url, symbol)
        digest = self._get(file.url + ".CHECKSUM", symbol).decode("ascii", "replace").split()
        if not digest or digest[0].lower() != hashlib.sha256(body).hexdigest():
            raise RangeUnavailable(
                f"binance archive file {file.url.rsplit('/', 1)[-1]} does not match its checksum",
                provider="binance",
                symbol=symbol,
            )
        frame = parse_zip(body, symbol)
        self._last.file = (file.url, frame)
        return frame

    def _get(self, url: str, symbol: str) -> bytes:
        def once() -> bytes:
            try:
                response = self.session.get(url)
            except Exception as exc:
                raise map_requests_error(exc, "binance", symbol) from None
            if response.status_code == 404:
                raise RangeUnavailable(
                    f"binance archive has no {url.rsplit('/', 1)[-1]}",
                    provider="binance",
                    symbol=symbol,
                )
            raise_for_status(response, "binance", symbol)
            if response.status_code >= 400:
                raise ProviderError(
                    f"binance archive answered HTTP {response.status_code}", provider="binance"
                )
            content: bytes = response.content
            return content

        return with_retries(once, budget=self.settings.retry_budget, sleep=self.sleep)


def parse_zip(body: bytes, symbol: str) -> pd.DataFrame:
    """Klines CSV inside a zip → a frame (timestamp from open time, ms or µs)."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            names = [n for n in zf.namelist() if n.endswith(".csv")]
            raw = zf.read(names[0]) if names else b""
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
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
