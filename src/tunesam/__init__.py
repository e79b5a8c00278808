"""tunesam: fine-tune the Segment Anything family for medical image segmentation."""
from __future__ import annotations

from tunesam._version import __version__
from tunesam.models.build import build_model

__all__ = ["auto", "build_model", "__version__"]


def __getattr__(name: str) -> object:
    if name == "auto":  # tunesam.auto(data, out, budget=...): the package is callable, imported when first used
        import importlib

        return importlib.import_module("tunesam.auto")
    raise AttributeError(f"module 'tunesam' has no attribute {name!r}")
