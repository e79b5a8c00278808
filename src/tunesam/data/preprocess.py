"""Per-volume preprocessing (the paper, section 3): intensities to 0-255, labels to classes,
slicing, and the storage downsample. Pure functions on numpy arrays."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from tunesam.data.readers import COLOUR, DataError, colour_name
from tunesam.letterbox import longest_side_to

PERCENTILES = (0.5, 99.5)
CT_WINDOW = (40.0, 400.0)  # level, width: soft tissue, as MedSAM
BLANK_FRACTION = 0.01  # a slice is blank when fewer than 1% of its pixels rise above its minimum
_MAX_PERCENTILE_SAMPLES = 4_000_000


def window_to_uint8(arr: np.ndarray, level: float, width: float) -> np.ndarray:
    """Clip to ``[level - width/2, level + width/2]`` and scale to 0-255."""
    lo = level - width / 2.0
    out = (arr.astype(np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def percentile_to_uint8(arr: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Clip at the percentiles of the non-zero voxels and scale to 0-255.

    Very large volumes estimate the percentiles from an evenly strided sample.
    """
    values = arr[arr != 0]
    if values.size == 0:
        return np.zeros(arr.shape, np.uint8)
    if values.size > _MAX_PERCENTILE_SAMPLES:
        values = values[:: values.size // _MAX_PERCENTILE_SAMPLES + 1]
    lo, hi = np.percentile(values.astype(np.float64), percentiles)
    if hi <= lo:
        return np.where(arr > lo, 255, 0).astype(np.uint8)
    out = (arr.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_uint8(
    arr: np.ndarray, is_2d: bool, modality: str, window: tuple[float, float] | None,
    percentiles: tuple[float, float] = PERCENTILES,
) -> np.ndarray:
    """Intensities to 0-255 by the rule of DESIGN.md: CT window, 8-bit 2D kept, else percentiles
    (of the non-zero voxels). ``prepare`` applies it, and ``predict`` replays it from a run."""
    if window is not None or modality == "ct":
        level, width = window or CT_WINDOW
        return window_to_uint8(arr, level, width)
    if is_2d and arr.dtype == np.uint8:
        return arr
    return percentile_to_uint8(arr, percentiles)


def is_blank(image: np.ndarray) -> bool:
    """Whether a uint8 slice carries (almost) nothing to reconstruct: constant, or fewer than
    1% of its pixels above its minimum (the padding of a volume's first and last slices).
    ``prepare`` stores no blank slice without foreground, and MAE drops any it finds."""
    return float(np.mean(image > image.min())) < BLANK_FRACTION


def finite_voxels(image: np.ndarray, where: str) -> tuple[np.ndarray, str | None]:
    """``image`` with NaN and infinite voxels set to its lowest finite value, and a warning
    naming ``where`` and how many there were (``None`` when none); an image without one
    finite voxel is refused."""
    if not np.issubdtype(image.dtype, np.floating):
        return image, None
    bad = ~np.isfinite(image)
    n = int(bad.sum())
    if n == 0:
        return image, None
    if n == bad.size:
        raise DataError(f"{where}: every voxel is NaN or infinite; the image holds no data")
    low = float(np.min(image[~bad]))
    return (np.where(bad, low, image),
            f"{where}: {n:,} of {bad.size:,} voxels ({100 * n / bad.size:.2g}%) are NaN or infinite; "
            f"they were set to the image's lowest value ({low:g})")


def check_integer_mask(mask: np.ndarray, where: str) -> np.ndarray:
    """Masks must hold integers; float masks with whole values are accepted."""
    if np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_:
        return mask
    frac = mask[mask != np.round(mask)]
    if frac.size:
        examples = ", ".join(f"{v:g}" for v in np.unique(frac)[:5])
        raise DataError(f"{where}: a mask must hold integer labels, found values such as {examples}")
    return mask.astype(np.int64)


def map_labels(mask: np.ndarray, value_to_class: Mapping[int, int] | None, where: str) -> np.ndarray:
    """Raw mask values -> classes (uint8); values outside the map are an error naming them.

    ``None`` merges every non-zero value into class 1.
    """
    if value_to_class is None:
        return (mask != 0).astype(np.uint8)
    values, inverse = np.unique(mask, return_inverse=True)
    unknown = [int(v) for v in values if int(v) not in value_to_class and v != 0]
    if unknown:
        def say(vs: list[int]) -> str:  # a colour mask's values as #rrggbb
            return "[" + ", ".join(colour_name(v) if v >= COLOUR else str(v) for v in vs) + "]"

        raise DataError(
            f"{where}: mask values {say(unknown[:10])} are not in the label map "
            f"(known: {say(sorted(value_to_class))}); give them a class with --label-map or use --labels merge"
        )
    lut = np.array([value_to_class.get(int(v), 0) for v in values], dtype=np.uint8)
    return lut[inverse].reshape(mask.shape)


def stored_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """The stored size of an ``h x w`` slice: native unless its longest side exceeds ``size``."""
    return (h, w) if max(h, w) <= size else longest_side_to(h, w, size)


def downsample_images(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``n x h x w`` uint8 slices to ``shape`` by area averaging."""
    if images.shape[1:] == shape:
        return images
    img = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)  # a copy: ``images`` may be read-only
    return F.interpolate(img, size=shape, mode="area").round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()


def downsample(images: np.ndarray, masks: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``n x h x w`` uint8 slices to ``shape``: images by area averaging, masks nearest."""
    if images.shape[1:] == shape:
        return images, masks
    msk = torch.from_numpy(np.ascontiguousarray(masks)).unsqueeze(1)
    msk = F.interpolate(msk.float(), size=shape, mode="nearest-exact").to(torch.uint8)
    return downsample_images(images, shape), msk.squeeze(1).numpy()
