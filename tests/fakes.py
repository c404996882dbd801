"""Fake provider servers on 127.0.0.1 speaking Binance, Yahoo and Alpha Vantage wire formats.

Each server holds bar series (recorded fixtures or generated), answers the real endpoints the
adapters call, counts requests, and can be told to misbehave for the next N data requests:
an HTTP status with headers, an HTML page, a truncated body, or a stall.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from conftest import FIXTURES

HTML_ERROR = b"<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>"


@dataclass
class Fault:
    status: int = 503
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    truncate: bool = False  # send the real answer cut in half (valid HTTP, broken JSON)


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class FakeServer:
    """A threaded HTTP server; subclasses implement `answer(path, query)`."""

    data_path = "/"

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each data request
        self.faults: deque[Fault] = deque()
        self.skew = pd.Timedelta(0)  # this server's clock minus ours, as its Date header says
        self.latency = 0.0  # seconds every data request takes
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # keep-alive answers without a 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:
                pass

            def date_time_string(self, timestamp: float | None = None) -> str:
                told = time.time() if timestamp is None else timestamp
                return super().date_time_string(told + server.skew.total_seconds())

            def do_GET(self) -> None:
                server._handle(self)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail_next(self, n: int = 1, **kwargs: Any) -> None:
        for _ in range(n):
            self.faults.append(Fault(**kwargs))

    def data_requests(self) -> list[dict[str, str]]:
        return [q for p, q in self.requests if p.startswith(self.data_path)]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        is_data = parts.path.startswith(self.data_path)
        with self._lock:
            self.requests.append((parts.path, query))
            if is_data:
                self.arrivals.append(time.monotonic())
            fault = self.faults.popleft() if is_data and self.faults else None
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if is_data and self.latency:
            time.sleep(self.latency)
        answer = self.answer(parts.path, query)
        if fault is not None and not fault.truncate:
            answer = Answer(
                fault.status,
                fault.body if fault.body is not None else b'{"error": "injected"}',
                fault.headers,
                "text/html" if fault.body and fault.body.startswith(b"<") else "application/json",
            )
        elif fault is not None:
            answer = Answer(200, answer.body[: len(answer.body) // 2], {})
        try:
            h.send_response(answer.status)
            h.send_header("Content-Type", answer.content_type)
            h.send_header("Content-Length", str(len(answer.body)))
            for k, v in answer.headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def answer(self, path: str, query: dict[str, str]) -> Answer:
        raise NotImplementedError


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(payload).encode(), headers or {})


def _num(x: float) -> str:
    return repr(float(x))


# ---- Binance ---------------------------------------------------------------------------------

INTERVAL_MS = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
               "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "1d": 86_400_000}  # fmt: skip


class FakeBinance(FakeServer):
    """GET /api/v3/klines, 1,000 rows at most, -1121 for symbols it does not list."""

    data_path = "/api/v3/klines"

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], pd.DataFrame] = {}
        self.encoded: dict[tuple[str, str], tuple[np.ndarray, list[bytes]]] = {}
        self.archive_missing: set[str] = set()  # zip names answered 404 (not published)
        self.archive_bad: set[str] = set()  # zip names whose CHECKSUM does not match
        self.archive_header: set[str] = set()  # zip names whose CSV starts with a header line
        self.archive_served: list[str] = []  # zip names downloaded
        # zip names whose file lacks the rows in [start, end) that REST still serves
        self.archive_lacking: dict[str, tuple[str, str]] = {}
        self._zips: dict[str, bytes] = {}
        super().__init__()

    def add(self, symbol: str, interval: str, frame: pd.DataFrame) -> None:
        """Serve `frame`; each kline is serialised once here, so paging is cheap."""
        frame = frame.sort_values("timestamp").reset_index(drop=True)
        ms = frame["timestamp"].to_numpy("datetime64[ms]").astype(np.int64)
        step = INTERVAL_MS[interval]
        cols = [frame[c].astype(float).tolist() for c in ("open", "high", "low", "close", "volume")]
        rows = [
            f'[{t},"{o!r}","{h!r}","{lo!r}","{c!r}","{v!r}",{t + step - 1},"0",0,"0","0","0"]'.encode()
            for t, o, h, lo, c, v in zip(ms.tolist(), *cols, strict=True)
        ]
        self.series[(symbol, interval)] = frame
        self.encoded[(symbol, interval)] = (ms, rows)
        with self._lock:
            self._zips = {
                k: v for k, v in self._zips.items() if not k.startswith(f"{symbol}-{interval}-")
            }

    def _archive(self, path: str) -> Answer:
        """data/spot/{monthly,daily}/klines/SYMBOL/TF/NAME.zip[.CHECKSUM], built from the same
        series as the REST answers: the klines CSV the archive holds (µs stamps from 2025)."""
        import hashlib

        parts = path.split("/")  # '', data, spot, monthly|daily, klines, SYMBOL, TF, FILE
        if len(parts) != 8:
            return Answer(404, b"<Error><Code>NoSuchKey</Code></Error>", {}, "application/xml")
        symbol, tf, file = parts[5], parts[6], parts[7]
        checksum = file.endswith(".CHECKSUM")
        name = file.removesuffix(".CHECKSUM").removesuffix(".zip")
        if name in self.archive_missing or (symbol, tf) not in self.series:
            return Answer(404, b"<Error><Code>NoSuchKey</Code></Error>", {}, "application/xml")
        with self._lock:
            body = self._zips.get(name)
        if body is None:
            body = self._zip(symbol, tf, name)
            with self._lock:
                self._zips[name] = body
        if checksum:
            digest = hashlib.sha256(body).hexdigest()
            if name in self.archive_bad:
                digest = "0" * 64
            return Answer(200, f"{digest}  {name}.zip\n".encode(), {}, "text/plain")
        with self._lock:
            self.archive_served.append(name)
        return Answer(200, body, {}, "application/zip")

    def _zip(self, symbol: str, tf: str, name: str) -> bytes:
        import zipfile

        period = name.removeprefix(f"{symbol}-{tf}-")
        lo = pd.Timestamp(period + ("-01" if len(period) == 7 else ""))
        hi = lo + (pd.DateOffset(months=1) if len(period) == 7 else pd.Timedelta(days=1))
        frame = self.series[(symbol, tf)]
        part = frame[(frame["timestamp"] >= lo) & (frame["timestamp"] < hi)]
        if name in self.archive_lacking:
            a, b = (pd.Timestamp(x) for x in self.archive_lacking[name])
            part = part[(part["timestamp"] < a) | (part["timestamp"] >= b)]
        step = INTERVAL_MS[tf]
        lines = ["open_time,open,high,low,close,volume,close_time,quote_volume,count,"
                 "taker_buy_volume,taker_buy_quote_volume,ignore"] if name in self.archive_header else []  # fmt: skip
        for row in part.itertuples():
            ms = int(pd.Timestamp(row.timestamp).value // 1_000_000)
            scale = 1000 if row.timestamp >= pd.Timestamp("2025-01-01") else 1
            lines.append(f"{ms * scale},{row.open!r},{row.high!r},{row.low!r},{row.close!r},"
                         f"{row.volume!r},{(ms + step - 1) * scale},0,0,0,0,0")  # fmt: skip
        sink = io.BytesIO()
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{name}.csv", "\n".join(lines) + "\n")
        return sink.getvalue()

    def add_fixture(self, name: str) -> tuple[str, str, pd.DataFrame]:
        raw = json.loads((FIXTURES / "binance" / name).read_text())
        rows = raw["klines"]
        frame = pd.DataFrame(
            {
                "timestamp": pd.to_datetime([r[0] for r in rows], unit="ms"),
                **{c: [float(r[i]) for r in rows] for i, c in enumerate(
                    ["open", "high", "low", "close", "volume"], start=1)},
            }
        )  # fmt: skip
        self.add(raw["symbol"], raw["interval"], frame)
        return raw["symbol"], raw["interval"], frame

    def answer(self, path: str, query: dict[str, str]) -> Answer:
        if path.startswith("/data/spot/"):
            return self._archive(path)
        if path == "/api/v3/ping":
            return _json(200, {})
        if path != self.data_path:
            return _json(404, {"code": -1, "msg": "not found"})
        key = (query.get("symbol", ""), query.get("interval", ""))
        if key not in self.encoded:
            return _json(400, {"code": -1121, "msg": "Invalid symbol."})
        ms, rows = self.encoded[key]
        lo = int(query.get("startTime", 0))
        hi = int(query.get("endTime", 2**62))
        limit = min(int(query.get("limit", 500)), 1000)
        first = int(np.searchsorted(ms, lo, side="left"))
        last = min(int(np.searchsorted(ms, hi, side="right")), first + limit)
        return Answer(200, b"[" + b",".join(rows[first:last]) + b"]")


# ---- Yahoo -----------------------------------------------------------------------------------

YAHOO_INTERVALS = {"1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "60m": "1h",
                   "1d": "1d", "1wk": "1w", "1mo": "1M"}  # fmt: skip


@dataclass
class YahooSeries:
    """The truth a fake Yahoo serves from: bars as traded, and the actions of the symbol."""

    frame: pd.DataFrame  # as traded; daily: session dates; intraday: UTC bar opens
    tz: str
    open_at: str  # local time Yahoo stamps a daily bar with (the session open)
    splits: list[tuple[str, float]]  # (first session on the new basis, new shares per old)
    dividends: list[tuple[str, float]]  # (ex date, amount as traded)


SUMMARY_PATH = "/v10/finance/quoteSummary/"
AAPL_SUMMARY = {  # the shape of a real quoteSummary answer (values abridged)
    "assetProfile": {"address1": "One Apple Park Way", "city": "Cupertino", "country": "United States",
                     "industry": "Consumer Electronics", "sector": "Technology",
                     "fullTimeEmployees": 164000, "companyOfficers": [], "maxAge": 86400},
    "summaryDetail": {"maxAge": 1, "beta": {"raw": 1.24, "fmt": "1.24"},
                      "trailingPE": {"raw": 37.52, "fmt": "37.52"},
                      "marketCap": {"raw": 3442000000000, "fmt": "3.44T", "longFmt": "3,442,000,000,000"},
                      "dividendYield": {"raw": 0.0044, "fmt": "0.44%"}, "currency": "USD",
                      "fiftyTwoWeekHigh": {"raw": 237.23, "fmt": "237.23"}, "exDividendDate": {}},
    "defaultKeyStatistics": {"sharesOutstanding": {"raw": 15115800000, "fmt": "15.12B"},
                             "forwardEps": {"raw": 8.31, "fmt": "8.31"}, "maxAge": 1},
    "financialData": {"currentPrice": {"raw": 228.52, "fmt": "228.52"},
                      "totalRevenue": {"raw": 391035000000, "fmt": "391.04B"},
                      "financialCurrency": "USD", "maxAge": 86400},
    "price": {"symbol": "AAPL", "longName": "Apple Inc.", "currency": "USD", "maxAge": 1,
              "regularMarketPrice": {"raw": 228.52, "fmt": "228.52"}},
}  # fmt: skip


class FakeYahoo(FakeServer):
    """Cookie (/), crumb (/v1/test/getcrumb) and chart (/v8/finance/chart/SYMBOL) endpoints.

    It answers as Yahoo does, "as of" `self.as_of` (default: now): OHLC and volume split-
    adjusted by every split known on that day, `adjclose` also dividend-adjusted (CRSP rule),
    and the `events` (splits, dividends — amounts in the adjusted basis) inside the asked
    window. Daily bars are stamped at the session open in the exchange's zone (09:30 New York,
    10:00 Sydney, 00:00 London for FX); `null` quotes and missing `timestamp` arrays are
    reproduced.
    """

    data_path = "/v8/finance/chart/"

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], YahooSeries] = {}
        self.raw: dict[tuple[str, str], Any] = {}
        self.summaries: dict[str, Any] = {"AAPL": AAPL_SUMMARY}
        self.as_of: pd.Timestamp | None = None
        super().__init__()

    def add_recorded(self, name: str) -> dict[str, Any]:
        """Answer every chart request for the fixture's symbol and interval with its body as is."""
        body = json.loads((FIXTURES / "yahoo" / name).read_text())["body"]
        meta = body["chart"]["result"][0]["meta"]
        self.raw[(meta["symbol"], YAHOO_INTERVALS[meta["dataGranularity"]])] = body
        return dict(body)

    def add(
        self,
        symbol: str,
        tf: str,
        frame: pd.DataFrame,
        tz: str = "America/New_York",
        *,
        open_at: str = "09:30",
        splits: list[tuple[str, float]] | None = None,
        dividends: list[tuple[str, float]] | None = None,
    ) -> None:
        """Serve `frame` (as traded: UTC bar opens intraday, session dates daily)."""
        self.series[(symbol, tf)] = YahooSeries(
            frame.sort_values("timestamp").reset_index(drop=True), tz, open_at,
            sorted(splits or []), sorted(dividends or []),
        )  # fmt: skip

    def add_fixture(self, name: str) -> tuple[str, pd.DataFrame, dict[str, Any]]:
        """Serve a recorded chart body as is; returns (symbol, the rows as recorded, the body)."""
        record = json.loads((FIXTURES / "yahoo" / name).read_text())
        result = record["body"]["chart"]["result"][0]
        meta = result["meta"]
        quote = result["indicators"]["quote"][0]
        frame = pd.DataFrame(
            {
                "epoch": result["timestamp"],
                **{c: quote[c] for c in ("open", "high", "low", "close", "volume")},
            }
        )
        frame["timestamp"] = pd.to_datetime(frame["epoch"], unit="s")
        self.add_recorded(name)
        return meta["symbol"], frame, record["body"]

    def now(self) -> pd.Timestamp:
        return self.as_of if self.as_of is not None else pd.Timestamp.now().floor("s")

    def answer(self, path: str, query: dict[str, str]) -> Answer:
        if path in ("/", ""):
            return Answer(200, b"ok", {"Set-Cookie": "A3=fake; Path=/"}, "text/html")
        if path.endswith("/getcrumb"):
            return Answer(200, b"fakecrumb", {}, "text/plain")
        if path.startswith(SUMMARY_PATH):
            return self._summary(path[len(SUMMARY_PATH) :])
        if not path.startswith(self.data_path):
            return Answer(404, b"<html>not here</html>", {}, "text/html")
        symbol = path[len(self.data_path) :]
        tf = YAHOO_INTERVALS.get(query.get("interval", "1d"), "?")
        if (symbol, tf) in self.raw:
            return _json(200, self.raw[(symbol, tf)])
        recorded = next((b for (sym, _), b in self.raw.items() if sym == symbol), None)
        if recorded is not None and (symbol, tf) not in self.series:  # known symbol, no bars
            meta = recorded["chart"]["result"][0]["meta"]
            return _json(200, {"chart": {"result": [{"meta": meta, "indicators": {"quote": [{}]}}], "error": None}})  # fmt: skip
        entry = self.series.get((symbol, tf))
        if entry is None:
            other = next((v for (sym, _), v in self.series.items() if sym == symbol), None)
            if other is None:
                return _json(404, {"chart": {"result": None, "error": {
                    "code": "Not Found", "description": "No data found, symbol may be delisted"}}})  # fmt: skip
            entry = YahooSeries(other.frame.iloc[:0], other.tz, other.open_at, other.splits, other.dividends)  # fmt: skip
        return _json(200, self._chart(symbol, tf, entry, query))

    def _summary(self, symbol: str) -> Answer:
        """quoteSummary as Yahoo shapes it: modules of {"raw", "fmt"} cells and plain values."""
        body = self.summaries.get(symbol)
        if body is None:
            return _json(404, {"quoteSummary": {"result": None, "error": {
                "code": "Not Found", "description": f"Quote not found for symbol: {symbol}"}}})  # fmt: skip
        return _json(200, {"quoteSummary": {"result": [body], "error": None}})

    def _chart(self, symbol: str, tf: str, s: YahooSeries, query: dict[str, str]) -> Any:
        p1, p2 = int(query.get("period1", 0)), int(query.get("period2", 2**40))
        now = self.now()
        daily = tf in ("1d", "1w", "1M")
        frame = s.frame
        if daily:
            frame = frame[frame["timestamp"] < now.normalize()]  # today's session is not over
        else:
            frame = frame[frame["timestamp"] < now]
        splits = [(d, r) for d, r in s.splits if pd.Timestamp(d) <= now]
        dividends = [(d, a) for d, a in s.dividends if pd.Timestamp(d) <= now]
        epochs = self._epochs(frame["timestamp"], s) if daily else _epoch(frame["timestamp"])
        # split adjustment as of `now`, per bar: the product of the later splits' ratios
        day = frame["timestamp"].dt.normalize()
        factor = np.ones(len(frame))
        for d, r in splits:
            factor[(day < pd.Timestamp(d)).to_numpy()] *= r
        closes = frame["close"].to_numpy(float)
        divf = np.ones(len(frame))
        for d, a in dividends:  # CRSP: scale closes before ex by 1 - amount / previous close
            before = np.flatnonzero((day < pd.Timestamp(d)).to_numpy())
            if len(before):
                divf[: before[-1] + 1] *= 1 - a / closes[before[-1]]
        sel = (epochs >= p1) & (epochs < p2)
        meta = {"symbol": symbol, "exchangeTimezoneName": s.tz, "dataGranularity": query.get("interval"),
                "currency": "USD", "gmtoffset": -18000, "timezone": "EST"}  # fmt: skip
        result: dict[str, Any] = {"meta": meta, "indicators": {"quote": [{}]}}
        if sel.any():
            part, f = frame[sel], factor[sel]
            result["timestamp"] = [int(e) for e in epochs[sel]]
            quote = {c: part[c].to_numpy(float) / f for c in ("open", "high", "low", "close")}
            quote["volume"] = part["volume"].to_numpy(float) * f
            result["indicators"]["quote"][0] = {c: _nullable(v) for c, v in quote.items()}
            if daily:
                result["indicators"]["adjclose"] = [
                    {"adjclose": _nullable(quote["close"] * divf[sel])}
                ]
        events: dict[str, Any] = {}
        for d, r in splits:
            e = int(self._epochs(pd.Series([pd.Timestamp(d)]), s)[0])
            if p1 <= e < p2:
                num, den = (r, 1.0) if r >= 1 else (1.0, round(1 / r, 6))
                events.setdefault("splits", {})[str(e)] = {
                    "date": e, "numerator": num, "denominator": den, "splitRatio": f"{num:g}:{den:g}"}  # fmt: skip
        for d, a in dividends:
            e = int(self._epochs(pd.Series([pd.Timestamp(d)]), s)[0])
            later = float(np.prod([r for sd, r in splits if pd.Timestamp(sd) > pd.Timestamp(d)]))
            if p1 <= e < p2:
                events.setdefault("dividends", {})[str(e)] = {"amount": a / later, "date": e}
        if events:
            result["events"] = events
        return {"chart": {"result": [result], "error": None}}

    def _epochs(self, days: pd.Series, s: YahooSeries) -> np.ndarray:
        """Session dates → epoch seconds of the local open (how Yahoo stamps daily bars)."""
        hours, minutes = (int(x) for x in s.open_at.split(":"))
        local = (pd.to_datetime(days) + pd.Timedelta(hours=hours, minutes=minutes)).dt.tz_localize(
            s.tz
        )
        return _epoch(local.dt.tz_convert("UTC").dt.tz_localize(None))


def _epoch(ts: pd.Series) -> np.ndarray:
    return np.asarray(pd.to_datetime(ts).to_numpy("datetime64[s]").astype(np.int64))


def _nullable(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


# ---- Alpha Vantage ---------------------------------------------------------------------------


AAPL_OVERVIEW = {  # the shape of a real OVERVIEW answer: every value a string
    "Symbol": "AAPL", "AssetType": "Common Stock", "Name": "Apple Inc", "Exchange": "NASDAQ",
    "Currency": "USD", "Country": "USA", "Sector": "TECHNOLOGY", "Industry": "ELECTRONIC COMPUTERS",
    "MarketCapitalization": "3442000000000", "PERatio": "37.5", "Beta": "1.239",
    "DividendYield": "0.0044", "EPS": "6.08", "ForwardPE": "None", "AnalystTargetPrice": "240.1",
    "SharesOutstanding": "15115800000", "DividendDate": "2024-11-14", "ExDividendDate": "-",
}  # fmt: skip


class FakeAlphaVantage(FakeServer):
    """GET /query?function=TIME_SERIES_INTRADAY|TIME_SERIES_DAILY.

    Intraday labels are US/Eastern bar *starts*; daily series are as traded (unadjusted)."""

    data_path = "/query"

    def __init__(self, key: str = "demo-key") -> None:
        self.key = key
        self.intraday: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
        self.daily: dict[str, dict[str, dict[str, str]]] = {}
        self.overviews: dict[str, dict[str, str]] = {"AAPL": AAPL_OVERVIEW}
        self.quota_left: int | None = None
        super().__init__()

    def add_fixture(self, name: str) -> tuple[str, dict[str, Any]]:
        body = json.loads((FIXTURES / "alphavantage" / name).read_text())
        meta = body["Meta Data"]
        interval = meta["4. Interval"]
        self.intraday[(meta["2. Symbol"], interval)] = body[f"Time Series ({interval})"]
        return meta["2. Symbol"], body

    def add_intraday(self, symbol: str, interval: str, frame: pd.DataFrame) -> None:
        """`frame` timestamps are UTC bar opens; served as US/Eastern bar-start labels."""
        opens = frame["timestamp"].dt.tz_localize("UTC")
        labels = opens.dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d %H:%M:%S")
        self.intraday[(symbol, interval)] = {
            label: _av_row(row) for label, row in zip(labels, frame.itertuples(), strict=True)
        }

    def add_daily(self, symbol: str, frame: pd.DataFrame) -> None:
        self.daily[symbol] = {
            f"{row.timestamp:%Y-%m-%d}": _av_row(row) for row in frame.itertuples()
        }

    def answer(self, path: str, query: dict[str, str]) -> Answer:
        if path != self.data_path:
            return Answer(404, b"<html>not here</html>", {}, "text/html")
        if query.get("apikey") != self.key:
            return _json(200, {"Error Message": "the parameter apikey is invalid or missing."})
        if self.quota_left is not None:
            if self.quota_left <= 0:
                return _json(200, {"Information": f"We have detected your API key as {self.key} and our standard API rate limit is 25 requests per day. Please subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to instantly remove all daily rate limits."})  # fmt: skip  # as the service answers (2024-): it quotes the key
            self.quota_left -= 1
        symbol = query.get("symbol", "")
        if query.get("function") == "OVERVIEW":  # an unknown symbol gets {}
            return _json(200, self.overviews.get(symbol, {}))
        if query.get("function") == "TIME_SERIES_DAILY":
            series = self.daily.get(symbol)
            if series is None:
                return _json(200, {"Error Message": "Invalid API call. Please retry or visit the documentation (https://www.alphavantage.co/documentation/) for TIME_SERIES_DAILY."})  # fmt: skip
            return _json(200, {"Meta Data": {"2. Symbol": symbol}, "Time Series (Daily)": series})
        interval = query.get("interval", "")
        series = self.intraday.get((symbol, interval))
        if series is None:
            return _json(200, {"Error Message": "Invalid API call. Please retry or visit the documentation (https://www.alphavantage.co/documentation/) for TIME_SERIES_INTRADAY."})  # fmt: skip
        month = query.get("month")
        if month:
            series = {k: v for k, v in series.items() if k.startswith(month)}
        return _json(200, {
            "Meta Data": {"2. Symbol": symbol, "4. Interval": interval, "6. Time Zone": "US/Eastern"},
            f"Time Series ({interval})": series})  # fmt: skip


def _av_row(row: Any) -> dict[str, str]:
    return {"1. open": _num(row.open), "2. high": _num(row.high), "3. low": _num(row.low),
            "4. close": _num(row.close), "5. volume": _num(row.volume)}  # fmt: skip


def config_for(
    binance: FakeServer | None = None,
    yahoo: FakeServer | None = None,
    alpha_vantage: FakeServer | None = None,
    *,
    timeout: float = 2.0,
    retry_budget: float = 20.0,
    extra: str = "",
    rate: str = "{per_second: 200}",
    archive: bool = False,
) -> str:
    """A providers.yaml pointing every provider at the fakes (unset ones at a dead port).

    The Binance klines archive is off unless `archive` (then the fake Binance serves it)."""
    dead = "http://127.0.0.1:9"

    def block(name: str, server: FakeServer | None, more: str = "") -> str:
        url = server.url if server else dead
        return (
            f"  {name}: {{base_url: '{url}', timeout: {timeout}, retry_budget: {retry_budget},"
            f" rate_limit: {rate}{more}}}\n"
        )

    archive_url = binance.url if archive and binance else ""
    return (
        "providers:\n"
        + block("binance", binance, f", archive_url: '{archive_url}', archive_rate_limit: {rate}")
        + block("yahoo", yahoo)
        + block("alpha_vantage", alpha_vantage, ", api_key: '${ALPHAVANTAGE_API_KEY}'")
        + extra
    )
