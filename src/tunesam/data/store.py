"""The prepared store: slice pixels in two flat uint8 files plus an index, memory-mapped.

``images.u8`` and ``masks.u8`` hold the slices back to back (row-major, one channel);
``index.npy`` says where each slice starts and its size, which case it came from, whether
its mask is empty and its split. Readers map the files read-only, so a DataLoader worker
touches only the pages of the slices it loads. An image-only store (``prepare
--unlabelled``, for ``pretrain mae``) has no ``masks.u8``: its masks read as background.

Format 2 stores the train and val slices whose mask is empty too (the non-blank ones, for
MAE; the manifest says ``empty_slices_stored``); fine-tuning trains on them only with
``--keep-empty`` (:attr:`PreparedData.trains_on_empty`).
"""
from __future__ import annotations

import contextlib
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
FORMAT_VERSION = 2  # 2: empty-mask train/val slices stored; image-only stores


def stored_spacing(case: dict[str, Any]) -> tuple[float, float]:
    """In-plane spacing of the stored slices (native spacing scaled by any downsample)."""
    (r, c), (nh, nw), (sh, sw) = case["plane_spacing"], case["native_plane"], case["stored_plane"]
    if not case["geometry"].get("spacing_known", True):
        r = c = 1.0
    return r * nh / sh, c * nw / sw


class SliceWriter:
    """Appends slices to the two pixel files of a store being written."""

    def __init__(self, folder: Path, masks: bool = True) -> None:
        """``masks`` False: an image-only store (no ``masks.u8``)."""
        self.folder = folder
        self._images = open(folder / "images.u8", "wb")
        self._masks = open(folder / "masks.u8", "wb") if masks else None
        self._rows: list[tuple[int, int, int, int, int, bool, int]] = []
        self._offset = 0

    def add(self, case: int, index: int, image: np.ndarray, mask: np.ndarray | None, split: str) -> None:
        """One ``h x w`` uint8 slice and its ``h x w`` uint8 class mask (``None`` in an image-only store)."""
        if (mask is None) != (self._masks is None):
            raise ValueError("an image-only store takes no masks; any other needs one per slice")
        if image.dtype != np.uint8 or (mask is not None and (image.shape != mask.shape or mask.dtype != np.uint8)):
            raise ValueError("slice and mask must be uint8 arrays of one shape")
        h, w = image.shape
        self._images.write(np.ascontiguousarray(image).tobytes())
        if self._masks is not None and mask is not None:
            self._masks.write(np.ascontiguousarray(mask).tobytes())
        nonempty = mask is not None and bool(mask.any())
        self._rows.append((case, index, self._offset, h, w, nonempty, SPLIT_CODES[split]))
        self._offset += h * w

    def _files(self) -> list[Any]:
        return [f for f in (self._images, self._masks) if f is not None]

    def close(self) -> int:
        """Flush everything and write the index; returns the number of slices."""
        for f in self._files():
            f.flush()
            f.close()
        np.save(self.folder / "index.npy", np.array(self._rows, dtype=INDEX_DTYPE))
        return len(self._rows)

    def abort(self) -> None:
        for f in self._files():
            with contextlib.suppress(OSError):  # a full disk fails the last flush too
                f.close()


def _read_index(path: Path, manifest: dict[str, Any], again: str) -> np.ndarray:
    """``index.npy``, checked: readable without pickles, of the index's dtype, one row per
    slice the manifest counts."""
    try:
        index = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: missing{again}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: damaged, not a readable index ({exc}){again}") from exc
    if index.dtype != INDEX_DTYPE or index.ndim != 1:
        raise DataError(f"{path}: not a prepared dataset's index (dtype {index.dtype}, shape {index.shape}){again}")
    expected = manifest.get("num_slices")
    if expected is not None and len(index) != expected:
        raise DataError(f"{path}: damaged: {len(index):,} slices, the manifest counts {expected:,}{again}")
    return index


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
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder (a prepared dataset, made by 'tunesam prepare', was expected)")
        if not path.is_file():
            raise DataError(f"{folder}: not a prepared dataset (no {MANIFEST}); run 'tunesam prepare' first")
        again = "; prepare the dataset again (tunesam prepare ... --force)"
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: damaged, not valid JSON ({exc}){again}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise DataError(f"{path}: not a tunesam prepared dataset (format {found!r})")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise DataError(f"{path}: written by a newer tunesam (format {manifest['format_version']})")
        data = cls(folder, manifest, _read_index(folder / "index.npy", manifest, again))
        data._check_sizes(again)
        return data

    def _check_sizes(self, again: str) -> None:
        """The pixel files must hold every slice the index places in them (a truncated copy
        would let training start and fail, or read past the end, later)."""
        rows = self.index
        need = int((rows["offset"] + rows["h"].astype(np.int64) * rows["w"]).max()) if len(rows) else 0
        for name in ("images.u8",) if self.unlabelled else ("images.u8", "masks.u8"):
            file = self.folder / name
            have = file.stat().st_size if file.is_file() else None
            if have is None or have < need:
                raise DataError(f"{file}: " + ("missing" if have is None else f"damaged: it holds {have:,} bytes, "
                                               f"the index places {len(rows):,} slices in {need:,}") + again)

    def _maps(self) -> tuple[np.memmap, np.memmap | None]:
        if self._images is None:  # opened on first use (per worker)
            self._images = np.memmap(self.folder / "images.u8", dtype=np.uint8, mode="r")
            if not self.unlabelled:
                self._masks = np.memmap(self.folder / "masks.u8", dtype=np.uint8, mode="r")
        return self._images, self._masks

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = state["_masks"] = None  # maps are reopened in each process
        return state

    def slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``i`` of the index: (image, mask), each ``h x w`` uint8, read-only views (an
        image-only store's masks: background everywhere)."""
        row = self.index[i]
        images, masks = self._maps()
        start, n = int(row["offset"]), int(row["h"]) * int(row["w"])
        shape = (int(row["h"]), int(row["w"]))
        mask = np.broadcast_to(np.uint8(0), shape) if masks is None else masks[start : start + n].reshape(shape)
        return images[start : start + n].reshape(shape), mask

    def rows(self, split: str, include_empty: bool = True) -> np.ndarray:
        """Index positions of a split's slices (optionally only those with a non-empty mask).
        Train and val hold their non-blank slices without foreground too, for MAE: fine-tuning
        takes ``rows(split, include_empty=self.trains_on_empty)``."""
        sel = self.index["split"] == SPLIT_CODES[split]
        if not include_empty:
            sel &= self.index["nonempty"]
        return np.flatnonzero(sel)

    @property
    def num_classes(self) -> int:
        """Foreground classes K. An image-only dataset has none, and is refused here so that no
        consumer of its classes gets further (see :meth:`require_labels`)."""
        self.require_labels("training or scoring a segmenter")
        return len(self.manifest["labels"]) - 1

    @property
    def unlabelled(self) -> bool:
        """Whether this is an image-only dataset (``prepare --unlabelled``): no masks."""
        return bool(self.manifest.get("unlabelled", False))

    def require_labels(self, what: str) -> None:
        """Refuse an image-only dataset for ``what`` (e.g. ``"training"``), which needs masks."""
        if self.unlabelled:
            raise DataError(
                f"{self.folder}: an image-only dataset (prepared with --unlabelled): it has no masks, which "
                f"{what} needs; only 'tunesam pretrain mae' takes it. Prepare labelled data without --unlabelled"
            )

    @property
    def trains_on_empty(self) -> bool:
        """Whether fine-tuning trains on the stored train slices whose mask is empty: when
        prepared with ``--keep-empty``, or by a tunesam that stored train slices for fine-tuning
        only (format 1: every stored one was meant for it). Otherwise those slices are in the
        store for ``pretrain mae`` alone."""
        if not self.manifest.get("empty_slices_stored", False):
            return True
        return bool(self.manifest["options"]["keep_empty"])

    def case(self, i: int) -> dict[str, Any]:
        """The manifest entry of the case slice ``i`` came from."""
        return self.manifest["cases"][int(self.index[i]["case"])]


def default_cache_folder(data: str | Path) -> Path:
    """Where a prepared dataset's embeddings are cached unless told otherwise: ``DATA/embeddings``
    (``prepare --force`` replaces the dataset and its cache together)."""
    return Path(data) / "embeddings"
