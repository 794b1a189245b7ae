"""Offline policies: deterministic agents over the recipe catalog, no model, no network.

The catalog is one source of a Plan (`read`); the Reproducer takes a recipe's file
and scales it (`OfflineReproducer`); the Profiler runs the Plan's grid; the Writer
fills a fixed structure from typed results; the Critic applies rule checks. Only
`reader` and `reproducer` here read the catalog or the recipes folder.
"""

from agents.offline.critic import review
from agents.offline.profiler import profile
from agents.offline.reader import read
from agents.offline.reproducer import OfflineReproducer
from agents.offline.writer import write

__all__ = ["OfflineReproducer", "profile", "read", "review", "write"]
