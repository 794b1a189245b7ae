"""The Postgres checkpointer against a real PostgreSQL server the test starts and stops.

A run paused in one process is resumed in another through the same database — the
scale-out path (several drivers, one database). Needs Debian's `postgresql` package
(scripts/postgres.sh, called by .ci/run); skipped with the reason where it is missing.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import backend_report

ROOT = Path(__file__).resolve().parents[2]
_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = pytest.mark.skipif(
    not _BIN, reason="PostgreSQL server binaries missing (run scripts/postgres.sh)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    bin_dir = Path(_BIN[-1])
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="reprodesk-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
    ctl = str(bin_dir / "pg_ctl")
    subprocess.run(
        _as_postgres([ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([ctl, "-D", str(data), "-m", "immediate", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def cli(home: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRODESK_")}
    env.update(REPRODESK_HOME=str(home), REPRODESK_DATABASE_URL=url, REPRODESK_GATES='["code"]')
    return subprocess.run(
        [sys.executable, "-m", "reprodesk", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_a_run_paused_in_one_process_resumes_in_another(database: str, tmp_path: Path) -> None:
    works = {name: ok for name, ok, _ in backend_report()}
    if not works.get("bwrap"):
        pytest.skip("bubblewrap cannot run here")
    home = tmp_path / "home"
    note = ROOT / "examples" / "mla_note.md"
    first = cli(home, database, "run", str(note), "--run-id", "pg")
    assert first.returncode == 3, (first.stdout, first.stderr)
    assert not (home / "runs.sqlite").exists()  # the checkpoints went to Postgres
    views = [json.loads(line) for line in cli(home, database, "runs", "--json").stdout.splitlines()]
    assert [(v["run_id"], v["status"]) for v in views] == [("pg", "paused at the code gate")]
    second = cli(home, database, "resume", "pg", "--approve")
    assert second.returncode == 0, (second.stdout, second.stderr)
    assert (home / "runs" / "pg" / "writeup.md").is_file()
    steps = cli(home, database, "replay", "pg", "--json").stdout.splitlines()
    assert "publish" in json.loads(steps[-1])["ran"]


def test_a_url_that_refuses_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://someone:secret@127.0.0.1:{_free_port()}/db"
    proc = cli(tmp_path / "home", url, "runs")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and "cannot connect" in line
    assert "secret" not in line and "someone:***@" in line
