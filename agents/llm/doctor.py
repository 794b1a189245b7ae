"""`reprodesk doctor`'s LLM row: one tiny request, and which structured-output method works."""

from __future__ import annotations

from pydantic import BaseModel

from reprodesk.models import (
    LLM,
    METHODS,
    EndpointFailed,
    LLMError,
    build_models,
    human,
    llm_enabled,
)
from reprodesk.schemas import UserError
from reprodesk.settings import Settings


class Ping(BaseModel):
    """A tiny answer."""

    ok: bool


def check_endpoint(settings: Settings) -> tuple[bool, str]:
    """(works, one line): the endpoint answers, and through which method, or why not."""
    if not llm_enabled(settings):
        return True, "offline (the recipe catalog); no endpoint to check"
    try:
        models = build_models(settings, settings.home_dir)
    except UserError as exc:
        return False, str(exc)
    llm: LLM = models["reproducer"]
    where = f"{llm.spec.base_url} ({llm.spec.model})"
    working: list[str] = []
    for method in METHODS:
        probe = LLM(llm.model, llm.spec, memory=llm.memory, methods=(method,), repairs=0)
        try:
            probe.structured(Ping, [human('Reply {"ok": true}.')], what="ping")
        except EndpointFailed as exc:
            return False, str(exc)
        except LLMError:
            continue
        working.append(method)
        break  # the first that works is the one runs use
    if not working:
        return False, f"{where} answers, but no structured-output method gave valid JSON"
    llm.memory.remember(llm.spec.endpoint, working[0])
    return True, f"{where}: structured output via {working[0]}"
