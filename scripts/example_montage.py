"""Montage of prepared slices with their masks overlaid (the picture in docs/data.md).

    python scripts/example_montage.py PREPARED_DIR OUT.png [--n 8] [--split test]
"""
from __future__ import annotations

import argparse

import numpy as np

from tunesam.data.store import PreparedData
from tunesam.viz import montage, overlay, save_png


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prepared")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=8, help="slices to show (evenly spread over the split)")
    p.add_argument("--split", default="test")
    args = p.parse_args()
    data = PreparedData.open(args.prepared)
    rows = data.rows(args.split, include_empty=False)
    pick = rows[np.linspace(0, len(rows) - 1, args.n).round().astype(int)]
    tiles = []
    for r in pick:
        image, mask = data.slice(int(r))
        tiles.append(np.concatenate([np.repeat(np.asarray(image)[..., None], 3, 2), overlay(np.asarray(image), np.asarray(mask))], 1))
    save_png(args.out, montage(tiles, cols=2))
    print(f"wrote {args.out}: {len(tiles)} slices of the {args.split} set, image | overlay "
          + ", ".join(f"{k}={v}" for k, v in data.manifest["labels"].items() if k != "0"))


if __name__ == "__main__":
    main()
