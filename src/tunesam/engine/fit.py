"""One training loop for every objective: ``fit(task, ...)``.

A :class:`Task` says what differs between objectives (fine-tuning in each mode, the MONAI
baselines, SupSAM, MAE): the module trained, its optimiser, data, loss, validation and what
the run keeps after an epoch. The loop owns the rest: epochs, gradient accumulation, bf16
autocast (on CUDA, and on a CPU with native bf16: :func:`tunesam.device.autocast_for`), DDP,
early stopping on the validation metric, ``log.csv``, progress, ``curves.png``, ``last.pt``
and resume, and ``summary.json``. On the CPU a resumed run reproduces the uninterrupted one
exactly: every random choice is a function of (seed, epoch, item), and ``last.pt`` restores
the RNG.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from tunesam.device import autocast_for, precision_for
from tunesam.engine import distributed as D
from tunesam.engine.run_folder import State, load_state, plot_curves, save_state, started, write_log
from tunesam.io import write_json

log = logging.getLogger("tunesam.train")
PLOT_EVERY_S = 10.0  # curves.png is redrawn at most this often (and after the last epoch)


@dataclass
class Task:
    """What one objective brings to the loop."""

    net: nn.Module  # the module trained (DDP wraps it); validation and saving use it bare
    optimizer: torch.optim.Optimizer
    train_set: Dataset
    val_set: Dataset
    loss: Callable[[nn.Module, dict[str, Any], int], torch.Tensor]  # (net, batch, micro-step) -> scalar
    validate: Callable[[DataLoader], float]  # the validation value, reduced over processes
    lr: Callable[[int, int], float]  # (step, total steps) -> learning rate
    save: Callable[[Path, bool, int], None]  # (run, improved, epoch): what rank 0 keeps after an epoch
    weights: Callable[[], dict[str, torch.Tensor]]  # what last.pt holds of ``net``
    metric: str = "val_dsc"  # val_dsc (higher is better) or val_loss (lower)
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    after_epoch: Callable[[Path, int], None] = lambda run, epoch: None
    summary: Callable[[State], dict[str, Any]] = lambda state: {}  # more fields for summary.json

    @property
    def higher(self) -> bool:
        return self.metric != "val_loss"


@dataclass(frozen=True)
class Schedule:
    """How long and in what batches: the parts of a configuration the loop reads."""

    epochs: int
    batch_size: int
    seed: int = 0
    patience: int | None = None
    accumulate: int = 1  # micro-batches per optimiser step
    num_workers: int | None = None
    tensorboard: bool = False


def loader(ds: Dataset, schedule: Schedule, ctx: D.Context, device: torch.device, train: bool,
           collate: Any = None) -> DataLoader:
    """Training (``train``): shuffled, padded shards, equal steps per rank; validation: each
    item once."""
    workers = schedule.num_workers if schedule.num_workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
    sampler = D.EpochSampler(len(ds), schedule.seed, ctx, train, pad=train)  # type: ignore[arg-type]
    return DataLoader(ds, batch_size=schedule.batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0)


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


# -- one step ----------------------------------------------------------------------------------
def backward(task: Task, net: nn.Module, batch: dict[str, Any], micro: int, device: torch.device,
             in_group: int = 1) -> float:
    """Forward (autocast) and backward of one micro-batch, its loss scaled by the micro-batches
    in its optimiser step; returns the unscaled loss."""
    with autocast_for(device):
        loss = task.loss(net, batch, micro)
    (loss / in_group).backward()
    return float(loss.detach())


def optimizer_step(task: Task, step: int, total: int) -> float:
    """The learning rate for ``step`` of ``total``, one optimiser step, gradients cleared."""
    lr = task.lr(step, total)
    for g in task.optimizer.param_groups:
        g["lr"] = lr
    task.optimizer.step()
    task.optimizer.zero_grad(set_to_none=True)
    return lr


# -- the loop ------------------------------------------------------------------------------------
def _progress_bar(total: int, done: int, show: bool | None, ctx: D.Context) -> Any:
    """A tqdm bar over all optimiser steps (ETA, rate, loss, the validation metric). ``show``
    ``None``: only when stderr is a terminal, so logs never get carriage returns."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, leave=False,
                disable=(None if show is None else not show) if ctx.is_main else True)


def cpu_warning(seconds_per_step: float, steps: int) -> None:
    """Warn before a long CPU run, with its time and memory."""
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


def _tensorboard(run: Path, on: bool, ctx: D.Context) -> Any:
    if not (on and ctx.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise RuntimeError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
    return SummaryWriter(str(run / "tensorboard"))


def _train_epoch(task: Task, net: nn.Module, train_loader: DataLoader, state: State, epoch: int, first: bool,
                 total: int, ctx: D.Context, device: torch.device, bar: Any, step_times: list[float],
                 accumulate: int) -> tuple[list[float], float]:
    """One epoch of optimiser steps, ``accumulate`` micro-batches each (DDP syncs gradients on
    the last); returns the micro-batches' losses and the last learning rate. ``step_times``
    gains each step's seconds, except a process's first (``first`` epoch), which includes
    one-off warm-up."""
    train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
    net.train()
    micro_per_epoch = len(train_loader)
    losses: list[float] = []
    lr = task.lr(state.step, total)
    t_step = time.perf_counter()
    for i, batch in enumerate(train_loader):
        group_start = (i // accumulate) * accumulate
        if i == group_start:
            t_step = time.perf_counter()
        group_end = min(micro_per_epoch, group_start + accumulate)
        last_micro = i + 1 == group_end
        sync = net.no_sync() if ctx.distributed and not last_micro else contextlib.nullcontext()
        with sync:  # type: ignore[attr-defined]
            losses.append(backward(task, net, batch, epoch * micro_per_epoch + i, device, group_end - group_start))
        if not last_micro:
            continue
        lr = optimizer_step(task, state.step, total)
        if group_start > 0 or not first:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - t_step)
            state.timed[0] += step_times[-1]
            state.timed[1] += 1
            if len(step_times) == 1 and device.type == "cpu" and ctx.is_main:
                cpu_warning(step_times[0], total - state.step - 1)
        state.step += 1
        if ctx.is_main:
            bar.update()
            shown = f"{state.rows[-1][task.metric]:.{2 if task.higher else 4}f}" if state.rows else "-"
            bar.set_postfix({"loss": f"{np.mean(losses[-(i - group_start + 1):]):.4f}", task.metric: shown},
                            refresh=False)
    return losses, lr


def all_finite(tensors: Any) -> bool:
    """Whether every floating-point tensor of ``tensors`` is free of NaN and infinity, with one
    device sync for all of them (not one per tensor)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def _refuse_divergence(run: Path, epoch: int, train_loss: float, weights: dict[str, torch.Tensor],
                       saved_before: bool) -> None:
    """Stop, saving nothing of the epoch, when its loss or the trained ``weights`` are not
    finite (every rank sees the same reduced loss and, under DDP, the same weights: all stop
    together)."""
    if not (math.isfinite(train_loss) and all_finite(weights.values())):
        raise RuntimeError(
            f"{run}: training diverged in epoch {epoch + 1} (training loss {train_loss}, weights not all finite); "
            f"nothing of that epoch was saved{' (the last good epoch is in last.pt and weights/)' if saved_before else ''}"
            ". Start again with a lower learning rate (--lr)")


def _write_summary(run: Path, task: Task, state: State, device: torch.device) -> None:
    """``summary.json``: the run's outcome and Table 3's columns, measured (steps of this
    process: forward, backward, optimiser), with the task's own fields."""
    module = task.net
    write_json(run / "summary.json", {
        f"best_{task.metric}": state.best, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
        "steps": state.step,
        "total_params": sum(p.numel() for p in module.parameters()),
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "seconds_per_step": state.seconds_per_step,  # over every session of a resumed run
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "device": str(device), "precision": "bf16 autocast" if precision_for(device) == "bf16" else "fp32",
        **task.summary(state),
    })


def fit(task: Task, run: Path, schedule: Schedule, ctx: D.Context, device: torch.device, resume: bool = False,
        progress: bool | None = None, describe: str = "", until: int | None = None) -> State:
    """Train ``task`` into ``run`` (whose files rank 0 writes; the folder is prepared by the
    caller); ``resume`` continues from ``last.pt``. ``describe``: the opening log line's
    account of the data. ``until``: pause after that many epochs of the schedule: the run
    keeps ``last.pt`` and its log but gets no ``summary.json`` (it has not finished), and a
    later call with ``resume`` goes on with the same schedule."""
    if until is not None and until < 1:
        raise ValueError(f"until must be at least 1 epoch, got {until}")
    train_loader = loader(task.train_set, schedule, ctx, device, True, task.collate)
    val_loader = loader(task.val_set, schedule, ctx, device, False, task.collate)
    if resume and not started(run):
        if ctx.is_main:
            log.warning("%s: no epoch finished before the run stopped (no last.pt): it starts from the first epoch",
                        run)
        resume = False
    state = load_state(run, task.net, task.optimizer) if resume else State()
    if not resume:
        state.best = -math.inf if task.higher else math.inf
    net: nn.Module = task.net
    if ctx.distributed:
        net = DistributedDataParallel(task.net, device_ids=[device.index] if device.type == "cuda" else None)
    steps_per_epoch = math.ceil(len(train_loader) / schedule.accumulate)
    epochs = schedule.epochs
    total = epochs * steps_per_epoch
    fields = ["epoch", "train_loss", task.metric, "lr", "seconds"]  # log.csv's columns
    writer = _tensorboard(run, schedule.tensorboard, ctx)
    if ctx.is_main:
        log.info("%s: %s%d steps per epoch, %d epochs, device %s", run, describe + ", " if describe else "",
                 steps_per_epoch, epochs, device)
    bar = _progress_bar(total, state.step, progress, ctx)
    say = bar.write if not bar.disable else print
    last_plot = -math.inf
    step_times: list[float] = []
    first_epoch = state.epoch  # of this process (a resumed run starts later)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    last = epochs if until is None else min(epochs, until)
    stopped = False
    for epoch in range(first_epoch, last):
        t0 = time.perf_counter()
        bar.set_description(f"epoch {epoch + 1}/{epochs}")
        losses, lr = _train_epoch(task, net, train_loader, state, epoch, epoch == first_epoch, total, ctx, device,
                                  bar, step_times, schedule.accumulate)
        loss_sum, loss_n = D.all_sum(torch.tensor([sum(losses), len(losses)], dtype=torch.float64), ctx).tolist()
        weights = task.weights()  # once an epoch: checked here, saved in last.pt below
        _refuse_divergence(run, epoch, loss_sum / max(1.0, loss_n), weights, bool(state.rows))
        value = task.validate(val_loader)
        row = {"epoch": epoch + 1, "train_loss": round(loss_sum / max(1.0, loss_n), 6),
               task.metric: round(value, 4 if task.higher else 6), "lr": lr,
               "seconds": round(time.perf_counter() - t0, 3)}
        improved, stop = state.record(row, value, schedule.patience, task.higher)
        if ctx.is_main:
            shown = f"val DSC {value:.2f}" if task.metric == "val_dsc" else f"val loss {value:.4f}"
            say(f"epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  {shown}{'  (best)' if improved else ''}"
                f"  {row['seconds']:.1f}s")
            sys.stdout.flush()
            task.save(run, improved, epoch)
            save_state(run, state, task.optimizer, weights)
            write_log(run, state.rows, fields)
            task.after_epoch(run, epoch + 1)
            if stop or epoch + 1 == epochs or time.perf_counter() - last_plot >= PLOT_EVERY_S:
                plot_curves(run, state.rows, task.metric)
                last_plot = time.perf_counter()
            if writer is not None:
                for k in ("train_loss", task.metric, "lr"):
                    writer.add_scalar(k, row[k], epoch + 1)
        if stop:
            if ctx.is_main:
                say(state.stop_message(int(schedule.patience or 0), task.metric))
            stopped = True
            break
    bar.close()
    if writer is not None:
        writer.close()
    if not stopped and state.epoch < epochs:  # paused (until): not finished, no summary
        if ctx.is_main:
            plot_curves(run, state.rows, task.metric)
            log.info("%s: paused after epoch %d of %d (resume goes on)", run, state.epoch, epochs)
        return state
    if ctx.is_main:
        if state.rows and last_plot == -math.inf:  # resumed after its last epoch: its curves and figure again
            plot_curves(run, state.rows, task.metric)
            task.after_epoch(run, state.epoch)
        _write_summary(run, task, state, device)
    return state
