"""providers.yaml: typed settings, env interpolation, secrets, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketcache.config import default_config_text, load_settings, parse_settings
from marketcache.errors import ConfigError
from marketcache.symbols import AssetClass

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_config_loads_and_matches_the_packaged_one() -> None:
    assert (ROOT / "providers.yaml").read_text() == default_config_text()
    s = parse_settings(default_config_text())
    assert s.providers["binance"].rate_limit.per_minute == 1100
    assert s.selection[0].symbol_type is AssetClass.CRYPTO
    assert s.selection[0].providers == ("binance", "yahoo")
    assert s.symbols["BTCUSDT"].aliases == {"yahoo": "BTC-USD"}
    assert s.datasets[1].symbols == ("AAPL", "MSFT")
    assert s.options.min_score == 0.8
    assert s.warnings == ()


def test_env_interpolation_and_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AV_KEY", "sekrit-123")
    s = parse_settings('providers: {alpha_vantage: {api_key: "${AV_KEY}"}}')
    key = s.providers["alpha_vantage"].api_key
    assert key.reveal() == "sekrit-123"
    assert "sekrit" not in str(key) and "sekrit" not in repr(s)
    monkeypatch.delenv("AV_KEY")
    assert (
        not parse_settings('providers: {alpha_vantage: {api_key: "${AV_KEY}"}}')
        .providers["alpha_vantage"]
        .api_key
    )


@pytest.mark.parametrize(
    ("text", "key", "what"),
    [
        (
            "providers: {binance: {rate_limit: {per_minute: fast}}}",
            "providers.binance.rate_limit.per_minute",
            "number",
        ),
        ("providers: {kraken: {}}", "providers.kraken", "unknown provider"),
        ("providers: {yahoo: {base_url: ftp://x}}", "providers.yahoo.base_url", "not an http"),
        (
            "providers: {binance: {reliability: 2}}",
            "providers.binance.reliability",
            "between 0 and 1",
        ),
        ("selection: [{providers: [nope]}]", "selection[0].providers", "unknown provider"),
        (
            "selection: [{symbol_type: bond, providers: [yahoo]}]",
            "selection[0].symbol_type",
            "crypto, stock, fx",
        ),
        (
            "datasets: [{symbols: [AAPL], timeframes: [7m], start: 2020-01-01}]",
            "datasets[0].timeframes",
            "unknown timeframe",
        ),
        ("datasets: [{symbols: [AAPL], start: '2020-1-x'}]", "datasets[0].start", "not a date"),
        ("datasets: [{symbols: [AAPL]}]", "datasets[0].start", "required"),
        (
            "datasets: [{symbols: ['..'], start: 2020-01-01}]",
            "datasets[0].symbols",
            "not a usable name",
        ),
        ("symbols: {AAPL: {calendar: MOON}}", "symbols.AAPL.calendar", "unknown calendar"),
        ("providers: [binance]", "providers", "mapping"),
        ("settings: {min_score: 3}", "settings.min_score", "between"),
    ],
)
def test_errors_name_the_file_and_key(text: str, key: str, what: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(text, source="my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml: ")
    assert f"key '{key}'" in message
    assert what in message


def test_yaml_tags_and_broken_yaml_are_refused() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_settings("providers: !!python/object/apply:os.system ['echo hi']")
    with pytest.raises(ConfigError, match="month must be in 1..12"):
        parse_settings("datasets: [{symbols: [AAPL], start: 2020-13-01}]")
    with pytest.raises(ConfigError, match=r"line \d"):
        parse_settings("providers:\n  binance: {base_url: [\n")


def test_unknown_keys_warn() -> None:
    s = parse_settings("providers: {binance: {colour: red}}\nextra: 1", source="p.yaml")
    assert set(s.warnings) == {
        "p.yaml: unknown key 'providers.binance.colour' ignored",
        "p.yaml: unknown key 'extra' ignored",
    }


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MARKETCACHE_CONFIG", raising=False)
    assert load_settings().source == "<packaged default>"
    (tmp_path / "providers.yaml").write_text("settings: {min_score: 0.5}")
    assert load_settings().options.min_score == 0.5
    other = tmp_path / "other.yaml"
    other.write_text("settings: {min_score: 0.6}")
    monkeypatch.setenv("MARKETCACHE_CONFIG", str(other))
    assert load_settings().options.min_score == 0.6
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
