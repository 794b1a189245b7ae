"""`reprodesk desk` as a user starts it: a process that prints a URL with a token and
serves the inbox on 127.0.0.1; without the token it refuses; Ctrl-C stops it. And a
decision from the page on a run the CLI paused, run on in the desk's own thread through
the real sandbox (the default backend of this machine)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 600  # an upper bound for real sandboxed jobs on a loaded machine, not a measurement


@contextmanager
def _desk(home: Path) -> Iterator[tuple[str, str]]:
    """A `reprodesk desk --port 0` process: (base URL, token) while it runs."""
    env = {**os.environ, "REPRODESK_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reprodesk", "desk", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server is listening
        m = re.fullmatch(r"desk at (http://127\.0\.0\.1:(\d+))/\?token=([\w-]+)\n", line)
        assert m, line + (proc.stderr.read() if proc.stderr else "")
        yield m.group(1), m.group(3)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert proc.returncode in (0, 130), proc.stderr.read() if proc.stderr else ""


def test_desk_prints_a_token_url_on_loopback_and_refuses_without_it(home: Path) -> None:
    with _desk(home) as (base, token), httpx.Client(base_url=base) as c:
        assert c.get("/inbox").status_code == 403
        r = c.get(f"/?token={token}", follow_redirects=True)
        assert r.status_code == 200 and "Nothing waits for a decision." in r.text
        assert str(r.url) == f"{base}/inbox"  # the token left the address bar


@pytest.mark.slow
def test_a_run_the_cli_paused_is_approved_in_the_page_and_runs_in_the_real_sandbox(
    home: Path,
) -> None:
    env = {**os.environ, "REPRODESK_HOME": str(home)}
    cli = subprocess.run(
        [sys.executable, "-m", "reprodesk", "run", "examples/mla_note.md", "--run-id", "r1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        timeout=WAIT_S,
        check=False,
    )
    assert cli.returncode == 3, cli.stderr  # paused at the code gate
    with (
        _desk(home) as (base, token),
        httpx.Client(base_url=base, cookies={"reprodesk_desk": token}, timeout=60) as c,
    ):
        page = c.get("/runs/r1").text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert csrf and "paused at the code gate" in page
        r = c.post("/runs/r1/decide", data={"action": "approve", "csrf": csrf.group(1)})
        assert r.status_code == 303
        deadline = time.monotonic() + WAIT_S
        while (progress := c.get("/runs/r1/progress").json())["driving"]:
            assert time.monotonic() < deadline, progress
            time.sleep(0.5)
        assert progress["error"] == "" and progress["gate"] == "publish", progress
        assert any(line.startswith("execute: mla: ok") for line in progress["lines"])
