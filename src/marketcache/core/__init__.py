"""The pure domain: symbols, timeframes, calendars, the OHLCV columns and frames, year records and
their coverage, corporate actions, gaps, validation and quality, derived timeframes, freshness,
the small shared models and output formats. Nothing here touches storage, providers or the CLI.
"""
