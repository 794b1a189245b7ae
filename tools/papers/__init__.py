"""Paper loading (placeholder while the modules move here): `load_paper`."""

from tools.paper import load_paper

__all__ = ["load_paper"]
