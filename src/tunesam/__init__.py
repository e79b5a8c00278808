"""tunesam: fine-tune the Segment Anything family for medical image segmentation."""
from __future__ import annotations

from tunesam.models.build import build_model

__version__ = "0.1.0"
__all__ = ["build_model", "__version__"]
