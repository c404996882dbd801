"""The providers by name — the one list every layer takes them from (the config validates
against it, the registry builds adapters from it). No imports: the config reads it before any
adapter or library is loaded."""

from __future__ import annotations

PROVIDERS: dict[str, str] = {  # name → its adapter class, imported on first use
    "binance": "marketcache.providers.binance:BinanceProvider",
    "yahoo": "marketcache.providers.yahoo:YahooProvider",
    "alpha_vantage": "marketcache.providers.alpha_vantage:AlphaVantageProvider",
}
ALIASES = {"yfinance": "yahoo", "alphavantage": "alpha_vantage", "av": "alpha_vantage"}
KEY_VARIABLES = {"alpha_vantage": "ALPHAVANTAGE_API_KEY"}  # where a provider's key is looked up
BASE_URLS = {
    "binance": "https://api.binance.com",
    "yahoo": "https://query2.finance.yahoo.com",
    "alpha_vantage": "https://www.alphavantage.co",
}
FUNDAMENTALS = ("yahoo", "alpha_vantage")  # the providers of fundamentals, in default priority
