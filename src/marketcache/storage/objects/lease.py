"""Lease locks on an object store: one writer per series across machines.

A lease is an object (`_metadata/locks/SYMBOL/TF.lease`) naming its owner, taken with a
create-if-absent write and renewed (a replace-if-unchanged write, with a renewal counter, so
its bytes change every time) every third of its length while the holder works. A holder that
dies stops renewing; once the lease is older than its length, a waiter takes it over with a
replace-if-unchanged write. No machine's clock is trusted for "older": on S3 the store's own
clock says (Date, Last-Modified), so a killed runner blocks the next one for at most
`lease_seconds` (and the second of granularity of the store's HTTP dates); a store without
a clock (memory://, local://, gs:// through fsspec) gives no time at all, so the waiter
watches the lease itself with its monotonic clock and takes it over only once it has seen it
unchanged — no renewal — for a full lease length: a clock that runs ahead anywhere cannot
make a live lease look old, and a dead holder blocks a waiter for at most one lease length
after the waiter first looked. `cleanup` leaves such leases alone (it does not wait a lease
length to judge one); the next writer takes a dead one over. A holder that was paused past
its lease finds its renewal refused and its commits stop (`check`); the conditional writes of
the commit itself are the second guard. Taking a lease does not trust the store to refuse one
of two simultaneous creates (moto and fsspec stores check, then write): the taker reads the
lease back before its first write and goes on only if its own write is the one that stood.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from marketcache.errors import Conflict, LockTimeout, StorageError
from marketcache.storage.lock import Reentrant, timeout_message
from marketcache.storage.objects.store import Meta, ObjectStore

log = logging.getLogger(__name__)

SETTLE = 0.2  # seconds between taking a lease and reading it back (longer than a write takes)


class LeaseLost(Conflict):
    """This process's lease expired and another writer took it: stop writing, re-plan."""


@dataclass
class _Held:
    """A lease this process holds (the state of its `Reentrant` hold)."""

    name: str
    etag: str = ""
    renewed: float = 0.0  # time.monotonic() of the last successful write of the lease
    confirmed: bool = False  # read back: this holder's write is the one that stood
    lost: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    # the renewal thread and `check` both renew: one at a time, or the second's If-Match
    # (the etag the first just replaced) fails and the lease reads as taken by another writer
    renewing: threading.Lock = field(default_factory=threading.Lock)


class Leases:
    def __init__(self, store: ObjectStore, seconds: float) -> None:
        self.store = store
        self.seconds = max(float(seconds), 1.0)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held: Reentrant[_Held] = Reentrant(self._release)
        self._guard = threading.Lock()
        self._renewals = 0
        # clockless stores: lease name → (etag, time.monotonic() this process first saw it)
        self._watched: dict[str, tuple[str, float]] = {}

    def _body(self) -> bytes:
        self._renewals += 1  # the bytes (and so the etag) change with every renewal
        return json.dumps(
            {"owner": self.owner, "seconds": self.seconds, "renewed_at": time.time(),
             "renewal": self._renewals}
        ).encode()  # fmt: skip

    def _unchanged_for(self, name: str, etag: str) -> float:
        """How long (this process's monotonic clock) the lease `name` has kept `etag`."""
        now = time.monotonic()
        with self._guard:
            seen = self._watched.get(name)
            if seen is None or seen[0] != etag:
                self._watched[name] = seen = (etag, now)
        return now - seen[1]

    def _age(self, name: str, body: bytes, meta: Meta) -> tuple[str, float, float]:
        """(holder, age, length) of a lease read now: by the store's clock where it has one,
        else by how long this process has watched it unchanged."""
        holder, age, length = _describe(body, meta.modified, meta.now)
        if meta.modified is None:
            length = length if length > 0 else self.seconds  # unreadable: maybe a torn write
            age = self._unchanged_for(name, meta.etag)
        return holder, age, length

    @contextmanager
    def hold(self, name: str, *, wait: float, what: str) -> Iterator[None]:
        def take(deadline: float) -> _Held:
            return self._take(name, deadline, wait, what)

        with self._held.hold(name, take, wait=wait, what=what):
            yield

    def _take(self, name: str, deadline: float, wait: float, what: str) -> _Held:
        held = _Held(name)
        delay = 0.05
        holder = ""
        while True:
            etag = None
            with contextlib.suppress(Conflict):
                etag = self.store.put(name, self._body(), if_absent=True)
            if etag is None and (found := self.store.get(name)) is not None:
                body, meta = found
                holder, age, length = self._age(name, body, meta)
                if age > length:
                    with contextlib.suppress(Conflict):
                        etag = self.store.put(name, self._body(), if_match=meta.etag)
                        log.info("took over %s: the lease of %s expired %.0fs ago",
                                 what, holder, age - length)  # fmt: skip
            if etag is not None:
                held.etag = etag
                break
            if time.monotonic() >= deadline:
                raise LockTimeout(timeout_message(what, wait, holder))
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        held.renewed, held.lost, held.confirmed = time.monotonic(), False, False
        held.stop = threading.Event()
        held.thread = threading.Thread(
            target=self._renew_loop, args=(name, held), name=f"lease {what}", daemon=True
        )
        held.thread.start()
        return held

    def _confirm(self, name: str, held: _Held) -> None:
        """Before the first write under a lease: is this holder's write still the stored one a
        moment after it was made? A store may check a condition and write without atomicity
        (moto, fsspec stores): two waiters' creates (or takeovers) can both succeed, and the
        later write is the one that stands. Done lazily, the settle overlaps the planning and
        fetching a writer does before its first write. LeaseLost for the other holder."""
        time.sleep(max(0.0, SETTLE - (time.monotonic() - held.renewed)))
        found = self.store.head(name)
        if found is None or found.etag != held.etag:
            held.lost = True
            raise LeaseLost(
                f"the lease {name} was taken by another writer at the same moment; nothing"
                " was written"
            )
        held.confirmed = True

    def _renew(self, name: str, held: _Held) -> None:
        with held.renewing:
            if held.lost:
                return
            try:
                held.etag = self.store.put(name, self._body(), if_match=held.etag)
                held.renewed = time.monotonic()
            except Conflict:
                held.lost = True
            except StorageError as exc:  # a network hiccup: the next renewal may get through
                log.warning("cannot renew the lease %s: %s", name, exc)
                if time.monotonic() - held.renewed > self.seconds:
                    held.lost = True

    def _renew_loop(self, name: str, held: _Held) -> None:
        while not held.stop.wait(self.seconds / 3) and not held.lost:
            self._renew(name, held)

    def _release(self, held: _Held) -> None:
        name = held.name
        held.stop.set()
        if held.thread is not None:
            held.thread.join()
        if not held.lost:
            # taken over meanwhile, or unreachable: it expires anyway
            with contextlib.suppress(StorageError):
                self.store.delete(name, if_match=held.etag)

    def sweep(self, prefix: str, *, dry_run: bool) -> list[tuple[str, str]]:
        """Expired leases under `prefix` (their holders died): removed, unless `dry_run`,
        If-Match what was read, so a lease renewed or taken meanwhile stays."""
        found = []
        for name in self.store.listing(prefix):
            lease = self.store.get(name) if name.endswith(".lease") else None
            if lease is None or lease[1].modified is None:
                continue  # no store clock: only a waiter that watched it a lease long can tell
            holder, age, length = _describe(lease[0], lease[1].modified, lease[1].now)
            if age > length:
                found.append((name, f"expired lease of {holder}"))
                if not dry_run:
                    with contextlib.suppress(Conflict):
                        self.store.delete(name, if_match=lease[1].etag)
        return found

    def check(self, name: str) -> None:
        """Before a commit's writes: this process still holds the lease `name` (renewed now
        if a third of it has passed). LeaseLost otherwise."""
        held = self._held.held(name)
        if held is None:
            return  # not leased here (a caller without the series lock): the conditions guard
        if not held.confirmed and not held.lost:
            self._confirm(name, held)
        if not held.lost and time.monotonic() - held.renewed > self.seconds / 3:
            self._renew(name, held)
        if held.lost or time.monotonic() - held.renewed > self.seconds / 2:
            held.lost = True
            raise LeaseLost(
                f"the lease {name} expired while this run was paused and another writer took"
                " it; nothing more is written"
            )


def _describe(body: bytes, modified: float | None, now: float) -> tuple[str, float, float]:
    """(owner, age in seconds, length) of a lease object; unreadable ones count as expired."""
    try:
        doc = json.loads(body)
        owner, length = str(doc["owner"]), float(doc["seconds"])
        renewed = float(doc["renewed_at"]) if modified is None else modified
    except (ValueError, KeyError, TypeError):
        return "an unreadable lease", float("inf"), 0.0
    return owner, now - renewed, length
