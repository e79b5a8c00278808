"""``tunesam predict``: masks for new scans, in each scan's own format and geometry.

The preprocessing of the run's training data is replayed from ``RUN/preprocessing.json``
(slicing axis, intensity rule, storage size); each slice is letterboxed to the model input,
predicted in batches, and the logits are cropped and resized back to the slice's native
size before the argmax. NIfTI/MHA/NRRD in -> the same format out; a DICOM series in ->
NIfTI out; PNG/JPG/BMP/TIFF in -> PNG out (class indices). Spacing, origin and direction
are copied from the input exactly.

Prompt files (point/box runs) are JSON objects keyed by input file name::

    {"scan.nii.gz": [{"slice": 40, "box": [x0, y0, x1, y1]},
                     {"slice": 41, "points": [[x, y]], "point_labels": [1], "label": 2}],
     "image.png":   [{"box": [30, 40, 120, 160]}]}

Coordinates are pixels of the slice (x = column, y = row) taken along the run's slicing
axis; ``slice`` is omitted for 2D images; ``label`` (default 1) is the value written where
the prompted object is predicted.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesam.data.preprocess import PERCENTILES, downsample_images, finite_voxels, stored_shape, to_uint8
from tunesam.data.readers import (
    DataError,
    Geometry,
    PillowReader,
    SimpleITKReader,
    read_image,
    reader_for,
    strip_image_ext,
)
from tunesam.device import autocast_for, pick_device
from tunesam.io import atomic_path, refuse_dangling_link
from tunesam.kinds import Segmenter
from tunesam.letterbox import letterbox_image, letterbox_shape, to_input, unletterbox

log = logging.getLogger("tunesam.predict")


@dataclass
class Preprocessing:
    """The part of a prepared dataset's options that predict replays."""

    axis: int
    size: int
    channel: int
    intensity: dict[str, Any]

    @classmethod
    def from_options(cls, opts: dict[str, Any]) -> Preprocessing:
        return cls(int(opts["axis"]), int(opts["size"]), int(opts.get("channel", 0)), opts["intensity"])

    def to_uint8(self, arr: np.ndarray, is_2d: bool) -> np.ndarray:
        """The intensity rule the run's data were prepared with (``tunesam.data.preprocess.to_uint8``)."""
        window = self.intensity.get("level_width") if self.intensity["method"] == "window" else None
        percentiles = tuple(self.intensity.get("percentiles", PERCENTILES))
        return to_uint8(arr, is_2d, "other", tuple(window) if window else None, percentiles)  # type: ignore[arg-type]


def output_name(path: Path) -> str:
    """File name of the mask written for ``path``."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        return f"{path.name}.nii.gz"
    lower = path.name.lower()
    for ext in SimpleITKReader.suffixes:
        if lower.endswith(ext):
            return path.name
    for ext in PillowReader.suffixes:
        if lower.endswith(ext):
            return path.name[: -len(ext)] + ".png"
    reader_for(path)  # raises what the file is and what is expected instead
    raise DataError(f"{path}: unknown file type")


def _slices(arr: np.ndarray, geom: Geometry, pre: Preprocessing, where: Path,
            volumes: bool | None = None) -> tuple[np.ndarray, int]:
    """Normalised ``n x h x w`` uint8 slices and the axis they were taken along.

    Several channels (a 4D file's frames or modalities, colour) are reduced to the run's
    ``--channel`` and a 2D image given to a run trained on volumes is one slice: both are
    said (a warning naming the input), not done silently. ``volumes``: the run's training
    data were volumes (``None``: unknown).
    """
    if arr.ndim == geom.ndim + 1:
        if pre.channel >= arr.shape[-1]:
            raise DataError(f"{where}: the run uses channel {pre.channel}, the image has {arr.shape[-1]}")
        log.warning("%s: has %d channels (frames or modalities); segmenting channel %d, the one the run's data "
                    "were prepared from (--channel %d); the others are not used", where, arr.shape[-1],
                    pre.channel, pre.channel)
        arr = arr[..., pre.channel]
    if arr.ndim not in (2, 3):
        raise DataError(f"{where}: expected a 2D image or a 3D volume, found {arr.ndim} dimensions {arr.shape}")
    arr, note = finite_voxels(arr, str(where))
    if note:
        log.warning("%s", note)
    is_2d = arr.ndim == 2
    if is_2d and volumes:
        log.warning("%s: a 2D image given to a run trained on volumes (slices along array axis %d); it is "
                    "segmented as one such slice", where, pre.axis)
    pixels = pre.to_uint8(arr, is_2d)
    if is_2d:
        return pixels[None], 0
    return np.moveaxis(pixels, pre.axis, 0), pre.axis


class Predictor:
    """A run's model plus its preprocessing, ready to segment files."""

    def __init__(self, model: Segmenter, pre: Preprocessing, labels: dict[str, str], mode: str,
                 device: torch.device, batch_size: int = 8, volumes: bool | None = None) -> None:
        if isinstance(model, torch.nn.Module):
            model = model.to(device).eval()
        self.model, self.pre, self.labels, self.mode = model, pre, labels, mode
        self.device, self.batch_size, self.volumes = device, batch_size, volumes
        self.series: tuple[str, ...] = ()  # the DICOM series to read, where a folder holds several
        if model.encoder_is_frozen():  # decoder-only runs: the fused inference encoder is faster
            model.use_inference_encoder()

    @classmethod
    def from_run(cls, run_folder: str | Path, device: str = "auto", batch_size: int = 8) -> Predictor:
        from tunesam.kinds import load_run_model, open_run

        run = open_run(run_folder)
        dev = pick_device(device)
        model = load_run_model(run, "best", dev)
        return cls(model, Preprocessing.from_options(run.preprocessing["options"]), run.labels,
                   run.config.mode, dev, batch_size, run.preprocessing.get("volumes"))

    def _model_input(self, sl: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        shape = stored_shape(*sl.shape, self.pre.size)
        stored = downsample_images(sl[None], shape)[0]
        size = self.model.image_size
        return letterbox_image(stored, size, self.model.interpolation), letterbox_shape(*stored.shape, size)

    def segment_slices(self, slices: np.ndarray, want_probs: bool = False,
                       spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray | None]:
        """Automated mode: ``n x h x w`` uint8 slices with in-plane ``spacing`` (row, col) ->
        labels (and ``C x n x h x w`` probabilities). Slices go to the model as the prepared
        data stored them (downsampled to ``prepare --size`` where bigger); the outputs come
        back at the slices' own size."""
        n, h, w = slices.shape
        shape = stored_shape(h, w, self.pre.size)
        stored = slices if shape == (h, w) else downsample_images(slices, shape)
        stored_spacing = (spacing[0] * h / shape[0], spacing[1] * w / shape[1])
        labels, probs = self.model.segment_stored(list(stored), stored_spacing, want_probs, out_shape=(h, w),
                                                  batch_size=self.batch_size)
        return np.stack(labels), None if probs is None else np.stack(probs, axis=1)

    def segment_prompted(self, slices: np.ndarray, prompts: list[dict[str, Any]], where: str) -> np.ndarray:
        """Point/box mode: one binary object per prompt, written with its ``label``.

        Every prompt is checked (see :func:`check_prompt`) before any is segmented; a slice with
        several prompts is encoded once.
        """
        n, h, w = slices.shape
        checked = [check_prompt(p, k, (n, h, w), self.labels, where) for k, p in enumerate(prompts)]
        labels = np.zeros((n, h, w), np.uint8)
        embedded: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}
        for i, kind, coords, point_labels, label in checked:
            if i not in embedded:
                x, valid = self._model_input(slices[i])
                with torch.no_grad(), autocast_for(self.device):
                    emb = self.model.encode(x[None].to(self.device), torch.tensor([valid], device=self.device))
                embedded[i] = (emb, valid)
            emb, valid = embedded[i]
            kw: dict[str, Any] = {}
            native = torch.tensor([coords], dtype=torch.float32, device=self.device)
            if kind == "box":
                kw["boxes"] = to_input(native, (h, w), self.model.image_size)
            else:
                pts = to_input(native, (h, w), self.model.image_size)
                kw["points"] = (pts, torch.tensor([point_labels], device=self.device))
            with torch.no_grad(), autocast_for(self.device):
                logits = self.model(None, embeddings=emb, **kw)[0]
            mask = (unletterbox(logits, valid, (h, w))[0] > 0).cpu().numpy()
            labels[i][mask] = label
        return labels

    def predict_file(self, path: Path, out_dir: Path, prompts: list[dict[str, Any]] | None = None,
                     save_probabilities: bool = False, overlay: bool = False, overwrite: bool = False) -> Path:
        """Segment one input; returns the written mask's path."""
        target = out_dir / output_name(path)
        if target.exists() and not overwrite:
            raise DataError(f"{target}: exists; use --overwrite to replace it")
        arr, geom = read_image(path, self.series)
        slices, axis = _slices(arr, geom, self.pre, path, self.volumes)
        probs = None
        if self.mode == "auto":
            labels, probs = self.segment_slices(slices, save_probabilities, _plane_spacing(geom, axis))
        else:
            if not prompts:
                raise DataError(f"{path}: this run was trained with {self.mode} prompts; give them with --prompts FILE")
            labels = self.segment_prompted(slices, prompts, str(path))
        volume = labels[0] if geom.ndim == 2 else np.moveaxis(labels, 0, axis)
        _write_mask(target, volume, geom)
        if probs is not None:
            p = probs[:, 0] if geom.ndim == 2 else np.moveaxis(probs, 1, axis + 1)
            with atomic_path(out_dir / f"{_stem(target)}.probabilities.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, probabilities=p, labels=np.array(list(self.labels.values())))
        if overlay:
            _write_overlay(out_dir / f"{_stem(target)}.overlay.png", slices, labels)
        return target


def _plane_spacing(geom: Geometry, axis: int) -> tuple[float, float]:
    """In-plane (row, col) spacing of slices taken along array ``axis`` (1 where unknown)."""
    if not geom.spacing_known:
        return 1.0, 1.0
    per_axis = list(reversed(geom.spacing))  # SimpleITK's x, y, z -> the array's z, y, x
    row, col = [s for i, s in enumerate(per_axis) if i != axis or geom.ndim == 2][-2:]
    return float(row), float(col)


def _stem(path: Path) -> str:
    return strip_image_ext(path.name)


def _write_mask(target: Path, labels: np.ndarray, geom: Geometry) -> None:
    """Write class indices with the input's geometry exactly (PNG for 2D image inputs)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:]) if target.name.lower().endswith(".nii.gz") else target.suffix
    with atomic_path(target) as tmp:
        staged = tmp.with_name(tmp.name + suffix)  # the writers pick the format by ending
        try:
            if target.suffix.lower() == ".png":
                from PIL import Image

                Image.fromarray(labels.astype(np.uint8)).save(staged, format="PNG")
            else:
                import SimpleITK as sitk

                image = sitk.GetImageFromArray(labels.astype(np.uint8))
                image.SetSpacing(geom.spacing)
                image.SetOrigin(geom.origin)
                image.SetDirection(geom.direction)
                sitk.WriteImage(image, str(staged), useCompression=True)
                _check_written(staged, labels)
            os.replace(staged, tmp)
        finally:
            if staged.exists():
                staged.unlink()


def _check_written(path: Path, labels: np.ndarray) -> None:
    """ITK reports no error when a write fails (a full disk leaves an empty file): read the
    mask back."""
    import SimpleITK as sitk

    try:
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        whole = np.array_equal(back, labels.astype(np.uint8))
    except RuntimeError:
        whole = False
    if not whole:  # "file write failed": tunesam.io.atomic_path names a full disk as such
        raise RuntimeError(f"file write failed: {path.name} does not read back as the mask written")


def _write_overlay(path: Path, slices: np.ndarray, labels: np.ndarray) -> None:
    from tunesam.viz import montage, overlay, save_png

    fg = labels.reshape(len(labels), -1).astype(bool).sum(1)
    picks = sorted(set([len(slices) // 2] + [int(i) for i in np.argsort(-fg)[:2] if fg[i] > 0]))
    tiles = [np.concatenate([np.repeat(slices[i][..., None], 3, 2), overlay(slices[i], labels[i])], 1) for i in picks]
    save_png(path, montage(tiles, cols=1))


def check_prompt(p: Any, k: int, shape: tuple[int, int, int], labels: dict[str, str],
                 where: str) -> tuple[int, str, list[Any], list[int], int]:
    """One prompt of an ``n x h x w`` input, checked: ``(slice, kind, coordinates, point
    labels, label)``. Boxes must be 4 numbers ``x0 < x1``, ``y0 < y1`` inside the slice,
    points pairs inside it, point labels 0/1 (one per point), ``label`` a class of the run."""
    n, h, w = shape
    what = f"{where}: prompt {k} ({json.dumps(p)})"
    if not isinstance(p, dict):
        raise DataError(f"{what}: expected an object with 'box' or 'points'")
    i = p.get("slice", 0)
    if not isinstance(i, int) or not 0 <= i < n:
        raise DataError(f"{what}: slice must be an integer in 0..{n - 1} (slices along the run's axis)")
    label = p.get("label", 1)
    classes = sorted(int(c) for c in labels if int(c) != 0)
    if not isinstance(label, int) or label not in classes:
        raise DataError(f"{what}: label must be one of the run's classes {classes}")

    def numbers(v: Any, count: int) -> bool:
        return isinstance(v, list) and len(v) == count and all(isinstance(x, (int, float)) for x in v)

    inside = f"inside the {w} x {h} slice (x in 0..{w - 1}, y in 0..{h - 1})"
    if "box" in p:
        box = p["box"]
        if not numbers(box, 4):
            raise DataError(f"{what}: a box is 4 numbers [x0, y0, x1, y1]")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1):
            raise DataError(f"{what}: the box must have x0 < x1, y0 < y1 and lie {inside}")
        return i, "box", list(box), [], label
    if "points" in p:
        pts = p["points"]
        if not isinstance(pts, list) or not pts or not all(numbers(q, 2) for q in pts):
            raise DataError(f"{what}: points are a non-empty list of [x, y] pairs")
        if not all(0 <= x <= w - 1 and 0 <= y <= h - 1 for x, y in pts):
            raise DataError(f"{what}: every point must lie {inside}")
        point_labels = p.get("point_labels", [1] * len(pts))
        if not (isinstance(point_labels, list) and len(point_labels) == len(pts)
                and all(v in (0, 1) for v in point_labels)):
            raise DataError(f"{what}: point_labels must be one 0 (background) or 1 (object) per point")
        return i, "points", list(pts), list(point_labels), label
    raise DataError(f"{what}: it has neither 'box' nor 'points'")


def read_prompts(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Load and check a prompts file (see the module docstring for its schema)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON prompts file ({exc})") from exc
    if not isinstance(obj, dict) or not all(isinstance(v, list) for v in obj.values()):
        raise DataError(f"{path}: expected {{\"input file name\": [prompt, ...]}}")
    for name, prompts in obj.items():
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, dict):
                raise DataError(f"{path}: {name}: prompt {i} is not a prompt object ({str(prompt)[:40]!r})")
            unknown = sorted(set(prompt) - set(PROMPT_KEYS))
            if unknown:  # a typo ("boxx") would leave the prompt without its box
                raise DataError(f"{path}: {name}: prompt {i} has unknown keys {unknown}; a prompt takes "
                                f"{', '.join(PROMPT_KEYS)}")
    return obj


PROMPT_KEYS = ("slice", "box", "points", "point_labels", "label")


def predict(run: str | Path, inputs: list[str | Path], out: str | Path, prompts: str | Path | None = None,
            save_probabilities: bool = False, overlay: bool = False, overwrite: bool = False,
            device: str = "auto", batch_size: int | None = None, series: Sequence[str] = ()) -> list[Path]:
    """Segment every input with the run's best weights; returns the written mask paths.
    ``series``: in a DICOM folder holding several series, the UID to read (one per folder).

    ``batch_size`` (slices per forward, default 8) is for automated runs; prompted runs take
    one prompt at a time, and automated runs take no prompts: both are refused, not ignored.
    """
    predictor = Predictor.from_run(run, device, batch_size or 8)
    predictor.series = tuple(series)
    if predictor.mode == "auto" and prompts:
        raise ValueError(f"{run} segments automatically (mode auto): it takes no --prompts")
    if predictor.mode != "auto" and batch_size is not None:
        raise ValueError(f"{run} is a {predictor.mode}-prompted run: it segments one prompt at a time, "
                         "so --batch-size does not apply")
    out_dir = Path(out)
    plan = plan_outputs([Path(i) for i in inputs], out_dir, overwrite)
    table = read_prompts(prompts) if prompts else {}
    entries: list[list[dict[str, Any]] | None] = []
    for item in inputs:
        entry = table.get(str(item)) or table.get(Path(item).name)
        if predictor.mode != "auto" and not entry:
            raise DataError(f"{item}: this run was trained with {predictor.mode} prompts and "
                            + (f"{prompts} has no entry for it (keys are input paths or file names)" if prompts
                               else "none were given: use --prompts FILE"))
        entries.append(entry)
    return [predictor.predict_file(src, out_dir, entry, save_probabilities, overlay, overwrite)
            for (src, _), entry in zip(plan, entries)]


def plan_outputs(inputs: list[Path], out_dir: Path, overwrite: bool) -> list[tuple[Path, Path]]:
    """``(input, mask path)`` for every input, refusing before anything is written: an
    ``--out`` that is a file, two inputs that would write one mask, and (without
    ``overwrite``) masks that exist."""
    refuse_dangling_link(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file; give a folder for the masks")
    plan = [(p, out_dir / output_name(p)) for p in inputs]
    by_target: dict[Path, list[Path]] = {}
    for src, target in plan:
        by_target.setdefault(target, []).append(src)
    clashes = [f"{' and '.join(map(str, srcs))} -> {target.name}" for target, srcs in by_target.items() if len(srcs) > 1]
    if clashes:
        raise DataError("inputs that would write the same mask: " + "; ".join(clashes)
                        + ". Predict them into different --out folders; nothing was written")
    existing = [str(t) for _, t in plan if t.exists()]
    if existing and not overwrite:
        raise DataError(f"masks exist: {', '.join(existing)}; use --overwrite to replace them; nothing was written")
    return plan
