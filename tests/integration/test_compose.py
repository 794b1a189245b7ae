"""docker-compose.yml: valid for the Compose on this machine (v2 plugin or v1), and its
Chroma health check works against a real `chroma run` on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

# The real `chroma run` fixture of the memory tests: the health check is tried on it.
from tests.integration.test_memory_server import Server, chroma_server

__all__ = ["chroma_server"]  # a fixture: imported to be found by pytest, not called

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_validates() -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("no Docker Compose here (scripts/docker-engine.sh installs docker-compose)")
    proc = subprocess.run(
        [*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def _chroma_service() -> dict[str, Any]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return dict(services["chroma"])


def _probe(port: int) -> subprocess.CompletedProcess[str]:
    """The compose health check's own command, as the container would run it, on ``port``.

    Compose turns ``$$`` into ``$``; the container's port 8000 becomes the test server's.
    """
    test = _chroma_service()["healthcheck"]["test"]
    assert test[:3] == ["CMD", "/bin/bash", "-c"]
    script = test[3].replace("$$", "$").replace("/8000", f"/{port}")
    return subprocess.run(
        ["/bin/bash", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )


def test_chroma_service_keeps_its_data_in_a_volume_on_loopback() -> None:
    chroma = _chroma_service()
    assert "chroma-data:/data" in chroma["volumes"]
    assert chroma["ports"] == ["127.0.0.1:8000:8000"]


def test_the_health_check_passes_on_a_live_chroma_and_fails_without_one(
    chroma_server: Server,
) -> None:
    port = int(chroma_server.url.rsplit(":", 1)[1])

    assert _probe(port).returncode == 0

    chroma_server.process.terminate()
    chroma_server.process.wait(timeout=10)
    assert _probe(port).returncode != 0


def test_the_health_check_fails_on_a_server_that_is_not_chroma() -> None:
    """Something listening is not enough: the heartbeat must answer 200."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def answer_404() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=answer_404, daemon=True)
        thread.start()
        assert _probe(port).returncode != 0
        thread.join(timeout=10)
