"""``tunesam prepare``: a dataset in any supported layout -> training-ready 2D slices.

The result is a folder with ``manifest.json`` (every option used, label names, geometry
and slices of each case, the split) and the pixel store of :mod:`tunesam.data.store`. It
is written into a hidden sibling folder and renamed into place at the end, so an
interrupted run never looks complete.

Which slices are stored: the test split keeps every slice; train and val keep the slices
with foreground and, for ``pretrain mae``, the non-blank ones without
(:func:`tunesam.data.preprocess.is_blank`), which fine-tuning trains on only with
``--keep-empty`` (then every slice is stored). ``unlabelled`` (image-only data) stores every
non-blank slice of every split and no masks.
"""
from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesam.data.layouts import CaseSource, SourceDataset, read_source
from tunesam.data.preprocess import (
    CT_WINDOW,
    PERCENTILES,
    check_integer_mask,
    downsample,
    downsample_images,
    finite_voxels,
    is_blank,
    map_labels,
    stored_shape,
    to_uint8,
)
from tunesam.data.readers import COLOUR, DataError, Geometry, colour_name, read_image, read_mask
from tunesam.data.split import SPLITS, parse_ratios, patient_split, patients_in_several_sets
from tunesam.data.store import FORMAT, FORMAT_VERSION, MANIFEST, PreparedData, SliceWriter
from tunesam.io import disk_full, owned, write_json

log = logging.getLogger("tunesam.prepare")

# A case's arrays: image (channels last if several), its geometry, mask (None: image-only), its geometry.
CaseArrays = tuple[np.ndarray, Geometry, np.ndarray | None, Geometry]


@dataclass(frozen=True)
class PrepareOptions:
    """Every choice ``prepare`` makes, validated; written to the manifest.

    ``keep_empty``: fine-tuning also trains on train/val slices whose mask is empty (they are
    stored either way, the non-blank ones, for ``pretrain mae``). ``unlabelled``: image-only
    data (masks, where the layout has them, are not read) for ``pretrain mae`` alone; every
    non-blank slice is kept.
    """

    layout: str = "auto"
    root: str | None = None
    axis: int = 0
    size: int = 1024
    split: str = "7:1:2"
    seed: int = 0
    keep_empty: bool = False
    labels: str = "all"
    label_map: dict[int, int] | None = None
    channel: int = 0
    case_pattern: str | None = None
    modality: str | None = None
    window: tuple[float, float] | None = None
    unlabelled: bool = False
    series: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise DataError(f"--axis must be 0, 1 or 2, got {self.axis}")
        if self.size < 16:
            raise DataError(f"--size must be at least 16 pixels, got {self.size}")
        if self.labels not in ("all", "merge"):
            raise DataError(f"--labels must be 'all' or 'merge', got {self.labels!r}")
        if self.modality not in (None, "mr", "ct", "other"):
            raise DataError(f"--modality must be mr, ct or other, got {self.modality!r}")
        if self.window is not None and self.window[1] <= 0:
            raise DataError(f"--window width must be positive, got {self.window[1]}")
        if self.label_map is not None and self.labels == "merge":
            raise DataError("--label-map and --labels merge exclude each other")
        if self.label_map is not None and not all(0 <= c <= 255 for c in self.label_map.values()):
            raise DataError("--label-map classes must be 0..255")
        if self.unlabelled:
            given = [flag for flag, on in (("--keep-empty", self.keep_empty), ("--labels merge", self.labels == "merge"),
                                           ("--label-map", self.label_map is not None)) if on]
            if given:
                raise DataError(f"{', '.join(given)}: about masks, which --unlabelled data has none of "
                                "(it keeps every non-blank slice)")
        parse_ratios(self.split)


def parse_label_map(text: str) -> dict[int, int]:
    """``--label-map``: a JSON object (or a file holding one) of raw value -> class; a colour
    mask's keys are colours, ``"#rrggbb"``."""
    looks_json = text.lstrip().startswith("{")
    if not looks_json and not Path(text).is_file():
        raise DataError(f"--label-map {text}: no such file, and not a JSON object either (give a file, or JSON "
                        "like '{\"254\": 1}')")
    raw = text if looks_json else Path(text).read_text()
    where = "--label-map" if looks_json else f"--label-map {text}"
    try:
        obj = json.loads(raw)
        return {_label_key(k): int(v) for k, v in obj.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: must be a JSON object of raw value (or \"#rrggbb\" colour) -> class, like "
                        f"'{{\"254\": 1}}': {exc}") from exc


def _label_key(key: str) -> int:
    key = key.strip()
    if key.startswith("#"):
        if len(key) != 7:
            raise ValueError(f"colour {key!r} is not #rrggbb")
        rgb = int(key[1:], 16)
        return 0 if rgb == 0 else COLOUR | rgb  # black is the background
    return int(key)


def parse_window(text: str) -> tuple[float, float]:
    """``--window L,W``."""
    try:
        level, width = (float(x) for x in text.split(","))
    except ValueError:
        raise DataError(f"--window must be 'level,width' like 40,400, got {text!r}") from None
    return level, width


# -- loading a case ------------------------------------------------------------------------
def load_case_files(case: CaseSource, opts: PrepareOptions, layout: str) -> CaseArrays:
    """Read a case's image and mask files and check they belong together (``--unlabelled``:
    the image alone, mask ``None``)."""
    image, igeom = read_image(case.image, opts.series)
    vol = igeom.ndim == 3
    if image.ndim == igeom.ndim + 1:  # channels last (MSD 4D, colour volumes)
        if layout == "nnunet":
            raise DataError(f"{case.image}: a {image.ndim}D image ({image.shape[-1]} frames or channels) in an "
                            "nnU-Net dataset, where each file holds one channel (CASE_0000, CASE_0001, ...) and "
                            "--channel picks the file; split it into one file per channel")
        if opts.channel >= image.shape[-1]:
            raise DataError(f"{case.image}: --channel {opts.channel} but the image has {image.shape[-1]} channels")
        image = image[..., opts.channel]
    if opts.unlabelled:
        return image, igeom, None, igeom
    if case.mask is None:
        raise DataError(f"{case.image}: has no mask (image-only data is prepared with --unlabelled, for pretrain mae)")
    mask, mgeom = read_mask(case.mask)
    _refuse_unmapped_colours(mask, case.mask, opts)
    if mask.ndim != mgeom.ndim:
        raise DataError(f"{case.mask}: a mask must have one channel, found {mask.shape[-1]}")
    if image.shape != mask.shape:
        raise DataError(
            f"{case.mask}: mask shape {mask.shape} differs from image {case.image.name} shape {image.shape}"
        )
    if vol and not igeom.matches(mgeom):
        raise DataError(
            f"{case.mask}: mask geometry differs from image {case.image.name}: spacing {mgeom.spacing} vs "
            f"{igeom.spacing}, origin {mgeom.origin} vs {igeom.origin}, direction {mgeom.direction} vs {igeom.direction}"
        )
    return image, igeom, mask, mgeom


# -- labels --------------------------------------------------------------------------------
def _label_plan(
    src: SourceDataset, opts: PrepareOptions, scan: Callable[[], set[int]]
) -> tuple[dict[int, int] | None, dict[int, str]]:
    """(raw value -> class, or None to merge every non-zero value; class -> name)."""
    if opts.unlabelled:
        return None, {0: "background"}
    names_by_value = src.label_names or {}
    if opts.labels == "merge":
        fg = [n for v, n in sorted(names_by_value.items()) if v != 0]
        name = fg[0] if len(fg) == 1 else "foreground"
        return None, {0: "background", 1: name}
    if opts.label_map is not None:
        classes = sorted({c for c in opts.label_map.values() if c != 0})
        if classes != list(range(1, len(classes) + 1)):
            raise DataError(f"--label-map classes must be 1..K without gaps, got {classes}")
        names = {0: "background"}
        for c in classes:
            raws = [v for v, k in sorted(opts.label_map.items()) if k == c]
            names[c] = "+".join(names_by_value.get(v, colour_name(v) if v >= COLOUR else f"label_{v}") for v in raws)
        return dict(opts.label_map), names
    values = sorted(v for v in (names_by_value or scan()) if v != 0)
    if not values:
        raise DataError(f"{src.root}: every mask is empty (no non-zero label anywhere)")
    if len(values) > 255:
        raise DataError(f"{src.root}: {len(values)} distinct mask values; at most 255 classes are supported")
    mapping = {v: i + 1 for i, v in enumerate(values)}
    names = {0: "background"} | {i + 1: names_by_value.get(v, f"label_{v}") for i, v in enumerate(values)}
    return mapping, names


def _refuse_unmapped_colours(mask: np.ndarray, path: Path, opts: PrepareOptions) -> None:
    """A colour mask needs --label-map with its colours (or --labels merge): luminance would
    make one organ two classes."""
    if mask.dtype.kind not in "iu" or mask.size == 0 or int(mask.max()) < COLOUR:
        return
    if opts.labels == "merge" or any(k >= COLOUR for k in (opts.label_map or {})):
        return
    colours = [colour_name(v) for v in np.unique(mask) if v >= COLOUR]
    shown = ", ".join(colours[:8]) + (f", ... ({len(colours)} colours)" if len(colours) > 8 else "")
    example = ", ".join(f'"{c}": {i + 1}' for i, c in enumerate(colours[:2]))
    raise DataError(f"{path}: a colour mask ({shown} on black); map its colours to classes with --label-map "
                    f"'{{{example}}}' (black is the background), give --labels merge for one class, or save the masks "
                    "with one grey value (or palette index) per label")


# A scan that finds at least this many mask values each covering under MINOR of the labelled
# pixels refuses the masks: anti-aliased, resized or lossy masks, whose values are no labels.
MANY_MINOR_VALUES = 8
MINOR = 0.005


def _scan_values(src: SourceDataset, warnings: list[str]) -> set[int]:
    """Every mask value (the classes, when no names or map say them), refusing masks whose
    values are evidently not labels."""
    counts: dict[int, int] = {}
    most: tuple[int, Path | None] = (0, None)
    for case in src.cases:
        assert case.mask is not None
        mask, _ = read_mask(case.mask)
        _refuse_unmapped_colours(mask, case.mask, PrepareOptions())
        values, n = np.unique(check_integer_mask(mask, str(case.mask)), return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            if v != 0:
                counts[v] = counts.get(v, 0) + c
        most = max(most, (len(values), case.mask), key=lambda t: t[0])
    labelled = sum(counts.values())
    minor = sorted(v for v, c in counts.items() if c < MINOR * labelled)
    if len(minor) >= MANY_MINOR_VALUES:
        raise DataError(
            f"{src.root}: the masks hold {len(counts)} values, {len(minor)} of which cover under {MINOR:.1%} of the "
            f"labelled pixels each (such as {', '.join(map(str, minor[:6]))}; {most[1]} alone holds {most[0]} values): "
            "these look like anti-aliased, resized or lossily saved masks, whose values are no labels. Give "
            "--labels merge (every non-zero pixel is one class), --label-map for the values that are labels (the "
            "others to 0), or masks saved with one value per label")
    if len(minor) >= 3:
        warnings.append(f"{len(minor)} mask values cover under {MINOR:.1%} of the labelled pixels each "
                        f"({', '.join(map(str, minor[:6]))}); each became a class. Check that they are labels")
    return set(counts)


# -- split ---------------------------------------------------------------------------------
def _assign_splits(src: SourceDataset, opts: PrepareOptions, warnings: list[str]) -> tuple[dict[str, str], str]:
    patient_of = {c.case_id: c.patient for c in src.cases}
    if src.split_given:
        assignment = {c.case_id: c.split or "test" for c in src.cases}
        for patient, sets in patients_in_several_sets(assignment, patient_of).items():
            warnings.append(f"patient {patient} is in more than one set of the given split ({', '.join(sets)}); kept as given")
        return assignment, "given"
    try:
        by_patient = patient_split(list(patient_of.values()), parse_ratios(opts.split), opts.seed)
    except DataError as exc:
        skipped = [w for w in warnings if "skipped" in w]
        if skipped:  # say why there are so few: images left out before the split
            raise DataError(f"{exc}. Note: {'; '.join(skipped)}") from exc
        raise
    where = {p: s for s, ps in by_patient.items() for p in ps}
    return {cid: where[p] for cid, p in patient_of.items()}, "seeded"


# -- fingerprint and folder handling ------------------------------------------------------
def _file_stamp(path: Path | None) -> list[Any]:
    if path is None:
        return []
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def fingerprint(source_desc: dict[str, Any], opts: PrepareOptions, cases: list[CaseSource]) -> str:
    """Identity of the inputs and options: equal fingerprints mean the same prepared data."""
    payload = {
        "source": source_desc,
        "options": _options_dict(opts),
        "files": [[c.case_id, _file_stamp(c.image), _file_stamp(c.mask)] for c in cases],
        "format_version": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _options_dict(opts: PrepareOptions) -> dict[str, Any]:
    d = asdict(opts)
    if not d["series"]:  # absent from fingerprints made before the option existed
        del d["series"]
    if d["label_map"] is not None:
        d["label_map"] = {str(k): v for k, v in sorted(d["label_map"].items())}
    return d


def _check_out(out: Path, fp: str, force: bool) -> bool:
    """True when ``out`` already holds this exact preparation (reuse it)."""
    if not out.exists():
        return False
    manifest = out / MANIFEST
    if not manifest.is_file():
        if out.is_dir() and not any(out.iterdir()):
            return False
        raise DataError(f"{out}: exists and is not a prepared dataset; refusing to write over it")
    old = json.loads(manifest.read_text())
    if old.get("fingerprint") == fp:
        return True
    if not force and old.get("format_version", 0) < FORMAT_VERSION:
        raise DataError(f"{out}: prepared by an older tunesam (format {old.get('format_version')}, now "
                        f"{FORMAT_VERSION}); use --force to prepare it again, or choose another --out")
    if not force:
        raise DataError(
            f"{out}: already holds a dataset prepared from other inputs or options "
            f"(source {old.get('source', {}).get('path')}); use --force to replace it or choose another --out"
        )
    return False


def _stale_tmp(out: Path) -> Iterator[Path]:
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            yield p
        except PermissionError:
            continue


# -- the main entry ------------------------------------------------------------------------
@dataclass
class PrepareResult:
    folder: Path
    reused: bool
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.manifest
        counts = m["counts"]
        unlabelled = m.get("unlabelled", False)
        lines = [f"{'reused' if self.reused else 'prepared'} {self.folder}  ({m['source']['layout']} layout)"]
        lines.append("image-only (--unlabelled): for pretrain mae only" if unlabelled
                     else "labels: " + ", ".join(f"{k} {v}" for k, v in m["labels"].items()))
        for s in SPLITS:
            c = counts[s]
            what = "non-blank" if unlabelled else f"{c['nonempty']} with foreground"
            lines.append(f"  {s:<5} {c['patients']:>5} patients {c['cases']:>6} cases {c['slices']:>7} slices "
                         f"({what}; {c.get('blank_dropped', 0)} blank not stored)")
        lines += [f"warning: {w}" for w in m.get("warnings", [])]
        return "\n".join(lines)


def prepare(
    source: str | Path,
    out: str | Path,
    options: PrepareOptions | None = None,
    force: bool = False,
) -> PrepareResult:
    """Prepare ``source`` (a dataset folder or CSV list) into ``out``."""
    opts = options or PrepareOptions()
    src = read_source(source, opts.layout, opts.root, opts.channel, opts.case_pattern, opts.unlabelled)
    desc = {"path": str(Path(source).resolve()), "layout": src.layout, "root": str(src.root.resolve())}
    return prepare_source(src, desc, out, opts, force, lambda c: load_case_files(c, opts, src.layout))


def prepare_source(
    src: SourceDataset,
    source_desc: dict[str, Any],
    out: str | Path,
    opts: PrepareOptions,
    force: bool,
    load: Callable[[CaseSource], CaseArrays],
    scan: Callable[[], set[int]] | None = None,
    normalized: bool = False,
) -> PrepareResult:
    """Prepare a read ``src`` (its cases loaded by ``load``) into ``out``: shared by files and
    in-memory sources; ``normalized``: ``load`` gives 0-255 uint8 images already normalised per
    whole volume (the example's slabs)."""
    target = _followed(Path(out))
    with owned(target, "prepared dataset"):
        return _prepare_source(src, source_desc, target, opts, force, load, scan, normalized)


def _followed(out: Path) -> Path:
    """``out``, or the folder it links to: ``--force`` replaces the dataset there, not the link."""
    if not out.is_symlink():
        return out
    target = Path(os.path.realpath(out))
    if not target.exists():
        raise DataError(f"{out}: is a link to {target}, which does not exist; create that folder, remove the link, "
                        "or choose another --out")
    return target


def _prepare_source(src: SourceDataset, source_desc: dict[str, Any], out: Path, opts: PrepareOptions, force: bool,
                    load: Callable[[CaseSource], CaseArrays], scan: Callable[[], set[int]] | None,
                    normalized: bool) -> PrepareResult:
    for stale in _stale_tmp(out):  # a killed earlier prepare's half-written folder, whatever happens next
        shutil.rmtree(stale, ignore_errors=True)
    fp = fingerprint(source_desc, opts, src.cases)
    if _check_out(out, fp, force):
        return PrepareResult(out, True, PreparedData.open(out).manifest)
    warnings = list(src.warnings)
    value_map, names = _label_plan(src, opts, scan or (lambda: _scan_values(src, warnings)))
    assignment, split_source = _assign_splits(src, opts, warnings)
    modality = opts.modality or src.modality or "other"

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    writer = SliceWriter(tmp, masks=not opts.unlabelled)
    try:
        cases_meta = []
        order = sorted(src.cases, key=lambda c: (SPLITS.index(assignment[c.case_id]), c.case_id))
        for n, case in enumerate(order):
            split = assignment[case.case_id]
            cases_meta.append(_write_case(n, case, split, load(case), opts, modality, value_map, writer, normalized,
                                          warnings))
            log.info("%s: %d/%d %s", split, n + 1, len(order), case.case_id)
        n_slices = writer.close()
    except BaseException as exc:
        try:
            writer.abort()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(exc, out.parent):
            raise OSError(errno.ENOSPC, f"the disk is full: the prepared dataset {out} could not be written; "
                          "nothing of it was left", str(out.parent)) from exc
        raise
    try:
        manifest = _manifest(src, source_desc, opts, modality, names, value_map, cases_meta, split_source,
                             fp, warnings, n_slices)
        _check_not_empty(manifest, src, opts)
        write_json(tmp / MANIFEST, manifest)
        _move_into_place(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(exc, out.parent):
            raise OSError(errno.ENOSPC, f"the disk is full: the prepared dataset {out} could not be written",
                          str(out.parent)) from exc
        raise
    return PrepareResult(out, False, PreparedData.open(out).manifest)


def _write_case(
    n: int,
    case: CaseSource,
    split: str,
    arrays: CaseArrays,
    opts: PrepareOptions,
    modality: str,
    value_map: dict[int, int] | None,
    writer: SliceWriter,
    normalized: bool = False,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    image, geom, mask, _ = arrays
    image, note = finite_voxels(image, str(case.image))
    if note:
        log.warning("%s", note)
        if warnings is not None:
            warnings.append(note)
    if opts.unlabelled:  # masks a layout has (or the example's labels) are not used
        mask = None
    where = str(case.mask or case.image)
    is_2d = geom.ndim == 2
    pixels = image if normalized else to_uint8(image, is_2d, modality, opts.window)
    axis = 0 if is_2d else opts.axis
    stack_img = pixels[None] if is_2d else np.moveaxis(pixels, axis, 0)
    native = (int(stack_img.shape[1]), int(stack_img.shape[2]))
    shape = stored_shape(*native, opts.size)
    if mask is None:  # image-only (--unlabelled): every non-blank slice, no masks
        imgs = downsample_images(stack_img, shape)
        blank = np.array([is_blank(s) for s in imgs], dtype=bool)
        kept, dropped = np.flatnonzero(~blank), int(blank.sum())
        for idx in kept:
            writer.add(n, int(idx), imgs[idx], None, split)
        stored_nonempty = dict.fromkeys(kept.tolist(), False)
    else:
        classes = map_labels(check_integer_mask(mask, where), value_map, where)
        stack_msk = classes[None] if is_2d else np.moveaxis(classes, axis, 0)
        imgs, msks = downsample(stack_img, stack_msk, shape)
        nonempty = stack_msk.reshape(len(stack_msk), -1).any(axis=1)
        # Blankness is judged on the stored slice, as pretrain mae reads it.
        blank = np.array([is_blank(s) for s in imgs], dtype=bool)
        keep = np.ones_like(nonempty) if (split == "test" or opts.keep_empty) else nonempty | ~blank
        kept, dropped = np.flatnonzero(keep), int((~keep).sum())
        for idx in kept:
            writer.add(n, int(idx), imgs[idx], msks[idx], split)
        # The flags describe the stored masks, as the index does: an object smaller than a
        # stored pixel can vanish when a slice is downsampled.
        stored_nonempty = {int(i): bool(msks[i].any()) for i in kept}
    return {
        "id": case.case_id,
        "patient": case.patient,
        "volume": case.volume,
        "image": str(case.image),
        "mask": str(case.mask) if case.mask and not opts.unlabelled else None,
        "split": split,
        "geometry": geom.to_dict(),
        "axis": axis,
        "plane_spacing": list(geom.plane_spacing(axis)),
        "native_plane": list(native),
        "stored_plane": list(shape),
        "num_slices": int(len(stack_img)),
        "blank_dropped": dropped,
        "slices": [[int(i), int(stored_nonempty[int(i)])] for i in kept],
    }


def _manifest(
    src: SourceDataset,
    source_desc: dict[str, Any],
    opts: PrepareOptions,
    modality: str,
    names: dict[int, str],
    value_map: dict[int, int] | None,
    cases: list[dict[str, Any]],
    split_source: str,
    fp: str,
    warnings: list[str],
    n_slices: int,
) -> dict[str, Any]:
    from tunesam._version import __version__

    split = {s: [c["id"] for c in cases if c["split"] == s] for s in SPLITS}
    counts = {}
    for s in SPLITS:
        sel = [c for c in cases if c["split"] == s]
        counts[s] = {
            "patients": len({c["patient"] for c in sel}),
            "cases": len(sel),
            "slices": sum(len(c["slices"]) for c in sel),
            "nonempty": sum(f for c in sel for _, f in c["slices"]),
            "blank_dropped": sum(c["blank_dropped"] for c in sel),
        }
    uses_window = opts.window is not None or modality == "ct"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tunesam_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source_desc,
        "options": _options_dict(opts) | {
            "modality": modality,
            "intensity": (
                {"method": "window", "level_width": list(opts.window or CT_WINDOW)} if uses_window
                else {"method": "percentile_nonzero", "percentiles": list(PERCENTILES),
                      "note": "8-bit 2D images are kept as they are"}
            ),
            "storage": {"dtype": "uint8", "channels": 1, "downsample": "area (images), nearest (masks)",
                        "max_side": opts.size},
            "load": {"resize": "longest side to the model input, bilinear (images), nearest (masks)",
                     "padding": "zeros, bottom and right, to a square"},
        },
        "unlabelled": opts.unlabelled,
        # Format 2: train/val keep their non-blank slices without foreground too (for pretrain
        # mae); fine-tuning trains on them only with keep_empty (PreparedData.trains_on_empty).
        "empty_slices_stored": True,
        "blank_rule": "not stored when fewer than 1% of the stored slice's pixels are above its minimum "
                      + ("(any slice)" if opts.unlabelled
                         else "(train/val slices without foreground, unless keep_empty)"),
        "labels": {str(k): v for k, v in sorted(names.items())},
        "label_values": "none (image-only)" if opts.unlabelled else "all non-zero -> 1" if value_map is None
        else {str(k): v for k, v in sorted(value_map.items())},
        "split_source": split_source,
        "seed": opts.seed,
        "split": split,
        "counts": counts,
        "num_slices": n_slices,
        "warnings": warnings,
        "fingerprint": fp,
        "cases": cases,
    }


def _check_not_empty(manifest: dict[str, Any], src: SourceDataset, opts: PrepareOptions) -> None:
    counts = manifest["counts"]
    if opts.unlabelled:
        hint, usable = " (blank slices are dropped)", "slices"
    elif opts.keep_empty:
        hint, usable = "", "slices"
    else:  # fine-tuning's train and val sets are the slices with foreground
        hint, usable = " (slices with empty masks are dropped from train and val; --keep-empty keeps them)", "nonempty"
    for s in ("train", "val"):
        if counts[s]["cases"] == 0:
            if not src.split_given:
                origin = f"the split ({opts.split}) gives it none"
            elif src.layout == "nnunet":
                origin = "fold 0 of splits_final.json gives it none"
            else:
                origin = f"the lists give it none (a lists folder needs a {s}* list beside the others)"
            raise DataError(f"{src.root}: the {s} set has no cases: {origin}; training needs a train and a val set "
                            "(the val set chooses the best epoch)")
        if counts[s][usable] == 0:
            raise DataError(f"{src.root}: the {s} set has no slices after filtering{hint}")
    if counts["test"]["cases"] == 0:
        manifest["warnings"].append("there is no test set: evaluate on the val set (--split val)")


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
