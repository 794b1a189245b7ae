"""What the nodes are handed. The CLI builds one `Deps`; nothing here reads env."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from reprodesk.schemas import Limits

if TYPE_CHECKING:
    from memory.store import FindingStore
    from sandbox.base import Sandbox
    from sandbox.ledger import Ledger

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class Deps:
    """Dependencies of every node, built once per process by the CLI (or a test)."""

    home: Path
    sandbox: Sandbox
    ledger: Ledger
    # The store loads an embedding model (seconds): open it only when publishing.
    open_store: Callable[[], FindingStore]
    limits: Limits = field(default_factory=Limits)
    max_repair_attempts: int = 3
    max_critic_rounds: int = 2
    recipes_dir: Path = RECIPES_DIR

    def runs_dir(self) -> Path:
        return self.home / "runs"
