"""Followers' heartbeats: `_metadata/follow/ID.json` on a file cache, a document of the
reserved `_FOLLOW` entry elsewhere (object storage, PostgreSQL). Written every few seconds by
a running follower, removed when it stops cleanly; `info` lists the fresh ones (a killed
follower's heartbeat goes stale and is ignored, then removed by the next `info`
after an hour)."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from marketcache.storage.backend import StorageBackend

FOLDER = "follow"
DOCUMENTS = "_FOLLOW"  # the per-symbol document area that holds them off a file cache
STALE_AFTER = 3.0  # heartbeat intervals without an update: the follower is gone
FORGET_AFTER = timedelta(hours=1)


class Heartbeat:
    def __init__(self, backend: StorageBackend, follower_id: str) -> None:
        self.backend = backend
        self.name = f"{follower_id}.json"

    def write(self, body: dict[str, Any]) -> None:
        data = json.dumps(body, sort_keys=True).encode()
        layout = getattr(self.backend, "layout", None)
        if layout is not None:
            from marketcache.storage.atomic import write_atomic

            write_atomic(layout.index_dir / FOLDER / self.name, data, durable=False)
        else:
            self.backend.write_document(DOCUMENTS, f"{FOLDER}/{self.name}", data)

    def remove(self) -> None:
        with contextlib.suppress(Exception):  # stopping never fails for it: it goes stale
            _delete(self.backend, self.name)


def _delete(backend: StorageBackend, name: str) -> None:
    layout = getattr(backend, "layout", None)
    if layout is not None:
        (layout.index_dir / FOLDER / name).unlink(missing_ok=True)
    else:
        backend.delete_document(DOCUMENTS, f"{FOLDER}/{name}")


def _bodies(backend: StorageBackend) -> list[tuple[str, bytes]]:
    layout = getattr(backend, "layout", None)
    if layout is not None:
        folder = layout.index_dir / FOLDER
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.glob("*.json")):
            try:
                out.append((path.name, path.read_bytes()))
            except OSError:
                continue
        return out
    found = []
    for name in backend.list_documents(DOCUMENTS, f"{FOLDER}/"):
        data = backend.read_document(DOCUMENTS, name)
        if data is not None:
            found.append((name.rpartition("/")[2], data))
    return found


def followers(backend: StorageBackend, now: datetime | None = None) -> list[dict[str, Any]]:
    """The live followers (heartbeat fresh), each with its series, last bar and lag (light:
    `info` imports it, and no pandas)."""
    now = now if now is not None else datetime.now(UTC).replace(tzinfo=None)
    live = []
    for name, data in _bodies(backend):
        try:
            body = json.loads(data)
            updated = datetime.fromisoformat(body["updated_at"]).replace(tzinfo=None)
            every = float(body.get("every", 5.0))
        except (ValueError, KeyError, TypeError):
            continue
        age = (now - updated).total_seconds()
        if age <= max(STALE_AFTER * every, every + 5.0):
            body["age"] = round(age, 3)
            live.append(body)
        elif now - updated > FORGET_AFTER:
            with contextlib.suppress(Exception):
                _delete(backend, name)
    return live
