"""JSON documents of the file backend: the year records, and the derived index files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marketcache.core.records import MAX_RECORD_BYTES, parse_json
from marketcache.errors import CorruptFile
from marketcache.storage.atomic import write_atomic


def read_metadata(path: Path) -> dict[str, Any]:
    """Load one record's JSON; CorruptFile names the file when it is missing or unreadable
    — not UTF-8, not JSON, too deep or too large included (its shape is checked by
    `YearRecord.from_json`). Nothing else escapes: one bad record is that year's problem."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        raise CorruptFile(path, "metadata file is missing") from None
    except OSError as exc:
        raise CorruptFile(path, f"cannot read metadata: {exc.strerror}") from None
    meta = parse_json(data, path)
    if not isinstance(meta, dict):
        raise CorruptFile(path, "metadata is not a JSON object")
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
