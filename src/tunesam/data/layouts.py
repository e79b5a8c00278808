"""Dataset layouts people already use, turned into one list of image/mask pairs.

Supported: nnU-Net v2 raw folders, Medical Segmentation Decathlon task folders, CSV pair
lists (one list, or a folder of ``train*/val*/test*`` lists that is then the split), and
two folders of images and masks matched by file name. Each pair becomes a
:class:`CaseSource` carrying the patient it belongs to, so splits never separate one
patient's images.

Image-only data (``unlabelled``, for ``pretrain mae``): the same layouts read without their
masks (an nnU-Net folder's ``imagesTr`` needs no ``labelsTr``, a CSV list needs one column,
an images folder no masks folder), or the ``images`` layout: any folder of images, searched
recursively (NIfTI/MHA/NRRD volumes, PNG/JPG/BMP/TIFF images, and every sub-folder holding
DICOM files as one series).
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunesam.data.readers import DataError, is_image_file, strip_image_ext

LAYOUTS = ("auto", "nnunet", "msd", "csv", "folders", "images")
DEFAULT_CASE_PATTERN = r"(?i)(?:patient|case|subject|sub)[-_]?\d+"
SPLITS = ("train", "val", "test")
_IMAGE_DIRS = ("images", "imgs", "image", "img", "imagesTr")
_MASK_DIRS = ("masks", "mask", "labels", "label", "labelsTr", "gt", "ground_truth", "annotations", "segmentations")
_MASK_SUFFIXES = ("_mask", "-mask", "_seg", "-seg", "_label", "-label", "_gt", "_labels", "_masks")


@dataclass(frozen=True)
class CaseSource:
    """One image (a volume or a 2D image) and its mask (``None`` for image-only data).

    ``patient`` groups cases for splitting; ``volume`` groups 2D images cut from one scan
    (few-shot sampling takes images from distinct volumes); ``split`` is set when the
    layout itself gives the split.
    """

    case_id: str
    patient: str
    volume: str
    image: Path
    mask: Path | None
    split: str | None = None


@dataclass
class SourceDataset:
    """What a layout reader found."""

    layout: str
    root: Path
    cases: list[CaseSource]
    label_names: dict[int, str] | None = None
    modality: str | None = None
    split_given: bool = False
    warnings: list[str] = field(default_factory=list)


def _patients(rel_paths: list[str], pattern: str, what: str, warnings: list[str]) -> list[str | None]:
    """Patient id of each path by ``pattern`` (first group, or the whole match)."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--case-pattern {pattern!r} is not a valid regular expression: {exc}") from exc
    found: list[str | None] = []
    for p in rel_paths:
        m = rx.search(p)
        found.append((m.group(1) if m.groups() else m.group(0)) if m else None)
    misses = [p for p, f in zip(rel_paths, found) if f is None]
    if misses and len(misses) == len(rel_paths):
        warnings.append(
            f"no patient id found in the {what} paths with pattern {pattern!r}: every image counts as its own "
            "patient, so images of one patient may land in different splits; pass --case-pattern REGEX to group them"
        )
    elif misses:
        warnings.append(
            f"{len(misses)} of {len(rel_paths)} {what} paths have no patient id for pattern {pattern!r} "
            f"(e.g. {misses[0]}); each of those counts as its own patient"
        )
    return found


def _cases_from_pairs(
    pairs: list[tuple[Path, Path | None, str | None]], root: Path, pattern: str, warnings: list[str]
) -> list[CaseSource]:
    """Cases for 2D/3D image files listed in pairs, ids unique, patients by pattern."""
    rel = [os.path.relpath(img, root).replace(os.sep, "/") for img, _, _ in pairs]
    stems = [strip_image_ext(Path(r).name) for r in rel]
    unique_stems = len(set(stems)) == len(stems)
    ids = stems if unique_stems else [strip_image_ext(r).replace("/", "__") for r in rel]
    dup = [k for k, n in Counter(ids).items() if n > 1]
    if dup:
        raise DataError(f"{root}: image {dup[0]!r} is listed more than once")
    patients = _patients(rel, pattern, "image", warnings)
    cases = []
    for (img, mask, split), cid, r, pat in zip(pairs, ids, rel, patients):
        patient = pat if pat is not None else cid
        parent = os.path.dirname(r)
        cases.append(CaseSource(cid, patient, f"{patient}/{parent}" if pat else cid, img, mask, split))
    return cases


# -- nnU-Net v2 ---------------------------------------------------------------------------
def _labels_from_json(labels: dict[str, object], path: Path, numeric_keys: bool) -> dict[int, str]:
    """Label value -> name; rejects nnU-Net's region-based and ``ignore`` labels."""
    out: dict[int, str] = {}
    for k, v in labels.items():
        name, value = (v, k) if numeric_keys else (k, v)
        if str(name).lower() == "ignore":
            raise DataError(f"{path}: nnU-Net 'ignore' labels are not supported yet (label {k!r})")
        if isinstance(value, (list, tuple)):
            raise DataError(
                f"{path}: region-based labels are not supported yet (label {name!r} is the region {value})"
            )
        try:
            out[int(value)] = str(name)
        except (TypeError, ValueError):
            if str(name).lstrip("-").isdigit():  # the other format's order
                given, want = ("name: value", "value: name, e.g. {\"0\": \"background\", \"1\": \"organ\"} (the "
                               "Decathlon's format)") if numeric_keys else \
                    ("value: name", "name: value, e.g. {\"background\": 0, \"organ\": 1} (nnU-Net v2's format)")
                raise DataError(f"{path}: its labels are given as {given} ({k!r}: {v!r}); this dataset.json needs "
                                f"{want}") from None
            raise DataError(f"{path}: label {k!r} has the non-integer value {value!r}") from None
    return out


def _nnunet_images(root: Path, ending: str, channel: int) -> list[tuple[str, Path]]:
    """(case id, image of ``channel``) of every case in ``imagesTr/``, labelled or not."""
    folder = root / "imagesTr"
    if not folder.is_dir():
        raise DataError(f"{root}: an nnU-Net dataset needs imagesTr/ beside dataset.json")
    suffix = f"_{channel:04d}{ending}"
    return sorted((p.name[: -len(suffix)], p) for p in folder.iterdir()
                  if p.name.endswith(suffix) and not p.name.startswith("."))


def read_nnunet(root: Path, channel: int, warnings: list[str], unlabelled: bool = False) -> SourceDataset:
    meta_path = root / "dataset.json"
    meta = json.loads(meta_path.read_text())
    ending = meta.get("file_ending", ".nii.gz")
    channels = {int(k): str(v) for k, v in meta.get("channel_names", meta.get("modality", {})).items()}
    if channels and channel not in channels:
        raise DataError(f"{meta_path}: --channel {channel} not among its channels {channels}")
    labels = None if unlabelled else _labels_from_json(meta.get("labels", {}), meta_path, numeric_keys=False)
    pairs: list[tuple[Path, Path | None, str | None]] = []
    if isinstance(meta.get("dataset"), dict):  # explicit file lists (nnU-Net v2 option)
        for case, entry in sorted(meta["dataset"].items()):
            imgs = entry["images"]
            pairs.append((root / imgs[channel], None if unlabelled else root / entry["label"], None))
        ids = sorted(meta["dataset"])
    elif unlabelled:  # every image of the channel; labelsTr is not read
        found = _nnunet_images(root, ending, channel)
        ids = [cid for cid, _ in found]
        pairs = [(img, None, None) for _, img in found]
        if not pairs:
            raise DataError(f"{root}: no images of channel {channel} in imagesTr/ (*{channel:04d}{ending})")
    else:
        label_dir = root / "labelsTr"
        if not label_dir.is_dir():
            raise DataError(f"{root}: an nnU-Net dataset needs labelsTr/ beside dataset.json")
        ids = sorted(p.name[: -len(ending)] for p in label_dir.iterdir()
                     if p.name.endswith(ending) and not p.name.startswith("."))
        for cid in ids:
            img = root / "imagesTr" / f"{cid}_{channel:04d}{ending}"
            if not img.exists():
                raise DataError(f"{img}: missing (labelsTr/{cid}{ending} has no image for channel {channel})")
            pairs.append((img, label_dir / f"{cid}{ending}", None))
        unlabelled_images = sorted(cid for cid, _ in _nnunet_images(root, ending, channel) if cid not in set(ids))
        if unlabelled_images:
            names = ", ".join(f"imagesTr/{cid}_{channel:04d}{ending}" for cid in unlabelled_images[:5])
            raise DataError(f"{root}: {len(unlabelled_images)} training image(s) without a label in labelsTr/ ({names}"
                            f"{', ...' if len(unlabelled_images) > 5 else ''}); nnU-Net trains on labelled cases only: "
                            "add the labels, move the images out (to imagesTs/), or prepare with --unlabelled")
    if not pairs:
        raise DataError(f"{root}: no labelled cases (labelsTr/*{ending})")
    split_of: dict[str, str] = {}
    split_file = root / "splits_final.json"
    if split_file.exists():
        fold = _fold0(split_file)
        known = set(ids)
        unknown = sorted({cid for name in ("train", "val") for cid in fold[name]} - known)
        if unknown:
            raise DataError(f"{split_file}: fold 0 names cases this dataset does not have: {unknown[:8]}; "
                            "it is another dataset's split, or the cases are missing")
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            warnings.append(f"{split_file.name}: {', '.join(both)} in both train and val of fold 0; kept in val")
        for name in ("train", "val"):
            for cid in fold[name]:
                split_of[cid] = name
        for cid in ids:
            split_of.setdefault(cid, "test")
        warnings.append(f"using fold 0 of {split_file.name} as the train/val split; other cases are the test set")
    cases = [
        CaseSource(cid, cid, cid, img, mask, split_of.get(cid))
        for cid, (img, mask, _) in zip(ids, pairs)
    ]
    modality = "ct" if channels.get(channel, "").strip().upper() == "CT" else None
    return SourceDataset("nnunet", root, cases, labels, modality, bool(split_of), warnings)


def _fold0(path: Path) -> dict[str, list[str]]:
    """Fold 0 of nnU-Net's ``splits_final.json`` (a list of ``{"train": [...], "val": [...]}``),
    or an error naming the file and what it holds instead."""
    try:
        folds = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); nnU-Net's splits_final.json is a list of folds, "
                        '[{"train": [case ids], "val": [case ids]}, ...]') from exc
    fold = folds[0] if isinstance(folds, list) and folds else None
    if not (isinstance(fold, dict) and all(isinstance(fold.get(k), list) and all(isinstance(c, str) for c in fold[k])
                                           for k in ("train", "val"))):
        found = "an empty list" if folds == [] else f"a {type(folds).__name__}" if not isinstance(folds, list) \
            else f"a first fold of {type(fold).__name__} {str(fold)[:60]}"
        raise DataError(f"{path}: expected a list of folds whose first is {{\"train\": [case ids], \"val\": "
                        f"[case ids]}} (nnU-Net's format), found {found}")
    return fold


# -- Medical Segmentation Decathlon --------------------------------------------------------
def read_msd(root: Path, warnings: list[str], unlabelled: bool = False) -> SourceDataset:
    meta_path = root / "dataset.json"
    meta = json.loads(meta_path.read_text())
    labels = None if unlabelled else _labels_from_json(meta.get("labels", {}), meta_path, numeric_keys=True)
    modality_names = {int(k): str(v) for k, v in meta.get("modality", {}).items()}
    cases = []
    training = meta.get("training")
    if not isinstance(training, list):
        raise DataError(f"{meta_path}: expected a 'training' list of {{\"image\": ..., \"label\": ...}} entries "
                        f"(the Decathlon's format), found {type(training).__name__ if training is not None else 'none'}")
    for i, entry in enumerate(training):
        if not isinstance(entry, dict):
            raise DataError(f"{meta_path}: training[{i}] is not a mapping {{\"image\": ..., \"label\": ...}}, "
                            f"found {str(entry)[:60]!r}")
        for key in ("image",) if unlabelled else ("image", "label"):
            if not isinstance(entry.get(key), str):
                raise DataError(f"{meta_path}: training[{i}] has no \"{key}\" path ({entry}); every training entry "
                                "names its image and label files" + ("" if unlabelled else ", or prepare the images "
                                                                     "alone with --unlabelled"))
        img = (root / entry["image"]).resolve()
        mask = None if unlabelled else (root / entry["label"]).resolve()
        cid = strip_image_ext(img.name)
        cases.append(CaseSource(cid, cid, cid, img, mask))
    if not cases:
        raise DataError(f"{meta_path}: its 'training' list is empty")
    modality = "ct" if any(v.upper() == "CT" for v in modality_names.values()) else None
    return SourceDataset("msd", root, cases, labels, modality, False, warnings)


# -- CSV lists ------------------------------------------------------------------------------
def _resolve(entry: str, root: Path, where: str) -> Path:
    entry = entry.strip()
    if not entry:
        raise DataError(f"{where}: an empty path (each line names an image and its mask)")
    candidates = [root / entry.lstrip("/\\")]
    if os.path.isabs(entry):
        candidates.append(Path(entry))
    for c in candidates:
        if c.exists():
            return c
    raise DataError(f"{where}: {entry!r} not found (looked for {', '.join(str(c) for c in candidates)})")


def _read_list(path: Path, root: Path, unlabelled: bool = False) -> list[tuple[Path, Path | None]]:
    """(image, mask) per line; ``unlabelled``: the first column only (a mask column is not read)."""
    text = path.read_text(encoding="utf-8-sig")
    first = text.splitlines()[0] if text.strip() else ""
    dialect = "excel-tab" if "\t" in first else "excel"
    rows = [r for r in csv.reader(text.splitlines(), dialect=dialect) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("image", "img", "image_path", "images", "path"):
        rows = rows[1:]
    pairs: list[tuple[Path, Path | None]] = []
    for i, row in enumerate(rows, start=1):
        where = f"{path}:{i}"
        if unlabelled:
            pairs.append((_resolve(row[0], root, where), None))
            continue
        if len(row) < 2:
            raise DataError(f"{path}:{i}: expected 'image,mask' on each line, found {row!r} "
                            "(a list of images alone is prepared with --unlabelled)")
        pairs.append((_resolve(row[0], root, where), _resolve(row[1], root, where)))
    if not pairs:
        raise DataError(f"{path}: the list is empty")
    return pairs


def _split_of_list(name: str) -> str | None:
    lower = name.lower()
    for split, prefixes in (("train", ("train",)), ("val", ("val", "valid")), ("test", ("test",))):
        if lower.startswith(prefixes):
            return split
    return None


def list_files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".csv", ".tsv", ".txt") and p.is_file())


def read_csv(source: Path, root: Path | None, pattern: str, warnings: list[str],
             unlabelled: bool = False) -> SourceDataset:
    if source.is_dir():
        lists = [(p, _split_of_list(p.name)) for p in list_files_in(source)]
        lists = [(p, s) for p, s in lists if s is not None]
        if not lists:
            raise DataError(f"{source}: expected train*.csv / val*.csv / test*.csv lists in it")
        base = root or source.parent
    else:
        lists = [(source, None)]
        base = root or source.parent.parent
    pairs: list[tuple[Path, Path | None, str | None]] = []
    for path, split in lists:
        pairs += [(img, mask, split) for img, mask in _read_list(path, base, unlabelled)]
    cases = _cases_from_pairs(pairs, base, pattern, warnings)
    split_given = source.is_dir()
    return SourceDataset("csv", base, cases, None, None, split_given, warnings)


# -- two folders ----------------------------------------------------------------------------
def _find_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    lower = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _mask_key(rel: str) -> str:
    stem = strip_image_ext(rel)
    for suffix in _MASK_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def read_folders(root: Path, pattern: str, warnings: list[str], unlabelled: bool = False) -> SourceDataset:
    img_dir, mask_dir = _find_dir(root, _IMAGE_DIRS), _find_dir(root, _MASK_DIRS)
    if unlabelled and img_dir is not None:  # the images alone; the masks folder is not read
        return read_images(img_dir, pattern, warnings, layout="folders")
    if img_dir is None or mask_dir is None:
        raise DataError(
            f"{root}: expected two folders, images ({'/'.join(_IMAGE_DIRS[:2])}/...) and masks "
            f"({'/'.join(_MASK_DIRS[:3])}/...)"
        )
    images = {strip_image_ext(str(p.relative_to(img_dir))): p for p in sorted(img_dir.rglob("*")) if is_image_file(p)}
    masks = {_mask_key(str(p.relative_to(mask_dir))): p for p in sorted(mask_dir.rglob("*")) if is_image_file(p)}
    if not masks and not images:
        raise DataError(f"{root}: no image files in {img_dir.name}/ and {mask_dir.name}/")
    by_stem = {Path(k).name: v for k, v in masks.items()}
    pairs: list[tuple[Path, Path | None, str | None]] = []
    unmatched = []
    for key, img in images.items():
        mask = masks.get(key) or by_stem.get(Path(key).name)
        if mask is None:
            unmatched.append(str(img.relative_to(root)))
        else:
            pairs.append((img, mask, None))
    if unmatched:
        warnings.append(f"{len(unmatched)} images have no mask and are skipped (e.g. {unmatched[0]})")
    if not pairs:
        raise DataError(f"{root}: no image in {img_dir.name}/ has a mask of the same name in {mask_dir.name}/")
    return SourceDataset("folders", root, _cases_from_pairs(pairs, root, pattern, warnings), warnings=warnings)


# -- a folder of images (image-only data) ------------------------------------------------
def _is_dicom_file(path: Path) -> bool:
    """A DICOM file by its ending or its ``DICM`` preamble (series files often have no ending)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_images(root: Path, pattern: str, warnings: list[str], layout: str = "images") -> SourceDataset:
    """Every image under ``root`` as an image-only case: image files, and each folder holding
    DICOM files as one series. Hidden files and folders are skipped."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = [Path(folder) / f for f in sorted(files) if not f.startswith(".")]
        found += [p for p in here if is_image_file(p)]
        if any(_is_dicom_file(p) for p in here if not is_image_file(p)):
            found.append(Path(folder))
    if not found:
        raise DataError(f"{root}: no images in it (NIfTI/MHA/NRRD, PNG/JPG/BMP/TIFF, or DICOM series folders)")
    pairs: list[tuple[Path, Path | None, str | None]] = [(p, None, None) for p in found]
    return SourceDataset(layout, root, _cases_from_pairs(pairs, root, pattern, warnings), warnings=warnings)


# -- detection ------------------------------------------------------------------------------
def detect_layout(source: Path, unlabelled: bool = False) -> str:
    """``nnunet``, ``msd``, ``csv`` or ``folders`` from what ``source`` holds; for image-only
    data also ``images`` (a folder of images that is none of the others)."""
    if source.is_file():
        if source.suffix.lower() in (".csv", ".tsv", ".txt"):
            return "csv"
        what = "images" if unlabelled else "'image,mask' pairs"
        raise DataError(f"{source}: a single file must be a CSV list of {what}")
    if not source.is_dir():
        raise DataError(f"{source}: not found")
    meta = source / "dataset.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{meta}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DataError(f"{meta}: expected a JSON object (nnU-Net's or the Decathlon's dataset.json), found "
                            f"{type(data).__name__}")
        if isinstance(data.get("training"), list):
            return "msd"
        if "training" in data or ("modality" in data and "channel_names" not in data and "file_ending" not in data):
            raise DataError(f"{meta}: looks like a Medical Segmentation Decathlon dataset.json ('modality' or "
                            "'training' keys) but its 'training' is " + (f"a {type(data['training']).__name__}" if
                                                                         "training" in data else "missing")
                            + '; the Decathlon\'s format lists cases as "training": [{"image": ..., "label": ...}]')
        return "nnunet"
    if any(_split_of_list(p.name) for p in list_files_in(source)):
        return "csv"
    if _find_dir(source, _IMAGE_DIRS) and _find_dir(source, _MASK_DIRS):
        return "folders"
    if unlabelled:
        return "images"
    raise DataError(
        f"{source}: unrecognised layout. Expected an nnU-Net or MSD folder (dataset.json), a CSV list or a "
        "folder of train*/val*/test* lists, or image and mask folders (images/ + masks/); a folder of images "
        "without masks is prepared with --unlabelled"
    )


def read_source(
    source: str | Path,
    layout: str = "auto",
    root: str | Path | None = None,
    channel: int = 0,
    case_pattern: str | None = None,
    unlabelled: bool = False,
) -> SourceDataset:
    """Find every image/mask pair of a dataset in any supported layout (``unlabelled``: every
    image, masks not read)."""
    source = Path(source)
    if layout not in LAYOUTS:
        raise DataError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "images" and not unlabelled:
        raise DataError("--layout images is a folder of images without masks: add --unlabelled")
    if not source.exists():
        raise DataError(f"{source}: not found")
    kind = detect_layout(source, unlabelled) if layout == "auto" else layout
    if kind in ("nnunet", "msd", "folders", "images") and not source.is_dir():
        raise DataError(f"{source}: --layout {kind} expects a dataset folder, found a file")
    pattern = case_pattern or DEFAULT_CASE_PATTERN
    warnings: list[str] = []
    if case_pattern and kind in ("nnunet", "msd"):
        warnings.append(f"--case-pattern is not used for {kind} sources: each case id is its own patient")
    if kind == "nnunet":
        return read_nnunet(source, channel, warnings, unlabelled)
    if kind == "msd":
        return read_msd(source, warnings, unlabelled)
    if kind == "csv":
        return read_csv(source, Path(root) if root else None, pattern, warnings, unlabelled)
    if kind == "images":
        return read_images(source, pattern, warnings)
    return read_folders(source, pattern, warnings, unlabelled)
