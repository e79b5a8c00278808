"""The baselines' networks (MONAI), behind the interface a run's model has.

``BaselineSegmenter`` wraps a 2D MONAI network so that training, evaluation and prediction
treat it like a SAM run in automated mode: ``forward(images, valid=...)`` takes the
letterboxed 0-255 slices (``B x 1 x S x S`` or three grey channels) and returns
``B x (K+1) x S x S`` class logits. The intensity normalisation is the baselines' own: each
slice to zero mean and unit variance over its real pixels (nnU-Net's rule for MR and other
non-CT data), the letterbox padding zero after it. Everything trains; there are no prompts.

* ``unet``: MONAI's ``UNet``, the classic encoder-decoder of Ronneberger et al. (features
  64 to 1024, four down-samplings, two 3x3 convolutions per level as residual units,
  instance norm, PReLU: MONAI's defaults).
* ``swinunetr``: MONAI's ``SwinUNETR`` with ``spatial_dims=2``, named plainly as the
  substitute for SwinUNet (Cao et al., 2022), which has no maintained PyTorch package. Its
  input side must be a multiple of 32 (patch size 2 and four merging stages).
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesam.config import TrainConfig
from tunesam.engine.run_folder import Run
from tunesam.kinds import RunKind, register
from tunesam.letterbox import segment_letterboxed
from tunesam.peft.saving import load_trained

PIXEL_NORM = "zscore"


@dataclass(frozen=True)
class BaselineSpec:
    name: str
    network: str  # "unet" | "swinunetr"
    description: str
    label: str = ""  # how reports name it (UNet, SwinUNETR)
    channels: tuple[int, ...] = ()
    feature_size: int = 24
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    native_size: int = 256
    interpolation: str = "bilinear"
    pixel_norm: str = PIXEL_NORM
    test_only: bool = False

    @property
    def size_multiple(self) -> int:
        return 32 if self.network == "swinunetr" else 2 ** len(self.channels[1:])


BASELINES: dict[str, BaselineSpec] = {
    s.name: s
    for s in (
        BaselineSpec("unet", "unet", "MONAI UNet (2D), features 64-1024", "UNet", channels=(64, 128, 256, 512, 1024)),
        BaselineSpec("swinunetr", "swinunetr", "MONAI SwinUNETR (2D), the substitute for SwinUNet", "SwinUNETR",
                     feature_size=24),
        BaselineSpec("unet_test", "unet", "test-only tiny UNet", channels=(4, 8, 16), test_only=True),
        BaselineSpec("swinunetr_test", "swinunetr", "test-only tiny SwinUNETR", feature_size=12,
                     depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), test_only=True),
    )
}


def get_baseline_spec(name: str) -> BaselineSpec:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(n for n, s in BASELINES.items() if not s.test_only)}")
    return BASELINES[name]


def _network(spec: BaselineSpec, out_channels: int, image_size: int) -> nn.Module:
    from monai.networks.nets import SwinUNETR, UNet

    if spec.network == "unet":
        return UNet(spatial_dims=2, in_channels=1, out_channels=out_channels, channels=spec.channels,
                    strides=(2,) * (len(spec.channels) - 1), num_res_units=2)
    kwargs: dict[str, Any] = {}
    if "img_size" in inspect.signature(SwinUNETR.__init__).parameters:  # MONAI < 1.5 wants it; 1.5 removed it
        kwargs["img_size"] = (image_size, image_size)
    return SwinUNETR(in_channels=1, out_channels=out_channels, spatial_dims=2, feature_size=spec.feature_size,
                     depths=spec.depths, num_heads=spec.num_heads, **kwargs)


class BaselineSegmenter(nn.Module):
    """A baseline network with the automated-mode interface of :class:`SamSegmenter`."""

    def __init__(self, spec: BaselineSpec, num_classes: int, image_size: int | None = None) -> None:
        super().__init__()
        size = image_size or spec.native_size
        if size % spec.size_multiple:
            raise ValueError(f"{spec.name} needs an input side that is a multiple of {spec.size_multiple} "
                             f"(--image-size), got {size}")
        self.spec, self.arch, self.num_classes = spec, spec.name, num_classes
        self._image_size = size
        self.pixel_norm = spec.pixel_norm
        self.interpolation = spec.interpolation
        self.net = _network(spec, num_classes + 1, size)
        self.load_report = None

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encoder_is_frozen(self) -> bool:
        return False

    whole_cases = False  # any slices in any batch: the spacing is not needed

    def segment_stored(self, slices: Sequence[np.ndarray], spacing: tuple[float, float] = (1.0, 1.0),
                       want_probs: bool = False, out_shape: tuple[int, int] | None = None, batch_size: int = 8
                       ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """The run-model interface: see :func:`tunesam.letterbox.segment_letterboxed`."""
        return segment_letterboxed(self, slices, want_probs, out_shape, batch_size)

    def preprocess(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """0-255 slices to z-scores over the real pixels; padding 0."""
        x = images.float()[:, :1]  # grey: the channels are copies
        b, _, h, w = x.shape
        if valid is None:
            inside = torch.ones_like(x, dtype=torch.bool)
        else:
            rows = torch.arange(h, device=x.device)[None, :, None] < valid[:, 0, None, None]
            cols = torch.arange(w, device=x.device)[None, None, :] < valid[:, 1, None, None]
            inside = (rows & cols)[:, None]
        n = inside.flatten(1).sum(1).clamp(min=1)[:, None, None, None]
        mean = (x * inside).flatten(1).sum(1)[:, None, None, None] / n
        var = (((x - mean) * inside) ** 2).flatten(1).sum(1)[:, None, None, None] / n
        return (x - mean) / var.sqrt().clamp(min=1e-6) * inside

    def forward(self, images: torch.Tensor | None, valid: torch.Tensor | None = None,
                embeddings: torch.Tensor | None = None, **prompts: Any) -> torch.Tensor:
        if images is None or embeddings is not None or any(v is not None for v in prompts.values()):
            raise ValueError(f"{self.arch} is a baseline: automated mode on images only (no prompts, no embeddings)")
        return self.net(self.preprocess(images, valid))


def build_baseline(name: str, num_classes: int, image_size: int | None = None) -> BaselineSegmenter:
    """A randomly initialised MONAI baseline for ``num_classes`` foreground classes."""
    return BaselineSegmenter(get_baseline_spec(name), num_classes, image_size)


def refuse_sam_options(cfg: TrainConfig, pixel_norm: str) -> None:
    """A baseline trains from scratch in automated mode: SAM's options do not apply."""
    given = [flag for flag, bad in (("--checkpoint", cfg.checkpoint), ("--mode " + cfg.mode, cfg.mode != "auto"),
                                    ("--cache-embeddings", cfg.cache_embeddings),
                                    ("--pixel-norm", cfg.pixel_norm not in (None, pixel_norm)))
             if bad]
    if given:
        raise ValueError(f"{cfg.arch} is a baseline trained from scratch in automated mode; "
                         f"{', '.join(given)} does not apply to it")


class MonaiKind(RunKind):
    """UNet and SwinUNETR: tunesam's fine-tuning loop and recipe, from random weights."""

    name = "monai"
    baseline = True

    def archs(self) -> Iterable[str]:
        return BASELINES

    def label(self, arch: str) -> str:
        return get_baseline_spec(arch).label or arch

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        spec = get_baseline_spec(str(cfg.arch))
        refuse_sam_options(cfg, spec.pixel_norm)
        return dataclasses.replace(
            cfg.with_recipe(), image_size=cfg.image_size or spec.native_size, pixel_norm=spec.pixel_norm,
            pixel_norm_rule="the baselines' own: z-score per slice over its real pixels",
            interpolation=cfg.interpolation or spec.interpolation,
        )

    def build(self, cfg: TrainConfig, num_classes: int) -> BaselineSegmenter:
        return build_baseline(str(cfg.arch), num_classes, cfg.image_size)

    def load(self, run: Run, which: str = "best", device: str | torch.device = "cpu") -> BaselineSegmenter:
        model = build_baseline(str(run.config.arch), run.num_classes, run.config.image_size)
        load_trained(model, run.weights(which), meta_path=run.folder / "weights" / "base.json")  # type: ignore[arg-type]
        return model.to(device).eval()

    def export(self, run: Run, out: Path, weights: str = "best") -> list[str]:
        raise ValueError(f"{run.folder} is a {run.config.arch} baseline, not a SAM model: there is no SAM checkpoint "
                         "to export. Its weights/best.safetensors hold the whole network (MONAI's layout)")


MONAI = register(MonaiKind())
