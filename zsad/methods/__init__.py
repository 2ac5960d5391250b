"""Detectors: pure functions of features and text embeddings (no file I/O, no dataset knowledge, no plotting)."""
from zsad.methods.base import MethodOutput

__all__ = ["MethodOutput"]
