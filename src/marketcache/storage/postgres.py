"""The PostgreSQL backend: the same cache in tables that other services can read with SQL.

    SCHEMA.ohlcv(symbol, timeframe, ts timestamptz, open, high, low, close, volume, adj_close)
        primary key (symbol, timeframe, ts), partitioned by year (partitions made on demand;
        a TimescaleDB hypertable instead where that extension exists)
    SCHEMA.year_records(symbol, timeframe, year, record jsonb)   the per-year commit records
    SCHEMA.documents(symbol, name, body)   corporate actions, fundamentals snapshots
    SCHEMA.index_docs(name, body)          the derived index
    SCHEMA.bars                            a view over ohlcv for other services
    SCHEMA.quarantine_ohlcv, SCHEMA.quarantine_records   years set aside as corrupt, each
        under a unique `aside` name with when it was set aside (`cleanup` removes them after
        settings.quarantine_days)
    SCHEMA.schema_version(version)         migrations applied by the tool

A year is committed in one transaction (rows and record together); its record's sha256 is
over a canonical encoding of the rows, so a read verifies rows and count as on files. Writes
use COPY; reads COPY the rows out. One writer per series across machines: session advisory
locks, released by the server when a writer's connection dies.

Every identifier in a statement is quoted by psycopg (`sql.Identifier`), and column names
come only from the known columns (`records.check_columns`): a record is data, never SQL.
A year judged corrupt is moved into the quarantine tables, never deleted.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from psycopg import sql

from marketcache.core.records import YearRecord, check_columns, parse_json
from marketcache.errors import CorruptFile, LockTimeout, StorageError, UsageError
from marketcache.storage.backend import Key
from marketcache.storage.layout import quarantine_mark
from marketcache.storage.lock import Reentrant, timeout_message
from marketcache.storage.pg_connect import PostgresConnection
from marketcache.storage.pg_rows import digest, parse_binary, to_csv, to_microseconds
from marketcache.storage.pg_schema import COLUMNS

if TYPE_CHECKING:
    import pandas as pd


class PostgresBackend(PostgresConnection):
    # ---- listing and records ---------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the database answers and holds the schema (a read never creates it: a
        mistyped `?schema=` is "no cache there", not a new empty schema); a schema it cannot
        use raises (named), as it is there but not usable — not "does not exist"."""
        try:
            conn = getattr(self._local, "conn", None)
            if conn is None or conn.closed:
                self._local.conn = self._connect()
        except (StorageError, UsageError):
            return False
        return not self._absent()

    def check_usable(self) -> None:
        self._absent()  # connects and, when the schema is there, checks and migrates it

    def keys(self, symbol: str | None = None, timeframe: str | None = None) -> list[Key]:
        if self._absent():
            return []
        query = self._q("SELECT symbol, timeframe, year FROM {s}.year_records WHERE true")
        args: list[Any] = []
        if symbol:
            query, args = query + sql.SQL(" AND symbol = %s"), [*args, symbol]
        if timeframe:
            query, args = query + sql.SQL(" AND timeframe = %s"), [*args, timeframe]
        with self._sql_errors(f"{self.location} {self.schema}.year_records"):
            rows = self.conn.execute(query + sql.SQL(" ORDER BY 1, 2, 3"), args).fetchall()
        return [Key(s, t, int(y)) for s, t, y in rows]

    def _where(self, key: Key) -> str:
        return f"{self.location} {key}"

    def read_record(self, key: Key) -> YearRecord:
        with self._sql_errors(self._where(key)):
            row = self.conn.execute(
                self._q(
                    "SELECT record::text FROM {s}.year_records WHERE symbol = %s AND"
                    " timeframe = %s AND year = %s"
                ),
                [key.symbol, key.timeframe, key.year],
            ).fetchone()
        if row is None:
            raise CorruptFile(self._where(key), "metadata file is missing")
        # parsed here, not by the driver: a crafted record is this year's CorruptFile
        return YearRecord.from_json(parse_json(row[0], self._where(key)), self._where(key))

    def write_record(self, key: Key, record: YearRecord) -> None:
        self._upsert(self.conn, key, record)

    def _upsert(self, conn: Any, key: Key, record: YearRecord) -> None:
        conn.execute(
            self._q(
                "INSERT INTO {s}.year_records VALUES (%s, %s, %s, %s) ON CONFLICT"
                " (symbol, timeframe, year) DO UPDATE SET record = EXCLUDED.record"
            ),
            [key.symbol, key.timeframe, key.year, json.dumps(record.to_json())],
        )

    # ---- rows --------------------------------------------------------------------------------

    def _year(self, key: Key) -> tuple[str, str]:
        return f"{key.year}-01-01", f"{key.year + 1}-01-01"

    def _columns(self, key: Key, columns: list[str]) -> list[str]:
        """The value columns of a record, only ever known names (CorruptFile otherwise)."""
        try:
            return check_columns(columns)[1:]
        except ValueError as exc:
            raise CorruptFile(self._where(key), f"metadata is not a valid record: {exc}") from None

    def _rows(self, key: Key, columns: list[str]) -> pd.DataFrame:
        """The year's rows as they are in the table (unchecked)."""
        lo, hi = self._year(key)
        sink = io.BytesIO()
        values = sql.SQL(", ").join(
            sql.SQL("coalesce({}, 'NaN'::float8)").format(sql.Identifier(c))
            for c in self._columns(key, columns)
        )
        query = self._q(  # unordered: a sequential scan, sorted by parse_binary if it has to be
            "COPY (SELECT ts, {values} FROM {s}.ohlcv WHERE symbol = %s AND timeframe = %s"
            " AND ts >= %s AND ts < %s) TO STDOUT (FORMAT binary)",
            values=values,
        )
        with (
            self._sql_errors(self._where(key)),
            self.conn.cursor() as cur,
            cur.copy(query, [key.symbol, key.timeframe, lo, hi]) as cp,
        ):
            for block in cp:
                sink.write(block)
        return parse_binary(sink.getvalue(), ["timestamp", *self._columns(key, columns)])

    def read_rows(self, key: Key, record: YearRecord) -> pd.DataFrame:
        frame = self._rows(key, record.file_info.columns)
        where = self._where(key)
        if len(frame) != record.rows:
            raise CorruptFile(where, f"holds {len(frame)} rows, metadata says {record.rows}")
        if digest(frame, record.file_info.columns) != record.file_info.sha256:
            raise CorruptFile(where, "sha256 does not match metadata (the rows changed)")
        return frame

    def salvage(self, key: Key) -> tuple[pd.DataFrame | None, str, str]:
        """Rows that no longer match their record were changed in the database, not damaged:
        they are what there is, and `validate --fix` records them anew. The year as it was
        (rows and record) is copied into the quarantine tables first."""
        try:
            columns = self.read_record(key).file_info.columns
        except CorruptFile:  # an unreadable record: every column, adj_close if it holds any
            columns = ["timestamp", *COLUMNS]
        frame = self._rows(key, columns)
        if "adj_close" in frame.columns and frame["adj_close"].isna().all():
            frame = frame.drop(columns="adj_close")
        aside = self._set_aside(key, move=False)
        return (frame if len(frame) else None), "rows as they are in the database", aside

    def write_year(self, key: Key, frame: pd.DataFrame, record: YearRecord) -> YearRecord:
        columns = record.file_info.columns
        self._columns(key, columns)
        frame = to_microseconds(frame.reindex(columns=columns), key)
        body = to_csv(frame, columns, key)
        info = record.file_info
        info.format, info.size_bytes, info.raw_bytes = self.format, len(body), len(body)
        info.sha256, info.members, info.rows = digest(frame, columns), 1, len(frame)
        lo, hi = self._year(key)
        conn = self.conn
        names = sql.SQL(", ").join(
            sql.Identifier(c) for c in ["symbol", "timeframe", "ts", *columns[1:]]
        )
        with self._sql_errors(self._where(key)):
            self._partition(conn, key.year)
            with conn.transaction():
                conn.execute(
                    self._q(
                        "DELETE FROM {s}.ohlcv WHERE symbol = %s AND timeframe = %s AND"
                        " ts >= %s AND ts < %s"
                    ),
                    [key.symbol, key.timeframe, lo, hi],
                )
                copy = self._q("COPY {s}.ohlcv ({names}) FROM STDIN WITH (FORMAT csv)", names=names)
                with conn.cursor() as cur, cur.copy(copy) as cp:
                    cp.write(body)
                self._upsert(conn, key, record)
        return record

    def _partition(self, conn: Any, year: int) -> None:
        """Create the year's partition in a transaction of its own; racing creators are fine."""
        import psycopg

        if self.timescale or year in self._partitions:
            return
        # another writer may create it a moment before us
        with contextlib.suppress(psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
            conn.execute(
                self._q(
                    "CREATE TABLE IF NOT EXISTS {s}.{part} PARTITION OF {s}.ohlcv"
                    " FOR VALUES FROM ({lo}) TO ({hi})",
                    part=sql.Identifier(f"ohlcv_{year}"),
                    lo=sql.Literal(f"{year}-01-01"),
                    hi=sql.Literal(f"{year + 1}-01-01"),
                )
            )
        self._partitions.add(year)

    def delete(self, key: Key) -> None:
        lo, hi = self._year(key)
        with self._sql_errors(self._where(key)), self.conn.transaction():
            self._delete(self.conn, key, lo, hi)

    def _delete(self, conn: Any, key: Key, lo: str, hi: str) -> None:
        conn.execute(
            self._q(
                "DELETE FROM {s}.year_records WHERE symbol = %s AND timeframe = %s AND year = %s"
            ),
            [*key.series, key.year],
        )
        conn.execute(
            self._q(
                "DELETE FROM {s}.ohlcv WHERE symbol = %s AND timeframe = %s AND"
                " ts >= %s AND ts < %s"
            ),
            [*key.series, lo, hi],
        )

    # ---- quarantine ------------------------------------------------------------------------

    def quarantine(self, key: Key) -> str | None:
        """Move the year's rows and record into the quarantine tables (one transaction), under
        a unique name; the year is then absent, so that it is fetched again."""
        return self._set_aside(key, move=True)

    def _set_aside(self, key: Key, *, move: bool) -> str:
        aside = f"{key.symbol}/{key.timeframe}/{key.year}{quarantine_mark()}"  # never overwrites
        lo, hi = self._year(key)
        names = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
        conn = self.conn
        with self._sql_errors(self._where(key)), conn.transaction():
            conn.execute(
                self._q(
                    "INSERT INTO {s}.quarantine_ohlcv (aside, symbol, timeframe, ts, {names})"
                    " SELECT %s, symbol, timeframe, ts, {names} FROM {s}.ohlcv"
                    " WHERE symbol = %s AND timeframe = %s AND ts >= %s AND ts < %s",
                    names=names,
                ),
                [aside, *key.series, lo, hi],
            )
            conn.execute(
                self._q(
                    "INSERT INTO {s}.quarantine_records (aside, symbol, timeframe, year, record,"
                    " reason) SELECT %s, %s, %s, %s, (SELECT record::text FROM {s}.year_records"
                    " WHERE symbol = %s AND timeframe = %s AND year = %s), %s"
                ),
                [aside, *key.series, key.year, *key.series, key.year,
                 "corrupt" if move else "copy kept by validate --fix"],
            )  # fmt: skip
            if move:
                self._delete(conn, key, lo, hi)
        return aside

    def purge_quarantine(self, days: float, *, dry_run: bool) -> list[tuple[str, str]]:
        """Quarantined years set aside more than `days` days ago (removed unless `dry_run`)."""
        if not self.exists():
            return []
        cutoff = f"{float(days)} days"
        with self._sql_errors(f"{self.location} {self.schema}.quarantine_records"):
            old = self.conn.execute(
                self._q(
                    "SELECT aside FROM {s}.quarantine_records"
                    " WHERE quarantined_at < now() - %s::interval ORDER BY aside"
                ),
                [cutoff],
            ).fetchall()
            names = [r[0] for r in old]
            if names and not dry_run:
                with self.conn.transaction():
                    for table in ("quarantine_ohlcv", "quarantine_records"):
                        self.conn.execute(
                            self._q("DELETE FROM {s}.{t} WHERE aside = ANY(%s)",
                                    t=sql.Identifier(table)),
                            [names],
                        )  # fmt: skip
        why = f"quarantined more than {days:g} days ago"
        return [(f"{self.location} {self.schema}.quarantine_records {n}", why) for n in names]

    # ---- locks ---------------------------------------------------------------------------------

    def lock(
        self, symbol: str, timeframe: str, *, wait: float
    ) -> contextlib.AbstractContextManager[None]:
        return self._advisory(f"{self.schema}:{symbol}:{timeframe}", wait, f"{symbol} {timeframe}")

    @contextlib.contextmanager
    def index_lock(self, *, wait: float) -> Iterator[None]:
        with self._advisory(f"{self.schema}:index", wait, "the cache index"):
            yield

    @contextlib.contextmanager
    def _advisory(self, name: str, wait: float, what: str) -> Iterator[None]:
        """A session advisory lock on a connection of its own: re-entrant in this process,
        released by the server if this process dies. Held state is per database and name:
        two caches of one process in different databases do not share it."""

        def take(deadline: float) -> Any:
            conn = self._connect()
            delay = 0.01
            while not conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [name]
            ).fetchone()[0]:
                if time.monotonic() >= deadline:
                    conn.close()
                    raise LockTimeout(timeout_message(what, wait))
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
            return conn

        with _ADVISORY.hold((self.location, name), take, wait=wait, what=what):
            yield

    # ---- documents and the index ---------------------------------------------------------------

    def read_document(self, symbol: str, name: str) -> bytes | None:
        if self._absent():
            return None
        row = self.conn.execute(
            self._q("SELECT body FROM {s}.documents WHERE symbol = %s AND name = %s"),
            [symbol, name],
        ).fetchone()
        return bytes(row[0]) if row else None

    def write_document(self, symbol: str, name: str, data: bytes) -> None:
        self.conn.execute(
            self._q(
                "INSERT INTO {s}.documents VALUES (%s, %s, %s) ON CONFLICT"
                " (symbol, name) DO UPDATE SET body = EXCLUDED.body"
            ),
            [symbol, name, data],
        )

    def list_documents(self, symbol: str, prefix: str) -> list[str]:
        if self._absent():
            return []
        rows = self.conn.execute(
            self._q(
                "SELECT name FROM {s}.documents WHERE symbol = %s"
                " AND starts_with(name, %s) ORDER BY name"
            ),
            [symbol, prefix],
        )
        return [r[0] for r in rows.fetchall()]

    def delete_document(self, symbol: str, name: str) -> None:
        self.conn.execute(
            self._q("DELETE FROM {s}.documents WHERE symbol = %s AND name = %s"), [symbol, name]
        )

    def read_index(self, name: str) -> Any:
        """A derived index document, or None when missing or unreadable (it is rebuilt)."""
        if self._absent():
            return None
        row = self.conn.execute(
            self._q("SELECT body::text FROM {s}.index_docs WHERE name = %s"), [name]
        ).fetchone()
        if row is None or row[0] is None:
            return None
        try:
            return parse_json(row[0], name)
        except CorruptFile:
            return None

    def write_index(self, name: str, data: Any) -> None:
        self.conn.execute(
            self._q(
                "INSERT INTO {s}.index_docs VALUES (%s, %s) ON CONFLICT"
                " (name) DO UPDATE SET body = EXCLUDED.body"
            ),
            [name, json.dumps(data)],
        )


def _close(conn: Any) -> None:
    conn.close()  # closing the session releases the lock


# (database URL, lock name) → this process's hold
_ADVISORY: Reentrant[Any] = Reentrant(_close)
