"""Print the parameter counts of every architecture x strategy beside the paper's Table 3.

Usage: python scripts/strategy_table.py [--num-classes K]   (markdown on stdout)
Counts come from tunesam.info.describe (models built on the meta device: instant).
"""
from __future__ import annotations

import argparse

from tunesam.info import describe
from tunesam.peft.strategy import METHODS, TUNES, Strategy

# Gu et al. 2025, Table 3: (total, trainable) in millions; ViT-L is not in the paper.
PAPER = {
    ("vit_h", "decoder"): {"vanilla": (640.95, 3.92), "adapter": (641.08, 0.13), "lora": (640.97, 0.65)},
    ("vit_h", "encoder-decoder"): {"vanilla": (640.95, 640.95), "adapter": (650.93, 9.98), "lora": (641.63, 1.31)},
    ("vit_b", "decoder"): {"vanilla": (93.60, 3.92), "adapter": (93.73, 0.13), "lora": (93.62, 0.65)},
    ("vit_b", "encoder-decoder"): {"vanilla": (93.60, 93.60), "adapter": (97.28, 3.68), "lora": (93.77, 0.80)},
    ("vit_t", "decoder"): {"vanilla": (9.99, 3.92), "adapter": (10.12, 0.13), "lora": (10.01, 0.65)},
    ("vit_t", "encoder-decoder"): {"vanilla": (9.99, 9.99), "adapter": (10.31, 0.32), "lora": (10.04, 0.79)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-classes", type=int, default=1)
    args = parser.parse_args()
    print("| backbone | tune | method | total (ours) | trainable (ours) | paper total | paper trainable |")
    print("|---|---|---|---:|---:|---:|---:|")
    for arch in ("vit_h", "vit_l", "vit_b", "vit_t"):
        for tune in TUNES:
            for method in METHODS:
                info = describe(arch, Strategy(tune, method), num_classes=args.num_classes)
                total, trainable = info["total_params"], info["trainable_params"]
                paper = PAPER.get((arch, tune), {}).get(method)
                p_total, p_train = (f"{paper[0]:.2f}M", f"{paper[1]:.2f}M") if paper else ("-", "-")
                share = 100 * trainable / total
                print(
                    f"| {arch} | {tune} | {method} | {total:,} | {trainable:,} ({share:.2f}%) "
                    f"| {p_total} | {p_train} |"
                )


if __name__ == "__main__":
    main()
