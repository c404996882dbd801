"""The FastAPI app over one cache: the contract's routes, read-only (DESIGN.md "Serving").

Every route is a thin call into `RangeReader` / `UnifiedCache` / `DataManager`; parameters are
parsed here so that a bad one is a 400 naming it; every failure is the JSON of errors.py
(routes are guarded: no traceback reaches the client or the log). Blocking reads run in the
threadpool (sync routes, sync body iterators), the WebSocket hub on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response, StreamingResponse

from marketcache import __version__
from marketcache.errors import UsageError
from marketcache.serve.errors import ApiError, NotFound, body, status_of
from marketcache.serve.reader import RangeReader
from marketcache.serve.results import ResultCache

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.cache.facade import UnifiedCache
    from marketcache.serve.live import LiveSource
    from marketcache.serve.reader import RangePlan

PREFIX = "/api/v1/market-data"
ACCEPT = {
    "text/csv": "csv",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.parquet": "parquet",
    "application/json": "json",
}
log = logging.getLogger("marketcache.serve")


def create_app(
    cache: UnifiedCache,
    *,
    token: str | None = None,
    live: LiveSource | None = None,
    poll_interval: float = 0.5,
    cache_mb: float | None = None,
) -> FastAPI:
    """The API over `cache`. `token`: required of every request but /health; `live`: a
    follower's forming bars and closed-bar events; `poll_interval`: how often the stream
    watcher reads the watched series' records; `cache_mb`: the result cache's bound
    (default `settings.serve_cache_mb`)."""
    from marketcache.manager import DataManager
    from marketcache.serve.stream import Hub

    mb = cache.settings.options.serve_cache_mb if cache_mb is None else cache_mb
    results = ResultCache(int(mb * 1024 * 1024))
    reader = RangeReader(cache, results)
    hub = Hub(reader, interval=poll_interval, live=live)
    api = Api(cache, reader, results, DataManager(cache), live)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="marketcache",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.results, app.state.reader, app.state.hub = results, reader, hub

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _error(NotFound(f"no such path {request.url.path}: see {PREFIX}/…"))

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return _error(ApiError(405, f"{request.method} is not allowed: the API is read-only"))

    app.get("/health")(api.health)
    app.get(f"{PREFIX}/symbols")(api.symbols)
    app.get(f"{PREFIX}/availability")(api.availability)
    app.get(f"{PREFIX}/historical/{{symbol:path}}")(api.historical)
    app.get(f"{PREFIX}/quote/{{symbol:path}}")(api.quote)
    app.get(f"{PREFIX}/quotes")(api.quotes)
    app.get(f"{PREFIX}/indicators/{{indicator}}/{{symbol:path}}")(api.indicator)

    @app.websocket(f"{PREFIX}/stream")
    async def stream(websocket: WebSocket) -> None:
        await _stream(hub, websocket)

    if token:
        from marketcache.serve.auth import TokenAuth

        app.add_middleware(TokenAuth, token=token)
    return app


def _error(exc: BaseException) -> JSONResponse:
    status, message = status_of(exc)
    return JSONResponse(body(status, message), status_code=status)


def guarded(route: Callable[..., Any]) -> Callable[..., Any]:
    """Every exception of a route becomes its JSON error (never a traceback)."""

    @functools.wraps(route)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return route(*args, **kwargs)
        except Exception as exc:
            return _error(exc)

    return run


class SafeStream(StreamingResponse):
    """A streamed body that, should a read fail after the first byte went out, ends the
    connection without the final chunk: the client sees a broken transfer, never a body
    that looks complete (and the log gets one line, not a traceback)."""

    async def stream_response(self, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self.body_iterator:
                data = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode()
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except Exception as exc:
            log.warning("answer cut short: %s", status_of(exc)[1])
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class Api:
    def __init__(
        self,
        cache: UnifiedCache,
        reader: RangeReader,
        results: ResultCache,
        manager: Any,
        live: LiveSource | None,
    ) -> None:
        self.cache, self.reader, self.results = cache, reader, results
        self.manager, self.live = manager, live
        self.body_limit = results.max_bytes // 8  # answers kept whole up to this size

    # ---- parameters --------------------------------------------------------------------------

    @staticmethod
    def allow(request: Request, *names: str) -> None:
        for name in request.query_params:
            if name not in names and name != "token":
                takes = ", ".join(names) if names else "no parameters"
                raise UsageError(f"unknown parameter '{name}': this route takes {takes}")

    def series(self, symbol: str, interval: str | None) -> tuple[str, str]:
        """A stored (symbol, timeframe): 400 when either cannot be one, 404 when not cached."""
        from marketcache.core.symbols import normalize_symbol
        from marketcache.core.timeframes import parse_timeframe

        sym = normalize_symbol(symbol)
        try:
            tf = parse_timeframe(interval or "").name
        except UsageError as exc:
            raise UsageError(f"interval: {exc}") from None
        stored = self.cache.list_timeframes(sym)
        if not stored:
            raise NotFound(f"symbol {sym} is not in the cache")
        if tf not in stored:
            raise NotFound(f"{sym} has no {tf} bars in the cache (it has {', '.join(stored)})")
        return sym, tf

    @staticmethod
    def dates(request: Request) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
        from marketcache.core.models import parse_date

        q = request.query_params
        lo = parse_date(q["from"], option="from") if q.get("from") else None
        hi = parse_date(q["to"], option="to") if q.get("to") else None
        if lo is not None and hi is not None and lo >= hi:
            raise UsageError(f"from {lo} is not before to {hi}: the range is [from, to)")
        return lo, hi

    @staticmethod
    def negotiate(request: Request) -> str:
        from marketcache.serve.formats import FORMATS

        asked = request.query_params.get("format")
        if asked is not None:
            if asked not in FORMATS:
                raise UsageError(f"format={asked!r}: use one of {', '.join(FORMATS)}")
            return asked
        for part in request.headers.get("accept", "").split(","):
            found = ACCEPT.get(part.split(";")[0].strip().lower())
            if found:
                return found
        return "json"

    # ---- answers -----------------------------------------------------------------------------

    def cached_or_stream(
        self,
        request: Request,
        plan: RangePlan,
        variant: str,
        media: str,
        make: Callable[[], Iterator[bytes]],
    ) -> Response:
        """304 when the client has it; the kept answer when there is one; else `make()`
        streamed (and kept when small enough). Every year is checked before the first byte."""
        etag = plan.etag(variant)
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        kept = self.results.get(("body", etag))
        if kept is not None:
            return Response(kept, media_type=media, headers={**headers, "X-Cache": "hit"})
        decoded = self.reader.check(plan)
        headers.update({"X-Cache": "miss", "X-Years-Decoded": str(decoded)})
        years = frozenset(self.reader.year_id(r) for r in plan.records)
        return SafeStream(self._keep(make(), etag, years), media_type=media, headers=headers)

    def _keep(self, chunks: Iterator[bytes], etag: str, years: frozenset[Any]) -> Iterator[bytes]:
        parts: list[bytes] | None = []
        size = 0
        for chunk in chunks:
            if parts is not None:
                size += len(chunk)
                parts = parts if size <= self.body_limit else None
                if parts is not None:
                    parts.append(chunk)
            yield chunk
        if parts is not None:
            self.results.put(("body", etag), b"".join(parts), size, years)

    @guarded
    def health(self) -> Any:
        try:
            self.cache.backend.exists()
        except Exception as exc:
            out = {"ok": False, "backend": self.cache.backend.name, "version": __version__}
            return JSONResponse({**out, "error": status_of(exc)[1]}, status_code=503)
        return {"ok": True, "backend": self.cache.backend.name, "version": __version__}

    def _availability(self) -> list[dict[str, Any]]:
        import pandas as pd

        frame = self.manager.availability()
        frame = frame.astype(object).where(pd.notna(frame), None)
        return list(frame.to_dict(orient="records"))

    @guarded
    def availability(self, request: Request) -> Any:
        self.allow(request)
        return self._availability()

    @guarded
    def symbols(self, request: Request) -> Any:
        self.allow(request)
        out: dict[str, list[dict[str, Any]]] = {}
        for row in self._availability():
            out.setdefault(row["symbol"], []).append(
                {k: row[k] for k in ("timeframe", "first", "last", "rows", "quality")}
            )
        return [{"symbol": s, "timeframes": tfs} for s, tfs in out.items()]

    @guarded
    def historical(self, symbol: str, request: Request) -> Any:
        from marketcache.serve.formats import MEDIA_TYPES, encode

        self.allow(request, "interval", "from", "to", "adjust", "format")
        sym, tf = self.series(symbol, request.query_params.get("interval", "1d"))
        lo, hi = self.dates(request)
        fmt = self.negotiate(request)
        plan = self.reader.plan(sym, tf, lo, hi, request.query_params.get("adjust", "none"))
        head = {"symbol": sym, "interval": tf}
        return self.cached_or_stream(
            request, plan, fmt, MEDIA_TYPES[fmt],
            lambda: encode(fmt, self.reader.chunks(plan), plan.columns, head),
        )  # fmt: skip

    def _quote(self, symbol: str, interval: str) -> dict[str, Any]:
        from marketcache.core.freshness import freshness
        from marketcache.core.models import utcnow
        from marketcache.serve.formats import bar_dicts

        sym, tf = self.series(symbol, interval)
        last = self.reader.tail(sym, tf, None, 1)
        if not len(last):
            raise NotFound(f"{sym} {tf} has no stored bars")
        bar = bar_dicts(last)[0]
        calendar = self.cache.profile(sym).calendar
        stale = freshness(sym, tf, calendar, str(last["timestamp"].iloc[-1])).stale
        now = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        out = {"symbol": sym, "interval": tf, **bar, "as_of": now, "stale": stale, "closed": True}
        if self.live is not None and self.live.follows(sym, tf):
            forming = self.live.forming_bar(sym, tf)
            if forming is not None:
                import pandas as pd

                frame = pd.DataFrame([forming.bar])
                frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_localize(
                    None
                )
                out["forming"] = {**bar_dicts(frame)[0], "closed": False}
        return out

    @guarded
    def quote(self, symbol: str, request: Request) -> Any:
        self.allow(request, "interval")
        return self._quote(symbol, request.query_params.get("interval", "1m"))

    @guarded
    def quotes(self, request: Request) -> Any:
        self.allow(request, "symbols", "interval")
        names = [s for s in request.query_params.get("symbols", "").split(",") if s.strip()]
        if not names:
            raise UsageError("symbols: give a comma-separated list, e.g. symbols=AAPL,MSFT")
        if len(names) > 1000:
            raise UsageError("symbols: at most 1000 a request")
        interval = request.query_params.get("interval", "1m")
        return {"interval": interval, "quotes": [self._quote(s, interval) for s in names]}

    @guarded
    def indicator(self, indicator: str, symbol: str, request: Request) -> Any:
        from marketcache.serve import indicators as ind

        name = indicator.lower()
        if name not in ind.PARAMS:
            raise NotFound(f"no indicator '{indicator}': use one of {', '.join(ind.INDICATORS)}")
        names = [p.name for p in ind.PARAMS[name]]
        self.allow(request, "interval", "from", "to", "adjust", *names)
        params = ind.parse_params(name, dict(request.query_params))
        sym, tf = self.series(symbol, request.query_params.get("interval", "1d"))
        lo, hi = self.dates(request)
        warm = ind.warmup(name, params)
        start = lo
        if lo is not None and warm:
            before = self.reader.tail(sym, tf, lo, warm)
            start = before["timestamp"].iloc[0] if len(before) else lo
        plan = self.reader.plan(sym, tf, start, hi, request.query_params.get("adjust", "none"))
        variant = f"{name}:{sorted(params.items())}:{lo}"

        def make() -> Iterator[bytes]:
            yield ind.as_json(self.reader.frame(plan), name, params, sym, tf, lo, warm)

        return self.cached_or_stream(request, plan, variant, "application/json", make)


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


async def _stream(hub: Any, websocket: WebSocket) -> None:
    from marketcache.serve.stream import Subscriber, parse_message

    await websocket.accept()
    sub = Subscriber(websocket)

    async def send_all() -> None:
        while True:
            message = await sub.queue.get()
            if message is None:  # dropped for not reading
                await websocket.send_json(
                    {"type": "error", "error": "too many unread messages: reconnect",
                     "status": 503})  # fmt: skip
                await websocket.close(code=1013)
                return
            await websocket.send_json(message)

    sender = asyncio.create_task(send_all())
    try:
        while True:
            text = await websocket.receive_text()
            try:
                action, series = parse_message(text)
            except ValueError as exc:
                sub.send({"type": "error", "error": str(exc), "status": 400})
                continue
            if action == "subscribe":
                await hub.subscribe(sub, series)
                kind = "subscribed"
            else:
                hub.unsubscribe(sub, series)
                kind = "unsubscribed"
            sub.send({"type": kind, "symbols": [s for s, _ in series],
                      "interval": series[0][1]})  # fmt: skip
    except (WebSocketDisconnect, RuntimeError):
        pass
    except Exception as exc:
        log.warning("stream closed: %s", status_of(exc)[1])
    finally:
        hub.drop(sub)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
