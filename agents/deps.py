"""What the nodes are handed. The composition root builds one `Deps`; nothing here reads env."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agents.policies import Policies

if TYPE_CHECKING:
    from memory.store import FindingStore
    from sandbox.base import Sandbox
    from sandbox.ledger import Ledger


@dataclass
class Deps:
    """Dependencies of every node, built once per process (`reprodesk.compose`) or by a test."""

    home: Path
    sandbox: Sandbox
    ledger: Ledger
    # The store loads an embedding model (seconds): open it only when publishing.
    open_store: Callable[[], FindingStore]
    policies: Policies

    def runs_dir(self) -> Path:
        return self.home / "runs"

    def jobs_dir(self) -> Path:
        """Where the sandbox lays out job folders (removed once a run is published)."""
        return self.home / "cache" / "jobs"
