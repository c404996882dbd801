"""The PostgreSQL backend's schema: its tables, created and migrated by the tool (the
`schema_version` table), and the checks that name a schema another tool or a hand changed.

    SCHEMA.ohlcv(symbol, timeframe, ts timestamptz, open, high, low, close, volume, adj_close)
    SCHEMA.year_records, SCHEMA.documents, SCHEMA.index_docs, view SCHEMA.bars
    SCHEMA.quarantine_ohlcv, SCHEMA.quarantine_records   (version 2)
    SCHEMA.live_tail   the closed bars a follower stored since the last fold, and the view
    SCHEMA.live_bars   (bars, the live tail's included) (version 3)

Every identifier is quoted by psycopg (`sql.Identifier`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import sql

from marketcache.core.columns import VALUE_COLUMNS
from marketcache.errors import CorruptFile, UsageError

SCHEMA_VERSION = 3  # 2: the quarantine tables; 3: the live tail
COLUMNS = VALUE_COLUMNS
TABLES = ("schema_version", "ohlcv", "year_records", "documents", "index_docs", "bars",
          "quarantine_ohlcv", "quarantine_records", "live_tail", "live_bars")  # fmt: skip
_NEEDED = {  # what reads and writes use, checked once per process: a column dropped by hand
    "ohlcv": ("symbol", "timeframe", "ts", *COLUMNS),  # is named, not an "unexpected" error
    "year_records": ("symbol", "timeframe", "year", "record"),
}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def migrate(conn: Any, schema: str, location: str, scrub: Callable[[str], str]) -> bool:
    """Create or migrate the schema (under a migration lock); whether TimescaleDB is there.
    UsageError naming the schema when it holds tables of another tool; CorruptFile naming the
    table and column when one was dropped by hand."""
    import psycopg

    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('marketcache-migrate'))")
            timescale = _migrate_in(conn, schema, location)
    except (
        psycopg.errors.DuplicateTable,
        psycopg.errors.DuplicateObject,
        psycopg.errors.WrongObjectType,
        psycopg.errors.UndefinedColumn,
        psycopg.errors.InvalidTableDefinition,
    ) as exc:
        raise UsageError(
            f"--cache-dir {location}: schema {schema} holds tables marketcache"
            f" did not make ({scrub(first_line(exc))}): name another schema"
            " (?schema=NAME) or move them away"
        ) from None
    check_columns(conn, schema, location)
    return timescale


def _migrate_in(conn: Any, schema: str, location: str) -> bool:
    def q(text: str, **parts: Any) -> sql.Composed:
        return sql.SQL(text).format(s=sql.Identifier(schema), **parts)

    conn.execute(q("CREATE SCHEMA IF NOT EXISTS {s}"))
    found = {
        r[0]
        for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            [schema],
        ).fetchall()
    }
    have = None
    if "schema_version" in found:
        have = conn.execute(q("SELECT max(version) FROM {s}.schema_version")).fetchone()[0]
        if have is not None and (not isinstance(have, int) or "ohlcv" not in found):
            raise UsageError(  # another tool's migrations table under our name
                f"--cache-dir {location}: schema {schema} holds a table schema_version that"
                " marketcache did not create: name another schema (?schema=NAME) or move it"
                " away"
            )
        if have is not None and have > SCHEMA_VERSION:
            raise UsageError(
                f"--cache-dir {location}: schema {schema} was made by a newer marketcache"
                f" (schema version {have}, this one knows {SCHEMA_VERSION}): upgrade"
                " marketcache (pip install -U marketcache)"
            )
    foreign = sorted(found & set(TABLES) - {"schema_version"}) if not have else []
    if foreign:  # tables of another tool under our names: never write into them
        raise UsageError(
            f"--cache-dir {location}: schema {schema} already holds a table"
            f" {foreign[0]} that marketcache did not create: name another schema"
            " (?schema=NAME) or move that table away"
        )
    conn.execute(
        q("CREATE TABLE IF NOT EXISTS {s}.schema_version"
          " (version int PRIMARY KEY, applied_at timestamptz DEFAULT now())")
    )  # fmt: skip
    timescale = bool(
        conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    )
    cols = sql.SQL(", ").join(
        sql.SQL("{} double precision").format(sql.Identifier(c)) for c in COLUMNS
    )
    if not have:
        key = sql.SQL("PRIMARY KEY (symbol, timeframe, ts)")
        table = q(
            "CREATE TABLE {s}.ohlcv (symbol text NOT NULL, timeframe text NOT NULL,"
            " ts timestamptz NOT NULL, {cols}, {key})",
            cols=cols,
            key=key,
        )
        if timescale:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute(table)
            name = sql.Identifier(schema, "ohlcv").as_string(conn)
            conn.execute("SELECT create_hypertable(%s::regclass, 'ts')", [name])
        else:
            conn.execute(table + sql.SQL(" PARTITION BY RANGE (ts)"))
        conn.execute(
            q("CREATE TABLE {s}.year_records (symbol text, timeframe text, year int,"
              " record jsonb NOT NULL, PRIMARY KEY (symbol, timeframe, year))")
        )  # fmt: skip
        conn.execute(
            q("CREATE TABLE {s}.documents (symbol text, name text, body bytea NOT NULL,"
              " PRIMARY KEY (symbol, name))")
        )  # fmt: skip
        conn.execute(q("CREATE TABLE {s}.index_docs (name text PRIMARY KEY, body jsonb)"))
        conn.execute(
            q("CREATE VIEW {s}.bars AS SELECT symbol, timeframe, ts, open, high, low,"
              " close, volume, adj_close FROM {s}.ohlcv")
        )  # fmt: skip
    if not have or have < 2:
        conn.execute(
            q("CREATE TABLE {s}.quarantine_records (aside text PRIMARY KEY, symbol text,"
              " timeframe text, year int, record text, reason text,"
              " quarantined_at timestamptz NOT NULL DEFAULT now())")
        )  # fmt: skip
        conn.execute(
            q("CREATE TABLE {s}.quarantine_ohlcv (aside text NOT NULL, symbol text,"
              " timeframe text, ts timestamptz, {cols})", cols=cols)
        )  # fmt: skip
        conn.execute(q("CREATE INDEX ON {s}.quarantine_ohlcv (aside)"))
    if not have or have < 3:
        live = sql.SQL(", ").join(
            sql.SQL("{} double precision NOT NULL").format(sql.Identifier(c))
            for c in COLUMNS
            if c != "adj_close"
        )
        conn.execute(
            q("CREATE TABLE {s}.live_tail (symbol text NOT NULL, timeframe text NOT NULL,"
              " ts timestamptz NOT NULL, {live}, PRIMARY KEY (symbol, timeframe, ts))",
              live=live)
        )  # fmt: skip
        conn.execute(
            q("CREATE VIEW {s}.live_bars AS SELECT symbol, timeframe, ts, open, high, low, close,"
              " volume, adj_close FROM {s}.ohlcv UNION ALL SELECT t.symbol, t.timeframe, t.ts,"
              " t.open, t.high, t.low, t.close, t.volume, NULL::double precision FROM"
              " {s}.live_tail t WHERE NOT EXISTS (SELECT 1 FROM {s}.ohlcv o WHERE"
              " o.symbol = t.symbol AND o.timeframe = t.timeframe AND o.ts = t.ts)")
        )  # fmt: skip
    if not have or have < SCHEMA_VERSION:
        conn.execute(q("INSERT INTO {s}.schema_version (version) VALUES (%s)"), [SCHEMA_VERSION])
    return timescale


def check_columns(conn: Any, schema: str, location: str) -> None:
    """Every column reads and writes use is there (a column dropped by hand is named)."""
    for table, needed in _NEEDED.items():
        have = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s",
                [schema, table],
            ).fetchall()
        }
        missing = [c for c in needed if c not in have]
        if missing:
            alter = (
                f"ALTER TABLE {schema}.{table} ADD COLUMN {missing[0]} double precision"
                if table == "ohlcv" and missing[0] in COLUMNS
                else "restore it"
            )
            raise CorruptFile(
                f"{location}",
                f"table {schema}.{table} has no column {missing[0]} (dropped by"
                f" hand?): {alter}, or copy the cache into a new schema",
            )
