"""The findings memory through a real `chroma run` server on 127.0.0.1: shared, gone,
dropping connections, and two processes publishing at once."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

# memory.store, not memory: a stale editable install can map `memory` to a namespace
# package whose __init__ never runs; the submodule import works either way.
from memory.store import (
    FindingStore,
)
from reprodesk.schemas import Finding, UserError
from tests.memory_kit import ALL, FP8, GRPO, LOCALHOST, MLA, ROOT, _finding, _free_port

# --------------------------------------------------------------------------- server


def test_path_and_url_together_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not both"):
        FindingStore.open(tmp_path, url=f"http://{LOCALHOST}:8000")


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1:8000", "http://h:1/x"])
def test_malformed_url_is_a_user_error(url: str) -> None:
    with pytest.raises(UserError, match="bad Chroma server URL"):
        FindingStore.open(url=url)


def test_unreachable_server_is_a_user_error_naming_the_url() -> None:
    url = f"http://{LOCALHOST}:{_free_port()}"

    with pytest.raises(UserError, match=re.escape(f"cannot reach the Chroma server at {url}")):
        FindingStore.open(url=url)


def test_a_server_that_drops_every_connection_is_tried_a_bounded_number_of_times() -> None:
    """Retries are bounded: a fixed number of tries, then one clear error."""
    from memory.server import _ATTEMPTS

    listener = socket.socket()
    listener.bind((LOCALHOST, 0))
    listener.listen(8)
    listener.settimeout(10)
    accepted: list[int] = []

    def drop_all() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed by the test, or no more tries came
                return
            accepted.append(1)
            conn.close()  # no response: httpx sees the server disconnect

    thread = threading.Thread(target=drop_all, daemon=True)
    thread.start()
    url = f"http://{LOCALHOST}:{listener.getsockname()[1]}"
    try:
        with pytest.raises(UserError, match=re.escape(f"cannot reach the Chroma server at {url}")):
            FindingStore.open(url=url)
    finally:
        listener.close()
        thread.join(timeout=15)
    assert len(accepted) == _ATTEMPTS > 1


class Server(NamedTuple):
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[Server]:
    """A real `chroma run` on a free 127.0.0.1 port; always terminated afterwards."""
    cli = Path(sys.executable).parent / "chroma"
    if not cli.exists():
        reason = f"the chroma CLI is missing at {cli}; cannot start a Chroma server"
        print(reason)
        pytest.skip(reason)
    port = _free_port()
    url = f"http://{LOCALHOST}:{port}"
    log_path = tmp_path / "chroma.log"
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    argv = [str(cli), "run", "--path", str(tmp_path / "server")]
    argv += ["--host", LOCALHOST, "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30.0
        while True:
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"chroma run not healthy in 30 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield Server(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_server_store_adds_searches_and_is_shared(chroma_server: Server) -> None:
    with FindingStore.open(url=chroma_server.url) as writer:
        assert writer.add(ALL) == len(ALL)
        assert writer.add([MLA]) == 1
        hits = writer.search("KV cache compression", k=2)
        assert hits[0].finding == MLA
        assert [h.finding.id for h in writer.search("cache", mechanism="fp8")] == [FP8.id]

    # A second client sees the same data: the server is the multi-process option.
    with FindingStore.open(url=chroma_server.url) as reader:
        assert reader.count() == len(ALL)
        assert reader.get(GRPO.id) == GRPO
        assert reader.delete_run("run-c") == 2
        assert reader.count() == 2


def test_server_gone_mid_session_is_a_user_error(chroma_server: Server) -> None:
    url = chroma_server.url + "/"
    with FindingStore.open(url=url) as store:
        store.add([MLA])
        chroma_server.process.terminate()
        chroma_server.process.wait(timeout=10)

        with pytest.raises(UserError, match=re.escape(f"cannot reach the Chroma server at {url}")):
            store.search("KV cache compression")


_PUBLISHER = """
import json, sys
from memory.store import FindingStore
from reprodesk.schemas import Finding

url, path = sys.argv[1], sys.argv[2]
findings = [Finding.model_validate(item) for item in json.load(open(path))]
with FindingStore.open(url=url) as store:
    for start in range(0, len(findings), 4):  # many small publishes, interleaved
        store.add(findings[start : start + 4])
print("published", len(findings))
"""


def _batch(writer: str, n: int) -> list[Finding]:
    """``n`` findings of one writer; the first 6 ids are shared with the other writer."""
    mechanisms = ["mla", "moe", "mtp", "fp8", "grpo"]
    batch = []
    for i in range(n):
        run = "shared" if i < 6 else writer
        batch.append(
            _finding(
                f"{run}:c{i}",
                mechanisms[i % len(mechanisms)],
                f"{writer} measured claim number {i} about {mechanisms[i % len(mechanisms)]}",
                f"metric_{i}",
                measured_value=float(i),
                setup=f"written by {writer}",
            )
        )
    return batch


def test_two_processes_publish_concurrently_through_the_server(
    chroma_server: Server, tmp_path: Path
) -> None:
    batches = {writer: _batch(writer, 24) for writer in ("alpha", "beta")}
    procs = []
    for writer, batch in batches.items():
        data = tmp_path / f"{writer}.json"
        data.write_text(json.dumps([f.model_dump() for f in batch]))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _PUBLISHER, chroma_server.url, str(data)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        assert stdout.strip() == "published 24"

    expected: dict[str, list[Finding]] = {}
    for batch in batches.values():
        for finding in batch:
            expected.setdefault(finding.id, []).append(finding)
    with FindingStore.open(url=chroma_server.url) as store:
        assert store.count() == len(expected) == 24 + 24 - 6  # shared ids: no duplicates
        for finding_id, versions in expected.items():
            assert store.get(finding_id) in versions, finding_id
        assert {f.id for f in store.findings()} == set(expected)
        own = store.search("beta measured claim number 17 about mtp", k=1)
        assert own[0].finding.id == "beta:c17"
