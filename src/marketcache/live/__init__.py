"""Live bars: Binance kline streams and intraday polling (`marketcache follow`) and the live
Python API. The durable per-series tail they store closed bars in — merged by every reader,
folded into the years — is the cache's (`cache/tail.py`, `storage/tail.py`), reached through
`UnifiedCache.append_live`, `fold_live` and `last_stored`.
"""
