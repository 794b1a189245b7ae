"""The findings memory: measured findings in Chroma, searched by meaning.

See ``memory.store`` for the embedded-vs-server choice and the embedding model.
"""

from memory.store import FindingStore, SearchHit

__all__ = ["FindingStore", "SearchHit"]
