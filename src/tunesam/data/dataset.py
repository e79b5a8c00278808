"""The torch ``Dataset`` over a prepared store.

Slices are stored at native size (or downsampled to ``--size``); here each is letterboxed to
the model's input (:mod:`tunesam.letterbox`). ``valid`` records the resized extent so
predictions can be cropped and mapped back.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tunesam.data.augment import augment as augment_slice
from tunesam.data.prompts import pick_object, simulate
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData
from tunesam.letterbox import letterbox_image, letterbox_mask, letterbox_shape, to_input


class SliceDataset(Dataset):
    """Slices of one split, ready for the model.

    Items are dicts: ``image`` ``1 x S x S`` uint8 (grey; the model repeats it to three
    channels and normalises it), ``mask`` ``S x S`` uint8 class indices, ``valid`` (rows,
    cols) of real pixels, ``index`` the slice's position in the store's index.

    Args:
        data: a prepared folder or an opened :class:`PreparedData`.
        split: ``train``, ``val`` or ``test``.
        image_size: the model's input side S.
        include_empty: keep slices whose mask is empty (default: only for ``test``).
        rows: explicit store rows (e.g. a few-shot sample) instead of the whole split.
        interpolation: image resize, ``bilinear`` (default), ``nearest`` or ``area`` (see
            :func:`letterbox_image`).
        augment: training randomness: random prompts and, with ``augment_images``, the image
            augmentation (histogram equalisation, brightness/contrast jitter).
        augment_images: augment the pixels when ``augment`` is set (off when a frozen
            encoder's embeddings are cached: they are computed from the plain image).
        mode: ``auto``, or ``box``/``point``: each item then prompts one connected component
            of one class, chosen and prompted on the stored slice, then scaled (``box`` 4 floats
            x0 y0 x1 y1, ``point`` 2 floats x y, in model-input pixels), and its ``mask`` is that
            component (0/1) letterboxed. Prompts are drawn anew each epoch when ``augment`` is
            set, and fixed per slice otherwise (validation sees the same prompts every epoch).
        prompt_rules: how prompts are drawn, ``paper`` (default), ``code`` or ``tight`` (see
            :mod:`tunesam.data.prompts`).
        views: with ``augment``, each item draws one of this many cached augmented views of
            its slice (``view``, 0 .. views-1; see :mod:`tunesam.engine.embedding_cache`);
            otherwise ``view`` is -1, the plain image.
        seed: fixes every random choice per (seed, epoch, slice); the epoch comes with the
            index from the training sampler, or from :meth:`set_epoch`.
    """

    def __init__(
        self,
        data: str | Path | PreparedData,
        split: str,
        image_size: int,
        include_empty: bool | None = None,
        rows: Sequence[int] | None = None,
        interpolation: str = "bilinear",
        augment: bool = False,
        mode: str = "auto",
        seed: int = 0,
        augment_images: bool = True,
        prompt_rules: str = "paper",
        views: int = 0,
    ) -> None:
        self.data = data if isinstance(data, PreparedData) else PreparedData.open(data)
        self.augment = augment
        self.augment_images = augment_images
        self.mode = mode
        self.prompt_rules = prompt_rules
        self.views = views
        self.seed = seed
        self.epoch = 0
        self.split = split
        self.image_size = image_size
        self.interpolation = interpolation
        if rows is None:
            keep_empty = split == "test" if include_empty is None else include_empty
            rows = self.data.rows(split, include_empty=keep_empty and mode == "auto")
        self.rows = np.asarray(rows, dtype=np.int64)
        if mode != "auto":  # a prompt needs an object
            self.rows = self.rows[self.data.index["nonempty"][self.rows]]

    def set_epoch(self, epoch: int) -> None:
        """Random choices of the next epoch (call before iterating, in every process)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``i``, or ``(i, epoch)`` as the training sampler passes it."""
        i, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        row = int(self.rows[i])
        image, mask = self.data.slice(row)
        h, w = image.shape
        rng = np.random.default_rng([self.seed, epoch, row]) if self.augment else None
        if rng is not None and self.augment_images:
            image = augment_slice(image, rng)
        item: dict[str, Any] = {
            "image": letterbox_image(image, self.image_size, self.interpolation),
            "mask": letterbox_mask(mask, self.image_size),
            "valid": torch.tensor(letterbox_shape(h, w, self.image_size)),
            "index": row,
            "view": -1,
        }
        if self.mode != "auto":
            # The object and its prompt are taken on the stored slice, where every object of a
            # non-empty slice exists, and the prompt is scaled to the input as SAM does (an
            # object thinner than a resized pixel still gets its prompt; its target may be empty).
            rng = rng or np.random.default_rng([self.seed, row])  # fixed per slice without augment
            obj = pick_object(np.asarray(mask), rng)
            prompt = simulate(obj, self.mode, max(h, w), rng, self.prompt_rules)
            item["mask"] = letterbox_mask(obj.astype(np.uint8), self.image_size)
            item["box"] = to_input(torch.tensor(prompt.box or (0.0, 0.0, 0.0, 0.0), dtype=torch.float32), (h, w),
                                   self.image_size)
            item["point"] = to_input(torch.tensor(prompt.point or (0.0, 0.0), dtype=torch.float32), (h, w),
                                     self.image_size)
        if self.augment and self.views:  # drawn last: the prompts stay what they were without views
            assert rng is not None
            item["view"] = int(rng.integers(self.views))
        return item


def few_shot_rows(data: PreparedData, split: str, k: int, seed: int, at_most: bool = False) -> np.ndarray:
    """``k`` slices with foreground, each from a different volume, chosen with ``seed``
    (``at_most``: one from each volume when the split has fewer than ``k``)."""
    rows = data.rows(split, include_empty=False)
    volumes: dict[str, list[int]] = {}
    for r in rows:
        volumes.setdefault(data.case(int(r))["volume"], []).append(int(r))
    if at_most:
        k = min(k, len(volumes))
    if len(volumes) < k or k == 0:
        raise DataError(
            f"{data.folder}: the {split} set has foreground slices from {len(volumes)} volumes; "
            f"a {k}-shot sample needs {k} distinct volumes"
        )
    rng = np.random.default_rng(seed)
    names = sorted(volumes)
    chosen = [names[i] for i in rng.permutation(len(names))[:k]]
    return np.array(sorted(int(rng.choice(volumes[v])) for v in chosen), dtype=np.int64)
