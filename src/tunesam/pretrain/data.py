"""The pooled data of pre-training: several prepared datasets read as one.

* :class:`PromptSlices` (SupSAM, the paper's section 2.3): per slice one object class drawn
  at random, then one prompt per connected component of that class, a box or a point with
  equal odds, each with its component as the target.
* :class:`ImageSlices` (SSLSAM, section 4.3): images only (labels unused, slices with empty
  masks included, and image-only datasets prepared with ``--unlabelled``), blank slices
  dropped.

Items are keyed by ``(i, epoch)`` from :class:`tunesam.engine.distributed.EpochSampler`, and
every random choice is a function of (seed, epoch, dataset, slice), so a resumed run sees
what an uninterrupted one saw.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tunesam.data.augment import augment as augment_slice
from tunesam.letterbox import letterbox_image, letterbox_mask, letterbox_shape, to_input
from tunesam.data.preprocess import is_blank
from tunesam.data.prompts import components, pick_class, simulate
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData


def open_all(folders: Sequence[str]) -> list[PreparedData]:
    return [PreparedData.open(f) for f in folders]


class _Pooled(Dataset):
    """Rows ``(dataset, store row)`` of one split over several stores."""

    def __init__(self, stores: Sequence[PreparedData], split: str, image_size: int, interpolation: str,
                 augment: bool, seed: int) -> None:
        self.stores = list(stores)
        self.split = split
        self.image_size = image_size
        self.interpolation = interpolation
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.items = np.zeros((0, 2), dtype=np.int64)

    def _check(self) -> None:
        if len(self.items) == 0:
            names = ", ".join(str(s.folder) for s in self.stores)
            raise DataError(f"{names}: the {self.split} sets hold no usable slices for pre-training")

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _read(self, key: int | tuple[int, int]) -> tuple[int, int, np.ndarray, np.ndarray, np.random.Generator | None]:
        i, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        d, row = (int(v) for v in self.items[i])
        image, mask = self.stores[d].slice(row)
        rng = np.random.default_rng([self.seed, epoch, d, row]) if self.augment else None
        if rng is not None:
            image = augment_slice(image, rng)
        return d, row, np.asarray(image), np.asarray(mask), rng

    def _base_item(self, d: int, row: int, image: np.ndarray) -> dict[str, Any]:
        h, w = image.shape
        return {"image": letterbox_image(image, self.image_size, self.interpolation),
                "valid": torch.tensor(letterbox_shape(h, w, self.image_size)),
                "dataset": d, "index": row}


class PromptSlices(_Pooled):
    """Non-empty slices of ``split`` from every store, each with its prompts.

    An item: ``image`` ``1 x S x S`` uint8, ``valid`` (rows, cols), ``dataset``, ``index``, and
    per prompt (one per component of the drawn class, at most ``max_prompts``, a random
    subset beyond that): ``kind`` (0 box, 1 point), ``box`` (x0, y0, x1, y1) and ``point``
    (x, y) in input pixels, and ``masks`` ``P x S x S`` uint8 (the component). Validation
    (``augment`` off) draws class and kinds from (seed, dataset, slice) and uses the
    deterministic prompts (tight box, the point farthest from the edge).
    """

    def __init__(self, stores: Sequence[PreparedData], split: str, image_size: int, interpolation: str = "bilinear",
                 augment: bool = False, seed: int = 0, rules: str = "paper", max_prompts: int = 16) -> None:
        super().__init__(stores, split, image_size, interpolation, augment, seed)
        self.rules = rules
        self.max_prompts = max_prompts
        self.items = np.array([(d, r) for d, s in enumerate(self.stores) for r in s.rows(split, include_empty=False)],
                              dtype=np.int64).reshape(-1, 2)
        self._check()

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        d, row, image, mask, rng = self._read(key)
        choice = rng or np.random.default_rng([self.seed, d, row])
        labels, n = components(mask == pick_class(mask, choice))
        chosen = np.arange(1, n + 1)
        if n > self.max_prompts:
            chosen = np.sort(choice.choice(chosen, self.max_prompts, replace=False))
        kinds = choice.integers(0, 2, len(chosen))  # 0 box, 1 point: equal odds
        size = max(mask.shape)
        boxes, points, masks = [], [], []
        for k, kind in zip(chosen, kinds):
            component = labels == k
            prompt = simulate(component, "box" if kind == 0 else "point", size, rng, self.rules)
            boxes.append(prompt.box or (0.0, 0.0, 0.0, 0.0))
            points.append(prompt.point or (0.0, 0.0))
            masks.append(letterbox_mask(component.astype(np.uint8), self.image_size))
        item = self._base_item(d, row, image)
        item.update(kind=torch.as_tensor(kinds, dtype=torch.long),
                    box=to_input(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), mask.shape, self.image_size),
                    point=to_input(torch.tensor(points, dtype=torch.float32).reshape(-1, 2), mask.shape,
                                   self.image_size),
                    masks=torch.stack(masks))
        return item


def collate_prompts(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stacked (``B x 1 x S x S``); prompts concatenated (``P`` in all) with ``owner``
    (``P``) naming each prompt's image."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "valid": torch.stack([it["valid"] for it in items]),
        "dataset": torch.tensor([it["dataset"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
        "owner": torch.cat([torch.full((len(it["kind"]),), b, dtype=torch.long) for b, it in enumerate(items)]),
        "kind": torch.cat([it["kind"] for it in items]),
        "box": torch.cat([it["box"] for it in items]),
        "point": torch.cat([it["point"] for it in items]),
        "masks": torch.cat([it["masks"] for it in items]),
    }


class ImageSlices(_Pooled):
    """Every non-blank slice of ``split`` from every store, labels unused (MAE).

    An item: ``image`` ``1 x S x S`` uint8, ``valid``, ``dataset``, ``index``. Blankness is
    judged once on the stored slice (see :func:`tunesam.data.preprocess.is_blank`, the rule
    ``prepare`` stores by); ``blank`` counts those dropped. Slices whose mask is empty count
    like any other: ``prepare`` stores the non-blank ones of train and val for this.
    """

    def __init__(self, stores: Sequence[PreparedData], split: str, image_size: int, interpolation: str = "bilinear",
                 augment: bool = False, seed: int = 0) -> None:
        super().__init__(stores, split, image_size, interpolation, augment, seed)
        items, self.blank = [], 0
        for d, store in enumerate(self.stores):
            for r in store.rows(split, include_empty=True):
                if is_blank(np.asarray(store.slice(int(r))[0])):
                    self.blank += 1
                else:
                    items.append((d, int(r)))
        self.items = np.array(items, dtype=np.int64).reshape(-1, 2)
        self._check()

    def subset(self, positions: Sequence[int]) -> ImageSlices:
        """The same set restricted to ``positions`` of its items (no second scan for blanks)."""
        import copy

        out = copy.copy(self)
        out.items = self.items[np.asarray(positions, dtype=np.int64)]
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        d, row, image, _, _ = self._read(key)
        return self._base_item(d, row, image)
