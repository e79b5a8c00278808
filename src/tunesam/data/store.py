"""The prepared store: slice pixels in two flat uint8 files plus an index, memory-mapped.

``images.u8`` and ``masks.u8`` hold the slices back to back (row-major, one channel);
``index.npy`` says where each slice starts and its size, which case it came from, whether
its mask is empty and its split. Readers map the files read-only, so a DataLoader worker
touches only the pages of the slices it loads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesam.data.readers import DataError

INDEX_DTYPE = np.dtype(
    [("case", "<i4"), ("slice", "<i4"), ("offset", "<i8"), ("h", "<i4"), ("w", "<i4"),
     ("nonempty", "?"), ("split", "i1")]
)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MANIFEST = "manifest.json"
FORMAT = "tunesam-prepared"
FORMAT_VERSION = 1


class SliceWriter:
    """Appends slices to the two pixel files of a store being written."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._images = open(folder / "images.u8", "wb")
        self._masks = open(folder / "masks.u8", "wb")
        self._rows: list[tuple[int, int, int, int, int, bool, int]] = []
        self._offset = 0

    def add(self, case: int, index: int, image: np.ndarray, mask: np.ndarray, split: str) -> None:
        """One ``h x w`` uint8 slice and its ``h x w`` uint8 class mask."""
        if image.shape != mask.shape or image.dtype != np.uint8 or mask.dtype != np.uint8:
            raise ValueError("slice and mask must be uint8 arrays of one shape")
        h, w = image.shape
        self._images.write(np.ascontiguousarray(image).tobytes())
        self._masks.write(np.ascontiguousarray(mask).tobytes())
        self._rows.append((case, index, self._offset, h, w, bool(mask.any()), SPLIT_CODES[split]))
        self._offset += h * w

    def close(self) -> int:
        """Flush everything and write the index; returns the number of slices."""
        for f in (self._images, self._masks):
            f.flush()
            f.close()
        np.save(self.folder / "index.npy", np.array(self._rows, dtype=INDEX_DTYPE))
        return len(self._rows)

    def abort(self) -> None:
        for f in (self._images, self._masks):
            f.close()


@dataclass
class PreparedData:
    """A prepared dataset opened for reading (pixels mapped lazily)."""

    folder: Path
    manifest: dict[str, Any]
    index: np.ndarray
    _images: np.memmap | None = None
    _masks: np.memmap | None = None

    @classmethod
    def open(cls, folder: str | Path) -> PreparedData:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise DataError(f"{folder}: not a prepared dataset (no {MANIFEST}); run 'tunesam prepare' first")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise DataError(f"{path}: not a tunesam prepared dataset (format {manifest.get('format')!r})")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise DataError(f"{path}: written by a newer tunesam (format {manifest['format_version']})")
        return cls(folder, manifest, np.load(folder / "index.npy"))

    def _maps(self) -> tuple[np.memmap, np.memmap]:
        if self._images is None or self._masks is None:  # opened on first use (per worker)
            self._images = np.memmap(self.folder / "images.u8", dtype=np.uint8, mode="r")
            self._masks = np.memmap(self.folder / "masks.u8", dtype=np.uint8, mode="r")
        return self._images, self._masks

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = state["_masks"] = None  # maps are reopened in each process
        return state

    def slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``i`` of the index: (image, mask), each ``h x w`` uint8, read-only views."""
        row = self.index[i]
        images, masks = self._maps()
        start, n = int(row["offset"]), int(row["h"]) * int(row["w"])
        shape = (int(row["h"]), int(row["w"]))
        return images[start : start + n].reshape(shape), masks[start : start + n].reshape(shape)

    def rows(self, split: str, include_empty: bool = True) -> np.ndarray:
        """Index positions of a split's slices (optionally only those with a non-empty mask)."""
        sel = self.index["split"] == SPLIT_CODES[split]
        if not include_empty:
            sel &= self.index["nonempty"]
        return np.flatnonzero(sel)

    @property
    def num_classes(self) -> int:
        """Foreground classes K."""
        return len(self.manifest["labels"]) - 1

    def case(self, i: int) -> dict[str, Any]:
        """The manifest entry of the case slice ``i`` came from."""
        return self.manifest["cases"][int(self.index[i]["case"])]
