"""The fingerprint of a prepared dataset: what ``tunesam auto`` plans from, as nnU-Net plans
from its dataset fingerprint.

Counts come from the manifest; object sizes from the training masks (validation and test
pixels are never read here, so nothing about them can steer the plan).
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from tunesam.data.store import PreparedData


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def foreground_classes(data: PreparedData) -> dict[int, str]:
    return {int(k): v for k, v in data.manifest["labels"].items() if int(k) > 0}


def object_sizes(data: PreparedData, rows: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per foreground class, over the given slices: in how many it appears, and the fraction of
    the slice it covers where it does (median, min, max)."""
    labels = foreground_classes(data)
    fractions: dict[int, list[float]] = {c: [] for c in labels}
    for r in rows:
        mask = np.asarray(data.slice(int(r))[1])
        counts = np.bincount(mask.ravel(), minlength=max(labels, default=0) + 1)
        for c in labels:
            if counts[c]:
                fractions[c].append(counts[c] / mask.size)
    return {labels[c]: {"slices": len(f), "fraction": _spread(f)} for c, f in fractions.items()}


def fingerprint(folder: str | Path) -> dict[str, Any]:
    """Cases, slices per case, classes, object size per class (training masks), in-plane
    spacing, modality, and whether the dataset is labelled."""
    data = PreparedData.open(folder)
    m = data.manifest
    cases = m["cases"]
    per_split: dict[str, dict[str, Any]] = {}
    for split in ("train", "val", "test"):
        rows = data.rows(split)
        per_case = np.bincount(data.index["case"][rows], minlength=len(cases))
        chosen = [i for i, c in enumerate(cases) if c.get("split") == split]
        per_split[split] = {"cases": len(chosen), "slices": int(len(rows)),
                            "slices_per_case": _spread([float(per_case[i]) for i in chosen])}
    spacing = [c["plane_spacing"] for c in cases if c.get("plane_spacing")]
    known = [bool(c.get("geometry", {}).get("spacing_known", False)) for c in cases]
    out: dict[str, Any] = {
        "data": str(Path(folder)),
        "data_fingerprint": m.get("fingerprint"),
        "modality": m.get("options", {}).get("modality"),
        "labelled": not data.unlabelled,
        "splits": per_split,
        "in_plane_spacing_mm": None if not spacing else {
            "median": [float(statistics.median(s[i] for s in spacing)) for i in range(2)],
            "known": all(known)},
        "stored_plane": _spread([float(max(c.get("stored_plane") or [0])) for c in cases]),
    }
    if not data.unlabelled:
        train = data.rows("train", include_empty=data.trains_on_empty)
        out["classes"] = foreground_classes(data)
        out["labelled_train_slices"] = int(len(train))
        out["object_size"] = object_sizes(data, train)
    return out
