"""Baselines on the same prepared split: UNet and SwinUNETR (MONAI), nnU-Net (nnunetv2).

Each is a run kind (:mod:`tunesam.kinds`): ``nets`` registers the MONAI networks, ``nnunet``
the real nnU-Net.
"""
from tunesam.baselines.nets import BASELINES, BaselineSegmenter, build_baseline

__all__ = ["BASELINES", "BaselineSegmenter", "build_baseline"]
