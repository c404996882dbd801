"""The PostgreSQL backend's connections: the URL (its password never shown), the schema
name, one connection per thread, the schema migrated on first use, and server errors turned
into ours with every secret scrubbed. The tables and the commit are in `postgres.py`.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from psycopg import sql

from marketcache.errors import CorruptFile, StorageError, UsageError
from marketcache.storage.backend import StorageBackend
from marketcache.storage.pg_schema import first_line, migrate
from marketcache.storage.urls import redact

if TYPE_CHECKING:
    pass


class PostgresConnection(StorageBackend):
    """A PostgreSQL cache's URL, schema name and connections (one per thread), the schema
    migrated on first use; errors of the server turned into ours, secrets scrubbed."""

    name = "postgresql"
    format = "postgresql"
    appendable = False

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.schema = query.pop("schema", "marketcache")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.schema):
            raise UsageError(f"--cache-dir …?schema={self.schema[:63]}: use a lower-case SQL name")
        self.conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
        self._secrets = [v for v in (parts.password, query.get("password")) if v]
        # the URL without its password (user:pass@ or ?password=): usable again (libpq finds
        # the password in PGPASSWORD or ~/.pgpass), shown in messages and records
        super().__init__(redact(urlunsplit(("postgresql", parts.netloc, parts.path,
                                            urlencode({**query, "schema": self.schema},
                                                      safe="/"), ""))))  # fmt: skip
        self.root = self.location
        self._local = threading.local()
        self._ready = False
        self.timescale = False
        self._partitions: set[int] = set()

    def _q(self, text: str, **parts: Any) -> sql.Composed:
        """A statement with `{s}` the quoted schema and `parts` its other identifiers."""
        return sql.SQL(text).format(s=sql.Identifier(self.schema), **parts)

    def _scrub(self, text: str) -> str:
        """A driver message without the URL's password, should the driver echo it."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # ---- connections and schema ----------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            text = self._scrub(first_line(exc))
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

    @contextlib.contextmanager
    def _sql_errors(self, where: str) -> Iterator[None]:
        """Driver errors of a schema changed by hand (or a lost server) as our errors, each
        naming the table or the cache and what to do."""
        import psycopg

        try:
            yield
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable) as exc:
            raise CorruptFile(
                where,
                f"{self._scrub(first_line(exc))} (changed by hand?): restore the table or copy"
                " the cache into a new schema",
            ) from None
        except psycopg.OperationalError as exc:
            raise StorageError(f"{self.location}: {self._scrub(first_line(exc))}") from None

    def _migrate(self, conn: Any) -> None:
        self.timescale = migrate(conn, self.schema, self.location, self._scrub)
        self._ready = True

    def _absent(self) -> bool:
        """True when the schema is not there yet (reads then find nothing and create
        nothing); otherwise migrates it once, as every first use does."""
        if self._ready:
            return False
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self._connect()
        with self._sql_errors(self.location):
            there = conn.execute(
                "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                [self.schema],
            ).fetchone()
        if there is None:
            return True
        self._migrate(conn)
        return False

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "schema": self.schema}
        with contextlib.suppress(StorageError, UsageError):
            if self._absent():
                return out
            out["timescaledb"] = self.timescale
            if not self.timescale:
                out["note"] = "timescaledb is not installed: ohlcv is partitioned by year"
        return out
