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


def caption(rgb: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    """``rgb`` with a white strip of ``text`` above it (Pillow's built-in font)."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (rgb.shape[1], height), (255, 255, 255))
    ImageDraw.Draw(strip).text((2, 1), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), rgb], 0)


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB (or grey) uint8 array as PNG, atomically."""
    from PIL import Image

    from tunesam.io import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def plot_curves(rows: Sequence[dict[str, float]], width: int = 420, height: int = 260) -> np.ndarray:
    """Training loss and validation DSC per epoch, two panels side by side (RGB uint8)."""
    from PIL import Image, ImageDraw

    panels = []
    for key, title, colour in (("train_loss", "train loss", (0, 90, 200)), ("val_dsc", "val DSC (%)", (200, 40, 60))):
        im = Image.new("RGB", (width, height), "white")
        d = ImageDraw.Draw(im)
        left, right, top, bottom = 52, width - 12, 24, height - 30
        d.rectangle([left, top, right, bottom], outline=(120, 120, 120))
        d.text((left, 6), title, fill=(0, 0, 0))
        ys = [float(r[key]) for r in rows]
        xs = [float(r["epoch"]) for r in rows]
        if ys:
            lo, hi = min(ys), max(ys)
            if hi - lo < 1e-9:
                lo, hi = lo - 1, hi + 1
            x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
            pts = [(left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - lo) / (hi - lo) * (bottom - top))
                   for x, y in zip(xs, ys)]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            for px, py in pts:
                d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
            d.text((4, top - 4), f"{hi:.3g}", fill=(0, 0, 0))
            d.text((4, bottom - 8), f"{lo:.3g}", fill=(0, 0, 0))
            d.text((left, bottom + 6), f"epoch {x0:g}", fill=(0, 0, 0))
            d.text((right - 60, bottom + 6), f"epoch {x1:g}", fill=(0, 0, 0))
        panels.append(np.asarray(im))
    return np.concatenate(panels, axis=1)
