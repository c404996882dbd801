from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketcache.errors import UsageError
from marketcache.storage.layout import CacheLayout
from marketcache.symbols import AssetClass, classify, decode_symbol, encode_symbol


@pytest.mark.parametrize(
    ("symbol", "folder"),
    [
        ("aapl", "AAPL"),
        ("BRK.B", "BRK.B"),
        ("EURUSD=X", "EURUSD=X"),
        ("^GSPC", "^GSPC"),
        ("BTC/USDT", "BTC%2FUSDT"),
        ("A B", "A%20B"),
        ("..X", "%2E.X"),
        ("_METADATA", "%5FMETADATA"),
        ("C:\\", "C%3A%5C"),
        ("€", "%E2%82%AC"),
    ],
)
def test_encoding_is_safe_and_reversible(symbol: str, folder: str) -> None:
    assert encode_symbol(symbol) == folder
    assert decode_symbol(folder) == symbol.upper()


@pytest.mark.parametrize("bad", ["", " ", ".", "..", "A\x00B", "X" * 65, "a\nb"])
def test_unusable_symbols_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        encode_symbol(bad)


def test_foreign_folder_names_are_not_symbols() -> None:
    assert decode_symbol("_metadata") is None
    assert decode_symbol("btcusdt") is None  # we never write lower case
    assert decode_symbol("%2") is None


@given(st.text(min_size=1, max_size=80))
@settings(max_examples=300, deadline=None)
def test_no_symbol_resolves_outside_the_root(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    root = Path("/tmp/marketcache-hypothesis-root")
    layout = CacheLayout(root)
    try:
        path = layout.data_path(text, "1d", 2024)
    except UsageError:
        return
    assert root in path.resolve().parents
    assert path.parent.parent.parent == root
    assert decode_symbol(path.parent.parent.name) == text.strip().upper()


@pytest.mark.parametrize(
    ("symbol", "kind"),
    [
        ("BTCUSDT", AssetClass.CRYPTO),
        ("ETHBTC", AssetClass.CRYPTO),
        ("BTC/USD", AssetClass.CRYPTO),
        ("BTC-USD", AssetClass.CRYPTO),
        ("EURUSD=X", AssetClass.FX),
        ("AAPL", AssetClass.STOCK),
        ("OCDO.L", AssetClass.STOCK),
        ("ETH", AssetClass.STOCK),
    ],
)
def test_classification(symbol: str, kind: AssetClass) -> None:
    assert classify(symbol) is kind


def test_classification_override() -> None:
    assert classify("AAPL", "crypto") is AssetClass.CRYPTO
