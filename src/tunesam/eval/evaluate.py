"""``tunesam evaluate``: DSC and NSD of a run (or an un-fine-tuned checkpoint) on a split.

Predictions are made at the model's input size, cropped to the slice's letterboxed extent
and resized (bilinear, on logits) back to the stored slice, which is the native slice unless
``prepare --size`` downsampled it; spacing follows. 2D scores use the test slices with
foreground (the paper's unit); volumetric sources also get 3D scores per case over all
their test slices, so false positives on empty slices count; ``pooled`` scores take every
pixel of the split together.
"""
from __future__ import annotations

import errno
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tunesam.letterbox import letterbox_image, letterbox_shape, to_input, unletterbox
from tunesam.data.prompts import RULE_TEXT, components, image_rng, simulate
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData, default_cache_folder, stored_spacing
from tunesam.device import autocast_for, pick_device
from tunesam.metrics import (
    NSD_TOLERANCE,
    PooledScores,
    ScoreTable,
    class_counts_2d,
    counts_2d,
    dice,
    score_classes,
)
from tunesam.io import write_json
from tunesam.engine.embedding_cache import EmbeddingCache, fill_embedding_cache
from tunesam.engine.fit import all_finite
from tunesam.kinds import Segmenter
from tunesam.models.segmenter import SamSegmenter, positive_points

log = logging.getLogger("tunesam.evaluate")

MULTIMASK_VARIANTS = ("single", "highest_iou", "oracle")


def predict_rows(
    model: Segmenter, data: PreparedData, rows: Sequence[int], device: torch.device, batch_size: int = 8,
    cache: EmbeddingCache | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Automated-mode label maps (uint8, stored slice size) for store ``rows``, in order,
    through the run-model interface (:class:`tunesam.kinds.Segmenter`): batches of
    ``batch_size`` rows, or each case's rows together for a model that takes whole cases (the
    spacing given is the case's). With ``cache`` (a frozen SAM encoder's embeddings) the
    decoder runs on the cached embeddings instead."""
    if cache is not None:
        yield from _cached_rows(model, data, rows, device, batch_size, cache)  # type: ignore[arg-type]
        return
    for chunk in _chunks(data, rows, batch_size, model.whole_cases):
        case = data.manifest["cases"][int(data.index[chunk[0]]["case"])]
        labels, _ = model.segment_stored([np.asarray(data.slice(r)[0]) for r in chunk], stored_spacing(case),
                                         batch_size=batch_size)
        yield from zip(chunk, labels)


def _chunks(data: PreparedData, rows: Sequence[int], size: int, whole_cases: bool) -> Iterator[list[int]]:
    """Consecutive rows: ``size`` at a time, or each case's (``whole_cases``)."""
    chunk: list[int] = []
    for r in (int(r) for r in rows):
        if chunk and (data.index[r]["case"] != data.index[chunk[0]]["case"] if whole_cases else len(chunk) == size):
            yield chunk
            chunk = []
        chunk.append(r)
    if chunk:
        yield chunk


def _cached_rows(model: SamSegmenter, data: PreparedData, rows: Sequence[int], device: torch.device,
                 batch_size: int, cache: EmbeddingCache) -> Iterator[tuple[int, np.ndarray]]:
    size = model.image_size
    for start in range(0, len(rows), batch_size):
        chunk = [int(r) for r in rows[start : start + batch_size]]
        shapes = [data.slice(r)[0].shape for r in chunk]
        with torch.no_grad(), autocast_for(device):
            logits = model(None, embeddings=cache.get(chunk).to(device))
        for r, shape, lg in zip(chunk, shapes, logits):
            yield r, unletterbox(lg, letterbox_shape(*shape, size), shape).argmax(0).to(torch.uint8).cpu().numpy()


def prompted_masks(
    model: SamSegmenter, image: np.ndarray, ref: np.ndarray, mode: str, device: torch.device, multimask: bool,
    embedding: torch.Tensor | None = None, rules: str = "tight", rng: np.random.Generator | None = None,
) -> dict[str, dict[int, np.ndarray]]:
    """Per variant, per class: the union of the masks predicted for each component's prompt.

    Components and their prompts are taken on the stored (native) slice, as a user would draw
    them, then scaled into the model's input like SAM's own ``ResizeLongestSide`` (times
    ``S / max(h, w)``). Prompts follow ``rules`` with ``rng`` (classes in ascending order,
    components in label order; see :func:`tunesam.data.prompts.image_rng`); without ``rng``
    they are tight. ``embedding`` (``1 x C x g x g``) skips the encoder when given.
    """
    size = model.image_size
    valid = letterbox_shape(*image.shape, size)
    out: dict[str, dict[int, np.ndarray]] = {v: {} for v in (MULTIMASK_VARIANTS if multimask else ("single",))}

    def native(low: torch.Tensor) -> torch.Tensor:  # n x g' x g' logits -> n x h x w booleans
        full = F.interpolate(low[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
        return torch.stack([unletterbox(m, valid, image.shape)[0] > 0 for m in full])

    with torch.no_grad(), autocast_for(device):
        emb = embedding.to(device) if embedding is not None else model.encode(
            letterbox_image(image, size, model.interpolation)[None].to(device), torch.tensor([valid], device=device))
        for c in [int(v) for v in np.unique(ref) if v != 0]:
            labels, n = components(ref == c)
            prompts = [simulate(labels == k, mode, max(image.shape), rng, rules) for k in range(1, n + 1)]
            if mode == "box":
                kw: dict[str, Any] = {"boxes": to_input(torch.tensor([p.box for p in prompts], device=device),
                                                        image.shape, size)}
            else:
                pts = to_input(torch.tensor([[p.point] for p in prompts], device=device), image.shape, size)
                kw = {"points": positive_points(pts)}
            single, _ = model.decode(emb, **kw)
            variants = {"single": native(single[:, 0])}
            if multimask:
                multi, iou = model.decode(emb, multimask_output=True, with_iou=True, **kw)
                outs = [native(multi[:, j]) for j in range(multi.shape[1])]  # each n x h x w
                variants["highest_iou"] = torch.stack(outs, 1)[torch.arange(n), iou.argmax(1).cpu()]
                host = [o.cpu().numpy() for o in outs]  # one copy per output, not per component
                scores = torch.tensor([[dice(o[i], labels == i + 1) for o in host] for i in range(n)])
                variants["oracle"] = torch.stack(outs, 1)[torch.arange(n), scores.argmax(1)]
            for name, masks in variants.items():
                out[name][c] = masks.any(0).cpu().numpy()
    return out


def evaluate_model(
    model: SamSegmenter,
    data: PreparedData,
    split: str = "test",
    mode: str = "auto",
    device: str | torch.device = "auto",
    multimask: bool = False,
    batch_size: int = 8,
    tolerance: float = NSD_TOLERANCE,
    embedding_cache: str | Path | None = None,
    prompt_rules: str = "paper",
    prompt_seed: int = 0,
) -> dict[str, Any]:
    """Score ``model`` on a split of ``data``; returns the ``metrics.json`` content.

    ``embedding_cache``: a folder where the frozen encoder's embeddings of the split are
    cached (see :mod:`tunesam.engine.embedding_cache`), shared with training and other
    evaluations of the same encoder. Prompted modes draw one prompt per connected component
    of each class by ``prompt_rules`` (``paper``, the training rules, as the paper evaluates;
    ``code``; ``tight``), from a generator seeded by ``prompt_seed`` and the image.
    """
    data.require_labels("evaluation")
    dev = device if isinstance(device, torch.device) else pick_device(device)
    if isinstance(model, torch.nn.Module):
        model = model.to(dev).eval()
    if model.encoder_is_frozen():
        model.use_inference_encoder()
    labels = {int(k): v for k, v in data.manifest["labels"].items()}
    classes = [c for c in labels if c != 0]
    rows = data.rows(split, include_empty=True)
    if len(rows) == 0:
        raise DataError(f"{data.folder}: the {split} set is empty" +
                        (" (the given split has no test set: use --split val)" if split == "test" else ""))
    cache = None
    if embedding_cache is not None:
        need = rows if mode == "auto" else rows[data.index["nonempty"][rows]]
        cache = fill_embedding_cache(model, data, embedding_cache, need, dev)
    known = all(c["geometry"].get("spacing_known", True) for c in data.manifest["cases"])
    result: dict[str, Any] = {
        "split": split, "mode": mode, "nsd_tolerance": tolerance, "nsd_unit": "mm" if known else "pixels",
        "conventions": "per foreground class; a class absent from both prediction and reference is not scored; "
                       "absent from one scores 0. 2D: test slices with foreground. mean: over images per class, "
                       "then over classes. pooled: all pixels of the split's slices together. Percent.",
    }
    if mode == "auto":
        result.update(_evaluate_auto(model, data, rows, classes, labels, dev, batch_size, tolerance, cache))
    else:
        result.update(_evaluate_prompted(model, data, rows, classes, labels, mode, dev, multimask, tolerance, cache,
                                         prompt_rules, prompt_seed))
    return result


def _evaluate_auto(model, data, rows, classes, labels, device, batch_size, tolerance, cache) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    table, pooled = ScoreTable(labels), PooledScores(labels)
    volumes: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for row, pred in predict_rows(model, data, rows, device, batch_size, cache):
        ref = np.asarray(data.slice(row)[1])
        case = data.case(row)
        idx = int(data.index[row]["slice"])
        counts = class_counts_2d(pred, ref, classes, stored_spacing(case), tolerance)
        pooled.add(counts)  # every slice: false positives on empty ones count
        if ref.any():
            table.add_counts(counts, case=case["id"], patient=case["patient"], slice=idx)
        if case["geometry"]["shape"] and len(case["geometry"]["shape"]) == 3:
            volumes.setdefault(int(data.index[row]["case"]), []).append((idx, pred, ref))
    out = {**table.aggregate(), "per_image": table.rows, "pooled": pooled.aggregate()}
    per_case, table3d = [], ScoreTable(labels)
    for case_i, items in sorted(volumes.items()):
        case = data.manifest["cases"][case_i]
        if len(items) != case["num_slices"]:
            continue  # only complete volumes (the test split keeps every slice)
        items.sort(key=lambda t: t[0])
        pred3 = np.stack([p for _, p, _ in items])
        ref3 = np.stack([r for _, _, r in items])
        axis_spacing = case["geometry"]["spacing"][2 - case["axis"]]
        scores = score_classes(pred3, ref3, classes, (axis_spacing, *stored_spacing(case)), tolerance)
        table3d.add(scores, case=case["id"])
        per_case.append({"case": case["id"], "scores": {str(c): v for c, v in scores.items()}})
    if per_case:
        agg = table3d.aggregate()
        out["per_case"] = per_case
        out["mean_3d"] = agg["mean"]
        out["classes_3d"] = agg["classes"]
    return out


def _evaluate_prompted(model, data, rows, classes, labels, mode, device, multimask, tolerance, cache,  # type: ignore[no-untyped-def]
                       rules, seed) -> dict[str, Any]:
    tables = {v: ScoreTable(labels) for v in (MULTIMASK_VARIANTS if multimask else ("single",))}
    pooled = PooledScores(labels)
    for row in rows:
        if not data.index[row]["nonempty"]:
            continue
        image, ref = (np.asarray(a) for a in data.slice(int(row)))
        case = data.case(int(row))
        spacing = stored_spacing(case)
        embedding = cache.get([int(row)]) if cache is not None else None
        masks = prompted_masks(model, image, ref, mode, device, multimask, embedding, rules, image_rng(seed, int(row)))
        for variant, per_class in masks.items():
            # a class map per class (prompted masks of different classes may overlap)
            counts = {c: counts_2d(per_class.get(c, np.zeros(ref.shape, bool)), ref == c, spacing, tolerance)
                      for c in classes}
            if variant == "single":
                pooled.add(counts)
            tables[variant].add_counts(counts, case=case["id"], patient=case["patient"],
                                       slice=int(data.index[row]["slice"]))
    main = tables["single"]
    out: dict[str, Any] = {**main.aggregate(), "per_image": main.rows, "pooled": pooled.aggregate(),
                           "prompt_rules": rules, "prompt_seed": seed,
                           "prompts": f"one {mode} per connected component of each class; {RULE_TEXT[rules]}"
                                      + ("" if rules == "tight" else f"; drawn per image from seed {seed}")}
    if multimask:
        out["multimask"] = {v: tables[v].aggregate() for v in ("highest_iou", "oracle")}
    return out


def format_metrics(m: dict[str, Any]) -> str:
    """A table people read: per class DSC/NSD (percent) and the means, per 2D slice, per 3D
    case and pooled where present."""

    def fmt(v: float | None) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    rows: list[tuple[str, float | None, float | None, object]] = []
    for key, mean_key, tag, mean_name in (("classes", "mean", "", "mean (2D slices)"),
                                          ("classes_3d", "mean_3d", " (3D)", "mean (3D cases)")):
        if key in m:
            rows += [(f"{c} {v['name']}{tag}", v["dsc"], v["nsd"], v["n"]) for c, v in m[key].items()]
            rows.append((mean_name, m[mean_key]["dsc"], m[mean_key]["nsd"], ""))
    if "pooled" in m:
        pooled = m["pooled"]["classes"].items()
        rows += [(f"{c} {v['name']} (pooled)", v["dsc"], v["nsd"], v["n"]) for c, v in pooled]
        rows.append(("mean (pooled)", m["pooled"]["mean"]["dsc"], m["pooled"]["mean"]["nsd"], ""))
    for variant, agg in m.get("multimask", {}).items():
        rows.append((f"multimask {variant}", agg["mean"]["dsc"], agg["mean"]["nsd"], ""))
    width = max(22, *(len(r[0]) + 2 for r in rows))
    rule = f", prompts: {m['prompt_rules']} rule (seed {m.get('prompt_seed', 0)})" if "prompt_rules" in m else ""
    lines = [f"split {m['split']}, mode {m['mode']}{rule}, NSD tolerance {m['nsd_tolerance']:g} {m['nsd_unit']}",
             f"{'class':<{width}}{'DSC':>9}{'NSD':>9}{'n':>7}"]
    lines += [f"{name:<{width}}{fmt(d):>9}{fmt(n):>9}{k!s:>7}".rstrip() for name, d, n, k in rows]
    return "\n".join(lines)


def evaluate_run(run_folder: str | Path, data: str | Path | None = None, split: str = "test",
                 mode: str | None = None, device: str = "auto", batch_size: int = 8,
                 weights: str = "best", prompt_rules: str | None = None, prompt_seed: int = 0,
                 save_as: str = "metrics.json", out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a run's ``best`` (or ``last``) weights and write ``RUN/metrics.json`` (or
    ``RUN/save_as``), and ``out`` too when given (the only copy when the run is read-only).

    ``last`` scores the final epoch without selection on the validation set: the honest
    choice when the split to score is the validation set itself (lists with no test set).
    Prompted runs are scored with the rules they were trained with unless ``prompt_rules``
    names others.
    """
    if weights not in ("best", "last"):
        raise ValueError(f"--weights must be best or last, got {weights!r}")
    if Path(save_as).name != save_as:
        raise ValueError(f"save_as must be a file name inside the run folder, got {save_as!r}")
    from tunesam.kinds import load_run_model, open_run

    run = open_run(run_folder)
    targets = _metrics_targets(Path(run_folder) / save_as, Path(out) if out else None)
    if data is None and not Path(run.config.data).is_dir():
        raise DataError(f"{run_folder}: the prepared dataset it was trained on, {run.config.data}, is not there (moved "
                        "or deleted?); pass its folder with --data")
    prepared = PreparedData.open(data or run.config.data)
    prepared.require_labels("evaluation")
    if prepared.manifest["labels"] != run.labels:
        raise DataError(f"{prepared.folder} has labels {prepared.manifest['labels']}, the run was trained on "
                        f"{run.labels}: evaluate on data prepared with the same labels")
    if mode is not None and mode != run.config.mode:
        other = ("an automated model is a run trained with --mode auto" if mode == "auto" else
                 f"or score the base weights with --checkpoint ... --mode {mode}")
        raise ValueError(f"{run_folder} was trained in {run.config.mode} mode; --mode {mode} would score output "
                         f"heads it never trained. Evaluate it in its own mode (leave out --mode); {other}")
    mode = run.config.mode
    dev = pick_device(device)
    model = load_run_model(run, weights, dev)
    if isinstance(model, torch.nn.Module) and not all_finite(model.parameters()):
        raise DataError(f"{run_folder}: its {weights} weights hold NaN or infinite values (the training diverged); "
                        "train again with a lower learning rate")
    cache_dir = None
    if run.config.cache_embeddings and model.encoder_is_frozen():
        cache_dir = run.config.embedding_cache if data is None else default_cache_folder(prepared.folder)
    rules = prompt_rules or run.config.prompt_rules
    metrics = evaluate_model(model, prepared, split, mode, dev, batch_size=batch_size, embedding_cache=cache_dir,
                             prompt_rules=rules, prompt_seed=prompt_seed)
    metrics["run"] = str(Path(run_folder).resolve())
    metrics["weights"] = weights
    metrics["data"] = str(prepared.folder.resolve())
    for target in targets:
        write_json(target, metrics)
    return metrics


def _metrics_targets(in_run: Path, out: Path | None) -> list[Path]:
    """Where the metrics go, checked before anything is computed: the run's own file, unless
    the run folder is read-only and ``out`` is given (then ``out`` alone, said)."""
    def writable(folder: Path) -> bool:
        while not folder.exists():  # write_json makes the missing folders
            folder = folder.parent
        return os.access(folder, os.W_OK)

    if out is not None and not writable(out.parent):
        raise OSError(errno.EACCES, f"cannot write {out}: its folder is read-only", str(out.parent))
    if writable(in_run.parent):
        return [in_run] if out is None else [in_run, out]
    if out is None:
        raise OSError(errno.EACCES, f"the run folder is read-only, so {in_run.name} cannot be written there; give "
                      "--out FILE to write the metrics elsewhere", str(in_run.parent))
    log.warning("%s: read-only; the metrics are written to %s only", in_run.parent, out)
    return [out]


def evaluate_checkpoint(checkpoint: str | Path, arch: str | None, data: str | Path, mode: str, split: str = "test",
                        image_size: int | None = None, pixel_norm: str | None = None, device: str = "auto",
                        out: str | Path | None = None, embedding_cache: str | Path | None = None,
                        prompt_rules: str = "paper", prompt_seed: int = 0) -> dict[str, Any]:
    """Score an un-fine-tuned SAM-format checkpoint with prompts (single, highest-IoU, oracle).

    ``checkpoint`` may be a known name (``litemedsam``); ``arch`` ``None`` is read from the
    file, ``image_size`` ``None`` is the architecture's native input; ``embedding_cache``,
    ``prompt_rules`` and ``prompt_seed`` as in :func:`evaluate_model`.
    """
    from tunesam.models.build import build_model

    if mode not in ("box", "point"):
        raise ValueError("an un-fine-tuned checkpoint is evaluated with --mode box or point")
    prepared = PreparedData.open(data)
    model = build_model(arch, checkpoint, 1, image_size, pixel_norm)
    model.requires_grad_(False)  # un-fine-tuned: a frozen encoder, so the fused one and caches apply
    metrics = evaluate_model(model, prepared, split, mode, device, multimask=True, embedding_cache=embedding_cache,
                             prompt_rules=prompt_rules, prompt_seed=prompt_seed)
    metrics.update({"checkpoint": str(checkpoint), "arch": model.arch, "image_size": model.image_size,
                    "pixel_norm": model.pixel_norm, "data": str(prepared.folder.resolve())})
    if out is not None:
        write_json(out, metrics)
    return metrics
