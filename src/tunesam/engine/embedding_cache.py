"""Image embeddings of a frozen encoder, computed once and reused across epochs and runs.

When a strategy freezes the image encoder (the paper's decoder-only strategies) and nothing
changes the image between epochs, every epoch recomputes the same embeddings: on a CPU that
is nearly all of the time. The cache keeps them in one memory-mapped float32 file per
(encoder weights, input size, pixel normalisation, interpolation, prepared data), so a
training run, its evaluation, a zero-shot evaluation of the same weights and other runs on
the same frozen encoder share them. Embeddings equal the encoder's own to float rounding (they
are computed with its fused inference copy, see ``SamSegmenter.use_inference_encoder``).

Layout: ``DIR/KEY/embeddings.npy`` (``N x C x g x g``, one row per slice of the prepared
store, written on demand) and ``DIR/KEY/done.npy`` (which rows hold a finished embedding;
flushed after the embeddings, so a crash never leaves a row marked done but unwritten).

**Augmented views.** Caching plain images switches the paper's image augmentation off (it
changes the image, hence its embedding). With ``views`` N > 0 each training slice is also
embedded in N augmented versions (histogram equalisation p = 0.1 and brightness/contrast
jitter 0.3, as in training), one cache per view; each epoch a training item draws one of its
views. View ``v`` of a slice is a function of (v, slice) only, so runs with other seeds on
the same encoder share the views and differ in which they draw. The cost is N encoder
passes per training slice once, and N times the disk.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesam.data.augment import augment as augment_slice
from tunesam.device import autocast_for, precision_for
from tunesam.letterbox import letterbox_image, letterbox_shape
from tunesam.data.store import PreparedData
from tunesam.io import write_json
from tunesam.models.segmenter import SamSegmenter

log = logging.getLogger("tunesam.embeddings")

FORMAT_VERSION = 1
VIEW_STREAM = 0x5EED  # keeps the views' augmentation draws apart from training's (seed, epoch, slice)


def view_of(image: np.ndarray, row: int, view: int) -> np.ndarray:
    """Augmented view ``view`` (0, 1, ...) of store ``row``'s ``h x w`` uint8 slice."""
    return augment_slice(image, np.random.default_rng([VIEW_STREAM, view, row]))


def encoder_key(model: SamSegmenter, data_fingerprint: str) -> str:
    """A hex digest of everything an embedding depends on."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": FORMAT_VERSION, "arch": model.arch, "size": model.image_size,
                         "pixel_norm": model.pixel_norm, "interpolation": model.interpolation,
                         "data": data_fingerprint}, sort_keys=True).encode())
    for name, t in sorted(model.image_encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """Embeddings of store rows for one frozen encoder.

    Args:
        folder: the cache root (one subfolder per key).
        key: :func:`encoder_key` of the model and data.
        n_rows: slices in the prepared store.
        shape: ``(C, g, g)`` of one embedding.
    """

    def __init__(self, folder: str | Path, key: str, n_rows: int, shape: Sequence[int]) -> None:
        self.folder = Path(folder) / key[:24]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shape = (n_rows, *shape)
        data, done = self.folder / "embeddings.npy", self.folder / "done.npy"
        if data.is_file() and done.is_file():
            self._emb = np.lib.format.open_memmap(data, mode="r+")
            self._done = np.lib.format.open_memmap(done, mode="r+")
            if self._emb.shape != self.shape or self._done.shape != (n_rows,):
                raise ValueError(f"{self.folder}: cache of shape {self._emb.shape}, expected {self.shape}; "
                                 "delete the folder to rebuild it")
        else:
            self._emb = np.lib.format.open_memmap(data, mode="w+", dtype=np.float32, shape=self.shape)
            self._done = np.lib.format.open_memmap(done, mode="w+", dtype=np.bool_, shape=(n_rows,))
            write_json(self.folder / "cache.json", {"key": key, "shape": list(self.shape), "dtype": "float32",
                                                    "version": FORMAT_VERSION})

    @classmethod
    def for_model(cls, folder: str | Path, model: SamSegmenter, data_fingerprint: str, n_rows: int) -> EmbeddingCache:
        """The cache of ``model``'s encoder on a prepared store of ``n_rows`` slices."""
        pe = model.prompt_encoder
        shape = (pe.embed_dim, *pe.image_embedding_size)
        return cls(folder, encoder_key(model, data_fingerprint), n_rows, shape)

    def missing(self, rows: Sequence[int]) -> list[int]:
        return [int(r) for r in rows if not self._done[int(r)]]

    def fill(self, rows: Sequence[int], compute: Callable[[list[int]], torch.Tensor], batch_size: int = 4,
             progress: Callable[[int, int], None] | None = None) -> int:
        """Compute the embeddings of ``rows`` not yet cached (``compute(rows) -> B x C x g x g``);
        returns how many were computed."""
        todo = self.missing(rows)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            self._emb[chunk] = compute(chunk).detach().to("cpu", torch.float32).numpy()
            self._emb.flush()
            self._done[chunk] = True
            self._done.flush()
            if progress is not None:
                progress(min(start + batch_size, len(todo)), len(todo))
        return len(todo)

    def get(self, rows: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """``B x C x g x g`` float32 embeddings of cached ``rows``."""
        idx = [int(r) for r in rows]
        if not all(self._done[i] for i in idx):
            raise KeyError(f"{self.folder}: rows {self.missing(idx)[:5]} are not cached yet")
        return torch.from_numpy(np.ascontiguousarray(self._emb[idx]))


class CachedEmbeddings:
    """The embeddings a training run reads: the plain images' and, with views, the augmented
    views of the training slices (see the module)."""

    def __init__(self, plain: EmbeddingCache, views: Sequence[EmbeddingCache] = ()) -> None:
        self.plain, self.views = plain, list(views)

    def get(self, rows: Sequence[int] | torch.Tensor, views: Sequence[int] | torch.Tensor | None = None
            ) -> torch.Tensor:
        """``B x C x g x g``: each row's view (``-1`` or no ``views``: the plain image's)."""
        if views is None or not self.views:
            return self.plain.get(rows)
        rows, views = [int(r) for r in rows], [int(v) for v in views]
        out = torch.empty((len(rows), *self.plain.shape[1:]))
        for v in set(views):  # one read per view in the batch
            at = [i for i, w in enumerate(views) if w == v]
            out[at] = (self.views[v] if v >= 0 else self.plain).get([rows[i] for i in at])
        return out


def fill_embedding_cache(model: SamSegmenter, data: PreparedData, folder: str | Path, rows: Any,
                         device: torch.device, verbose: bool = True, batch_size: int | None = None, view: int | None = None
                         ) -> EmbeddingCache:
    """``model``'s (frozen) encoder embeddings of store ``rows``: the missing ones are computed
    (letterboxed as the model sees its input) and written to the cache under ``folder``;
    ``view`` (0, 1, ...) embeds that augmented view of each slice instead of the plain image
    (:func:`view_of`). ``batch_size`` defaults to 1 on the CPU (larger batches were slower per
    slice there) and 8 on a GPU."""
    # computed in the precision training and evaluation use on ``device`` (autocast_for); bf16
    # embeddings differ from float32 ones at bf16's rounding (~1e-2 relative): never one cache
    bf16 = precision_for(device) == "bf16"
    tag = data.manifest["fingerprint"] + ("" if view is None else f"/view{view}") + ("/bf16" if bf16 else "")
    cache = EmbeddingCache.for_model(folder, model, tag, len(data.index))
    todo = cache.missing(rows)
    if not todo:
        return cache
    size, t0, was_training = model.image_size, time.perf_counter(), model.training
    model.eval().use_inference_encoder()

    def compute(chunk: list[int]) -> torch.Tensor:
        slices = [data.slice(r)[0] if view is None else view_of(np.asarray(data.slice(r)[0]), r, view) for r in chunk]
        images = torch.stack([letterbox_image(s, size, model.interpolation) for s in slices]).to(device)
        valid = torch.tensor([letterbox_shape(*s.shape, size) for s in slices], device=device)
        with torch.no_grad(), autocast_for(device):
            return model.encode(images, valid)

    from tqdm.auto import tqdm

    what = "embedding with the frozen encoder" + ("" if view is None else f" (augmented view {view + 1})")
    bar = tqdm(total=len(todo), desc=what, unit="slice", leave=False,
               dynamic_ncols=True, disable=None if verbose else True)  # None: only on a terminal
    try:
        cache.fill(todo, compute, batch_size or (1 if device.type == "cpu" else 8),
                   lambda done, _: bar.update(done - bar.n))
    finally:
        bar.close()
        model.train(was_training)
    if verbose:
        log.info("embedded %d slices%s with the frozen encoder in %.0f s (cached in %s)", len(todo),
                 "" if view is None else f" (augmented view {view + 1})", time.perf_counter() - t0, cache.folder)
    return cache


def fill_training_caches(model: SamSegmenter, data: PreparedData, folder: str | Path, train_rows: Any,
                         val_rows: Any, views: int, device: torch.device, verbose: bool = True
                         ) -> CachedEmbeddings:
    """What a decoder-only run trains on: plain embeddings of the validation slices (and of the
    training slices without ``views``), and ``views`` augmented views of each training slice."""
    plain_rows = val_rows if views else np.union1d(train_rows, val_rows)
    plain = fill_embedding_cache(model, data, folder, plain_rows, device, verbose)
    return CachedEmbeddings(plain, [fill_embedding_cache(model, data, folder, train_rows, device, verbose,
                                                         view=v) for v in range(views)])
