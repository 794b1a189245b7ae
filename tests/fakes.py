"""Test doubles: a scripted chat model, a fake sandbox with canned results, a list store.

They drive the *real* graph, Runs service and policies in-process, with no bubblewrap,
no network and no embedding model (the langgraph test-suite style). They are never used
by the product.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from recipes.catalog import CATALOG
from reprodesk.schemas import Finding, Job, RunResult


class ScriptedChatModel(BaseChatModel):
    """Answers with `responses` in order and records every prompt; runs out loudly."""

    responses: list[str]
    calls: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(list(messages))
        if len(self.calls) > len(self.responses):
            raise AssertionError(f"scripted model ran out after {len(self.responses)} responses")
        text = self.responses[len(self.calls) - 1]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def canned_metrics(script: str, argv: Sequence[str], *, seed_shift: float = 0.0) -> dict[str, Any]:
    """A metrics line that validates, for the catalog recipe behind `script`.

    Every claim the catalog lists is 'measured' at its expected value, so verdicts are
    'reproduced'; grid rows make the Profiler's figures drawable.
    """
    recipe = next(r for r in CATALOG.values() if r.script == script)
    claims = [
        {
            "id": c.id,
            "claim": c.statement,
            "metric": f"fake.{c.id}",
            "paper_value": 2.25,
            "measured_value": 2.25 + seed_shift,
            "unit": "x",
            "tolerance": 0.01,
            "verdict": "reproduced",
        }
        for c in recipe.claims
    ]
    grid = []
    if recipe.grid_figure is not None:
        g = recipe.grid_figure
        grid = [{"variant": "a", g.x: x, g.y: 1.0 + x / 100} for x in (64, 256)]
    return {
        "recipe": recipe.key,
        "config": {"argv": list(argv)},
        "env": {"torch": "fake", "device": "cpu", "gpu_name": None, "threads": 1},
        "claims": claims,
        "variants": {"a": {"x": 1.0}},
        "grid": grid,
        "wall_s": 0.01,
    }


Responder = Callable[[Job, int], RunResult | None]


@dataclass
class FakeSandbox:
    """Returns canned results; `respond(job, n)` may override the n-th launch (1-based)."""

    respond: Responder | None = None
    name: str = "fake"
    launched: list[Job] = field(default_factory=list)

    def run(self, job: Job) -> RunResult:
        self.launched.append(job)
        if self.respond is not None:
            custom = self.respond(job, len(self.launched))
            if custom is not None:
                return custom
        script = job.argv[1]
        shift = 0.001 * sum(ord(c) for c in " ".join(job.argv)) % 0.005
        metrics = canned_metrics(script, job.argv, seed_shift=shift)
        return RunResult(
            status="ok",
            exit_code=0,
            message="exit code 0",
            stdout=json.dumps(metrics) + "\n",
            duration_s=0.01,
            metrics=metrics,
            backend=self.name,
        )

    def hashes(self) -> list[str]:
        return [
            hashlib.sha256(json.dumps(sorted(j.files.items())).encode()).hexdigest()
            for j in self.launched
        ]


@dataclass
class ListStore:
    """The findings store in a list: upsert by id and read back by mechanism, like the real one."""

    stored: dict[str, Finding] = field(default_factory=dict)

    def add(self, findings: Sequence[Finding]) -> int:
        for f in findings:
            self.stored[f.id] = f
        return len(findings)

    def findings(self, filters: Any = None) -> list[Finding]:
        mechanism = getattr(filters, "mechanism", None)
        return [f for f in self.stored.values() if mechanism in (None, f.mechanism)]

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.stored.values())
