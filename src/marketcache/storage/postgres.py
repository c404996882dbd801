"""The PostgreSQL backend: the same cache in tables that other services can read with SQL.

    SCHEMA.ohlcv(symbol, timeframe, ts timestamptz, open, high, low, close, volume, adj_close)
        primary key (symbol, timeframe, ts), partitioned by year (partitions made on demand;
        a TimescaleDB hypertable instead where that extension exists)
    SCHEMA.year_records(symbol, timeframe, year, record jsonb)   the per-year commit records
    SCHEMA.documents(symbol, name, body)   corporate actions, fundamentals snapshots
    SCHEMA.index_docs(name, body)          the derived index
    SCHEMA.bars                            a view over ohlcv for other services
    SCHEMA.schema_version(version)         migrations applied by the tool

A year is committed in one transaction (rows and record together); its record's sha256 is
over a canonical encoding of the rows, so a read verifies rows and count as on files. Writes
use COPY; reads COPY the rows out. One writer per series across machines: session advisory
locks, released by the server when a writer's connection dies.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from marketcache.columns import VALUE_COLUMNS
from marketcache.errors import CorruptFile, LockTimeout, StorageError, UsageError
from marketcache.records import YearRecord
from marketcache.storage.backend import Key, StorageBackend

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
COLUMNS = VALUE_COLUMNS


class PostgresBackend(StorageBackend):
    name = "postgresql"
    format = "postgresql"
    appendable = False

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.schema = query.pop("schema", "marketcache")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.schema):
            raise UsageError(f"--cache-dir …?schema={self.schema}: use a lower-case SQL name")
        self.conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
        shown = parts.netloc.rsplit("@", 1)[-1]
        user = parts.username or ""
        query_text = urlencode({**query, "schema": self.schema}, safe="/")
        # the URL without its password: usable again, shown in messages and records
        super().__init__(
            f"postgresql://{user + '@' if user else ''}{shown}{parts.path}?{query_text}"
        )
        self.root = self.location
        self._local = threading.local()
        self._ready = False
        self.timescale = False
        self._partitions: set[int] = set()

    # ---- connections and schema ----------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "does not exist" in text:
                raise UsageError(f"--cache-dir {self.location}: {text}") from None
            raise StorageError(f"cannot connect to {self.location}: {text}") from None
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    @property
    def conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self._connect()
        if not self._ready:
            self._migrate(conn)
        return conn

    def _migrate(self, conn: Any) -> None:
        s = self.schema
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('marketcache-migrate'))")
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.schema_version "
                "(version int PRIMARY KEY, applied_at timestamptz DEFAULT now())"
            )
            have = conn.execute(f"SELECT max(version) FROM {s}.schema_version").fetchone()[0]
            self.timescale = bool(
                conn.execute(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
                ).fetchone()
            )
            if not have:
                cols = ", ".join(f"{c} double precision" for c in COLUMNS)
                key = "PRIMARY KEY (symbol, timeframe, ts)"
                if self.timescale:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                    conn.execute(
                        f"CREATE TABLE {s}.ohlcv (symbol text NOT NULL, timeframe text"
                        f" NOT NULL, ts timestamptz NOT NULL, {cols}, {key})"
                    )
                    conn.execute(f"SELECT create_hypertable('{s}.ohlcv', 'ts')")
                else:
                    conn.execute(
                        f"CREATE TABLE {s}.ohlcv (symbol text NOT NULL, timeframe text"
                        f" NOT NULL, ts timestamptz NOT NULL, {cols}, {key})"
                        " PARTITION BY RANGE (ts)"
                    )
                conn.execute(
                    f"CREATE TABLE {s}.year_records (symbol text, timeframe text,"
                    " year int, record jsonb NOT NULL, PRIMARY KEY (symbol, timeframe, year))"
                )
                conn.execute(
                    f"CREATE TABLE {s}.documents (symbol text, name text,"
                    " body bytea NOT NULL, PRIMARY KEY (symbol, name))"
                )
                conn.execute(f"CREATE TABLE {s}.index_docs (name text PRIMARY KEY, body jsonb)")
                conn.execute(
                    f"CREATE VIEW {s}.bars AS SELECT symbol, timeframe, ts, open, high,"
                    f" low, close, volume, adj_close FROM {s}.ohlcv"
                )
                conn.execute(f"INSERT INTO {s}.schema_version (version) VALUES ({SCHEMA_VERSION})")
        self._ready = True

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "schema": self.schema}
        with contextlib.suppress(StorageError, UsageError):
            _ = self.conn
            out["timescaledb"] = self.timescale
            if not self.timescale:
                out["note"] = "timescaledb is not installed: ohlcv is partitioned by year"
        return out

    # ---- listing and records ---------------------------------------------------------------

    def exists(self) -> bool:
        try:
            _ = self.conn
        except (StorageError, UsageError):
            return False
        return True

    def keys(self, symbol: str | None = None, timeframe: str | None = None) -> list[Key]:
        sql = f"SELECT symbol, timeframe, year FROM {self.schema}.year_records WHERE true"
        args: list[Any] = []
        if symbol:
            sql, args = sql + " AND symbol = %s", [*args, symbol]
        if timeframe:
            sql, args = sql + " AND timeframe = %s", [*args, timeframe]
        rows = self.conn.execute(sql + " ORDER BY 1, 2, 3", args).fetchall()
        return [Key(s, t, int(y)) for s, t, y in rows]

    def read_record(self, key: Key) -> YearRecord:
        row = self.conn.execute(
            f"SELECT record FROM {self.schema}.year_records WHERE symbol = %s AND timeframe = %s"
            " AND year = %s",
            [key.symbol, key.timeframe, key.year],
        ).fetchone()
        if row is None:
            raise CorruptFile(f"{self.location} {key}", "metadata file is missing")
        return YearRecord.from_json(row[0], f"{self.location} {key}")

    def write_record(self, key: Key, record: YearRecord) -> None:
        self._upsert(self.conn, key, record)

    def _upsert(self, conn: Any, key: Key, record: YearRecord) -> None:
        conn.execute(
            f"INSERT INTO {self.schema}.year_records VALUES (%s, %s, %s, %s) ON CONFLICT"
            " (symbol, timeframe, year) DO UPDATE SET record = EXCLUDED.record",
            [key.symbol, key.timeframe, key.year, json.dumps(record.to_json())],
        )

    # ---- rows --------------------------------------------------------------------------------

    def _year(self, key: Key) -> tuple[str, str]:
        return f"{key.year}-01-01", f"{key.year + 1}-01-01"

    def _rows(self, key: Key, record: YearRecord) -> pd.DataFrame:
        """The year's rows as they are in the table (unchecked)."""
        lo, hi = self._year(key)
        sink = io.BytesIO()
        values = ", ".join(f"coalesce({c}, 'NaN'::float8)" for c in record.file_info.columns[1:])
        query = (  # unordered: a sequential scan, sorted by _parse_binary if it has to be
            f"COPY (SELECT ts, {values} FROM {self.schema}.ohlcv WHERE symbol = %s AND"
            " timeframe = %s AND ts >= %s AND ts < %s) TO STDOUT (FORMAT binary)"
        )
        with self.conn.cursor() as cur, cur.copy(query, [key.symbol, key.timeframe, lo, hi]) as cp:
            for block in cp:
                sink.write(block)
        return _parse_binary(sink.getvalue(), record.file_info.columns)

    def read_rows(self, key: Key, record: YearRecord) -> pd.DataFrame:
        frame = self._rows(key, record)
        where = f"{self.location} {key}"
        if len(frame) != record.rows:
            raise CorruptFile(where, f"holds {len(frame)} rows, metadata says {record.rows}")
        if digest(frame, record.file_info.columns) != record.file_info.sha256:
            raise CorruptFile(where, "sha256 does not match metadata (the rows changed)")
        return frame

    def salvage(self, key: Key) -> tuple[pd.DataFrame | None, str, str]:
        """Rows that no longer match their record were changed in the database, not damaged:
        they are what there is, and `validate --fix` records them anew."""
        frame = self._rows(key, self.read_record(key))
        return (frame if len(frame) else None), "rows as they are in the database", "-"

    def write_year(self, key: Key, frame: pd.DataFrame, record: YearRecord) -> YearRecord:
        columns = record.file_info.columns
        frame = frame.reindex(columns=columns)
        body = _csv(frame, columns, key)
        info = record.file_info
        info.format, info.size_bytes, info.raw_bytes = self.format, len(body), len(body)
        info.sha256, info.members, info.rows = digest(frame, columns), 1, len(frame)
        lo, hi = self._year(key)
        s = self.schema
        conn = self.conn
        self._partition(conn, key.year)
        with conn.transaction():
            conn.execute(
                f"DELETE FROM {s}.ohlcv WHERE symbol = %s AND timeframe = %s AND"
                " ts >= %s AND ts < %s",
                [key.symbol, key.timeframe, lo, hi],
            )
            names = ", ".join(["symbol", "timeframe", "ts", *columns[1:]])
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY {s}.ohlcv ({names}) FROM STDIN WITH (FORMAT csv)") as cp,
            ):
                cp.write(body)
            self._upsert(conn, key, record)
        return record

    def _partition(self, conn: Any, year: int) -> None:
        """Create the year's partition in a transaction of its own; racing creators are fine."""
        import psycopg

        if self.timescale or year in self._partitions:
            return
        s = self.schema
        # another writer may create it a moment before us
        with contextlib.suppress(psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.ohlcv_{year} PARTITION OF {s}.ohlcv"
                f" FOR VALUES FROM ('{year}-01-01') TO ('{year + 1}-01-01')"
            )
        self._partitions.add(year)

    def delete(self, key: Key) -> None:
        lo, hi = self._year(key)
        with self.conn.transaction():
            self.conn.execute(
                f"DELETE FROM {self.schema}.year_records WHERE symbol = %s AND"
                " timeframe = %s AND year = %s",
                [*key.series, key.year],
            )
            self.conn.execute(
                f"DELETE FROM {self.schema}.ohlcv WHERE symbol = %s AND"
                " timeframe = %s AND ts >= %s AND ts < %s",
                [*key.series, lo, hi],
            )

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
        released by the server if this process dies."""
        held = _HELD.setdefault(name, _Held())
        if not held.rlock.acquire(timeout=max(wait, 0.0)):
            raise LockTimeout(_timeout(what, wait))
        try:
            if held.depth == 0:
                held.conn = self._connect()
                deadline, delay = time.monotonic() + wait, 0.01
                while not held.conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [name]
                ).fetchone()[0]:
                    if time.monotonic() >= deadline:
                        held.conn.close()
                        raise LockTimeout(_timeout(what, wait))
                    time.sleep(delay)
                    delay = min(delay * 2, 0.25)
            held.depth += 1
            try:
                yield
            finally:
                held.depth -= 1
                if held.depth == 0 and held.conn is not None:
                    held.conn.close()  # closing the session releases the lock
                    held.conn = None
        finally:
            held.rlock.release()

    # ---- documents and the index ---------------------------------------------------------------

    def read_document(self, symbol: str, name: str) -> bytes | None:
        row = self.conn.execute(
            f"SELECT body FROM {self.schema}.documents WHERE symbol = %s AND name = %s",
            [symbol, name],
        ).fetchone()
        return bytes(row[0]) if row else None

    def write_document(self, symbol: str, name: str, data: bytes) -> None:
        self.conn.execute(
            f"INSERT INTO {self.schema}.documents VALUES (%s, %s, %s) ON CONFLICT"
            " (symbol, name) DO UPDATE SET body = EXCLUDED.body",
            [symbol, name, data],
        )

    def list_documents(self, symbol: str, prefix: str) -> list[str]:
        rows = self.conn.execute(
            f"SELECT name FROM {self.schema}.documents WHERE symbol = %s"
            " AND starts_with(name, %s) ORDER BY name",
            [symbol, prefix],
        )
        return [r[0] for r in rows.fetchall()]

    def delete_document(self, symbol: str, name: str) -> None:
        self.conn.execute(
            f"DELETE FROM {self.schema}.documents WHERE symbol = %s AND name = %s", [symbol, name]
        )

    def read_index(self, name: str) -> Any:
        row = self.conn.execute(
            f"SELECT body FROM {self.schema}.index_docs WHERE name = %s", [name]
        ).fetchone()
        return row[0] if row else None

    def write_index(self, name: str, data: Any) -> None:
        self.conn.execute(
            f"INSERT INTO {self.schema}.index_docs VALUES (%s, %s) ON CONFLICT"
            " (name) DO UPDATE SET body = EXCLUDED.body",
            [name, json.dumps(data)],
        )


class _Held:
    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.depth = 0
        self.conn: Any = None


_HELD: dict[str, _Held] = {}


def _timeout(what: str, wait: float) -> str:
    return (
        f"{what} is locked by another marketcache run (waited {wait:g}s): "
        "let it finish or raise lock_wait"
    )


def _csv(frame: pd.DataFrame, columns: list[str], key: Key) -> bytes:
    """The rows as COPY CSV (symbol, timeframe, UTC stamp, floats that read back exact)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n = len(frame)
    arrays = [
        pa.array(np.full(n, key.symbol, dtype=object), pa.string()),
        pa.array(np.full(n, key.timeframe, dtype=object), pa.string()),
        pa.array(frame["timestamp"].to_numpy("datetime64[ns]").astype("datetime64[us]")),
    ]
    arrays += [
        pa.array(frame[c].to_numpy("float64", na_value=np.nan), from_pandas=True)
        for c in columns[1:]
    ]
    table = pa.Table.from_arrays(arrays, names=["symbol", "timeframe", *columns])
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
    return sink.getvalue()


PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds


def _parse_binary(raw: bytes, columns: list[str]) -> pd.DataFrame:
    """COPY binary out (timestamptz, float8 × n, no NULLs) → a frame, parsed by numpy: every
    row has the same width, so the body is one structured array."""
    import numpy as np
    import pandas as pd

    extension = int.from_bytes(raw[15:19], "big") if len(raw) >= 19 else 0
    body = raw[19 + extension :]  # signature (11), flags (4), header extension length (4)
    fields = [("count", ">i2")]
    for i in range(len(columns)):
        fields += [(f"len{i}", ">i4"), (f"v{i}", ">i8" if i == 0 else ">f8")]
    row = np.dtype(fields)
    count = max(len(body) - 2, 0) // row.itemsize  # the trailer is a -1 field count
    data = np.frombuffer(body, dtype=row, count=count)
    if len(data) > 1 and not (np.diff(data["v0"]) > 0).all():
        data = data[np.argsort(data["v0"], kind="stable")]
    stamps = (data["v0"].astype(np.int64) + PG_EPOCH_US) * 1000
    frame = pd.DataFrame({"timestamp": stamps.astype("datetime64[ns]")})
    for i, col in enumerate(columns[1:], start=1):
        frame[col] = data[f"v{i}"].astype(np.float64)
    return frame


def digest(frame: pd.DataFrame, columns: list[str]) -> str:
    """sha256 over the rows' canonical bytes (int64 ns stamps, float64 values, NaN as one)."""
    import numpy as np

    h = hashlib.sha256()
    h.update(frame["timestamp"].to_numpy("datetime64[ns]").astype(np.int64).tobytes())
    for col in columns[1:]:
        values = frame[col].to_numpy("float64", na_value=np.nan).copy()
        values[np.isnan(values)] = np.nan
        h.update(values.tobytes())
    return h.hexdigest()
