"""The YEAR.metadata.json commit record beside each data file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marketcache.errors import CorruptFile
from marketcache.storage.atomic import write_atomic

SCHEMA_VERSION = 1
REQUIRED = ("schema_version", "symbol", "timeframe", "year", "file_info", "data_quality")
FILE_INFO_REQUIRED = ("size_bytes", "rows", "columns", "sha256")


def read_metadata(path: Path) -> dict[str, Any]:
    """Load and shape-check one metadata file; CorruptFile names the file on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorruptFile(path, "metadata file is missing") from None
    except OSError as exc:
        raise CorruptFile(path, f"cannot read metadata: {exc.strerror}") from None
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFile(path, f"metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CorruptFile(path, "metadata is not a JSON object")
    missing = [k for k in REQUIRED if k not in meta]
    file_info = meta.get("file_info")
    if isinstance(file_info, dict):
        missing += [f"file_info.{k}" for k in FILE_INFO_REQUIRED if k not in file_info]
    elif "file_info" not in missing:
        missing.append("file_info")
    if missing:
        raise CorruptFile(path, f"metadata lacks {', '.join(missing)}")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise CorruptFile(path, f"unknown schema_version {meta['schema_version']!r}")
    return meta


def write_metadata(path: Path, meta: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(meta, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    """A derived index file: atomic, not fsynced (it is rebuilt if ever unreadable)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode("utf-8"), durable=False)


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
