"""``tunesam study --dry-run``: the cells, their time from a short measured step, and the disk.

For each distinct model set-up (dataset, architecture, weights, strategy, input size, batch)
a few training steps are timed on real slices of the dataset, on the cells' device, after
one warm-up step; evaluation is timed as forward passes. Cells on cached embeddings are timed
on embeddings, plus one pass of the encoder over the dataset per shared cache. Disk counts
the weights each run keeps (best and last, and the resume state with the optimiser's two
moments) and the embedding caches.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from tunesam.kinds import kind_of
from tunesam.study.config import Cell

WARM, TIMED = 1, 3


def format_time(s: float) -> str:
    """Seconds as a reader says them: ``45 s``, ``12.5 min``, ``2.1 h``."""
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def _fmt_bytes(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def measure(cell: Cell, out: Path) -> dict[str, Any]:
    """Seconds per training step and per evaluated slice, parameters, embedding size: the
    training loop's own step (:func:`tunesam.engine.fit.backward` and ``optimizer_step``) on
    the fine-tuning task's own loss."""
    from torch.utils.data import DataLoader

    from tunesam import kinds
    from tunesam.data.store import PreparedData
    from tunesam.device import autocast_for
    from tunesam.engine import distributed as D
    from tunesam.engine import fit as F
    from tunesam.engine.trainer import datasets, finetune_task

    cfg = cell.train_config(out)
    cfg = kinds.resolve(cfg.__class__(**{**cfg.to_dict(), "cache_embeddings": False, "cache_views": 0,
                                         "embedding_cache": None, "num_workers": 0}))
    _, device = D.setup(cfg.device)
    data = PreparedData.open(cfg.data)
    num_classes = data.num_classes if cfg.mode == "auto" else 1
    model = kinds.kind_of(cfg.arch).build(cfg, num_classes).to(device)
    train_ds, val_ds = datasets(data, cfg)
    batch = next(iter(DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=False)))
    cached = bool(cell.options.get("cache_embeddings"))
    emb = None
    enc_s = 0.0
    if cached:  # as the cache is filled: the frozen encoder in its fused inference form, after a warm-up
        images, valid = batch["image"].to(device), batch["valid"].to(device)
        model.use_inference_encoder()
        with torch.no_grad(), autocast_for(device):
            model.encode(images[:1], valid[:1])
            t = time.perf_counter()
            emb = model.encode(images, valid)
            enc_s = (time.perf_counter() - t) / len(images)

    fixed = _FixedEmbeddings(emb) if emb is not None else None
    task = finetune_task(cfg, model, data, D.Context(), device, fixed, (train_ds, val_ds))  # type: ignore[arg-type]

    def step() -> None:  # the loop's own step, on the embeddings when cached
        F.backward(task, model, batch, 0, device)
        F.optimizer_step(task, 0, 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.train()
    for _ in range(WARM):
        step()
    t = time.perf_counter()
    for _ in range(TIMED):
        step()
    step_s = (time.perf_counter() - t) / TIMED
    model.eval()
    with torch.no_grad(), autocast_for(device):
        def forward() -> None:
            if emb is not None:
                model(None, embeddings=emb)
            else:
                model(batch["image"].to(device), valid=batch["valid"].to(device))

        forward()  # a warm-up (and the fused copy of frozen stages, made once after eval())
        t = time.perf_counter()
        forward()
        fwd_s = (time.perf_counter() - t) / len(batch["image"])
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"step_s": step_s, "fwd_s": fwd_s, "enc_s": enc_s, "total": total, "trainable": trainable,
            "emb_bytes": emb[0].numel() * 4 if emb is not None else 0, "n_train": len(train_ds), "n_val": len(val_ds),
            "n_test": len(data.rows("test", include_empty=True)),
            "batch": cfg.batch_size, "epochs": cfg.epochs, "whole": cfg.checkpoint is None}


class _FixedEmbeddings:
    """Stands in for the embedding cache: the same embeddings for the timed batch."""

    def __init__(self, emb: torch.Tensor) -> None:
        self.emb = emb

    def get(self, rows: Any, views: Any = None) -> torch.Tensor:
        return self.emb


def _setup_key(cell: Cell) -> tuple[Any, ...]:
    o = cell.options
    return (cell.dataset, cell.kind, cell.arch, cell.checkpoint, cell.tune, cell.method, cell.mode,
            cell.shots is None, o.get("image_size"), o.get("batch_size"), bool(o.get("cache_embeddings")))


def describe_plan(cells: list[Cell], status: dict[str, str], out: Path) -> str:
    """The dry run's table: every cell, its status, estimated time and disk; totals."""
    measured: dict[tuple[Any, ...], dict[str, Any]] = {}
    caches: dict[tuple[Any, ...], tuple[float, float]] = {}
    lines = [f"{'cell':<64}{'status':>9}{'steps':>8}{'s/step':>9}{'time':>10}{'disk':>11}"]
    total_s = total_b = 0.0
    untimed: set[str] = set()
    for cell in cells:
        st = status[f"{cell.dataset}/{cell.key}"]
        if st == "done":  # nothing left to time
            lines.append(f"{cell.dataset + '/' + cell.key:<64}{st:>9}{'-':>8}{'-':>9}{'-':>10}{'-':>11}")
            continue
        if not kind_of(cell.arch).timed:  # a kind that trains outside tunesam's loop (nnU-Net plans its own)
            untimed.add(str(cell.arch))
            lines.append(f"{cell.dataset + '/' + cell.key:<64}{st:>9}{'-':>8}{'-':>9}{'-':>10}{'-':>11}")
            continue
        key = _setup_key(cell)
        if key not in measured:
            measured[key] = measure(cell, out)
        m = measured[key]
        n_train = cell.shots if cell.shots is not None else m["n_train"]
        steps = m["epochs"] * math.ceil(n_train / m["batch"])
        secs = steps * m["step_s"] + m["fwd_s"] * (m["n_val"] * m["epochs"] + m["n_test"])
        saved = m["total"] if m["whole"] else m["trainable"]
        disk = 4 * (3 * saved + 2 * m["trainable"])  # best + last + resume copy, Adam's two moments
        if m["emb_bytes"]:  # the plain images, and each augmented view of the training slices
            views = int(cell.options.get("cache_views") or 0)
            ckey = (cell.dataset, cell.arch, cell.checkpoint, cell.options.get("image_size"), views)
            # what the cells embed: validation and test slices, and the training slices plain or as views
            n = m["n_val"] + m["n_test"] + max(1, views) * m["n_train"]
            caches.setdefault(ckey, (m["enc_s"] * n, m["emb_bytes"] * n))
        total_s += secs
        total_b += disk
        lines.append(f"{cell.dataset + '/' + cell.key:<64}{st:>9}{steps:>8}{m['step_s']:>9.3f}"
                     f"{format_time(secs):>10}{_fmt_bytes(disk):>11}")
    for (dataset, arch, ckpt, _, views), (secs, size) in caches.items():
        name = f"embedding cache {dataset}/{arch}/{ckpt or 'random'}" + (f" +{views} views" if views else "")
        lines.append(f"{name:<64}"
                     f"{'':>9}{'':>8}{'':>9}{format_time(secs):>10}{_fmt_bytes(size):>11}")
        total_s += secs
        total_b += size
    lines.append(f"{len(cells)} cells; estimated {format_time(total_s)} and {_fmt_bytes(total_b)} "
                 "(steps timed here after a warm-up; cells already done are not counted; a cache already "
                 "filled costs less)" + (f"; the {', '.join(sorted(untimed))} cells are not included: they train outside "
                                         "tunesam's loop (nnU-Net plans its own network and batch), so they are not "
                                         "timed before they run" if untimed else ""))
    return "\n".join(lines)
