"""The best DSC any SAM-family model could reach at a given input size, on a prepared split.

SAM's mask decoder predicts at a quarter of the input side (256 x 256 at 1024, 56 x 56 at
224). This script gives each test slice the *ideal* quarter-resolution output, the reference
mask itself averaged over each output cell, and sends it down the path ``evaluate`` uses
(bilinear to the input size, crop the letterbox, bilinear to the slice, argmax). What it scores
is an upper bound set by the output grid alone, not by training: use it to choose
``--image-size`` for thin or small structures, and to read a run's scores against.

Usage: python scripts/resolution_ceiling.py DATA [--split test] [--sizes 224 256 512 1024]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from tunesam.letterbox import letterbox_shape, unletterbox
from tunesam.data.store import PreparedData, stored_spacing
from tunesam.metrics import PooledScores, ScoreTable, class_counts_2d

OUTPUT_STRIDE = 4  # SAM: 16 px patches, two 2x up-convolutions in the mask decoder


def ideal_prediction(ref: np.ndarray, num_labels: int, size: int) -> np.ndarray:
    """The label map a perfect quarter-resolution output of a ``size`` input would give."""
    h, w = ref.shape
    valid = letterbox_shape(h, w, size)
    onehot = F.one_hot(torch.from_numpy(ref.astype(np.int64)), num_labels).permute(2, 0, 1)[None].float()
    fitted = F.interpolate(onehot, size=valid, mode="bilinear", align_corners=False)
    canvas = torch.zeros(1, num_labels, size, size)
    canvas[:, 0] = 1.0  # the padding is background
    canvas[:, :, : valid[0], : valid[1]] = fitted
    low = F.avg_pool2d(canvas, OUTPUT_STRIDE)
    full = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0]
    return unletterbox(full, valid, (h, w)).argmax(0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 512, 1024])
    args = parser.parse_args()
    data = PreparedData.open(args.data)
    labels = {int(k): v for k, v in data.manifest["labels"].items()}
    classes = [c for c in labels if c != 0]
    rows = [int(r) for r in data.rows(args.split, include_empty=True)]
    names = [labels[c] for c in classes]
    print(f"{data.folder}, {args.split}: {len(rows)} slices; DSC of the ideal quarter-resolution output")
    print("| input size | output grid | " + " | ".join(f"{n} 2D | {n} pooled" for n in names) + " |")
    print("|---:|---:|" + "---:|---:|" * len(names))
    for size in args.sizes:
        table, pooled = ScoreTable(labels), PooledScores(labels)
        for row in rows:
            ref = np.asarray(data.slice(row)[1])
            pred = ideal_prediction(ref, max(labels) + 1, size)
            counts = class_counts_2d(pred, ref, classes, stored_spacing(data.case(row)))
            pooled.add(counts)
            if ref.any():
                table.add_counts(counts)
        by_image, by_pixel = table.aggregate()["classes"], pooled.aggregate()["classes"]
        cells = [f"{by_image[str(c)]['dsc']:.1f} | {by_pixel[str(c)]['dsc']:.1f}" for c in classes]
        print(f"| {size} | {size // OUTPUT_STRIDE} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
