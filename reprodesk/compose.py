"""The composition root: settings in, every dependency built once, the graph and `Runs` out.

Front ends (the CLI, tests, later a web page) call `build_app(settings)`; nothing below
builds a client from the environment. The sandbox is made lazily: read-only commands
(`runs`, `replay`) never start a warm worker.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from reprodesk.schemas import Limits, UserError
from reprodesk.settings import Settings
from reprodesk.state import Policy

if TYPE_CHECKING:
    from sandbox.base import Sandbox


def check_home(home: Path) -> Path:
    """The home exists and is writable, or one UserError naming the path."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"REPRODESK_HOME {home}: cannot write there ({exc.strerror or exc}); "
            "point REPRODESK_HOME at a writable folder"
        ) from exc
    return home


@dataclass
class App:
    """Everything a front end needs, built once per process."""

    settings: Settings
    deps: Any  # agents.deps.Deps
    graph: Any
    runs: Any  # graphs.runs.Runs
    _closers: list[Any] = field(default_factory=list)

    def policy(self, *, auto_approve: bool = False, langs: list[str] | None = None) -> Policy:
        s = self.settings
        return Policy(
            langs=langs or ["en"],
            gates=list(s.gates),
            approvals={str(k): str(v) for k, v in s.approvals.items()},
            auto_approve=auto_approve,
            max_repair_attempts=s.max_repair_attempts,
            max_critic_rounds=s.max_critic_rounds,
        )

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()


class _LazySandbox:
    """The sandbox backend, made on first use (a warm worker takes seconds to start)."""

    def __init__(self, name: str, work_root: Path) -> None:
        self._name, self._root = name, work_root
        self._box: Any = None

    def _get(self) -> Any:
        if self._box is None:
            from sandbox import make_sandbox

            self._box = make_sandbox(self._name, self._root)
        return self._box

    @property
    def name(self) -> str:
        return str(self._get().name)

    def run(self, job: Any) -> Any:
        return self._get().run(job)

    def close(self) -> None:
        close = getattr(self._box, "close", None)
        if callable(close):
            close()


def _policies(settings: Settings, home: Path, limits: Limits) -> Any:
    """Offline (the catalog), or LLM policies over models built here, once."""
    from agents.policies import offline_policies
    from reprodesk.models import llm_enabled

    if not llm_enabled(settings):
        return offline_policies(limits)
    from agents.llm import llm_policies  # langchain-openai only in an LLM mode
    from reprodesk.models import build_models

    models = build_models(settings, home)
    return llm_policies(models, limits, fallback=settings.llm_fallback == "offline")


def build_app(
    settings: Settings, *, sandbox: Any = None, policies: Any = None, store: Any = None
) -> App:
    """Deps, checkpointer, graph and `Runs` for `settings`; tests may pass fakes in."""
    from agents.deps import Deps
    from graphs.graph import build_graph, open_checkpointer
    from graphs.runs import Runs
    from sandbox.ledger import Ledger

    home = check_home(settings.home_dir)
    limits = Limits(
        wall_s=settings.job_timeout_s,
        memory_mb=settings.job_memory_mb,
        disk_mb=settings.job_disk_mb,
        tmpfs_mb=min(settings.job_tmpfs_mb, settings.job_memory_mb),
    )
    box = (
        sandbox if sandbox is not None else _LazySandbox(settings.sandbox, home / "cache" / "jobs")
    )
    opened: dict[str, Any] = {} if store is None else {"store": store}

    def open_store() -> Any:
        if "store" not in opened:
            from memory import FindingStore

            opened["store"] = FindingStore.open(
                None if settings.chroma_url else home / "memory", url=settings.chroma_url
            )
        return opened["store"]

    deps = Deps(
        home=home,
        sandbox=cast("Sandbox", box),
        ledger=Ledger(home / "ledger.sqlite"),
        open_store=open_store,
        policies=policies if policies is not None else _policies(settings, home, limits),
    )
    graph = build_graph(deps, open_checkpointer(home / "runs.sqlite", settings.database_url))
    app = App(settings=settings, deps=deps, graph=graph, runs=Runs(graph, deps))
    close = getattr(box, "close", None)
    if callable(close):
        app._closers.append(close)
        atexit.register(app.close)  # a warm worker is a process of ours
    return app
