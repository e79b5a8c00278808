"""Image readers behind one interface, chosen by file ending.

``read_image(path)`` returns the pixel array and its :class:`Geometry`. Volumes (NIfTI,
MHA/MHD, NRRD, DICOM series) are read with SimpleITK and come back in its array order
(z, y, x); 2D images (PNG, JPG, BMP, TIFF) with Pillow, as (y, x). A DICOM series is a
folder, recognised by content, not by a ``.dcm`` ending.
"""
from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


class DataError(ValueError):
    """Input data that cannot be used: names the file, what was expected, what was found."""


@dataclass(frozen=True)
class Geometry:
    """Where an array sits in space (SimpleITK conventions: x, y, z order).

    ``shape`` is the array's shape (z, y, x for volumes, y, x for 2D images);
    ``spacing_known`` is False for 2D images, whose pixel size is not recorded.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    spacing_known: bool = True

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(
            tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]),
            bool(d.get("spacing_known", True)),
        )

    def plane_spacing(self, axis: int) -> tuple[float, float]:
        """(row, column) pixel spacing of slices taken along array ``axis``."""
        if self.ndim == 2:
            return (self.spacing[1], self.spacing[0])
        xyz = self.spacing  # array axis a has spacing xyz[2 - a]
        rows, cols = [a for a in range(3) if a != axis]
        return (xyz[2 - rows], xyz[2 - cols])

    def matches(self, other: Geometry, tol: float = 1e-3) -> bool:
        """Same shape, and spacing/origin/direction equal within ``tol`` (relative for spacing)."""
        if self.shape != other.shape:
            return False
        sp = np.allclose(self.spacing, other.spacing, rtol=tol, atol=0)
        org = np.allclose(self.origin, other.origin, rtol=0, atol=tol * max(1.0, *map(abs, self.spacing)))
        dirs = np.allclose(self.direction, other.direction, atol=tol)
        return bool(sp and org and dirs)


class Reader(abc.ABC):
    """Reads one kind of file."""

    suffixes: tuple[str, ...] = ()

    @abc.abstractmethod
    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        """The array and its geometry; raises :class:`DataError` naming ``path``."""


class SimpleITKReader(Reader):
    """NIfTI, MHA/MHD, NRRD through SimpleITK. Multi-channel images keep channels last."""

    suffixes = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        import SimpleITK as sitk

        if path.name.lower().endswith((".nii", ".nii.gz")):
            check_nifti_complete(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise DataError(f"{path}: cannot be read as a {path.name.split('.', 1)[-1]} image ({_first_line(exc)})") from exc
        return _from_sitk(image, path)


def check_nifti_complete(path: Path) -> None:
    """Refuse a truncated NIfTI file, which SimpleITK would read with zeros for the missing
    voxels: the gzip stream must end properly and the data must cover the header's
    ``vox_offset + voxels x bytes per voxel``."""
    import gzip
    import struct
    import zlib

    gz = path.name.lower().endswith(".gz")
    try:
        if gz:
            size = 0
            with gzip.open(path, "rb") as f:
                head = f.read(540)
                size = len(head)
                while block := f.read(1 << 22):
                    size += len(block)
        else:
            with open(path, "rb") as f:
                head = f.read(540)
            size = path.stat().st_size
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: the file is truncated or corrupt ({exc}); expected a complete "
                        f"{'gzip-compressed ' if gz else ''}NIfTI file") from exc
    for endian in "<>":
        if len(head) >= 4 and struct.unpack(f"{endian}i", head[:4])[0] in (348, 540):
            break
    else:
        raise DataError(f"{path}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    if struct.unpack(f"{endian}i", head[:4])[0] == 348:
        dims = struct.unpack(f"{endian}8h", head[40:56])
        bitpix = struct.unpack(f"{endian}h", head[72:74])[0]
        offset = int(struct.unpack(f"{endian}f", head[108:112])[0])
    else:
        dims = struct.unpack(f"{endian}8q", head[16:80])
        bitpix = struct.unpack(f"{endian}h", head[14:16])[0]
        offset = struct.unpack(f"{endian}q", head[168:176])[0]
    n = int(np.prod([max(1, d) for d in dims[1 : 1 + max(1, min(7, dims[0]))]], dtype=np.int64))
    need = offset + n * bitpix // 8
    if size < need:
        raise DataError(f"{path}: the file is truncated: its header describes {need:,} bytes "
                        f"({n:,} voxels of {bitpix} bits after {offset} header bytes), the file holds {size:,}"
                        + (" uncompressed" if gz else ""))


class DicomSeriesReader(Reader):
    """A folder holding one DICOM series (files found by content)."""

    def __init__(self, series_uid: str | None = None) -> None:
        self.series_uid = series_uid

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        import SimpleITK as sitk

        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
        if not ids:
            raise DataError(f"{path}: expected a folder holding a DICOM series, found no DICOM files in it")
        uid = self.series_uid
        if uid is None:
            if len(ids) > 1:
                raise DataError(
                    f"{path}: holds {len(ids)} DICOM series, say which one: " + ", ".join(ids)
                )
            uid = ids[0]
        elif uid not in ids:
            raise DataError(f"{path}: no DICOM series {uid}; it holds " + ", ".join(ids))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid))
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise DataError(f"{path}: DICOM series {uid} cannot be read ({_first_line(exc)})") from exc
        return _from_sitk(image, path)


class PillowReader(Reader):
    """PNG, JPG, BMP, TIFF 2D images; colour images whose channels differ become luminance."""

    suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                arr = _pil_to_array(im)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataError(f"{path}: cannot be read as an image ({_first_line(exc)})") from exc
        if arr.ndim == 3:
            if all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[2])):
                arr = arr[..., 0]
            else:  # ITU-R 601 luma, what Pillow's "L" conversion computes
                arr = (arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
                arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        h, w = arr.shape
        return arr, Geometry((h, w), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), spacing_known=False)


def _pil_to_array(im: Any) -> np.ndarray:
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("RGBA", "LA"):
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    if im.mode == "CMYK" or im.mode == "YCbCr":
        im = im.convert("RGB")
    return np.asarray(im)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _from_sitk(image: Any, path: Path) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 2:
        shape2 = tuple(int(v) for v in arr.shape[:2])
        geom2 = Geometry(shape2, tuple(map(float, image.GetSpacing())), tuple(map(float, image.GetOrigin())),
                         tuple(map(float, image.GetDirection())))
        return arr, geom2
    if image.GetDimension() == 3:
        spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    elif image.GetDimension() == 4:
        # 4D (e.g. MSD multi-modal): channels first in the array; geometry of the 3D part.
        arr = np.moveaxis(arr, 0, -1)
        spacing, origin = image.GetSpacing()[:3], image.GetOrigin()[:3]
        d = image.GetDirection()
        direction = tuple(d[r * 4 + c] for r in range(3) for c in range(3))
    else:
        raise DataError(f"{path}: expected a 2D or 3D image, found {image.GetDimension()} dimensions")
    shape = tuple(int(s) for s in arr.shape[:3])
    geom = Geometry(shape, tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction)))
    return arr, geom


def strip_image_ext(name: str) -> str:
    """``name`` without its image ending (``.nii.gz`` before ``.gz``-less ones), as read here."""
    lower = name.lower()
    for ext in sorted(SimpleITKReader.suffixes + PillowReader.suffixes, key=len, reverse=True):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def reader_for(path: Path, dicom_series: str | None = None) -> Reader:
    """The reader for ``path`` by its ending (a folder is a DICOM series)."""
    if path.is_dir():
        return DicomSeriesReader(dicom_series)
    name = path.name.lower()
    for reader in (SimpleITKReader(), PillowReader()):
        if name.endswith(reader.suffixes):
            return reader
    if name.endswith(".dcm"):
        raise DataError(f"{path}: a single DICOM file; give the folder holding the whole series")
    raise DataError(
        f"{path}: unknown file type; expected one of "
        + ", ".join(SimpleITKReader.suffixes + PillowReader.suffixes)
        + " or a DICOM series folder"
    )


def read_image(path: str | Path, dicom_series: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read any supported image: ``(array, geometry)``. Missing files raise DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return reader_for(path, dicom_series).read(path)


def is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(
        SimpleITKReader.suffixes + PillowReader.suffixes
    )
