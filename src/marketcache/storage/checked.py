"""Year bytes → rows, trusted only when they are the bytes a record committed.

Shared by the backends that store year files (a local folder, an object store).
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING

from marketcache.errors import CorruptFile

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.core.records import YearRecord
    from marketcache.storage.codecs import Codec


def committed_bytes(where: str, data: bytes, record: YearRecord) -> bytes:
    """The first `size_bytes` of `data` (bytes past them are a torn tail readers ignore)."""
    size = record.file_info.size_bytes
    if len(data) < size:
        raise CorruptFile(where, f"file is truncated: {len(data)} of {size} bytes")
    return data[:size] if len(data) > size else data


def matches(data: bytes, record: YearRecord) -> bool:
    size = record.file_info.size_bytes
    return len(data) >= size and hashlib.sha256(data[:size]).hexdigest() == (
        record.file_info.sha256
    )


def decode_checked(codec: Codec, where: str, data: bytes, record: YearRecord) -> pd.DataFrame:
    """Decode the committed bytes while hashing them on a helper thread (hashlib releases the
    GIL); nothing is returned before the sha256 and the row count match the record."""
    data = committed_bytes(where, data, record)
    digest: list[str] = []
    hasher = threading.Thread(target=lambda: digest.append(hashlib.sha256(data).hexdigest()))
    hasher.start()
    try:
        df = codec.decode(data)
        error = None
    except (ValueError, OSError, EOFError) as exc:
        error = str(exc)
    hasher.join()
    if digest[0] != record.file_info.sha256:
        raise CorruptFile(where, "sha256 does not match metadata (the file changed or is damaged)")
    if error is not None:
        raise CorruptFile(where, f"cannot decode: {error}")
    if len(df) != record.rows:
        raise CorruptFile(where, f"holds {len(df)} rows, metadata says {record.rows}")
    return df
