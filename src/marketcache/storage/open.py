"""`--cache-dir` → a backend: a folder, an fsspec URL (s3://, gs://, memory://, file://), or a
postgresql:// URL. Backends are imported on first use (their drivers are heavy)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from marketcache.errors import UsageError

if TYPE_CHECKING:
    from marketcache.config import Settings
    from marketcache.storage.backend import StorageBackend


def scheme(location: str | os.PathLike[str]) -> str:
    text = os.fspath(location)
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isalnum() and len(head) > 1 else ""


def open_backend(location: str | os.PathLike[str], settings: Settings) -> StorageBackend:
    kind = scheme(location)
    fmt = settings.options.format
    if kind in ("", "file") and not str(location).startswith("file://"):
        from marketcache.storage.files.backend import FileBackend

        return FileBackend(location, default_format=fmt)
    if kind in ("postgresql", "postgres"):
        from marketcache.storage.postgres import PostgresBackend

        return PostgresBackend(os.fspath(location))
    raise UsageError(
        f"--cache-dir {kind}://…: object-storage caches are not available in this version;"
        " use a local folder"
    )
