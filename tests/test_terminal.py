"""The main commands as people run them: at a real terminal (a pty, two sizes) and off one
(a pipe with COLUMNS=40), against the fake providers.

At a terminal the progress must draw and never crash a run; off one, tables are never cut (a
path, a provider name, a header printed whole) and every message on stderr is one line.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult, make_bars
from fakes import FakeBinance, FakeYahoo, config_for

Cli = Callable[..., CliResult]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def at_a_terminal(
    args: list[str], *, cols: int, rows: int, cwd: Path, timeout: float = 120
) -> tuple[int, str]:
    """Run `marketcache ARGS` with stdin, stdout and stderr on a pty of cols × rows; return
    the exit code and everything the terminal received (escape codes included)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.pop("MARKETCACHE_CONFIG", None)
    env.pop("MARKETCACHE_CACHE_DIR", None)
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketcache", *args],
        stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            received += chunk
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, received.decode("utf-8", "replace")


def shown(raw: str) -> str:
    """What the terminal shows, roughly: escape codes dropped, carriage returns as newlines."""
    return ANSI.sub("", raw).replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize(("cols", "rows"), [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_the_main_commands_at_a_terminal(
    cols: int, rows: int, fake_binance: FakeBinance, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    fake_binance.add("BTCUSDT", "1h", make_bars("2024-01-01", 24 * 60))
    (tmp_path / "p.yaml").write_text(config_for(binance=fake_binance, yahoo=fake_yahoo))
    common = ["--config", "p.yaml", "--cache-dir", "c"]
    span = ["-t", "1h", "--start", "2024-01-01", "--end", "2024-03-01"]

    def run(*args: str) -> str:
        code, raw = at_a_terminal(list(args), cols=cols, rows=rows, cwd=tmp_path)
        text = shown(raw)
        assert code == 0, text
        assert "Traceback" not in text and "unexpected" not in text, text
        return text

    plan = run("populate", "BTCUSDT", *span, "--dry-run", *common)
    assert "fetch plan" in plan and "2024-01-01" in plan and "binance" in plan
    assert re.search(r"planning .*1/1 jobs", plan), "the progress drew: " + plan
    assert not (tmp_path / "c").exists(), "a dry run writes nothing, at a terminal too"

    filled = run("populate", "BTCUSDT", *span, *common)
    assert re.search(r"populating .*1,440/1,440 bars", filled), "the progress drew: " + filled
    assert "BTCUSDT" in filled and "1,440" in filled and "elapsed" in filled

    checked = run("validate", *common)
    assert re.search(r"validating .*1/1 years", checked), "the progress drew: " + checked
    assert "validate (min score" in checked and "ok" in checked

    stats = run("info", *common)
    assert "symbols" in stats and "binance" in stats
    assert "BTCUSDT" in run("list", *common)
    copied = run("copy", "c", "c2", "--config", "p.yaml")
    assert "copied 1 years (1,440 rows)" in " ".join(copied.split())
    facts = run("fundamentals", "AAPL", *common)
    assert "AAPL fundamentals" in facts and "beta" in facts and "yahoo" in facts


def test_verbose_at_a_terminal_shows_progress_as_log_lines_not_a_bar(
    fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("BTCUSDT", "1h", make_bars("2024-01-01", 24 * 60))
    (tmp_path / "p.yaml").write_text(config_for(binance=fake_binance))
    code, raw = at_a_terminal(
        ["populate", "BTCUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-03-01",
         "-v", "--config", "p.yaml", "--cache-dir", "c"], cols=100, rows=24, cwd=tmp_path,
    )  # fmt: skip
    text = shown(raw)
    assert code == 0, text
    logged = [ln for ln in text.splitlines() if "INFO marketcache.progress" in ln]
    assert any(ln.endswith("BTCUSDT 1h: 1,440 bars to fetch") for ln in logged), text
    assert "populating" not in text, "no bar drawn through the log lines"
    assert "BTCUSDT" in text and "elapsed" in text


def test_off_a_terminal_nothing_is_cut_whatever_columns_says(
    cli: Cli,
    fake_binance: FakeBinance,
    fake_yahoo: FakeYahoo,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """COLUMNS=40 off a terminal (cron, a pipe): every table and line printed whole."""
    monkeypatch.setenv("COLUMNS", "40")
    fake_binance.add("BTCUSDT", "1h", make_bars("2023-12-01", 24 * 60))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance, yahoo=fake_yahoo, retry_budget=0.5))
    root = tmp_path / "a-cache-folder-with-a-rather-long-name-printed-whole" / "[team]:data:"
    common = ("--config", str(conf), "--cache-dir", str(root))
    span = ("-t", "1h", "--start", "2023-12-01", "--end", "2024-01-30")

    def whole(r: CliResult, *pieces: str) -> list[str]:
        lines = r.out.splitlines()
        assert "…" not in r.out, r.out
        for piece in pieces:
            assert any(piece in line for line in lines), f"{piece!r} not on one line:\n{r.out}"
        for line in r.err.splitlines():  # every message on stderr is one line of its own
            assert line.startswith(("error: ", "warning: ")), r.err
        return lines

    plan = cli("populate", "BTCUSDT", *span, "--dry-run", *common)
    assert plan.code == 0, plan.err
    rows = [ln for ln in whole(plan, "provider", "failover") if "BTCUSDT" in ln]
    # the year end cuts the range in two; each planned range names who is asked, and after whom
    assert len(rows) == 2, plan.out
    assert "2023-12-01" in rows[0] and "2024-01-01" in rows[0] and "2024-01-30" in rows[1]
    assert all("binance" in ln and "yahoo" in ln for ln in rows), rows

    filled = cli("populate", "BTCUSDT", *span, *common)
    assert filled.code == 0, filled.err
    whole(filled, "providers", "requests", "quality", "binance", "1,440")

    stats = cli("info", *common)
    whole(stats, str(root), "quality mean / min", "files (csv.gz)")
    years = cli("info", "BTCUSDT", *common)
    whole(years, "provider", "quality", "2023-12-01", "2024-01-29 23:00")
    whole(cli("list", "BTCUSDT", *common), "timeframe", "2023, 2024")
    whole(cli("validate", *common), "validate (min score 0.8)", "status", "details")
    copied = cli("copy", str(root), str(root.with_name("copy-of-the-cache")), "--config", str(conf))
    whole(copied, f"{root} → {root.with_name('copy-of-the-cache')} (csv.gz)")
    whole(cli("fundamentals", "AAPL", *common), "fullTimeEmployees", "Consumer Electronics")

    refused = cli("populate", "NOSUCHCOINUSDT", *span, *common)
    assert refused.code == 1
    assert len(refused.err.splitlines()) >= 1 and all(
        len(ln) > 40 for ln in refused.err.splitlines()
    )
    whole(refused)


def test_python_warnings_are_one_line_each(fake_binance: FakeBinance, tmp_path: Path) -> None:
    """PYTHONWARNINGS=default (common in CI) shows the libraries' DeprecationWarnings: each is
    one `warning:` line, not Python's two (file:line, then the source line); -q hides them."""
    fake_binance.add("BTCUSDT", "1h", make_bars("2024-01-01", 48))
    (tmp_path / "p.yaml").write_text(config_for(binance=fake_binance))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCACHE_")}
    env.update(PYTHONWARNINGS="default", COLUMNS="40")
    args = [sys.executable, "-m", "marketcache", "populate", "BTCUSDT", "-t", "1h", "--start",
            "2024-01-01", "--end", "2024-01-03", "--config", "p.yaml", "--cache-dir", "c"]  # fmt: skip
    loud = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert loud.returncode == 0, loud.stderr
    lines = loud.stderr.splitlines()
    assert any("DeprecationWarning" in ln for ln in lines), "the libraries do warn"
    assert all(ln.startswith("warning: ") for ln in lines), loud.stderr
    quiet = subprocess.run([*args, "-q"], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=120)  # fmt: skip
    assert (quiet.returncode, quiet.stderr) == (0, "")
