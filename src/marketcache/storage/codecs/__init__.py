"""Year-file formats of the file backend. Adding one is a module here plus a registry entry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from marketcache.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd


class Codec(Protocol):
    name: str  # as recorded in file_info.format and _metadata/cache.json
    suffix: str  # of the year file: YEAR + suffix
    appendable: bool  # encode_rows output may be appended after the committed bytes

    def encode(self, df: pd.DataFrame, columns: list[str], *, mark: int = 0) -> tuple[bytes, int]:
        """The whole year as bytes, and its uncompressed size. The same rows give the same bytes;
        a non-zero `mark` is stored where readers ignore it, so that the bytes (and an object
        store's etag) differ from every other write of the same rows."""
        ...

    def encode_rows(self, df: pd.DataFrame, columns: list[str]) -> tuple[bytes, int]: ...

    def decode(self, data: bytes) -> pd.DataFrame: ...

    def salvage(self, data: bytes) -> tuple[pd.DataFrame | None, str]:
        """The rows of damaged bytes that can be trusted, and a note saying what happened."""
        ...


# The registry — adding a format is a module here and an entry below. Name -> (year-file
# suffix, "module:Class" imported on first use: pyarrow stays out of metadata-only commands).
CODECS = {"csv.gz": (".csv.gz", "csvgz:CsvGz"), "parquet": (".parquet", "parquet:Parquet")}
SUFFIXES = tuple(suffix for suffix, _ in CODECS.values())


def codec(name: str) -> Codec:
    import importlib

    if name not in CODECS:
        raise ConfigError(f"unknown format '{name}': use one of {', '.join(CODECS)}")
    module, cls = CODECS[name][1].split(":")
    found: Codec = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return found


def suffix(name: str) -> str:
    return CODECS[name][0]
