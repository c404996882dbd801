"""Symbols: normalisation, asset-class classification and the safe, reversible folder name."""

from __future__ import annotations

import re
from enum import StrEnum

from marketcache.errors import UsageError

MAX_SYMBOL_LENGTH = 64
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-=^")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
CRYPTO_QUOTES = ("USDT", "USDC", "FDUSD", "TUSD", "BUSD", "BTC", "ETH", "BNB")


class AssetClass(StrEnum):
    CRYPTO = "crypto"
    STOCK = "stock"
    FX = "fx"


def normalize_symbol(symbol: str) -> str:
    """Upper-case and strip a user-given symbol; refuse the unusable ones with UsageError."""
    if not isinstance(symbol, str):
        raise UsageError(f"symbol {symbol!r} is not text")
    s = symbol.strip().upper()
    if s in ("", ".", ".."):
        raise UsageError(f"symbol '{symbol}' is not a usable name: give a ticker such as AAPL")
    if "\x00" in s or any(ord(c) < 32 for c in s):
        raise UsageError(f"symbol {symbol!r} contains control characters")
    if len(s) > MAX_SYMBOL_LENGTH:
        raise UsageError(
            f"symbol '{s[:20]}…' is {len(s)} characters long: at most {MAX_SYMBOL_LENGTH}"
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
    m = re.fullmatch(r"([A-Z0-9]+)-(USD|USDT|EUR|BTC|ETH)", s)
    if m and m.group(1) in _KNOWN_COINS:
        return AssetClass.CRYPTO
    return AssetClass.STOCK


_KNOWN_COINS = frozenset(
    "BTC ETH SOL XRP ADA DOGE BNB LTC DOT AVAX LINK MATIC TRX BCH XLM ATOM ETC XMR SHIB".split()
)
