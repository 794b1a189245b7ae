"""Shared fixtures. The whole suite refuses network traffic to anything but loopback."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {host}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    yield


# Provider keys a test could reach a real provider with (reprodesk.models.PROVIDER_KEY_VARS
# and more), spelled out so that conftest imports no model code.
_PROVIDER_KEYS = (
    "OPENAI_API_KEY",
    "DEEPSEEK_API_KEY",
    "MIMO_API_KEY",
    "ANTHROPIC_API_KEY",
    "OPENAI_BASE_URL",
    "REPRODESK_LLM_API_KEY",
    "REPRODESK_LLM_BASE_URL",
    "REPRODESK_LLM",
)


@pytest.fixture(autouse=True)
def _no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test can authenticate to a real provider, whatever the developer's shell holds."""
    for var in _PROVIDER_KEYS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh REPRODESK_HOME; the user's real home is never touched."""
    h = tmp_path / "home"
    monkeypatch.setenv("REPRODESK_HOME", str(h))
    for var in list(os.environ):
        if var.startswith("REPRODESK_") and var != "REPRODESK_HOME":
            monkeypatch.delenv(var)
    return h
