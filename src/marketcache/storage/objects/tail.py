"""The live tail on object storage: one small object `SYMBOL/TF/live.tail.csv`, rewritten
whole by each `add` (objects cannot be appended to; the tail holds about a fold interval of
bars, so each put is a few kilobytes, never a year).

Each write is conditional on what the writer read (`If-Match` its etag, `If-None-Match: *`
for a new tail) and made with the series lease checked, so a writer whose lease expired
cannot overwrite a newer tail. A put is atomic: readers get the old tail or the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from marketcache.core.symbols import encode_symbol
from marketcache.storage.objects.store import Meta, ObjectStore
from marketcache.storage.tail import (
    HEADER,
    TAIL_NAME,
    SeriesTail,
    complete,
    decode_lines,
    encode_lines,
)

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.storage.objects.backend import ObjectBackend


def open_tail(backend: ObjectBackend, symbol: str, timeframe: str) -> ObjectTail:
    lease = backend._lease(symbol, timeframe)
    name = backend._series(symbol, timeframe) + TAIL_NAME
    return ObjectTail(backend.store, name, lambda: backend.leases.check(lease))


def tail_series(backend: ObjectBackend, symbol: str | None = None) -> list[tuple[str, str]]:
    """A listing made now (writers plan from it; `list` uses `listed_tails`)."""
    prefix = f"{encode_symbol(symbol)}/" if symbol else ""
    return sorted({k.series for k in backend._scan(prefix, ("tail",))})


class ObjectTail(SeriesTail):
    def __init__(self, store: ObjectStore, name: str, check_lease: Callable[[], None]) -> None:
        self.store, self.name, self.check_lease = store, name, check_lease
        self.where = f"{store.url}/{name}"
        self._seen: list[tuple[bytes, Meta] | None] = []  # what the last `read` found, if any

    def read(self) -> pd.DataFrame:
        from marketcache.core.frames import empty_frame

        found = self.store.get(self.name)
        self._seen = [found]
        return empty_frame() if found is None else decode_lines(found[0], self.where)

    def add(self, rows: pd.DataFrame) -> None:
        """Rewrites the tail `read` found (read now if it was not): If-Match its etag."""
        lines = encode_lines(rows)
        if not lines:
            return
        found = self._seen.pop() if self._seen else self.store.get(self.name)
        body = complete(found[0]) if found is not None else b""
        self.check_lease()
        self.store.put(
            self.name,
            (body or HEADER) + lines,
            if_match=found[1].etag if found is not None else None,
            if_absent=found is None,
        )

    def keep(self, rows: pd.DataFrame) -> None:
        self._seen = []
        self.check_lease()
        if len(rows):
            self.store.put(self.name, HEADER + encode_lines(rows))
        else:
            self.store.delete(self.name)
