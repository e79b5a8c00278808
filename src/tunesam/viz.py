"""Pictures a person looks at: mask overlays and montages (Pillow only)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Class colours (RGB): background none, then distinct hues.
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180],
     [70, 240, 240], [245, 130, 48], [240, 50, 230], [210, 245, 60]],
    dtype=np.float32,
)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45, outline: bool = True) -> np.ndarray:
    """``h x w`` uint8 grey image with class ``mask`` blended in colour: ``h x w x 3`` uint8.

    ``outline`` draws each class's boundary at full colour so thin structures stay visible.
    """
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    colours = PALETTE[np.asarray(mask, dtype=np.int64) % len(PALETTE)]
    fg = (np.asarray(mask) > 0)[..., None]
    out = np.where(fg, (1 - alpha) * rgb + alpha * colours, rgb)
    if outline:
        m = np.asarray(mask)
        edge = np.zeros(m.shape, bool)
        edge[:-1] |= m[:-1] != m[1:]
        edge[1:] |= m[1:] != m[:-1]
        edge[:, :-1] |= m[:, :-1] != m[:, 1:]
        edge[:, 1:] |= m[:, 1:] != m[:, :-1]
        edge &= m > 0
        out[edge] = colours[edge]
    return np.clip(out, 0, 255).astype(np.uint8)


def montage(tiles: Sequence[np.ndarray], cols: int, pad: int = 4) -> np.ndarray:
    """Tiles (``h x w x 3`` uint8, any sizes) on a grid, each cell the size of the largest."""
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    rows = (len(tiles) + cols - 1) // cols
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y : y + t.shape[0], x : x + t.shape[1]] = t
    return canvas


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB (or grey) uint8 array as PNG, atomically."""
    from PIL import Image

    from tunesam.io import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))
