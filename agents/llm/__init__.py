"""LLM policies: one per agent over any OpenAI-compatible endpoint (`reprodesk.models`).

Each plugs into its agent's seam (`agents.policies`) and changes no graph wiring;
prompts are in `agents/prompts/<agent>.md`. Imported only when an LLM mode is chosen.
"""

from __future__ import annotations

from agents.llm.critic import LLMCritic
from agents.llm.profiler import LLMProfiler
from agents.llm.reader import LLMReader
from agents.llm.reproducer import LLMReproducer
from agents.llm.writer import LLMWriter
from agents.policies import Policies
from reprodesk.models import Models
from reprodesk.schemas import Limits


def llm_policies(models: Models, limits: Limits, *, fallback: bool = False) -> Policies:
    """Every agent over its model; `fallback`: the catalog's policy when the endpoint fails."""
    return Policies(
        read=LLMReader(models["reader"], fallback=fallback),
        reproduce=LLMReproducer(models["reproducer"], limits, fallback=fallback),
        profile=LLMProfiler(models["profiler"], fallback=fallback),
        write=LLMWriter(models["writer"], fallback=fallback),
        review=LLMCritic(models["critic"], fallback=fallback),
        name=f"llm ({models['reproducer'].spec.model})",
        known_mechanisms=(),
    )


__all__ = ["LLMCritic", "LLMProfiler", "LLMReader", "LLMReproducer", "LLMWriter", "llm_policies"]
