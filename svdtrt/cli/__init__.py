"""The ``svdtrt`` command line (docs/architecture.md, "Layout": the entry layer)."""

from .main import main

__all__ = ["main"]
