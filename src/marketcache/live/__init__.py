"""Live bars: Binance kline streams and intraday polling (`marketcache follow`), the durable
per-series tail that readers merge and that is folded into the years, and the live Python API.
"""
