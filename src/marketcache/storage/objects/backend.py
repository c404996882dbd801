"""The object-storage backend: the file layout on S3 (or any fsspec store), committed with
conditional writes so that many machines can share one cache.

Objects are named as the local files are (`SYMBOL/TF/YEAR.csv.gz|parquet`,
`YEAR.metadata.json`), so pandas, polars and DuckDB read them directly. A writer holds the
series lease (`lease.py`) and commits a year as the local protocol does — claim, data,
record — each step a conditional write on what the writer read:

- a year that exists: (0) the data object's etag is read; (1) the claim: the record is
  replaced, If-Match the etag the writer planned from, by the same record with the next one
  added to its `pending` candidates — any commit since the plan changed that etag, so a
  writer whose lease expired fails here having written nothing; (2) the data, If-Match the etag
  of step 0 — any data written since (by a writer that claimed after us) fails it; (3) the
  record, If-Match the claim: the commit point.
- a new year: the claim is `YEAR.metadata.json.pending` (created If-None-Match: *, or
  extended If-Match), the data is created If-None-Match: * (or replaces the orphan read in
  step 0), the record is created If-None-Match: *, then the pending object goes.

Every data write carries a random mark (gzip mtime, a Parquet footer key) so that no etag
ever comes back: S3 etags are content hashes, and a paused writer's If-Match must never match
bytes written after it. Claims are never rolled back, only superseded: a candidate stays
listed until a commit or a promotion settles the year, so whatever data a paused writer
manages to write is data some listed candidate describes.

Readers take no lease. A record reads as its committed part; a reader whose data object does
not match it looks again and accepts the data when it matches a listed candidate — the new
state, which the next writer (or `cleanup`) promotes. Recovery with the lease held promotes
the candidate the data matches; when the data is still the committed one it re-commits those
rows with a fresh mark (a fence: every paused writer's data condition now fails). Objects
cannot be appended to, so a nightly extension rewrites one year object: its cost is one year,
never the history.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from marketcache.core.records import YearRecord
from marketcache.core.symbols import decode_symbol, encode_symbol, normalize_symbol
from marketcache.core.timeframes import TIMEFRAMES
from marketcache.errors import Conflict, CorruptFile, UsageError
from marketcache.storage.backend import Key
from marketcache.storage.checked import decode_checked, matches
from marketcache.storage.layout import (
    INDEX_DIR,
    QUARANTINE_MARK,
    year_file,
)
from marketcache.storage.objects.store import Meta

if TYPE_CHECKING:
    import pandas as pd

from marketcache.storage.objects.reader import (
    INDEX_LEASE,
    PENDING,
    ObjectReader,
    _aside_name,
    _candidates,
    _committed,
    _dumps,
    _loads,
)


class ObjectBackend(ObjectReader):
    # ---- the commit protocol ----------------------------------------------------------------

    def write_year(self, key: Key, frame: pd.DataFrame, record: YearRecord) -> YearRecord:
        self._root_listing = None
        self._created()
        body = self._encode(frame, record)
        seen = self._seen.get(self._names(key)[1])
        if seen is None:  # planned as a new year
            self._commit_new(key, body, record.to_json())
        else:
            self._commit(key, body, record.to_json(), seen)
        return record

    def _check_lease(self, key: Key) -> None:
        self.leases.check(self._lease(*key.series))

    def _put_data(self, name: str, body: bytes, before: Meta | None) -> None:
        """Replace exactly the data object read before the claim (create it if there was none)."""
        if before is None:
            self.store.put(name, body, if_absent=True)
        else:
            self.store.put(name, body, if_match=before.etag)

    def _commit(
        self,
        key: Key,
        body: bytes,
        new: dict[str, Any],
        seen: tuple[str, dict[str, Any]],
        checked: Meta | None = None,
    ) -> None:
        """`checked`: the data object the caller has just read and found to be no listed
        candidate's (the fence); otherwise it is read here, step (0)."""
        data_name, meta_name, _ = self._names(key)
        etag, doc = seen
        listed = _candidates(doc)
        before = checked or self.store.head(data_name)  # (0) before the claim
        if listed and before is not None and checked is None and self._promote(key, etag, doc):
            raise Conflict(f"{self.location}/{meta_name}: an interrupted commit was completed")
        self._check_lease(key)
        claimed = {**_committed(doc), PENDING: [*listed, new]}
        claim = self.store.put(meta_name, _dumps(claimed), if_match=etag)  # (1)
        self._seen[meta_name] = (claim, claimed)
        self._check_lease(key)
        self._put_data(data_name, body, before)  # (2)
        done = self.store.put(meta_name, _dumps(new), if_match=claim)  # (3)
        self._seen[meta_name] = (done, new)

    def _commit_new(self, key: Key, body: bytes, new: dict[str, Any]) -> None:
        data_name, meta_name, pending_name = self._names(key)
        if self.store.head(meta_name) is not None:
            raise Conflict(f"{self.location}/{meta_name}: created by another writer")
        pending = self.store.get(pending_name)
        listed = _candidates(_loads(pending[0])) if pending else []
        before = self.store.head(data_name)  # (0) an orphan a killed writer left, or none
        if listed and before is not None and self._promote_new(key):
            raise Conflict(f"{self.location}/{meta_name}: an interrupted commit was completed")
        self._check_lease(key)
        claim = self.store.put(  # (1)
            pending_name,
            _dumps({PENDING: [*listed, new]}),
            if_absent=pending is None,
            if_match=pending[1].etag if pending else None,
        )
        self._check_lease(key)
        self._put_data(data_name, body, before)  # (2)
        done = self.store.put(meta_name, _dumps(new), if_absent=True)  # (3)
        self._seen[meta_name] = (done, new)
        with contextlib.suppress(Conflict):  # extended meanwhile: the next writer removes it
            self.store.delete(pending_name, if_match=claim)

    def write_record(self, key: Key, record: YearRecord) -> None:
        """The record alone (coverage, quality): the committed data stays as it is."""
        meta_name = self._names(key)[1]
        self._check_lease(key)
        seen = self._seen.get(meta_name)
        if seen is not None and _candidates(seen[1]):
            # settle the interrupted commit first; a fence changes only the bytes' mark
            if self._settle(key) == "promoted":
                raise Conflict(f"{self.location}/{meta_name}: an interrupted commit was completed")
            seen = self._seen.get(meta_name)
            if seen is not None:
                record.file_info = self._record(meta_name, seen[1]).file_info
        new = record.to_json()
        if seen is None:
            done = self.store.put(meta_name, _dumps(new), if_absent=True)
        else:
            done = self.store.put(meta_name, _dumps(new), if_match=seen[0])
        self._seen[meta_name] = (done, new)

    def delete(self, key: Key) -> None:
        self._root_listing = None
        data_name, meta_name, _ = self._names(key)
        self.store.delete(meta_name)  # the record first: data without one is a known leftover
        self._seen.pop(meta_name, None)
        self.store.delete(data_name)

    def lock(
        self, symbol: str, timeframe: str, *, wait: float
    ) -> contextlib.AbstractContextManager[None]:
        return self.leases.hold(
            self._lease(symbol, timeframe), wait=wait, what=f"{symbol} {timeframe}"
        )

    # ---- recovery (the lease held) -----------------------------------------------------------

    def _promote(self, key: Key, etag: str, doc: dict[str, Any], data: bytes | None = None) -> bool:
        """Commit the listed candidate the data object (`data`, or read now) matches, if one
        does."""
        data_name, meta_name, _ = self._names(key)
        if data is None:
            found = self.store.get(data_name)
            data = found[0] if found is not None else None
        candidate = None if data is None else self._match(meta_name, data, _candidates(doc))
        if candidate is None:
            return False
        self._seen[meta_name] = (
            self.store.put(meta_name, _dumps(candidate), if_match=etag),
            candidate,
        )
        return True

    def _promote_new(self, key: Key) -> bool:
        """A new year's claim whose data arrived: create the record it lists."""
        data_name, meta_name, pending_name = self._names(key)
        pending, data = self.store.get(pending_name), self.store.get(data_name)
        if pending is None or data is None:
            return False
        candidate = self._match(meta_name, data[0], _candidates(_loads(pending[0])))
        if candidate is None:
            return False
        done = self.store.put(meta_name, _dumps(candidate), if_absent=True)
        self._seen[meta_name] = (done, candidate)
        with contextlib.suppress(Conflict):
            self.store.delete(pending_name, if_match=pending[1].etag)
        return True

    def _settle(self, key: Key) -> str:
        """An existing year whose record lists candidates: promote the one the data matches;
        data still as committed is re-committed with a fresh mark (the fence); data matching
        nothing keeps the committed record, to be quarantined as corrupt."""
        data_name, meta_name, _ = self._names(key)
        try:
            found = self._read(meta_name)
            if found is not None:
                self._record(meta_name, found[1])
        except CorruptFile:  # an unreadable record settles nothing: the year reads as corrupt
            return "corrupt"
        if found is None or not _candidates(found[1]):
            return "clean"
        etag, doc = found
        data = self.store.get(data_name)  # read once: promotion, then the fence, use it
        if data is not None and self._promote(key, etag, doc, data[0]):
            return "promoted"
        committed = self._record(meta_name, doc)
        if data is None or not matches(data[0], committed):
            plain = _committed(doc)
            self._seen[meta_name] = (self.store.put(meta_name, _dumps(plain), if_match=etag), plain)
            return "corrupt"
        rows = decode_checked(self.codec, f"{self.location}/{data_name}", data[0], committed)
        fenced = YearRecord.from_json(committed.to_json(), key)
        body = self._encode(rows, fenced)
        # the data replaced If-Match what was just checked: a write since then refuses the fence
        self._commit(key, body, fenced.to_json(), found, checked=data[1])
        return "fenced"

    def recover(self, key: Key) -> None:
        """Finish an interrupted commit of `key` (the caller holds the lease): afterwards the
        record lists no candidate and no claim object is left."""
        self._settle(key)
        _, meta_name, pending_name = self._names(key)
        pending = self.store.get(pending_name)
        if pending is None:
            return
        if self.store.head(meta_name) is None and self._promote_new(key):
            return
        # the year exists (the claim is stale), or its data never arrived: no reader needs it
        with contextlib.suppress(Conflict):
            self.store.delete(pending_name, if_match=pending[1].etag)

    def housekeeping(self, symbol: str, timeframe: str) -> list[str]:
        """Resolve the new-year claims killed writers left in this series (lease held)."""
        done = []
        for name in self.store.listing(self._series(symbol, timeframe)):
            parsed = year_file(name.rpartition("/")[2])
            if parsed is not None and parsed[1] == "pending":
                self.recover(Key(symbol, timeframe, parsed[0]))
                done.append(name.rpartition("/")[2])
        return done

    def quarantine(self, key: Key) -> str | None:
        data_name, meta_name, _ = self._names(key)
        aside = None
        found = self.store.get(data_name)
        if found is not None:
            aside = _aside_name(data_name)
            self.store.put(aside, found[0], if_absent=True)
        record = self.store.get(meta_name)
        if record is not None:
            self.store.put(_aside_name(meta_name), record[0], if_absent=True)
        self.delete(key)
        return aside.rpartition("/")[2] if aside else None

    def salvage(self, key: Key) -> tuple[pd.DataFrame | None, str, str]:
        data_name = self._names(key)[0]
        found = self.store.get(data_name)
        if found is None:
            return None, f"{self.location}/{data_name}: data object is missing", ""
        df, note = self.codec.salvage(found[0])
        aside = _aside_name(data_name)
        self.store.put(aside, found[0], if_absent=True)
        return df, note, aside.rpartition("/")[2]

    def leftovers(self, *, dry_run: bool, wait: float = 600.0) -> list[tuple[str, str]]:
        """Interrupted commits settled (each under its series lease), then data objects no
        record backs, then the leases of dead writers: afterwards exactly one data object backs
        each record."""
        series: dict[tuple[str, str], dict[int, set[str]]] = {}
        for name in self.store.listing():
            parts = name.split("/")
            if len(parts) != 3 or parts[0] == INDEX_DIR or parts[1] not in TIMEFRAMES:
                continue
            symbol, parsed = decode_symbol(parts[0]), year_file(parts[2])
            if symbol is None or parsed is None:
                continue
            kind = parsed[1] if parsed[1] != "data" or name.endswith(self.suffix) else "other"
            series.setdefault((symbol, parts[1]), {}).setdefault(parsed[0], set()).add(kind)
        found: list[tuple[str, str]] = []
        for (symbol, tf), years in sorted(series.items()):
            for year, kinds in sorted(years.items()):
                key = Key(symbol, tf, year)
                found += self._leftovers_of(key, kinds, dry_run=dry_run, wait=wait)
        swept = self.leases.sweep(f"{INDEX_DIR}/locks/", dry_run=dry_run)
        return found + [(f"{self.location}/{name}", why) for name, why in swept]

    def purge_quarantine(self, days: float, *, dry_run: bool) -> list[tuple[str, str]]:
        """Objects set aside (`….corrupt-STAMP…`) more than `days` days ago: by the
        store's clock where it has one, else by the stamp in the name (days, not seconds,
        are at stake here)."""
        import time

        limit = days * 86400
        why = f"quarantined more than {days:g} days ago"
        found = []
        for name, meta in self.store.listing().items():
            if QUARANTINE_MARK not in name.rpartition("/")[2]:
                continue
            if meta.modified is not None:
                age = meta.now - meta.modified
            else:
                stamp = name.rpartition(QUARANTINE_MARK)[2][:15]  # YYYYmmddTHHMMSS
                try:
                    made = datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
                except ValueError:
                    continue
                age = time.time() - made.timestamp()
            if age > limit:
                found.append((f"{self.location}/{name}", why))
                if not dry_run:
                    self.store.delete(name)
        return found

    def _leftovers_of(
        self, key: Key, kinds: set[str], *, dry_run: bool, wait: float
    ) -> list[tuple[str, str]]:
        data_name, meta_name, pending_name = self._names(key)
        found: list[tuple[str, str]] = []
        interrupted = "pending" in kinds
        if "meta" in kinds and not interrupted:
            with contextlib.suppress(CorruptFile):  # validate names an unreadable record
                record = self._read(meta_name)
                interrupted = record is not None and bool(_candidates(record[1]))
        if interrupted:
            where = pending_name if "pending" in kinds else meta_name
            found.append((f"{self.location}/{where}", "interrupted commit"))
            if not dry_run:
                with self.lock(*key.series, wait=wait):
                    self.recover(key)
                names = self.store.listing(self._series(*key.series) + str(key.year))
                kinds = {k for n, k in ((data_name, "data"), (meta_name, "meta")) if n in names}
        if "data" in kinds and "meta" not in kinds:
            found.append((f"{self.location}/{data_name}", "data without metadata"))
            if not dry_run:
                self.store.delete(data_name)
        elif "meta" in kinds and "data" not in kinds:
            found.append((f"{self.location}/{meta_name}", "metadata without data"))
        return found

    # ---- documents and the index -----------------------------------------------------------

    def _document(self, symbol: str, name: str) -> str:
        if not name or any(part in ("", ".", "..") for part in name.split("/")):
            raise UsageError(f"document name '{name}' would leave the symbol's folder")
        return f"{encode_symbol(normalize_symbol(symbol))}/{name}"

    def read_document(self, symbol: str, name: str) -> bytes | None:
        found = self.store.get(self._document(symbol, name))
        return None if found is None else found[0]

    def write_document(self, symbol: str, name: str, data: bytes) -> None:
        self.leases.check(self._lease(symbol, "actions"))  # when held (corporate actions)
        self.store.put(self._document(symbol, name), data)

    def list_documents(self, symbol: str, prefix: str) -> list[str]:
        base = f"{encode_symbol(normalize_symbol(symbol))}/"
        names = (n[len(base) :] for n in self.store.listing(base + prefix))
        return sorted(n for n in names if n.startswith(prefix) and year_file(n) is None)

    def delete_document(self, symbol: str, name: str) -> None:
        self.store.delete(self._document(symbol, name))

    def read_index(self, name: str) -> Any:
        return self._json(f"{INDEX_DIR}/{name}")

    def write_index(self, name: str, data: Any) -> None:
        self.leases.check(INDEX_LEASE)
        self.store.put(f"{INDEX_DIR}/{name}", _dumps(data))

    @contextlib.contextmanager
    def index_lock(self, *, wait: float) -> Iterator[None]:
        with self.leases.hold(INDEX_LEASE, wait=wait, what="the cache index"):
            yield

    def describe(self) -> dict[str, Any]:
        guard = "atomic" if self.store.atomic_conditions else "checked before writing"
        return {
            **super().describe(),
            "conditional_writes": guard,
            "lease_seconds": self.leases.seconds,
        }

    def close(self) -> None:
        self.store.close()
