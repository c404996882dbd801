"""`marketcache serve`: the cache over HTTP and WebSocket, read-only, on every backend.

    app.py         the FastAPI app factory: routes, errors as JSON, the token
    reader.py      a range read year by year through the result cache (ETags, 503 on corruption)
    results.py     the in-memory LRU of decoded years and encoded answers, keyed by checksums
    formats.py     JSON, CSV, Arrow IPC stream and Parquet encoders that stream chunk by chunk
    indicators.py  sma, ema, wma, rsi, macd, bbands with TA-Lib, and each one's warm-up
    stream.py      the WebSocket hub and the watcher that finds new commits in the records
    live.py        the interface a live follower plugs into (forming bars, closed-bar events)
    server.py      uvicorn under our control: port 0, a thread for tests, the token kept out
                   of the access log

Nothing here reaches into a backend: it calls `UnifiedCache` and `DataManager` only. FastAPI,
uvicorn, TA-Lib and polars are imported by these modules, which the CLI imports only inside
the `serve` and `get` commands (the metadata commands start without them).
"""
