"""`--cache-dir` → a backend: a folder (or file:// URL), an fsspec URL (s3://, gs://, az://,
memory://…: the object-storage backend), or a postgresql:// URL. Backends are imported on
first use (their drivers are heavy)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from marketcache.errors import UsageError

if TYPE_CHECKING:
    from marketcache.config.schema import Settings
    from marketcache.storage.backend import StorageBackend


def scheme(location: str | os.PathLike[str]) -> str:
    text = os.fspath(location)
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isalnum() and len(head) > 1 else ""


def open_backend(location: str | os.PathLike[str], settings: Settings) -> StorageBackend:
    kind = scheme(location)
    fmt = settings.options.format
    if kind in ("", "file"):
        from marketcache.storage.files.backend import FileBackend

        text = os.fspath(location)
        return FileBackend(text[len("file://") :] if kind else text, default_format=fmt)
    if kind in ("postgresql", "postgres"):
        from marketcache.storage.postgres import PostgresBackend

        return PostgresBackend(os.fspath(location))
    try:
        import fsspec  # noqa: F401
    except ImportError:
        raise UsageError(
            f"--cache-dir {kind}://…: object storage needs fsspec (pip install marketcache)"
        ) from None
    from marketcache.storage.objects.backend import ObjectBackend

    raw = settings.options.storage_options.reveal()
    return ObjectBackend(
        os.fspath(location),
        default_format=fmt,
        options=json.loads(raw) if raw else {},
        lease_seconds=settings.options.lease_seconds,
    )
