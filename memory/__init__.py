"""The findings memory: measured findings in Chroma, searched by meaning.

See ``memory.store`` for the embedded-vs-server choice, and ``memory.embedding`` for the
torch-free all-MiniLM-L6-v2 that makes the vectors.
"""

from memory.store import Filters, FindingStore, SearchHit, prior_findings

__all__ = ["Filters", "FindingStore", "SearchHit", "prior_findings"]
