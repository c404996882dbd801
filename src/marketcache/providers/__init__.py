"""Provider adapters: each turns a service's answer into the canonical OHLCV frame."""
