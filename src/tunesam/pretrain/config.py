"""The pre-training configuration (``tunesam pretrain prompt|mae``): typed, validated, with
the paper's recipes as defaults, written to ``RUN/config.yaml`` resolved."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesam.config import LR, WARMUP, WEIGHT_DECAY, check_ranges

OBJECTIVES = ("prompt", "mae")
PROMPT_RULES = ("paper", "code")
MAE_VARIANTS = ("masked-grid", "visible")
# Why each architecture family gets its default MAE variant (written to the resolved config).
MAE_VARIANT_DEFAULTS = {
    "vit": ("visible", "default for SAM's ViT: the visible tokens only, as MAE and the paper"),
    "tinyvit": ("masked-grid", "default for TinyViT: its convolutions need the whole grid, so hidden patches "
                               "become a mask token instead of being dropped"),
}

# SupSAM (sections 2.3, 4.2): vanilla encoder + decoder, prompt encoder frozen, batch 3,
# the task-specific recipe's optimiser, early stop after 5 epochs without a better val DSC.
PROMPT_RECIPE = {"epochs": 100, "patience": 5, "batch_size": 3, "accumulate": 1, "lr": LR,
                 "weight_decay": WEIGHT_DECAY, "warmup": WARMUP}
# SSLSAM (sections 2.4, 4.3): MAE's recipe (He et al. 2022): base lr 1.5e-4 per 256 images,
# AdamW (0.9, 0.95), weight decay 0.05, half-cycle cosine after a linear warm-up; the paper's
# batch 2 x 16 accumulation steps, 50 epochs.
MAE_RECIPE = {"epochs": 50, "patience": 0, "batch_size": 2, "accumulate": 16, "weight_decay": 0.05}
MAE_BASE_LR = 1.5e-4
MAE_WARMUP_FRACTION = 0.05  # MAE: 40 warm-up epochs of 800


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a pre-training run depends on.

    ``objective``: ``prompt`` (SupSAM) or ``mae`` (SSLSAM). ``data``: prepared dataset
    folders, pooled. ``epochs``/``patience``/``batch_size``/``accumulate``/``lr``/
    ``weight_decay``/``warmup`` default to the objective's recipe (``warmup`` in optimiser
    steps; MAE: 5% of the run). MAE's ``lr`` defaults to ``1.5e-4 x effective batch / 256``
    (effective batch = batch x accumulate x processes).

    Prompt options: ``prompt_rules`` ``paper`` (boxes with Gaussian noise, points above the
    median edge distance) or ``code`` (the authors' released code: boxes grown by a uniform
    0-10%, points from the top 10% of edge distances); ``max_prompts`` caps the components
    prompted per image (SAM's own training samples at most 64 masks per image).

    MAE options: ``mask_ratio``; ``mae_variant`` ``visible`` (SAM ViT only, its default: the
    visible 25% alone, every block attending globally, as plain MAE and the paper) or
    ``masked-grid`` (every patch goes through the unchanged encoder, masked ones replaced by a
    learned mask token; SimMIM-style; TinyViT's default and only choice, since its
    convolutions cannot take a sequence with tokens dropped), with ``mae_variant_rule``
    saying why (filled by :meth:`resolved`); ``mask_patch`` the masked square's side in input
    pixels (default: the ViT's patch, 16; TinyViT: 16 px or its stride, whichever is larger);
    ``norm_pix_loss`` per-patch normalised targets; the decoder's width, depth and heads.
    """

    objective: str
    data: tuple[str, ...]
    out: str
    arch: str | None
    checkpoint: str | None = None
    epochs: int | None = None
    patience: int | None = None
    batch_size: int | None = None
    accumulate: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup: int | None = None
    image_size: int | None = None
    pixel_norm: str | None = None
    interpolation: str | None = None
    device: str = "auto"
    seed: int = 0
    num_workers: int | None = None
    checkpointing: bool = False
    # prompt (SupSAM)
    prompt_rules: str = "paper"
    max_prompts: int = 16
    # mae (SSLSAM)
    mask_ratio: float = 0.75
    mae_variant: str | None = None
    mask_patch: int | None = None
    norm_pix_loss: bool = True
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    pixel_norm_rule: str | None = None  # filled by resolved()
    mae_variant_rule: str | None = None  # filled by resolved()

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"pretrain objective must be prompt or mae, got {self.objective!r}")
        if isinstance(self.data, (str, Path)) or not self.data:
            raise ValueError("--data takes one or more prepared dataset folders")
        object.__setattr__(self, "data", tuple(str(d) for d in self.data))
        if len(set(self.data)) != len(self.data):
            raise ValueError(f"--data names a folder twice: {list(self.data)}")
        check_ranges(self, at_least_1=("epochs", "batch_size", "accumulate", "max_prompts", "decoder_dim",
                                        "decoder_depth", "decoder_heads", "image_size", "mask_patch"),
                     at_least_0=("patience", "warmup", "weight_decay", "num_workers", "seed"))
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.prompt_rules not in PROMPT_RULES:
            raise ValueError(f"--prompt-rules must be paper or code, got {self.prompt_rules!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"--mask-ratio must be between 0 and 1, got {self.mask_ratio}")
        if self.mae_variant not in (None, *MAE_VARIANTS):
            raise ValueError(f"--mae-variant must be masked-grid or visible, got {self.mae_variant!r}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"--decoder-dim {self.decoder_dim} is not a multiple of --decoder-heads "
                             f"{self.decoder_heads}")
        if self.objective == "prompt":
            given = [n for n in ("mae_variant", "mask_patch") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in given)}: MAE options, not for "
                                 "pretrain prompt")

    def resolved(self, world: int = 1) -> PretrainConfig:
        """Recipe defaults filled in; a named checkpoint resolved to its (verified) file."""
        from tunesam.models.build import infer_arch, pixel_norm_rule
        from tunesam.models.known import resolve_checkpoint
        from tunesam.models.registry import get_spec

        checkpoint = str(resolve_checkpoint(self.checkpoint)) if self.checkpoint else None
        if not self.arch and checkpoint is None:
            raise ValueError("give --arch (or a --checkpoint to read the architecture from)")
        arch = self.arch or infer_arch(checkpoint)  # type: ignore[arg-type]
        spec = get_spec(arch)
        norm, rule = (self.pixel_norm, "given with --pixel-norm") if self.pixel_norm else pixel_norm_rule(arch, checkpoint)
        recipe = PROMPT_RECIPE if self.objective == "prompt" else MAE_RECIPE
        filled: dict[str, Any] = {k: recipe[k] if getattr(self, k) is None else getattr(self, k)
                                  for k in recipe}
        extra: dict[str, Any] = {}
        if self.objective == "mae":
            variant, why = MAE_VARIANT_DEFAULTS[spec.family]
            if self.mae_variant:
                variant, why = self.mae_variant, "given with --mae-variant"
            if variant == "visible" and spec.family != "vit":
                raise ValueError(f"--mae-variant visible drops tokens, which {arch}'s convolutions (TinyViT) cannot "
                                 "take; use masked-grid")
            extra["mae_variant"] = variant
            extra["mae_variant_rule"] = self.mae_variant_rule or why
            extra["mask_patch"] = self.mask_patch or max(16, spec.patch_size)
            if self.lr is None:
                filled["lr"] = MAE_BASE_LR * filled["batch_size"] * filled["accumulate"] * world / 256
        image_size = self.image_size or spec.native_size
        if self.objective == "mae":
            stride = spec.patch_size
            if extra["mask_patch"] % stride or image_size % extra["mask_patch"]:
                raise ValueError(f"--mask-patch {extra['mask_patch']} must be a multiple of {arch}'s stride "
                                 f"{stride} and divide the input size {image_size}")
        return dataclasses.replace(
            self, arch=arch, checkpoint=checkpoint, image_size=image_size, pixel_norm=norm,
            pixel_norm_rule=self.pixel_norm_rule or rule, interpolation=self.interpolation or spec.interpolation,
            **filled, **extra,
        )

    def effective_batch(self, world: int = 1) -> int:
        return int(self.batch_size or 1) * int(self.accumulate or 1) * world

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"] = list(self.data)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown pre-training options {unknown}")
        return cls(**{**d, "data": tuple(d.get("data") or ())})


def save_pretrain_config(cfg: PretrainConfig, path: Path) -> None:
    from tunesam.config import save_yaml

    save_yaml(cfg.to_dict(), path, "tunesam pre-training configuration (resolved)")


def load_pretrain_config(path: Path) -> PretrainConfig:
    from tunesam.config import load_yaml

    return load_yaml(path, PretrainConfig.from_dict, "pre-training")
