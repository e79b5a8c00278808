"""``tunesam train``: the paper's task-specific fine-tuning, as a task of the one loop.

The fine-tuning task serves every kind whose model takes letterboxed slices (SAM in each
mode, the MONAI baselines): its data (:class:`SliceDataset`, augmented as the paper), its
loss (Dice + CE in automated mode, Dice + BCE with a prompt), its validation (the mean 2D
DSC over classes) and what the run keeps (``weights/{best,last}.safetensors`` and
``weights/base.json``). The loop, the folder and resume are :mod:`tunesam.engine.fit`'s and
:mod:`tunesam.engine.run_folder`'s.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from tunesam.config import TrainConfig, save_config
from tunesam.data.dataset import SliceDataset, few_shot_rows
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData
from tunesam.device import autocast_for
from tunesam.engine import distributed as D
from tunesam.engine.embedding_cache import CachedEmbeddings, fill_training_caches
from tunesam.engine.fit import Schedule, Task, decay_groups, fit
from tunesam.engine.losses import dice_bce_loss, dice_ce_loss
from tunesam.engine.run_folder import prepare_training, started, write_preprocessing
from tunesam.engine.schedule import lr_at
from tunesam.metrics import dice
from tunesam.io import owned, write_json
from tunesam.models.segmenter import positive_points
from tunesam.peft.saving import save_tensors, trained_meta, trained_state_dict


def datasets(data: PreparedData, cfg: TrainConfig) -> tuple[SliceDataset, SliceDataset]:
    data.require_labels("training")
    common = {"image_size": cfg.image_size, "interpolation": cfg.interpolation, "mode": cfg.mode, "seed": cfg.seed,
              "prompt_rules": cfg.prompt_rules}
    train_rows = val_rows = None
    if cfg.few_shot:
        train_rows = few_shot_rows(data, "train", cfg.few_shot, cfg.seed)
        # validation: k slices too, or one per volume where the val set has fewer than k
        val_rows = few_shot_rows(data, "val", cfg.few_shot, cfg.seed, at_most=True)
    train = SliceDataset(data, "train", include_empty=data.trains_on_empty, rows=train_rows, augment=True,
                         augment_images=not cfg.cache_embeddings, views=cfg.cache_views, **common)
    val = SliceDataset(data, "val", include_empty=False, rows=val_rows, **common)
    for ds, name in ((train, "train"), (val, "val")):
        if len(ds) == 0:
            raise DataError(f"{data.folder}: the {name} set has no usable slices")
    return train, val


# -- one step, one validation ----------------------------------------------------------------
def model_inputs(batch: dict[str, Any], mode: str, device: torch.device,
                 cache: CachedEmbeddings | None) -> dict[str, Any]:
    """A batch as model arguments: the image (or its cached embedding, of the view the item
    drew) and the mode's prompt."""
    if cache is not None:
        emb = cache.get(batch["index"], batch.get("view"))
        inputs = {"images": None, "embeddings": emb.to(device, non_blocking=True)}
    else:
        inputs = {"images": batch["image"].to(device, non_blocking=True), "valid": batch["valid"].to(device)}
    if mode == "box":
        inputs["boxes"] = batch["box"].to(device)
    elif mode == "point":
        inputs["points"] = positive_points(batch["point"].to(device)[:, None, :])
    return inputs


def forward_loss(model: torch.nn.Module, batch: dict[str, Any], mode: str, device: torch.device,
                 cache: CachedEmbeddings | None = None) -> torch.Tensor:
    logits = model(**model_inputs(batch, mode, device, cache))
    target = batch["mask"].to(device, non_blocking=True).long()
    return dice_ce_loss(logits, target) if mode == "auto" else dice_bce_loss(logits, target)


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, mode: str, num_classes: int, device: torch.device,
             ctx: D.Context, cache: CachedEmbeddings | None = None) -> float:
    """Mean 2D DSC (percent) over val slices per class, then over classes, on the valid region."""
    model.eval()
    classes = range(1, num_classes + 1) if mode == "auto" else range(1, 2)
    sums = torch.zeros(len(classes), 2, dtype=torch.float64)  # (sum of DSC, images scored)
    for batch in loader:
        with autocast_for(device):
            logits = model(**model_inputs(batch, mode, device, cache))
        pred = (logits.argmax(1) if mode == "auto" else (logits[:, 0] > 0).long()).cpu()
        target = batch["mask"].long()
        for b in range(len(target)):
            rh, rw = batch["valid"][b].tolist()
            p, t = pred[b, :rh, :rw].numpy(), target[b, :rh, :rw].numpy()
            for j, c in enumerate(classes):
                score = dice(p == c, t == c)  # the evaluation's DSC; nan (not scored) when both are empty
                if not math.isnan(score):
                    sums[j, 0] += score
                    sums[j, 1] += 1
    sums = D.all_sum(sums, ctx)
    per_class = [s / n for s, n in sums.tolist() if n > 0]
    return 100.0 * float(np.mean(per_class)) if per_class else 0.0


def optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over :func:`~tunesam.engine.fit.decay_groups` (the paper's recipe: lr and weight decay
    from ``cfg``)."""
    return torch.optim.AdamW(decay_groups(model.parameters(), cfg.weight_decay), lr=cfg.lr,
                             fused=device.type == "cuda")


def schedule_of(cfg: TrainConfig) -> Schedule:
    return Schedule(epochs=int(cfg.epochs or 1), batch_size=int(cfg.batch_size or 1), seed=cfg.seed,
                    patience=cfg.patience, num_workers=cfg.num_workers, tensorboard=cfg.tensorboard)


def finetune_task(cfg: TrainConfig, model: torch.nn.Module, data: PreparedData, ctx: D.Context,
                  device: torch.device, cache: CachedEmbeddings | None = None,
                  sets: tuple[SliceDataset, SliceDataset] | None = None) -> Task:
    """The fine-tuning task of ``model`` on ``data`` as ``cfg`` says (``cache``: train the
    decoder on cached embeddings; ``sets``: the train and val datasets, when already made)."""
    num_classes = data.num_classes if cfg.mode == "auto" else 1
    train_ds, val_ds = sets or datasets(data, cfg)
    whole = cfg.checkpoint is None  # from random weights every tensor is trained

    def save(run: Path, improved: bool, epoch: int) -> None:
        if improved:
            save_tensors(model, run / "weights" / "best.safetensors", whole)  # type: ignore[arg-type]
        save_tensors(model, run / "weights" / "last.safetensors", whole)  # type: ignore[arg-type]

    return Task(
        net=model, optimizer=optimizer(model, cfg, device), train_set=train_ds, val_set=val_ds,
        loss=lambda net, batch, micro: forward_loss(net, batch, cfg.mode, device, cache),
        validate=lambda loader: validate(model, loader, cfg.mode, num_classes, device, ctx, cache),
        lr=lambda step, total: lr_at(step, cfg.lr, cfg.warmup, total, constant=cfg.constant_lr),
        save=save,
        weights=lambda: model.state_dict() if whole else trained_state_dict(model),  # type: ignore[arg-type]
        summary=lambda state: {"batch_size": cfg.batch_size, "cached_embeddings": bool(cfg.cache_embeddings)},
    )


def finetune(cfg: TrainConfig, build: Callable[[TrainConfig, int], torch.nn.Module], resume: bool = False,
             progress: bool | None = None, until: int | None = None) -> Path:
    """Fine-tune the model ``build(cfg, num_classes)`` makes, as the resolved ``cfg`` says;
    returns the run folder. ``progress``: the tqdm bar (``None``: when stderr is a terminal;
    ``False``: never, ``--quiet``). ``until``: pause after that many epochs (see :func:`fit`)."""
    with D.session(cfg.device) as (ctx, device), owned(cfg.out, "run", take=ctx.is_main):
        run = prepare_training(cfg, resume)
        if ctx.distributed:  # every rank checks the folder before rank 0 writes into it
            torch.distributed.barrier()
        data = PreparedData.open(cfg.data)
        num_classes = data.num_classes if cfg.mode == "auto" else 1
        torch.manual_seed(cfg.seed)
        model = build(cfg, num_classes).to(device)
        sets = datasets(data, cfg)
        if ctx.is_main and not (resume and started(run)):  # a new run, or one that never finished an epoch
            save_config(cfg, run / "config.yaml")
            (run / "weights").mkdir(parents=True, exist_ok=True)
            write_preprocessing(run, data)
            write_json(run / "weights" / "base.json", trained_meta(model, cfg.checkpoint))  # type: ignore[arg-type]
        cache = None
        if cfg.cache_embeddings:
            assert cfg.embedding_cache is not None

            def fill(verbose: bool) -> CachedEmbeddings:
                return fill_training_caches(model, data, cfg.embedding_cache, sets[0].rows, sets[1].rows,  # type: ignore[arg-type]
                                            cfg.cache_views, device, verbose)

            if ctx.is_main:  # one process computes, the others read
                cache = fill(True)
            if ctx.distributed:
                torch.distributed.barrier()
            if cache is None:
                cache = fill(False)
        task = finetune_task(cfg, model, data, ctx, device, cache, sets)
        fit(task, run, schedule_of(cfg), ctx, device, resume, progress,
            describe=f"{len(sets[0])} train / {len(sets[1])} val slices", until=until)
        return run
