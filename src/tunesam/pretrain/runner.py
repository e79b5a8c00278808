"""``tunesam pretrain prompt|mae``: SupSAM and SSLSAM as two tasks of the one training loop.

A run folder holds ``config.yaml`` (resolved), ``log.csv`` (epoch, train loss, the
validation figure, lr, seconds), ``curves.png``, ``last.pt`` (resume state: weights,
optimiser, step, RNG; as ``train``'s), ``summary.json`` and ``checkpoint.pth``: a plain state
dict in the official SAM key layout that ``train --checkpoint``, ``evaluate --checkpoint``,
``info --checkpoint`` and segment-anything's builders read. SupSAM's checkpoint is the epoch
with the best pooled validation DSC (early stop after ``patience`` epochs without a better
one); SSLSAM's is the last epoch's (MAE's practice), and ``reconstructions/`` holds a figure
per epoch. Everything is written atomically; ``--resume`` continues after the last finished
epoch. Under torchrun every process trains a shard (DDP); rank 0 writes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tunesam.device import autocast_for
from tunesam.engine import distributed as D
from tunesam.engine import fit as F
from tunesam.engine.fit import decay_groups
from tunesam.engine.run_folder import State, prepare, refuse_changed, started
from tunesam.engine.schedule import lr_at
from tunesam.io import owned
from tunesam.peft.export import export_checkpoint
from tunesam.models.build import build_model
from tunesam.models.segmenter import SamSegmenter
from tunesam.pretrain import mae as M
from tunesam.pretrain import supsam
from tunesam.pretrain.config import MAE_WARMUP_FRACTION, PretrainConfig, load_pretrain_config, save_pretrain_config
from tunesam.pretrain.data import ImageSlices, PromptSlices, collate_prompts, open_all

log = logging.getLogger("tunesam.pretrain")
CHECKPOINT = "checkpoint.pth"
MAE_VAL_LIMIT = 200  # MAE validation loss: at most this many val slices, evenly spread
RECONSTRUCTED = 4  # slices in each epoch's reconstruction figure, evenly spread over the val set


@dataclass
class Objective:
    """What differs between SupSAM and MAE; :func:`tunesam.engine.fit.fit` does the rest."""

    net: nn.Module  # the module trained (DDP wraps it)
    sam: SamSegmenter  # what checkpoint.pth holds (MAE: its image encoder is the one trained)
    groups: list[dict[str, Any]]
    betas: tuple[float, float]
    train_set: Dataset
    val_set: Dataset
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None
    loss: Callable[[nn.Module, dict[str, Any], int], torch.Tensor]  # (net, batch, micro-step) -> loss
    validate: Callable[[DataLoader], tuple[float, float]]  # -> (sum, count) of this process
    lr: Callable[[int, int], float]  # (step, total) -> lr
    metric: str  # val_dsc (higher is better) or val_loss (lower)
    keep: str  # which epoch checkpoint.pth holds: best or last
    after_epoch: Callable[[Path, int], None] = lambda run, epoch: None
    notes: dict[str, Any] = field(default_factory=dict)


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# -- the two objectives ----------------------------------------------------------------------
def _start_model(cfg: PretrainConfig) -> SamSegmenter:
    model = build_model(cfg.arch, cfg.checkpoint, 1, cfg.image_size, cfg.pixel_norm)
    model.interpolation = str(cfg.interpolation)
    return model


def _prompt_task(cfg: PretrainConfig, device: torch.device) -> Objective:
    stores = open_all(cfg.data)
    for store in stores:
        store.require_labels("pretrain prompt")
    model = supsam.prepare_model(_start_model(cfg))
    model.image_encoder.grad_checkpointing = cfg.checkpointing
    net = supsam.PromptedSam(model).to(device)
    common = {"image_size": cfg.image_size, "interpolation": cfg.interpolation, "seed": cfg.seed,
              "rules": cfg.prompt_rules, "max_prompts": cfg.max_prompts}

    def validate(loader: DataLoader) -> tuple[float, float]:
        return supsam.validate(net, loader, device)

    return Objective(
        net=net, sam=model, groups=decay_groups(net.parameters(), float(cfg.weight_decay)),
        betas=(0.9, 0.999),
        train_set=PromptSlices(stores, "train", augment=True, **common),
        val_set=PromptSlices(stores, "val", augment=False, **common),
        collate=collate_prompts,
        loss=lambda n, batch, _: supsam.loss(n, batch, device),
        validate=validate,
        lr=lambda step, total: lr_at(step, float(cfg.lr), int(cfg.warmup), total),
        metric="val_dsc", keep="best",
        notes={"trained": "image encoder + mask decoder (vanilla); prompt encoder frozen",
               "frozen": model.frozen_parts},
    )


def _mae_task(cfg: PretrainConfig, device: torch.device, ctx: D.Context) -> Objective:
    from tunesam.models.registry import get_spec

    stores = open_all(cfg.data)
    start = _start_model(cfg)
    for p in start.parameters():
        p.requires_grad_(False)
    encoder = start.image_encoder
    for p in encoder.parameters():
        p.requires_grad_(True)
    encoder.grad_checkpointing = cfg.checkpointing
    net = M.MaskedAutoencoder(encoder, int(cfg.image_size), get_spec(str(cfg.arch)).patch_size,
                              int(cfg.mask_patch), str(cfg.mae_variant), cfg.decoder_dim, cfg.decoder_depth,
                              cfg.decoder_heads, cfg.norm_pix_loss).to(device)
    start.to(device)  # its pixel normalisation prepares the images
    if ctx.is_main:
        log.info("MAE variant %s (%s)", cfg.mae_variant, cfg.mae_variant_rule)
        n_enc = sum(p.numel() for p in encoder.parameters())
        n_dec = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("encoder."))
        if n_dec > 5 * n_enc:  # MAE's decoder is sized for ViT-B and up; last.pt holds it and its Adam moments
            log.warning("the MAE decoder (%d wide, %d blocks: %.1fM parameters, about %.0f MB in last.pt with its "
                        "optimiser state) is %.0fx the %s encoder (%.1fM); --decoder-dim 128 --decoder-depth 2 sizes it "
                        "to a small encoder", cfg.decoder_dim, cfg.decoder_depth, n_dec / 1e6, n_dec * 12 / 1e6,
                        n_dec / n_enc, cfg.arch, n_enc / 1e6)
    common = {"image_size": cfg.image_size, "interpolation": cfg.interpolation, "seed": cfg.seed}
    train_set = ImageSlices(stores, "train", augment=True, **common)
    val_all = ImageSlices(stores, "val", augment=False, **common)
    keep = np.unique(np.linspace(0, len(val_all) - 1, min(MAE_VAL_LIMIT, len(val_all))).round().astype(int))
    val_set = val_all.subset(keep)
    patches = net.grid**2

    def train_loss(n: nn.Module, batch: dict[str, Any], micro: int) -> torch.Tensor:
        """Masks drawn from (seed, micro-step, rank): a resumed run hides what it would have."""
        images = start.preprocess(batch["image"].to(device, non_blocking=True), batch["valid"].to(device))
        g = torch.Generator().manual_seed(_seed_of(cfg.seed, micro, ctx.rank))
        mask = M.random_mask(len(images), patches, cfg.mask_ratio, g).to(device)
        return n(images, batch["valid"].to(device), mask)[0]

    def fixed_masks(datasets: Any, rows: Any) -> torch.Tensor:
        """Validation and figure masks: one per slice, the same every epoch."""
        return torch.stack([M.random_mask(1, patches, cfg.mask_ratio,
                                          torch.Generator().manual_seed(_seed_of(cfg.seed, int(d), int(r))))[0]
                            for d, r in zip(datasets, rows)]).to(device)

    def warmup(total: int) -> int:
        return int(cfg.warmup) if cfg.warmup is not None else round(MAE_WARMUP_FRACTION * total)

    @torch.no_grad()
    def validate(loader: DataLoader) -> tuple[float, float]:
        net.eval()
        total, count = 0.0, 0.0
        for batch in loader:  # the masks of validation are fixed per slice
            images = start.preprocess(batch["image"].to(device), batch["valid"].to(device))
            masks = fixed_masks(batch["dataset"], batch["index"])
            with autocast_for(device):
                loss, _ = net(images, batch["valid"].to(device), masks)
            total += float(loss) * len(images)
            count += len(images)
        return total, count

    @torch.no_grad()
    def figure(run: Path, epoch: int) -> None:
        net.eval()
        shown = np.unique(np.linspace(0, len(val_set) - 1, min(RECONSTRUCTED, len(val_set))).round().astype(int))
        items = [val_set[int(i)] for i in shown]  # spread over the pooled validation slices
        images = start.preprocess(torch.stack([it["image"] for it in items]).to(device),
                                  torch.stack([it["valid"] for it in items]).to(device))
        masks = fixed_masks([it["dataset"] for it in items], [it["index"] for it in items])
        valid = torch.stack([it["valid"] for it in items]).to(device)
        with autocast_for(device):
            _, pred = net(images, valid, masks)
        recon = net.reconstruct(images, pred, masks)
        M.reconstruction_figure(run / "reconstructions" / f"epoch_{epoch:03d}.png", images, masks, recon,
                                net.mask_patch, f"MAE ({cfg.mae_variant}, {cfg.mask_ratio:.0%} hidden), epoch {epoch}")

    groups = M.mae_parameter_groups(net, float(cfg.weight_decay))
    return Objective(
        net=net, sam=start, groups=groups, betas=(0.9, 0.95), train_set=train_set, val_set=val_set, collate=None,
        loss=train_loss, validate=validate,
        lr=lambda step, total: M.cosine_lr_at(step, float(cfg.lr), warmup(total), total),
        metric="val_loss", keep="last", after_epoch=figure,
        notes={"variant": cfg.mae_variant, "variant_rule": cfg.mae_variant_rule, "mask_patch": cfg.mask_patch,
               "blank_slices_dropped": train_set.blank + val_all.blank, "validation_slices": len(val_set),
               "kept": "the image encoder; prompt encoder and mask decoder of the starting checkpoint, unchanged"},
    )


# -- run folder and loop ---------------------------------------------------------------------------
def _prepare_run_folder(cfg: PretrainConfig, resume: bool) -> Path:
    def check(run: Path) -> None:
        saved = load_pretrain_config(run / "config.yaml")
        now = {**cfg.to_dict(), "data": list(cfg.data)}
        refuse_changed(run, saved.to_dict(), now, {"device", "num_workers", "out", "mae_variant_rule"})  # the rule only explains

    return prepare(cfg.out, resume, "pre-training", check)


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool | None = None) -> Path:
    """Pre-train as ``cfg`` says; returns the run folder (``RUN/checkpoint.pth`` inside).
    ``progress``: the tqdm bar (``None``: when stderr is a terminal)."""
    with D.session(cfg.device) as (ctx, device), owned(cfg.out, "pre-training run", take=ctx.is_main):
        return _pretrain(cfg.resolved(ctx.world), resume, ctx, device, progress)


def _pretrain(cfg: PretrainConfig, resume: bool, ctx: D.Context, device: torch.device,
              progress: bool | None) -> Path:
    run = _prepare_run_folder(cfg, resume)
    if ctx.distributed:
        torch.distributed.barrier()
    torch.manual_seed(cfg.seed)
    obj = _prompt_task(cfg, device) if cfg.objective == "prompt" else _mae_task(cfg, device, ctx)
    opt = torch.optim.AdamW(obj.groups, lr=float(cfg.lr), betas=obj.betas, fused=device.type == "cuda")
    if ctx.is_main and not (resume and started(run)):  # a new run, or one that never finished an epoch
        run.mkdir(parents=True, exist_ok=True)
        save_pretrain_config(cfg, run / "config.yaml")

    def validate(loader: DataLoader) -> float:
        total, count = D.all_sum(torch.tensor(obj.validate(loader), dtype=torch.float64), ctx).tolist()
        return total / max(1.0, count)

    noted: list[bool] = []

    def save(run: Path, improved: bool, epoch: int) -> None:
        if obj.keep == "last" or improved:
            notes = export_checkpoint(obj.sam, run / CHECKPOINT)
            if not noted:  # what the export adapted, once per process
                noted.append(True)
                for note in notes:
                    log.info("checkpoint: %s", note)

    def summary(state: State) -> dict[str, Any]:
        return {"objective": cfg.objective, "checkpoint": CHECKPOINT,
                "checkpoint_epoch": state.best_epoch if obj.keep == "best" else state.epoch,
                "effective_batch": cfg.effective_batch(ctx.world),
                **obj.notes}

    task = F.Task(net=obj.net, optimizer=opt, train_set=obj.train_set, val_set=obj.val_set, loss=obj.loss,
                  validate=validate, lr=obj.lr, save=save, weights=obj.net.state_dict, metric=obj.metric,
                  collate=obj.collate, after_epoch=obj.after_epoch, summary=summary)
    schedule = F.Schedule(epochs=int(cfg.epochs or 1), batch_size=int(cfg.batch_size or 1), seed=cfg.seed,
                          patience=cfg.patience, accumulate=int(cfg.accumulate or 1), num_workers=cfg.num_workers)
    F.fit(task, run, schedule, ctx, device, resume, progress,
          describe=f"pretrain {cfg.objective} on {len(cfg.data)} datasets: {len(obj.train_set)} train / "
                   f"{len(obj.val_set)} val items (batch {cfg.batch_size} x {schedule.accumulate} accumulated x "
                   f"{ctx.world} processes)")
    return run
