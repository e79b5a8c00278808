"""``tunesam train``: the paper's task-specific fine-tuning, one readable loop.

A run folder holds ``config.yaml`` (resolved), ``log.csv`` (one row per epoch),
``weights/{best,last}.safetensors`` with ``weights/base.json`` (base checkpoint path and
sha256), ``last.pt`` (resume state), ``preprocessing.json`` (the data's preprocessing and
labels, so ``predict`` needs no data folder) and ``curves.png``. Everything is written
atomically; ``--resume`` continues from the end of the last completed epoch and, on the
CPU, reproduces the uninterrupted run exactly: every random choice is a function of
(seed, epoch, slice).
"""
from __future__ import annotations

import csv
import io
import json
import pickle
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from tunesam.baselines.nets import BaselineSegmenter, build_baseline, is_baseline
from tunesam.data.dataset import SliceDataset, few_shot_rows
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData
from tunesam.device import autocast_for
from tunesam.engine import distributed as D
from tunesam.config import TrainConfig, load_config, save_config
from tunesam.engine.losses import dice_bce_loss, dice_ce_loss
from tunesam.engine.schedule import lr_at
from tunesam.eval.metrics import dice
from tunesam.io import atomic_path, atomic_write, write_json
from tunesam.models.build import build_model
from tunesam.engine.embedding_cache import CachedEmbeddings, fill_training_caches
from tunesam.models.segmenter import SamSegmenter, positive_points
from tunesam.peft.saving import save_tensors, trained_meta, trained_state_dict
from tunesam.peft.strategy import apply_strategy

log = logging.getLogger("tunesam.train")
STATE_VERSION = 2  # 2: the trained weights live in last.pt too
LOG_FIELDS = ["epoch", "train_loss", "val_dsc", "lr", "seconds"]


METRIC_NAMES = {"val_dsc": "validation DSC", "val_loss": "validation loss"}


@dataclass
class State:
    """What ``last.pt`` restores besides the weights."""

    epoch: int = 0  # next epoch to run
    step: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def record(self, row: dict[str, Any], value: float, patience: int | None, higher: bool = True
               ) -> tuple[bool, bool]:
        """Log an epoch's row and its validation ``value``; returns ``(improved, stop)``, stop
        after ``patience`` epochs without a better value (``higher`` or lower is better)."""
        self.rows.append(row)
        self.epoch = int(row["epoch"])
        improved = value > self.best if higher else value < self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, self.epoch, 0
        else:
            self.bad_epochs += 1
        return improved, bool(patience and self.bad_epochs >= patience)

    def stop_message(self, patience: int, metric: str = "val_dsc") -> str:
        """The early-stop line, named by the metric watched (``val_dsc`` or ``val_loss``)."""
        name = METRIC_NAMES.get(metric, metric)
        decimals = 2 if metric == "val_dsc" else 4
        return (f"early stop: no better {name} for {patience} epochs "
                f"(best {self.best:.{decimals}f} at epoch {self.best_epoch})")


# -- set-up ---------------------------------------------------------------------------------
def _prepare_run_folder(cfg: TrainConfig, resume: bool) -> Path:
    run = Path(cfg.out)
    if resume:
        saved = load_config(run / "config.yaml")
        # Free to change on resume: where it runs, and the length of a constant-rate run. The
        # decaying schedule is a function of the total step count, so --epochs is fixed there.
        free = {"device", "num_workers", "out", "embedding_cache"}  # a run may be moved or copied
        free |= {"epochs"} if saved.constant_lr and cfg.constant_lr else set()
        if saved.data != cfg.data and _same_data(run, cfg.data):
            free.add("data")
        diffs = {k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items()
                 if k not in free and getattr(cfg, k) != v}
        if diffs:
            why = (" (the learning-rate schedule decays over the run's total steps; only --constant-lr runs "
                   "can be extended)" if "epochs" in diffs else "")
            raise ValueError(f"{run}: --resume with other options than the run had: "
                             + "; ".join(f"--{k.replace('_', '-')}: run {a!r}, now {b!r}" for k, (a, b) in diffs.items())
                             + why)
        return run
    if run.exists() and any(run.iterdir()):
        kind = "a training run" if (run / "config.yaml").exists() else "a non-empty folder"
        raise ValueError(f"{run}: already exists ({kind}); use --resume to continue it, or another --out")
    return run


def _same_data(run: Path, data: str) -> bool:
    """Whether ``data`` is the prepared dataset the run was trained on (by its fingerprint)."""
    try:
        trained_on = json.loads((run / "preprocessing.json").read_text())["fingerprint"]
        return PreparedData.open(data).manifest["fingerprint"] == trained_on
    except (OSError, KeyError, ValueError):
        return False


def _make_model(cfg: TrainConfig, num_classes: int, device: torch.device) -> SamSegmenter | BaselineSegmenter:
    if is_baseline(cfg.arch):
        return build_baseline(str(cfg.arch), num_classes, cfg.image_size).to(device)
    model = build_model(cfg.arch, cfg.checkpoint, num_classes, cfg.image_size, cfg.pixel_norm)
    model.interpolation = cfg.interpolation
    apply_strategy(model, cfg.strategy())
    model.image_encoder.grad_checkpointing = cfg.checkpointing
    return model.to(device)


def decay_groups(params: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser groups of the parameters that train: ``weight_decay`` on every parameter of
    two or more dimensions, none on 1-D ones.

    Decayed: weight matrices and convolution kernels, and with them the learned tokens and
    tables, which are 2-D or more: the decoder's mask and IoU tokens, the image encoder's
    position tables (ViT's ``pos_embed`` and ``rel_pos_h``/``rel_pos_w``, TinyViT's
    ``attention_biases``), LoRA's A and B, the adapters' matrices. Not decayed: biases and
    the gains and shifts of normalisation layers (LayerNorm, BatchNorm), all 1-D. (The prompt
    encoder's embeddings, ``no_mask_embed`` among them, are frozen in every strategy.)

    Against the paper: it trains with "AdamW with 0.1 weight decay", and its reference code
    gives every trainable parameter to ``AdamW(weight_decay=0.1)``. This follows it except for
    the 1-D parameters (nanoGPT's rule): decay would pull a norm's gain towards 0 rather than
    its neutral 1, and a bias has no capacity to regularise. Tokens and tables stay decayed,
    as in the paper.
    """
    params = [p for p in params if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over :func:`decay_groups`."""
    return torch.optim.AdamW(decay_groups(model.parameters(), cfg.weight_decay), lr=cfg.lr,
                             fused=device.type == "cuda")


def _datasets(data: PreparedData, cfg: TrainConfig) -> tuple[SliceDataset, SliceDataset]:
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


def _loader(ds: Dataset, cfg: Any, ctx: D.Context, device: torch.device, shuffle: bool,
            collate: Any = None) -> DataLoader:
    """Training (``shuffle``): padded shards, equal steps per rank; validation: each item once.
    ``cfg``: a training or pre-training configuration (batch size, workers, seed)."""
    workers = cfg.num_workers if cfg.num_workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
    sampler = D.EpochSampler(len(ds), cfg.seed, ctx, shuffle, pad=shuffle)  # type: ignore[arg-type]
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0)


# -- one step, one validation ------------------------------------------------------------
def _model_inputs(batch: dict[str, Any], mode: str, device: torch.device,
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


def _forward_loss(model: torch.nn.Module, batch: dict[str, Any], mode: str, device: torch.device,
                  cache: CachedEmbeddings | None = None) -> torch.Tensor:
    logits = model(**_model_inputs(batch, mode, device, cache))
    target = batch["mask"].to(device, non_blocking=True).long()
    return dice_ce_loss(logits, target) if mode == "auto" else dice_bce_loss(logits, target)


@torch.no_grad()
def _validate(model: torch.nn.Module, loader: DataLoader, mode: str, num_classes: int, device: torch.device,
              ctx: D.Context, cache: CachedEmbeddings | None = None) -> float:
    """Mean 2D DSC (percent) over val slices per class, then over classes, on the valid region."""
    model.eval()
    classes = range(1, num_classes + 1) if mode == "auto" else range(1, 2)
    sums = torch.zeros(len(classes), 2, dtype=torch.float64)  # (sum of DSC, images scored)
    for batch in loader:
        with autocast_for(device):
            logits = model(**_model_inputs(batch, mode, device, cache))
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


# -- saving ----------------------------------------------------------------------------------
def _save_weights(model: SamSegmenter, run: Path, name: str, whole: bool) -> None:
    save_tensors(model, run / "weights" / f"{name}.safetensors", whole)


def _save_state(run: Path, state: State, opt: torch.optim.Optimizer, model: SamSegmenter, whole: bool) -> None:
    """``last.pt``: everything a resume needs, the trained weights included, in one atomic
    file, so a kill between writes can never pair one epoch's weights with another's
    optimiser and schedule (``weights/last.safetensors`` is the user's copy)."""
    trained = model.state_dict() if whole else trained_state_dict(model)
    payload = {
        "version": STATE_VERSION,
        "epoch": state.epoch, "step": state.step, "best": state.best, "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs, "rows": state.rows,
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "weights": {k: v.detach().cpu() for k, v in trained.items()},
    }
    with atomic_path(run / "last.pt") as tmp:
        torch.save(payload, tmp)


def _load_state(run: Path, model: SamSegmenter, opt: torch.optim.Optimizer) -> State:
    path = run / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run}: nothing to resume (no last.pt: the first epoch never finished)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: holds objects other than tensors and plain values, and was refused for "
                         "safety (never unpickled); it is not a tunesam resume state") from exc
    except Exception as exc:  # truncated or not a torch file
        raise ValueError(f"{path}: cannot be read as a resume state ({type(exc).__name__}); the file is truncated "
                         "or corrupt. Start a new run, or restore the file") from exc
    version = payload.get("version") if isinstance(payload, dict) else None
    if version != STATE_VERSION:
        raise ValueError(f"{path}: resume state version {version} is not {STATE_VERSION} (not a resume state of "
                         "this tunesam)")
    absent = [k for k in ("weights", "optimizer", "torch_rng", "epoch", "step", "best", "best_epoch", "bad_epochs",
                          "rows") if k not in payload]
    if absent:
        raise ValueError(f"{path}: not a complete resume state (no {', '.join(absent)})")
    missing = model.load_state_dict(payload["weights"], strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"{path}: its weights do not fit the model: {missing.unexpected_keys[:5]}")
    opt.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])
    return State(payload["epoch"], payload["step"], payload["best"], payload["best_epoch"],
                 payload["bad_epochs"], list(payload["rows"]))


def _write_log(run: Path, rows: list[dict[str, Any]], fields: list[str] = LOG_FIELDS) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r[k] for k in fields})
    atomic_write(run / "log.csv", lambda tmp: tmp.write_text(buf.getvalue()))


def _write_preprocessing(run: Path, data: PreparedData) -> None:
    m = data.manifest
    write_json(run / "preprocessing.json", {
        "data": str(data.folder.resolve()), "options": m["options"], "labels": m["labels"],
        "label_values": m["label_values"], "fingerprint": m["fingerprint"],
        "volumes": any(len(c["geometry"]["shape"]) == 3 for c in m["cases"]),
    })


# -- the loop --------------------------------------------------------------------------------
PLOT_EVERY_S = 10.0  # curves.png is redrawn at most this often (and after the last epoch)


def _progress_bar(total: int, done: int, show: bool | None, ctx: D.Context) -> Any:
    """A tqdm bar over all training steps (ETA, rate, loss and validation DSC). ``show``
    ``None``: only when stderr is a terminal, so logs never get carriage returns."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, leave=False,
                disable=(None if show is None else not show) if ctx.is_main else True)


def _cpu_warning(seconds_per_step: float, steps: int) -> None:
    total = seconds_per_step * steps
    if total < 600:
        return
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        mem = f", about {rss:.1f} GiB of memory"
    except (ImportError, AttributeError):
        mem = ""
    log.warning("training on the CPU: about %.1f s per step, %d steps to go: roughly %.1f hours%s. "
                "A GPU (--device cuda) is much faster; so are vit_t and a smaller --image-size.",
                seconds_per_step, steps, total / 3600, mem)


def train(cfg: TrainConfig, resume: bool = False, progress: bool | None = None) -> Path:
    """Fine-tune as ``cfg`` says; returns the run folder. ``progress``: the tqdm bar (``None``:
    when stderr is a terminal; ``False``: never, ``--quiet``)."""
    cfg = cfg.resolved()
    with D.session(cfg.device) as (ctx, device):
        return _train(cfg, resume, ctx, device, progress)


def _train(cfg: TrainConfig, resume: bool, ctx: D.Context, device: torch.device, progress: bool | None) -> Path:
    run = _prepare_run_folder(cfg, resume)
    if ctx.distributed:  # every rank checks the folder before rank 0 writes into it
        torch.distributed.barrier()
    data = PreparedData.open(cfg.data)
    num_classes = data.num_classes if cfg.mode == "auto" else 1
    torch.manual_seed(cfg.seed)
    model = _make_model(cfg, num_classes, device)
    opt = _optimizer(model, cfg, device)
    train_ds, val_ds = _datasets(data, cfg)
    train_loader = _loader(train_ds, cfg, ctx, device, shuffle=True)
    val_loader = _loader(val_ds, cfg, ctx, device, shuffle=False)
    whole = cfg.checkpoint is None
    if ctx.is_main and not resume:
        (run / "weights").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
        _write_preprocessing(run, data)
        write_json(run / "weights" / "base.json", trained_meta(model, cfg.checkpoint))
    state = _load_state(run, model, opt) if resume else State()
    cache = None
    if cfg.cache_embeddings:
        assert cfg.embedding_cache is not None

        def fill(verbose: bool) -> CachedEmbeddings:
            return fill_training_caches(model, data, cfg.embedding_cache, train_ds.rows, val_ds.rows, cfg.cache_views,
                                        device, autocast_for(device), verbose)

        if ctx.is_main:  # one process computes, the others read
            cache = fill(True)
        if ctx.distributed:
            torch.distributed.barrier()
        if cache is None:
            cache = fill(False)
    net: torch.nn.Module = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    epochs = int(cfg.epochs or 1)
    steps_per_epoch = len(train_loader)
    total = epochs * steps_per_epoch
    writer = _tensorboard(run, cfg, ctx)
    if ctx.is_main:
        log.info("%s: %d train / %d val slices, %d steps per epoch, %d epochs, device %s",
                 run, len(train_ds), len(val_ds), steps_per_epoch, epochs, device)
    bar = _progress_bar(total, state.step, progress, ctx)
    say = bar.write if not bar.disable else print
    last_plot = -math.inf
    step_times: list[float] = []
    first_epoch = state.epoch  # of this process (a resumed run starts later)
    for epoch in range(first_epoch, epochs):
        t0 = time.perf_counter()
        bar.set_description(f"epoch {epoch + 1}/{epochs}")
        train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        net.train()
        losses = []
        lr = cfg.lr
        for i, batch in enumerate(train_loader):
            lr = lr_at(state.step, cfg.lr, cfg.warmup, total, constant=cfg.constant_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            t_step = time.perf_counter()
            with autocast_for(device):
                loss = _forward_loss(net, batch, cfg.mode, device, cache)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i > 0 or epoch > first_epoch:  # the process's first step includes one-off warm-up
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                step_times.append(time.perf_counter() - t_step)
            state.step += 1
            losses.append(float(loss.detach()))
            if ctx.is_main:
                if epoch == first_epoch and i == 1 and device.type == "cpu":  # step 0 includes warm-up
                    _cpu_warning(time.perf_counter() - t_step, total - state.step)
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}", val_dsc=f"{state.rows[-1]['val_dsc']:.2f}" if state.rows
                                else "-", refresh=False)
        # The bare model: validation needs no DDP hooks, and ranks may hold different counts.
        val_dsc = _validate(model, val_loader, cfg.mode, num_classes, device, ctx, cache)
        loss_sum, loss_n = D.all_sum(torch.tensor([sum(losses), len(losses)], dtype=torch.float64), ctx).tolist()
        train_loss = loss_sum / max(1.0, loss_n)
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 6), "val_dsc": round(val_dsc, 4),
               "lr": lr, "seconds": round(time.perf_counter() - t0, 3)}
        improved, stop = state.record(row, val_dsc, cfg.patience)
        if ctx.is_main:
            say(f"epoch {epoch + 1}/{epochs}  loss {train_loss:.4f}  val DSC {val_dsc:.2f}"
                f"{'  (best)' if improved else ''}  {row['seconds']:.1f}s")
            sys.stdout.flush()
            if improved:
                _save_weights(model, run, "best", whole)
            _save_weights(model, run, "last", whole)
            _save_state(run, state, opt, model, whole)
            _write_log(run, state.rows)
            if stop or epoch + 1 == epochs or time.perf_counter() - last_plot >= PLOT_EVERY_S:
                _plot(run, state.rows)
                last_plot = time.perf_counter()
            if writer is not None:
                for k in ("train_loss", "val_dsc", "lr"):
                    writer.add_scalar(k, row[k], epoch + 1)
        if stop:
            if ctx.is_main:
                say(state.stop_message(cfg.patience))
            break
    bar.close()
    if writer is not None:
        writer.close()
    if ctx.is_main:
        write_json(run / "summary.json", {
            "best_val_dsc": state.best, "best_epoch": state.best_epoch, "epochs_run": state.epoch, "steps": state.step,
            # Table 3's columns, measured here (steps of this process; forward, backward, optimiser)
            "total_params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "seconds_per_step": float(np.mean(step_times)) if step_times else None,
            "batch_size": cfg.batch_size, "device": str(device),
            "cached_embeddings": bool(cfg.cache_embeddings),
        })
    return run


def _tensorboard(run: Path, cfg: TrainConfig, ctx: D.Context) -> Any:
    if not (cfg.tensorboard and ctx.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise RuntimeError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
    return SummaryWriter(str(run / "tensorboard"))


def _plot(run: Path, rows: list[dict[str, Any]], metric: str = "val_dsc") -> None:
    from tunesam.viz import curves_figure, save_figure

    save_figure(run / "curves.png", curves_figure(rows, metric))
