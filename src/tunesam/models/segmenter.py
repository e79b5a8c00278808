"""The composed segmenter: image encoder + prompt encoder + mask decoder."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesam.letterbox import segment_letterboxed
from tunesam.models.mask_decoder import MaskDecoder
from tunesam.models.prompt_encoder import PromptEncoder

# Per-channel mean and std applied to 0-255 RGB input. MedSAM was trained on 0-1 input;
# LiteMedSAM on each image scaled to 0-1 by its own minimum and maximum ("minmax").
PIXEL_NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "sam": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    "minmax": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # statistics per image, see preprocess
}


def positive_points(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's point prompt for ``B x N x 2`` (x, y) coordinates, every point on the object."""
    return coords, torch.ones(coords.shape[:2], dtype=torch.long, device=coords.device)


class SamSegmenter(nn.Module):
    """SAM composed from its parts, trainable end to end (no ``no_grad`` on the way).

    Two ways to use it:

    * **automated** (no prompt): ``forward(images)`` returns ``B x (K+1) x S x S`` class
      logits (channel 0 background) from the decoder's class tokens ``1..K+1`` and the
      prompt encoder's no-prompt embeddings;
    * **prompted**: ``forward(images, points=..., boxes=...)`` returns ``B x 1 x S x S``
      binary logits from SAM's single-mask token (``multimask_output=True``: its three
      multimask outputs), one prompt set per image.

    ``images`` are ``B x 3 x S x S`` (or ``B x 1 x S x S`` grey, repeated to three
    channels) with values in 0-255; the pixel normalisation that belongs to the weights
    (``pixel_norm``) is applied here. ``valid`` (``B x 2``: rows, columns of real pixels
    at the top left, the rest letterbox padding) makes the padding zero after
    normalisation, as SAM's and LiteMedSAM's own preprocessing pad the normalised image,
    and restricts ``minmax`` statistics to the real pixels. When no encoder parameter
    requires grad, the encoder runs without autograd.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        num_classes: int = 1,
        pixel_norm: str = "sam",
        arch: str = "",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes counts foreground classes and must be >= 1, got {num_classes}")
        if num_classes + 1 > mask_decoder.num_multimask_outputs:
            raise ValueError(
                f"the decoder has {mask_decoder.num_multimask_outputs} class tokens, "
                f"{num_classes + 1} are needed for {num_classes} classes plus background"
            )
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.num_classes = num_classes
        self.arch = arch
        self.strategy: object | None = None  # set by tunesam.peft.apply_strategy
        self.frozen_parts: dict[str, str] = {}
        self.load_report: object | None = None  # set by tunesam.build_model
        # How images are resized to the input (tunesam.data.dataset.letterbox_image); set by
        # the registry from the architecture, by a run from its configuration.
        self.interpolation = "bilinear"
        self.pixel_norm = ""
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.ones(3, 1, 1), persistent=False)
        self.set_pixel_norm(pixel_norm)

    # segment-anything's interface (SamPredictor and tools built on it use these)
    image_format = "RGB"
    mask_threshold = 0.0

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, ...],
                          original_size: tuple[int, ...]) -> torch.Tensor:
        """Low-resolution logits ``B x M x h x w`` -> ``B x M x H x W`` of the original image:
        up to the input size, crop the resized image's ``input_size``, resize (as SAM)."""
        size = (self.image_size, self.image_size)
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, size=tuple(original_size), mode="bilinear", align_corners=False)

    # -- configuration -------------------------------------------------------------
    def set_pixel_norm(self, name: str) -> None:
        """Use the named pixel normalisation (``sam``, ``unit`` or ``minmax``)."""
        if name not in PIXEL_NORMS:
            raise ValueError(f"unknown pixel normalisation {name!r}; expected one of {sorted(PIXEL_NORMS)}")
        mean, std = PIXEL_NORMS[name]
        self.pixel_mean.copy_(torch.tensor(mean).view(3, 1, 1))
        self.pixel_std.copy_(torch.tensor(std).view(3, 1, 1))
        self.pixel_norm = name

    @property
    def image_size(self) -> int:
        return self.prompt_encoder.input_image_size[0]

    @property
    def class_heads(self) -> range:
        """Decoder output tokens that serve background and the K classes."""
        return range(1, self.num_classes + 2)

    def encoder_is_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.image_encoder.parameters())

    whole_cases = False  # any slices in any batch: the spacing is not needed

    def segment_stored(self, slices: Sequence[np.ndarray], spacing: tuple[float, float] = (1.0, 1.0),
                       want_probs: bool = False, out_shape: tuple[int, int] | None = None, batch_size: int = 8
                       ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Automated mode, the run-model interface (:class:`tunesam.kinds.Segmenter`): see
        :func:`tunesam.letterbox.segment_letterboxed` (``spacing`` is not needed here)."""
        return segment_letterboxed(self, slices, want_probs, out_shape, batch_size)

    def train(self, mode: bool = True) -> SamSegmenter:
        """Batch norms whose parameters are frozen keep their running statistics; training
        drops the inference encoder (see :meth:`use_inference_encoder`)."""
        super().train(mode)
        if mode:
            self.__dict__.pop("_inference_encoder", None)
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                    if not m.weight.requires_grad:
                        m.eval()
        return self

    # -- the three stages ----------------------------------------------------------
    def preprocess(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Validate and normalise ``B x {1,3} x S x S`` 0-255 images (``valid``: see the class).

        As SAM's own ``preprocess``, images resized so their longest side is S but not padded
        (``B x 3 x h x w``, h, w <= S) are normalised and then zero-padded to S x S.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be B x 3 x {self.image_size} x {self.image_size} (or 1 channel), got {tuple(images.shape)}"
            )
        h, w = images.shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            if max(h, w) != self.image_size or valid is not None:
                raise ValueError(
                    f"images must be {self.image_size} x {self.image_size} (the model's input size), or resized "
                    f"so their longest side is {self.image_size}; got {h} x {w}"
                )
            pad = (0, self.image_size - w, 0, self.image_size - h)
            valid = torch.tensor([[h, w]] * images.shape[0], device=images.device)
            images = F.pad(images.float() if not images.is_floating_point() else images, pad)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if not images.is_floating_point():  # uint8 straight from the data loader
            images = images.to(self.pixel_mean.dtype)
        inside = None
        if valid is not None:
            valid = torch.as_tensor(valid, device=images.device).view(-1, 2)
            rows = torch.arange(images.shape[-2], device=images.device)
            cols = torch.arange(images.shape[-1], device=images.device)
            inside = (rows[None, :, None] < valid[:, 0, None, None]) & (cols[None, None, :] < valid[:, 1, None, None])
            inside = inside[:, None]  # B x 1 x S x S
        if self.pixel_norm == "minmax":
            real = images if inside is None else images.masked_fill(~inside, float("inf"))
            lo = real.amin(dim=(1, 2, 3), keepdim=True)
            real = images if inside is None else images.masked_fill(~inside, float("-inf"))
            hi = real.amax(dim=(1, 2, 3), keepdim=True)
            x = (images - lo) / (hi - lo).clamp(min=1e-8)
        else:
            x = (images - self.pixel_mean) / self.pixel_std
        return x if inside is None else x * inside

    def use_inference_encoder(self) -> SamSegmenter:
        """Run the (frozen) encoder through a fused inference copy (TinyViT: batch norms folded
        into the convolutions, channels-last) until :meth:`train` is called. For evaluation,
        prediction and embedding caches; the model's own weights are untouched."""
        from tunesam.models.tiny_vit import TinyViT, fuse_for_inference

        if not self.encoder_is_frozen():
            raise RuntimeError("the inference encoder is for a frozen encoder (evaluation, decoder-only training)")
        if isinstance(self.image_encoder, TinyViT):
            object.__setattr__(self, "_inference_encoder", fuse_for_inference(self.image_encoder))
        return self

    def encode(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Image embeddings ``B x C x S/g x S/g`` (``g``: the encoder's stride, 16 or 4)."""
        x = self.preprocess(images, valid)
        fast = self.__dict__.get("_inference_encoder")
        if fast is not None:
            with torch.no_grad():
                return fast(x.contiguous(memory_format=torch.channels_last)).contiguous()
        ctx = torch.no_grad() if self.encoder_is_frozen() else contextlib.nullcontext()
        with ctx:
            return self.image_encoder(x)

    def decode(
        self,
        embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        multimask_output: bool = False,
        with_iou: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Low-resolution logits ``B x M x 4h x 4w`` for an ``h x w`` embedding grid (S/4 for
        SAM, S for LiteMedSAM) and IoU scores ``B x M``.

        Without prompts ``M = K + 1`` class logits; with prompts ``M`` is 1 or 3.
        """
        automated = points is None and boxes is None
        sparse, dense = self.prompt_encoder(points, boxes, None)
        if automated:
            n = embeddings.shape[0]
            sparse = sparse.expand(n, -1, -1)
            dense = dense.expand(n, -1, -1, -1)
            heads: range = self.class_heads
        else:
            heads = range(1, 4) if multimask_output else range(0, 1)
        return self.mask_decoder.predict_masks(
            embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, heads, with_iou=with_iou
        )

    def forward(
        self,
        images: torch.Tensor | None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        multimask_output: bool = False,
        valid: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits at the input size, ``B x M x S x S`` (see :meth:`decode`).

        ``embeddings`` (from :meth:`encode`, e.g. cached for a frozen encoder) replace
        ``images``, which may then be ``None``.
        """
        if embeddings is None:
            if images is None:
                raise ValueError("give images or their embeddings")
            embeddings = self.encode(images, valid)
        low_res, _ = self.decode(embeddings, points, boxes, multimask_output)
        size = (self.image_size, self.image_size)
        return F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
