"""`reprodesk desk` as a user starts it: a process that prints a URL with a token and
serves the inbox on 127.0.0.1; without the token it refuses; Ctrl-C stops it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_desk_prints_a_token_url_on_loopback_and_refuses_without_it(home: Path) -> None:
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
        assert m, line
        base, token = m.group(1), m.group(3)
        with httpx.Client(base_url=base) as c:
            assert c.get("/inbox").status_code == 403
            r = c.get(f"/?token={token}", follow_redirects=True)
            assert r.status_code == 200 and "Nothing waits for a decision." in r.text
            assert str(r.url) == f"{base}/inbox"  # the token left the address bar
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode in (0, 130), proc.stderr.read() if proc.stderr else ""
