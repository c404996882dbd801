"""Hostile records: a year's record crafted to hurt — unknown or injected column names, garbage
bytes, non-UTF-8, wrong types, huge numbers, `[]`, nesting deeper than a parser goes, a
`pending` list of junk — on every backend (folder csv.gz, folder Parquet, S3 via moto,
PostgreSQL), run through every command that reads records.

What it proves: a bad record is that one year's corrupt file and nothing else. Each command
ends with its documented exit code and at most one line per problem naming the year, never a
traceback or an "unexpected" error; the other years and series are still listed, validated,
copied and served; `validate --fix` sets the year aside (the backend's quarantine) and says
what to run; `populate` sets it aside and fetches it again; and nothing outside the cache (other
files, other buckets, other schemas) is touched.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult, make_bars
from fakes import FakeBinance, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.errors import CorruptFile

Cli = Callable[..., CliResult]
SYM, OTHER, TF = "ABCUSDT", "XYZUSDT", "1h"
SPAN = ("--start", "2023-12-30", "--end", "2024-01-03")  # 48 bars in 2023, 48 in 2024
BAD_YEAR = 2023
INJECTION = (
    "adj_close) FROM STDIN WITH (FORMAT csv); COMMIT; CREATE TABLE public.pwned (x int);"
    " DROP SCHEMA IF EXISTS victim CASCADE; --"
)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


# name → how to craft the record from the good one: JSON text, or raw bytes
PAYLOADS: dict[str, Callable[[dict[str, Any]], str | bytes]] = {
    "unknown_column": lambda r: json.dumps(
        {**r, "file_info": {**r["file_info"], "columns": [*r["file_info"]["columns"], "vwap"]}}
    ),
    "injected_column": lambda r: json.dumps(
        {**r, "file_info": {**r["file_info"], "columns": [*r["file_info"]["columns"], INJECTION]}}
    ),
    "garbage_bytes": lambda r: bytes(range(256)) * 4,
    "non_utf8": lambda r: (
        json.dumps(r).replace('"binance"', '"bin\udcffance"', 1).encode("utf-8", "surrogateescape")
    ),
    "wrong_types": lambda r: json.dumps(
        {
            **r,
            "year": "twenty",
            "data_quality": "good",
            "coverage": 5,
            "file_info": {**r["file_info"], "rows": "many", "size_bytes": [1]},
        }
    ),
    "huge_numbers": lambda r: json.dumps(
        {**r, "file_info": {**r["file_info"], "size_bytes": 10**30, "rows": 1e308}}
    ),
    "empty_list": lambda r: "[]",
    "nested_garbage": lambda r: json.dumps(
        {**r, "coverage": {"missing_ranges": [[[{"start": {"a": [None]}}]]], "sources": {}}}
    ),
    "too_deep": lambda r: _deep(100_000),
    "pending_junk": lambda r: json.dumps({**r, "pending": [1, "x", None, {"file_info": 3}, []]}),
}
# a record whose `pending` candidates are junk still commits its year: readable, not corrupt
READABLE = {"pending_junk"}
BACKENDS = ["csv.gz", "parquet", "s3", "postgresql"]
# every payload on the folder backends, three on the servers in the quick suite; the whole
# matrix in CI (`slow`: about three minutes more)
QUICK = {"injected_column", "garbage_bytes", "empty_list"}
CASES = [
    pytest.param(
        kind,
        payload,
        marks=[pytest.mark.slow] if kind in ("s3", "postgresql") and payload not in QUICK else [],
    )
    for kind in BACKENDS
    for payload in PAYLOADS
]


@dataclass
class Place:
    """One cache on one backend, and how to reach behind the tool's back."""

    kind: str
    url: str
    conf: Path
    root: Path  # the test's folder; everything outside the cache in it is "outside"
    pg_server: str = ""

    @property
    def args(self) -> tuple[str, ...]:
        return ("--cache-dir", self.url, "--config", str(self.conf))

    def cache(self) -> UnifiedCache:
        return UnifiedCache(self.url, settings=parse_settings(self.conf.read_text()), lock_wait=5)

    def record(self, sym: str, year: int) -> dict[str, Any]:
        meta = self.cache().metadata(sym, TF, year)
        assert isinstance(meta, dict)
        return meta

    def craft(self, sym: str, year: int, body: str | bytes) -> None:
        """Replace the year's stored record with `body`, as a person or a bug might."""
        name = f"{sym}/{TF}/{year}.metadata.json"
        if self.kind in ("csv.gz", "parquet"):
            path = Path(self.url) / name
            path.write_bytes(body if isinstance(body, bytes) else body.encode())
        elif self.kind == "s3":
            import boto3

            bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
            boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body)
        else:
            import psycopg

            schema = self.url.rsplit("schema=", 1)[1]
            with psycopg.connect(self.pg_server, autocommit=True) as conn:
                conn.execute(
                    f"UPDATE {schema}.year_records SET record = %s::jsonb"
                    " WHERE symbol = %s AND timeframe = %s AND year = %s",
                    [body, sym, TF, year],
                )

    def quarantined(self) -> list[str]:
        """Where the backend set years aside (names), read without our code."""
        if self.kind in ("csv.gz", "parquet"):
            return sorted(p.name for p in Path(self.url).rglob("*.corrupt-*"))
        if self.kind == "s3":
            import boto3

            bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
            listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
            return sorted(i["Key"] for i in listed.get("Contents", []) if ".corrupt-" in i["Key"])
        import psycopg

        schema = self.url.rsplit("schema=", 1)[1]
        with psycopg.connect(self.pg_server) as conn:
            rows = conn.execute(f"SELECT aside FROM {schema}.quarantine_records").fetchall()
        return sorted(r[0] for r in rows)

    def outside(self) -> Any:
        """Everything a crafted record must not reach: other files, buckets, schemas, tables."""
        if self.kind == "postgresql":
            import psycopg

            schema = self.url.rsplit("schema=", 1)[1]
            with psycopg.connect(self.pg_server) as conn:
                return sorted(
                    conn.execute(
                        "SELECT table_schema, table_name FROM information_schema.tables"
                        " WHERE table_schema <> %s AND table_schema NOT IN"
                        " ('pg_catalog', 'information_schema')",
                        [schema],
                    ).fetchall()
                ) + sorted(conn.execute("SELECT nspname FROM pg_namespace").fetchall())
        if self.kind == "s3":
            import boto3

            return sorted(b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"])
        cache = Path(self.url)
        return sorted(
            (str(p.relative_to(self.root)), p.read_bytes() if p.is_file() else b"")
            for p in self.root.rglob("*")
            if cache not in p.parents and p != cache and not {"xdg", "copy"} & set(p.parts)
        )


@pytest.fixture
def place(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, fake_binance: FakeBinance
) -> Place:
    for sym, seed in ((SYM, 1), (OTHER, 2)):
        fake_binance.add(sym, TF, make_bars("2023-12-30", 24 * 4, "1h", seed=seed))
    conf = tmp_path / "p.yaml"
    fmt = "parquet" if kind == "parquet" else "csv.gz"
    conf.write_text(config_for(binance=fake_binance) + f"settings: {{format: {fmt}}}\n")
    (tmp_path / "bystander.txt").write_text("not the cache's")
    if kind == "s3":
        import uuid

        import boto3

        request.getfixturevalue("s3_url")  # the moto server and this process's AWS_* variables
        bucket = f"hostile-{uuid.uuid4().hex[:16]}"  # one per test: parameters share a prefix
        boto3.client("s3").create_bucket(Bucket=bucket)
        return Place(kind, f"s3://{bucket}/cache", conf, tmp_path)
    if kind == "postgresql":
        url = request.getfixturevalue("pg_url")
        import psycopg

        server = request.getfixturevalue("pg_server")
        with psycopg.connect(server, autocommit=True) as conn:  # a schema that must survive
            conn.execute("CREATE SCHEMA IF NOT EXISTS victim")
            conn.execute("CREATE TABLE IF NOT EXISTS victim.keep (x int)")
        return Place(kind, url, conf, tmp_path, pg_server=server)
    return Place(kind, str(tmp_path / "cache"), conf, tmp_path)


def _clean(r: CliResult) -> None:
    """No traceback, no internal error: every line is one of ours."""
    assert "Traceback" not in r.err and "unexpected" not in r.err, r.err


def _names_the_year(r: CliResult) -> None:
    lines = [ln for ln in r.err.strip().splitlines() if str(BAD_YEAR) in ln]
    assert lines and all(SYM in ln for ln in lines), r.err


@pytest.mark.parametrize(("kind", "payload"), CASES)
def test_a_hostile_record_is_one_years_problem_on_every_backend(
    cli: Cli, place: Place, kind: str, payload: str
) -> None:
    if place.kind == "postgresql" and payload in ("garbage_bytes", "non_utf8", "too_deep"):
        pytest.skip("a jsonb column holds only JSON (PostgreSQL refuses these itself)")
    args = place.args
    first = cli("populate", SYM, OTHER, "-t", TF, *SPAN, "--json", *args)
    assert first.code == 0, first.err
    before = place.outside()
    good = place.record(SYM, BAD_YEAR)
    place.craft(SYM, BAD_YEAR, PAYLOADS[payload](good))
    corrupt = payload not in READABLE

    listed = cli("list", "--json", *args)
    _clean(listed)
    assert listed.code == 0 and {e["symbol"] for e in listed.json()} == {SYM, OTHER}
    years = cli("list", SYM, TF, "--json", *args)
    assert years.code == 0 and 2024 in [y["year"] for y in years.json()], years.err
    info = cli("info", "--json", *args)
    _clean(info)
    assert info.code == 0 and info.json()["symbols"] == 2, info.err
    detail = cli("info", SYM, "--json", *args)
    _clean(detail)
    assert detail.code == 0, detail.err  # info describes; the year's error is in its place
    by_year = {y["year"]: y for y in detail.json()["timeframes"][TF]["years"]}
    assert by_year[2024]["rows"] == 48 and ("error" in by_year[BAD_YEAR]) == corrupt
    if corrupt:
        error = by_year[BAD_YEAR]["error"]
        assert str(BAD_YEAR) in error and SYM in error and "\n" not in error, error

    checked = cli("validate", "--json", *args)
    _clean(checked)
    assert checked.code == (3 if corrupt else 0), checked.err
    status = {(y["symbol"], y["year"]): y["status"] for y in checked.json()["files"]}
    assert status[(SYM, 2024)] == status[(OTHER, 2023)] == status[(OTHER, 2024)] == "ok"
    assert status[(SYM, BAD_YEAR)] == ("corrupt" if corrupt else "ok")
    if corrupt:
        _names_the_year(checked)

    copied = cli("copy", place.url, str(place.root / "copy"), "--json", "--config",
                 str(place.conf))  # fmt: skip
    _clean(copied)
    assert copied.code == (1 if corrupt else 0), copied.err
    states = {(y["symbol"], y["year"]): y["status"] for y in copied.json()["years"]}
    assert states[(SYM, BAD_YEAR)] == ("failed" if corrupt else "copied")
    assert [s for k, s in states.items() if k != (SYM, BAD_YEAR)] == ["copied"] * 3
    mirror = UnifiedCache(place.root / "copy", settings=parse_settings(""))
    assert mirror.list_years(SYM, TF) == ([2024] if corrupt else [2023, 2024])

    for cleanup in (("cleanup",), ("cleanup", "--before", "2023-12-01")):
        swept = cli(*cleanup, "--json", *args)
        _clean(swept)
        # a corrupt year before the cutoff is left as it is and said (exit 3), never in silence
        cut = len(cleanup) > 1
        assert swept.code == (3 if corrupt and cut else 0), (cleanup, swept.err)
        skipped = [a for a in swept.json()["actions"] if a["action"] == "skip-corrupt"]
        assert [(a["symbol"], a["year"]) for a in skipped] == (
            [(SYM, BAD_YEAR)] if corrupt and cut else []
        )
    cache = place.cache()
    assert len(cache.get(SYM, TF, start="2024-01-01")) == 48
    assert len(cache.get(OTHER, TF)) == 96
    if corrupt:
        with pytest.raises(CorruptFile, match=f"{BAD_YEAR}"):
            cache.get(SYM, TF)
    else:
        assert len(cache.get(SYM, TF)) == 96

    fixed = cli("validate", "--fix", "--json", *args)
    _clean(fixed)
    # the data still matches what was committed: every row comes back (exit 0, nothing lost),
    # the record is rebuilt from it, and the original is kept aside
    assert fixed.code == 0 and "validate --fix" not in fixed.err, fixed.err
    fixes = {(y["symbol"], y["year"]): y for y in fixed.json()["files"]}
    assert fixes[(SYM, BAD_YEAR)]["status"] == ("fixed" if corrupt else "ok")
    assert fixes[(SYM, BAD_YEAR)]["rows"] == 48 and fixes[(SYM, 2024)]["status"] == "ok"
    assert bool(place.quarantined()) == corrupt, "set aside, never deleted"
    refill = cli("populate", SYM, "-t", TF, *SPAN, "--json", *args)
    assert refill.code == 0, refill.err
    assert cli("validate", *args).code == 0

    # the same record met by populate: set aside and fetched again
    place.craft(SYM, BAD_YEAR, PAYLOADS[payload](good))
    again = cli("populate", SYM, "-t", TF, *SPAN, "--json", *args)
    _clean(again)
    assert again.code == 0, again.err
    assert len(place.cache().get(SYM, TF)) == 96
    assert cli("validate", *args).code == 0
    assert place.outside() == before, "nothing outside the cache changed"
