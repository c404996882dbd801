"""The live tail in PostgreSQL: `SCHEMA.live_tail(symbol, timeframe, ts, open, high, low,
close, volume)`, primary key (symbol, timeframe, ts), created with the rest of the schema.

`add` is one INSERT … ON CONFLICT DO NOTHING per call, committed before it returns; `keep`
replaces the series' rows in one transaction. Identifiers go through `sql.Identifier`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from psycopg import sql

from marketcache.core.columns import BASE_COLUMNS
from marketcache.storage.tail import SeriesTail, frame_of

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.storage.postgres import PostgresBackend

TAIL_TABLE = "live_tail"
_VALUES = BASE_COLUMNS[1:]


def open_tail(backend: PostgresBackend, symbol: str, timeframe: str) -> PgTail:
    where = f"{backend.location} {backend.schema}.{TAIL_TABLE} {symbol} {timeframe}"
    return PgTail(
        lambda: backend.conn, backend.schema, symbol, timeframe, backend._sql_errors, where
    )


def tail_series(backend: PostgresBackend, symbol: str | None = None) -> list[tuple[str, str]]:
    if backend._absent():  # a read never creates the schema
        return []
    only = sql.SQL("WHERE symbol = %s") if symbol else sql.SQL("")
    with backend._sql_errors(f"{backend.location} {backend.schema}.{TAIL_TABLE}"):
        rows = backend.conn.execute(
            sql.SQL("SELECT DISTINCT symbol, timeframe FROM {s}.{t} {w} ORDER BY 1, 2").format(
                s=sql.Identifier(backend.schema), t=sql.Identifier(TAIL_TABLE), w=only
            ),
            (symbol,) if symbol else None,
        ).fetchall()
    return [(str(s), str(t)) for s, t in rows]


class PgTail(SeriesTail):
    def __init__(
        self,
        conn: Callable[[], Any],
        schema: str,
        symbol: str,
        timeframe: str,
        errors: Callable[[str], Any],
        where: str,
    ) -> None:
        self._conn, self.schema, self.series = conn, schema, (symbol, timeframe)
        self._errors = errors  # the backend's driver-error translation, as a context manager
        self.where = where

    def _q(self, text: str) -> sql.Composed:
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in _VALUES)
        return sql.SQL(text).format(
            s=sql.Identifier(self.schema), t=sql.Identifier(TAIL_TABLE), cols=cols
        )

    def read(self) -> pd.DataFrame:
        import numpy as np
        import pandas as pd

        from marketcache.core.frames import empty_frame

        with self._errors(self.where):
            rows = (
                self._conn()
                .execute(
                    self._q(
                        "SELECT ts, {cols} FROM {s}.{t} WHERE symbol = %s AND timeframe = %s"
                        " ORDER BY ts"
                    ),
                    list(self.series),
                )
                .fetchall()
            )
        if not rows:
            return empty_frame()
        stamps = pd.to_datetime([r[0] for r in rows], utc=True).tz_localize(None)
        block = np.asarray([r[1:] for r in rows], dtype="float64")
        return frame_of(stamps.to_numpy("datetime64[ns]"), block)

    def _params(self, rows: pd.DataFrame) -> list[list[Any]]:
        stamps = rows["timestamp"].dt.tz_localize("UTC").dt.to_pydatetime().tolist()
        values = rows[_VALUES].to_numpy(dtype="float64").tolist()
        return [[*self.series, ts, *v] for ts, v in zip(stamps, values, strict=True)]

    def _insert(self, conn: Any, rows: pd.DataFrame) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                self._q(
                    "INSERT INTO {s}.{t} (symbol, timeframe, ts, {cols}) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ),
                self._params(rows),
            )

    def add(self, rows: pd.DataFrame) -> None:
        if not len(rows):
            return
        conn = self._conn()
        with self._errors(self.where), conn.transaction():
            self._insert(conn, rows)

    def keep(self, rows: pd.DataFrame) -> None:
        conn = self._conn()
        with self._errors(self.where), conn.transaction():
            conn.execute(
                self._q("DELETE FROM {s}.{t} WHERE symbol = %s AND timeframe = %s"),
                list(self.series),
            )
            if len(rows):
                self._insert(conn, rows)
