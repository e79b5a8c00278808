"""Patient-level splits: seeded 7:1:2 by default, or the one the user gave."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from tunesam.data.readers import DataError

SPLITS = ("train", "val", "test")


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"7:1:2"`` -> (0.7, 0.1, 0.2)."""
    try:
        parts = [float(x) for x in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise DataError(f"--split must be three non-negative numbers like 7:1:2, got {text!r}")
    total = sum(parts)
    return (parts[0] / total, parts[1] / total, parts[2] / total)


def split_counts(n: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Patients per set: largest-remainder rounding, every set with a share gets at least one."""
    raw = [n * r for r in ratios]
    counts = [int(x) for x in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i in range(3):  # a wanted set never ends up empty while another can spare one
        if ratios[i] > 0 and counts[i] == 0:
            donor = max(range(3), key=lambda j: counts[j])
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return counts[0], counts[1], counts[2]


def patient_split(patients: Sequence[str], ratios: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Assign each distinct patient to train/val/test, shuffled with ``seed``."""
    unique = sorted(set(patients))
    counts = split_counts(len(unique), ratios)
    for name, want, got in zip(SPLITS, ratios, counts):
        if want > 0 and got == 0:
            raise DataError(
                f"{len(unique)} patients cannot fill a {name} set at split "
                f"{'/'.join(f'{100 * r:.0f}%' for r in ratios)} (train/val/test): "
                "give more patients, another --split, or a split of your own"
            )
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    n_train, n_val, _ = counts
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def patients_in_several_sets(assignment: dict[str, str], patient_of: dict[str, str]) -> dict[str, list[str]]:
    """Patients whose cases (``case -> set``) fall in more than one set: ``patient -> sets``."""
    sets: dict[str, set[str]] = defaultdict(set)
    for case, split in assignment.items():
        sets[patient_of[case]].add(split)
    return {p: sorted(s, key=SPLITS.index) for p, s in sorted(sets.items()) if len(s) > 1}
