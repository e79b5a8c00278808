"""The embedded real example: the MNI ICBM152 2009a template with its tissue maps.

The ``nilearn`` wheel ships the T1 template (197 x 233 x 189, 1 mm) and its grey- and
white-matter probability maps (uint8 0-255) inside its package; they are read from the
installed package without importing it and without any download. Labels are the argmax
over (background = 255 - gm - wm, grey matter, white matter). It is one volume, so it is cut
into slabs of consecutive axial slices, each slab a case, split 7:1:2 by slab.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np

from tunesam.data.layouts import CaseSource, SourceDataset
from tunesam.data.prepare import CaseArrays, PrepareOptions, PrepareResult, prepare_source
from tunesam.data.preprocess import percentile_to_uint8
from tunesam.data.readers import DataError, Geometry, read_image

EXAMPLES = ("mni152",)
_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
LABELS = {0: "background", 1: "grey matter", 2: "white matter"}


def mni152_files() -> dict[str, Path]:
    """Paths of the template and tissue maps inside the installed nilearn package."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the MNI152 example is read from the nilearn package: pip install nilearn")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    files = {k: folder / v for k, v in _FILES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"this nilearn installation lacks the MNI152 files: {', '.join(missing)}")
    return files


def mni152_volume() -> tuple[np.ndarray, np.ndarray, Geometry]:
    """The T1 volume (uint8, z-y-x), its labels (0/1/2) and geometry."""
    files = mni152_files()
    t1, geom = read_image(files["t1"])
    gm, _ = read_image(files["gm"])
    wm, _ = read_image(files["wm"])
    gm16, wm16 = gm.astype(np.int16), wm.astype(np.int16)
    background = np.clip(255 - gm16 - wm16, 0, 255)
    labels = np.argmax(np.stack([background, gm16, wm16]), axis=0).astype(np.uint8)
    return t1, labels, geom


def _slab_geometry(geom: Geometry, start: int, depth: int) -> Geometry:
    """Geometry of axial slices ``start .. start+depth-1`` of the volume."""
    d = np.array(geom.direction).reshape(3, 3)
    origin = np.array(geom.origin) + d[:, 2] * geom.spacing[2] * start
    shape = (depth,) + geom.shape[1:]
    return dataclasses.replace(geom, shape=shape, origin=tuple(float(v) for v in origin))


def prepare_example(
    name: str, out: str | Path, options: PrepareOptions | None = None, slab: int = 10, force: bool = False
) -> PrepareResult:
    """Prepare a named example (``mni152``) into ``out``."""
    if name not in EXAMPLES:
        raise DataError(f"unknown example {name!r}; available: {', '.join(EXAMPLES)}")
    opts = options or PrepareOptions()
    if opts.axis != 0:
        raise DataError("the MNI152 example is cut into axial slabs: use --axis 0")
    files = mni152_files()
    t1, labels, geom = mni152_volume()
    t1 = percentile_to_uint8(t1)  # per whole volume, not per slab
    depth = t1.shape[0]
    cases = []
    for i, start in enumerate(range(0, depth, slab)):
        cid = f"slab{i:02d}"
        cases.append(CaseSource(cid, cid, cid, files["t1"], files["wm"]))
    starts = {f"slab{i:02d}": s for i, s in enumerate(range(0, depth, slab))}
    src = SourceDataset("example", files["t1"].parent, cases, dict(LABELS), "mr")

    def load(case: CaseSource) -> CaseArrays:
        s = starts[case.case_id]
        e = min(s + slab, depth)
        g = _slab_geometry(geom, s, e - s)
        return t1[s:e], g, labels[s:e], g

    desc = {"path": f"example:{name}", "layout": "example", "root": str(files["t1"].parent),
            "slab": slab, "labels": "argmax(255 - gm - wm, gm, wm)"}
    return prepare_source(src, desc, out, opts, force, load, scan=lambda: set(LABELS), normalized=True)
