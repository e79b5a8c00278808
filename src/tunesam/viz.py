"""Pictures a person looks at: mask overlays and montages (Pillow), training curves
(matplotlib)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def curves_figure(rows: Sequence[dict[str, float]], metric: str = "val_dsc") -> Any:
    """A matplotlib figure of a run's ``log.csv`` rows: training loss and the validation
    ``metric`` per epoch on two axes, the best epoch marked (``val_dsc``: highest, in percent;
    ``val_loss``: lowest)."""
    plt = pyplot()

    epochs = [int(r["epoch"]) for r in rows]
    loss = [float(r["train_loss"]) for r in rows]
    values = [float(r[metric]) for r in rows]
    is_dsc = metric == "val_dsc"
    label, unit = ("validation DSC", "DSC (%)") if is_dsc else ("validation loss", "loss")
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    ax_loss.plot(epochs, loss, marker="o", ms=3, color="tab:blue", label="train loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_val.plot(epochs, values, marker="o", ms=3, color="tab:red", label=label)
    ax_val.set(xlabel="epoch", ylabel=unit, title=label)
    if values:
        best = max(range(len(values)), key=lambda i: ((values[i] if is_dsc else -values[i]), -i))
        for ax in (ax_loss, ax_val):
            ax.axvline(epochs[best], color="grey", ls="--", lw=1, label=f"best epoch {epochs[best]}")
        ax_val.plot([epochs[best]], [values[best]], marker="*", ms=12, color="tab:red", ls="none")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def save_figure(path: str | Path, fig: Any, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    from tunesam.io import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)
