"""Reader: what does the paper propose, which numbers does it claim, with which settings?

Offline policy: the deterministic digest of `tools.digest` against the recipe
catalog. It picks as target the best-ranked mechanism that has a recipe; when
none has, the run ends with status `unsupported` and says what to configure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from pydantic import BaseModel, Field

from agents.deps import Deps
from recipes.catalog import CATALOG
from reprodesk.schemas import Digest, Outcome, Paper, RunState
from tools.digest import digest


class ReaderOutput(BaseModel):
    digest: Digest
    target: str | None = Field(description="Catalog key of the mechanism to reproduce.")


def read(paper: Paper) -> ReaderOutput:
    found = digest(paper)
    target = next(
        (m.name for m in found.mechanisms if CATALOG[m.name].script and CATALOG[m.name].scale),
        None,
    )
    return ReaderOutput(digest=found, target=target)


def unsupported_message(found: Digest) -> str:
    if not found.mechanisms:
        return (
            "the offline catalog knows none of the mechanisms in this paper "
            f"(known: {', '.join(sorted(CATALOG))}); configure an LLM endpoint "
            "(REPRODESK_LLM_BASE_URL, REPRODESK_LLM_API_KEY) to reproduce other mechanisms"
        )
    names = ", ".join(f"{m.title} ({m.name})" for m in found.mechanisms)
    return (
        f"the paper describes {names}, but the catalog has no recipe for "
        f"{'it' if len(found.mechanisms) == 1 else 'them'} yet; configure an LLM endpoint "
        "or add a recipe under recipes/"
    )


def make_reader(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    del deps  # the offline Reader needs nothing but the paper

    def reader(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="reader")
        out = read(state.paper)
        log.info(
            "reader.done",
            mechanisms=[m.name for m in out.digest.mechanisms],
            hyperparameters=len(out.digest.hyperparameters),
            claims=len(out.digest.claims),
            target=out.target,
        )
        update: dict[str, Any] = {"digest": out.digest, "target": out.target}
        if out.target is None:
            update["outcome"] = Outcome(
                status="unsupported", message=unsupported_message(out.digest)
            )
        return update

    return reader
