"""PostgreSQL backend vs pandas' to_sql / read_sql on one year of 1m bars (525,600 rows).

    python benchmarks/bench_postgres.py

Starts its own server on a unix socket in a temporary folder (initdb + pg_ctl; as root it runs
them as the `postgres` user), prints side-by-side figures and ratios, and stops it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_io import best, year_of_minutes  # noqa: E402

from marketcache import UnifiedCache  # noqa: E402
from marketcache.config.parser import parse_settings  # noqa: E402


def start() -> tuple[str, Path, list[str], Path]:
    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
    home = Path(tempfile.mkdtemp(prefix="marketcache-pgbench-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = home / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U",
                    "postgres"], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o",
                    f"-k {home} -c listen_addresses=''", "-l", str(home / "log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    os.chmod(home, 0o755)
    return f"postgresql://postgres@/postgres?host={home}", bindir, as_user, home


def main() -> int:
    import pandas as pd
    import sqlalchemy

    url, bindir, as_user, home = start()
    try:
        df = year_of_minutes()
        settings = parse_settings("")

        def put() -> None:
            cache = UnifiedCache(f"{url}&schema=bench", settings=settings)
            cache.put(df, "BTCUSDT", "1m", "binance")
            cache.backend.close()

        t_put = best(put, 3)
        cache = UnifiedCache(f"{url}&schema=bench", settings=settings)
        t_get = best(lambda: cache.get("BTCUSDT", "1m"), 5)
        engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        t0 = time.perf_counter()
        df.to_sql("plain", engine, if_exists="replace", index=False, chunksize=10_000)
        t_to_sql = time.perf_counter() - t0
        t_read_sql = best(lambda: pd.read_sql("SELECT * FROM plain ORDER BY timestamp", engine), 3)
        print(
            f"{'one year of 1m bars (525,600 rows)':62} {'marketcache':>12} {'pandas':>10} {'ratio':>8}"
        )
        print(
            f"{'write: put (COPY, one transaction, verified record) vs to_sql':62} "
            f"{t_put * 1000:>9.0f} ms {t_to_sql * 1000:>7.0f} ms {t_to_sql / t_put:>7.1f}x"
        )
        print(
            f"{'read: get (COPY out, sha256 checked) vs read_sql':62} "
            f"{t_get * 1000:>9.0f} ms {t_read_sql * 1000:>7.0f} ms {t_read_sql / t_get:>7.1f}x"
        )
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(home / "data"), "-m", "fast",
                        "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
