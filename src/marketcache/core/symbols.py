"""Symbols: normalisation, asset-class classification and the safe, reversible folder name."""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum

from marketcache.errors import UsageError

MAX_SYMBOL_LENGTH = 64
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-=^")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
CRYPTO_QUOTES = ("USDT", "USDC", "FDUSD", "TUSD", "BUSD", "BTC", "ETH", "BNB")
FIAT_QUOTES = ("USD", "EUR", "GBP", "TRY", "BRL", "JPY", "AUD")  # after a known coin: a pair
_PAIR = re.compile(r"([^\W_]+)/([^\W_]+)")  # BASE/QUOTE, ccxt and freqtrade style
# control, format (a byte-order mark, zero-width and direction marks), surrogate, line breaks
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class AssetClass(StrEnum):
    CRYPTO = "crypto"
    STOCK = "stock"
    FX = "fx"


def normalize_symbol(symbol: str) -> str:
    """Upper-case and strip a user-given symbol; refuse with UsageError what cannot be a ticker.

    `BTC/USDT` (ccxt, freqtrade) is the pair `BTCUSDT`: one series whichever way it is
    written. Any other path separator, a `..`, and invisible characters (control characters,
    a byte-order mark, zero-width or direction marks) are refused before anything is asked.
    """
    if not isinstance(symbol, str):
        raise UsageError(f"symbol {symbol!r} is not text")
    s = symbol.strip().upper()
    if s in ("", ".", ".."):
        raise UsageError(f"symbol '{symbol}' is not a usable name: give a ticker such as AAPL")
    if any(unicodedata.category(c) in _INVISIBLE for c in s):
        raise UsageError(
            f"symbol {symbol!r} contains control or invisible characters: type the ticker plainly"
        )
    if len(s) > MAX_SYMBOL_LENGTH:
        raise UsageError(
            f"symbol '{s[:20]}…' is {len(s)} characters long: at most {MAX_SYMBOL_LENGTH}"
        )
    pair = _PAIR.fullmatch(s)
    if pair:
        return _pair(symbol, pair.group(1), pair.group(2))
    if "/" in s or "\\" in s or ".." in s:
        raise UsageError(
            f"symbol '{symbol}' cannot be a ticker (path separators or '..'): give a ticker"
            " such as AAPL, or a pair as BTC/USDT or BTCUSDT"
        )
    return s


def encode_symbol(symbol: str) -> str:
    """The one directory name for `symbol`: safe characters kept, the rest %XX-escaped.

    A leading '.' or '_' is escaped too, so no symbol can hide or collide with `_metadata`.
    """
    s = normalize_symbol(symbol)
    out: list[str] = []
    for i, ch in enumerate(s):
        if ch in _SAFE and not (i == 0 and ch in "._"):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def decode_symbol(name: str) -> str | None:
    """Inverse of encode_symbol; None when `name` is not a folder encode_symbol would write."""
    try:
        raw = _ESCAPE.sub(lambda m: "\x00" + m.group(1), name)
        parts = raw.split("\x00")
        data = bytearray(parts[0].encode("ascii"))
        for part in parts[1:]:
            data.append(int(part[:2], 16))
            data.extend(part[2:].encode("ascii"))
        symbol = data.decode("utf-8")
        return symbol if encode_symbol(symbol) == name else None
    except (UnicodeError, ValueError, UsageError):
        return None


_CURRENCIES = frozenset(
    (*FIAT_QUOTES, *"CHF CAD NZD SEK NOK DKK HKD SGD CNY CNH INR MXN ZAR PLN KRW".split())
)


def _pair(given: str, base: str, quote: str) -> str:
    """`BASE/QUOTE` as its series: a crypto pair joined (BTC/USDT → BTCUSDT, BTC/EUR →
    BTCEUR), two currencies as Yahoo's FX ticker (EUR/USD → EURUSD=X). Anything else with a
    slash (BRK/B, a share class) is refused with how to write it, not joined into another
    ticker (BRKB)."""
    if quote in CRYPTO_QUOTES or (quote in FIAT_QUOTES and base in _KNOWN_COINS):
        return base + quote
    if base in _CURRENCIES and quote in _CURRENCIES:
        return f"{base}{quote}=X"
    raise UsageError(
        f"symbol '{given}' is not a pair: write a share class as {base}-{quote} (or"
        f" {base}.{quote}), a crypto pair with its quote asset (e.g. {base}/USDT), an FX pair"
        " as EUR/USD"
    )


def classify(symbol: str, override: str | None = None) -> AssetClass:
    """Crypto by quote asset or '/', FX by '=X', stock otherwise; `override` wins."""
    if override:
        return AssetClass(override)
    s = symbol.upper()
    if s.endswith("=X"):
        return AssetClass.FX
    if "/" in s:
        return AssetClass.CRYPTO
    if re.fullmatch(r"[A-Z0-9]+", s):
        for quote in CRYPTO_QUOTES:
            if s.endswith(quote) and len(s) - len(quote) >= 2:
                return AssetClass.CRYPTO
        for quote in FIAT_QUOTES:  # BTC/EUR is stored as BTCEUR: still a coin's pair
            if s.endswith(quote) and s[: -len(quote)] in _KNOWN_COINS:
                return AssetClass.CRYPTO
    m = re.fullmatch(r"([A-Z0-9]+)-(USD|USDT|EUR|BTC|ETH)", s)
    if m and m.group(1) in _KNOWN_COINS:
        return AssetClass.CRYPTO
    return AssetClass.STOCK


_KNOWN_COINS = frozenset(
    "BTC ETH SOL XRP ADA DOGE BNB LTC DOT AVAX LINK MATIC TRX BCH XLM ATOM ETC XMR SHIB".split()
)
