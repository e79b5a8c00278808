"""tunesam: fine-tune the Segment Anything family for medical image segmentation."""
from __future__ import annotations

from tunesam._version import __version__
from tunesam.models.build import build_model

__all__ = ["build_model", "__version__"]
