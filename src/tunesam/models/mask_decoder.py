"""SAM's mask decoder, with head selection for the automated (class-token) mode."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tunesam.models.common import MLP, LayerNorm2d
from tunesam.models.transformer import TwoWayTransformer


def match_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """Give an image-level tensor the prompt batch size ``n``.

    One image with ``n`` prompts is broadcast (SAM's interactive use); ``n`` images with
    one prompt set each (training batches) are used as they are.
    """
    if x.shape[0] == n:
        return x
    if x.shape[0] == 1:
        return x.expand(n, *x.shape[1:])
    raise ValueError(
        f"{x.shape[0]} image embeddings for {n} prompt sets: give one image, or one prompt set per image"
    )


class MaskDecoder(nn.Module):
    """Predicts masks from image and prompt embeddings with a two-way transformer.

    Token ``0`` is SAM's single-mask output and tokens ``1..num_multimask_outputs`` its
    multimask outputs. In the automated mode tokens ``1..K+1`` serve as class tokens
    (background first), so ``num_multimask_outputs = max(3, K + 1)`` keeps the official
    shape whenever ``K <= 2``.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official interface: ``B x M x 4h x 4w`` mask logits and ``B x M`` IoU scores.

        ``M`` is 1 (token 0) or the multimask outputs (tokens 1..).
        """
        heads = range(1, self.num_mask_tokens) if multimask_output else range(0, 1)
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, heads
        )
        assert iou_pred is not None
        return masks, iou_pred

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        heads: Sequence[int],
        with_iou: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masks ``B x len(heads) x 4h x 4w`` from the chosen output tokens only.

        Every token still takes part in the transformer; only the hypernetwork heads in
        ``heads`` run, so heads that are not used get no gradient and cost nothing.
        """
        n = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat([output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], dim=1)

        src = match_batch(image_embeddings, n) + dense_prompt_embeddings
        pos_src = match_batch(image_pe, n)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in heads], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou_pred = None
        if with_iou:
            iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, list(heads)]
        return masks, iou_pred
