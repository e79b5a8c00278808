"""Baselines on the same prepared split: UNet and SwinUNETR (MONAI), nnU-Net (nnunetv2)."""
from tunesam.baselines.nets import BASELINES, BaselineSegmenter, build_baseline, is_baseline

__all__ = ["BASELINES", "BaselineSegmenter", "build_baseline", "is_baseline"]
