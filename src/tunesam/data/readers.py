"""Image readers behind one interface, chosen by file ending.

``read_image(path)`` returns the pixel array and its :class:`Geometry`. Volumes (NIfTI,
MHA/MHD, NRRD, DICOM series) are read with SimpleITK and come back in its array order
(z, y, x); 2D images (PNG, JPG, BMP, TIFF) with Pillow, as (y, x). A DICOM series is a
folder, recognised by content, not by a ``.dcm`` ending.
"""
from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
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
    """NIfTI, MHA/MHD, NRRD through SimpleITK. Multi-channel images keep channels last.
    ITK reads a NIfTI file's NaN voxels as 0: they are put back, so that they are seen."""

    suffixes = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        import SimpleITK as sitk

        non_finite = None
        if path.name.lower().endswith((".nii", ".nii.gz")):
            non_finite = check_nifti_complete(path)
        elif path.name.lower().endswith(".mha"):
            check_mha_complete(path)
        try:
            with _quiet_itk():
                image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            reason = _first_line(exc)
            if "No such file" in reason or "ideal" in str(exc) or "Read failed" in reason:  # ITK's words for a short file
                reason = f"the file is truncated or damaged: ITK says {reason!r}"
            raise DataError(f"{path}: cannot be read as a {path.name.split('.', 1)[-1]} image ({reason})") from exc
        arr, geom = _from_sitk(image, path)
        if non_finite is not None and non_finite.size and arr.dtype.kind == "f" and non_finite[-1] < arr.size:
            arr = np.ascontiguousarray(arr)
            arr.reshape(-1)[non_finite] = np.nan  # file order is ITK's array order (x fastest)
        return arr, geom


_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def check_mha_complete(path: Path) -> None:
    """Refuse an uncompressed MetaImage (``.mha``) whose data is shorter than its header
    says (ITK fails with "No such file or directory" and prints its own lines)."""
    with open(path, "rb") as f:
        head: dict[str, str] = {}
        for _ in range(64):  # the header is a few "Key = value" lines, the last ElementDataFile
            line = f.readline()
            if not line:
                return
            key, _, value = line.decode("latin-1").partition("=")
            head[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
        else:
            return
        data_at = f.tell()
    if head.get("ElementDataFile") != "LOCAL" or head.get("CompressedData", "False").lower() == "true":
        return
    try:
        dims = [int(v) for v in head["DimSize"].split()]
        per = _MET_BYTES[head["ElementType"]] * int(head.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return
    need = int(np.prod(dims, dtype=np.int64)) * per
    have = path.stat().st_size - data_at
    if have < need:
        raise DataError(f"{path}: the file is truncated: its header describes {need:,} bytes of voxels "
                        f"({' x '.join(map(str, dims))} {head['ElementType']}), the file holds {have:,}")


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of the float types NaN can hide in


def check_nifti_complete(path: Path) -> np.ndarray:
    """Refuse a truncated NIfTI file, which SimpleITK would read with zeros for the missing
    voxels: the gzip stream must end properly and the data must cover the header's
    ``vox_offset + voxels x bytes per voxel``. Returns the flat indices of the file's NaN and
    infinite voxels (float data; empty otherwise), which ITK would read as 0 without a word."""
    import gzip
    import struct
    import zlib

    gz = path.name.lower().endswith(".gz")
    found: list[np.ndarray] = []
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(540)
            layout = _nifti_layout(path, head, struct)
            dtype = np.dtype(layout["endian"] + _NIFTI_FLOATS[layout["datatype"]]) \
                if layout["datatype"] in _NIFTI_FLOATS else None
            size, carry, first = len(head), b"", 0
            data = head[layout["offset"]:]
            skip = max(0, layout["offset"] - len(head))  # header extensions longer than the read
            while True:
                if dtype is not None and data:
                    buf = carry + data
                    usable = len(buf) - len(buf) % dtype.itemsize
                    values = np.frombuffer(buf[:usable], dtype)[: max(0, layout["voxels"] - first)]
                    bad = np.flatnonzero(~np.isfinite(values))
                    if bad.size:
                        found.append(bad + first)
                    first += usable // dtype.itemsize
                    carry = buf[usable:]
                block = f.read(1 << 22)
                if not block:
                    break
                size += len(block)
                data, skip = block[skip:], max(0, skip - len(block))
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: the file is truncated or corrupt ({exc}); expected a complete "
                        f"{'gzip-compressed ' if gz else ''}NIfTI file") from exc
    need, n, bitpix, offset = layout["need"], layout["voxels"], layout["bitpix"], layout["offset"]
    if size < need:
        raise DataError(f"{path}: the file is truncated: its header describes {need:,} bytes "
                        f"({n:,} voxels of {bitpix} bits after {offset} header bytes), the file holds {size:,}"
                        + (" uncompressed" if gz else ""))
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _nifti_layout(path: Path, head: bytes, struct: Any) -> dict[str, Any]:
    """Byte order, data type, data offset and size from a NIfTI-1 or NIfTI-2 header."""
    for endian in "<>":
        if len(head) >= 4 and struct.unpack(f"{endian}i", head[:4])[0] in (348, 540):
            break
    else:
        raise DataError(f"{path}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")
    if struct.unpack(f"{endian}i", head[:4])[0] == 348:
        dims = struct.unpack(f"{endian}8h", head[40:56])
        datatype, bitpix = struct.unpack(f"{endian}2h", head[70:74])
        offset = int(struct.unpack(f"{endian}f", head[108:112])[0])
    else:
        dims = struct.unpack(f"{endian}8q", head[16:80])
        datatype, bitpix = struct.unpack(f"{endian}2h", head[12:16])
        offset = struct.unpack(f"{endian}q", head[168:176])[0]
    n = int(np.prod([max(1, d) for d in dims[1 : 1 + max(1, min(7, dims[0]))]], dtype=np.int64))
    return {"endian": endian, "datatype": datatype, "bitpix": bitpix, "offset": offset, "voxels": n,
            "need": offset + n * bitpix // 8}


class DicomSeriesReader(Reader):
    """A folder holding one DICOM series (files found by content). ``series``: the series
    UIDs the user named (``--series``); a folder with several series reads the one of them it
    holds. The slices must be evenly spaced: a missing or unreadable slice is refused, where
    ITK would read the stack with uneven spacing and the mask would not line up."""

    def __init__(self, series: str | tuple[str, ...] | None = None) -> None:
        self.series = (series,) if isinstance(series, str) else tuple(series or ())

    def read(self, path: Path) -> tuple[np.ndarray, Geometry]:
        import SimpleITK as sitk

        with _quiet_itk():
            ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
        if not ids:
            raise DataError(f"{path}: expected a folder holding a DICOM series, found no DICOM files in it")
        uid = self._choose(path, ids)
        with _quiet_itk():
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid))
        _check_even_slices(path, uid, files)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            with _quiet_itk():
                image = reader.Execute()
        except RuntimeError as exc:
            raise DataError(f"{path}: DICOM series {uid} cannot be read ({_first_line(exc)})") from exc
        return _from_sitk(image, path)

    def _choose(self, path: Path, ids: list[str]) -> str:
        named = [u for u in ids if u in self.series]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise DataError(f"{path}: holds {len(named)} of the series given with --series ({', '.join(named)}); "
                            "give one per folder")
        if len(ids) == 1 and not self.series:
            return ids[0]
        listing = "; ".join(_describe_series(path, u) for u in ids)
        if self.series:
            raise DataError(f"{path}: holds none of the series given with --series; it holds {listing}")
        raise DataError(f"{path}: holds {len(ids)} DICOM series; choose one with --series UID: {listing}")


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK's own warnings (to the terminal, in ITK's words) off: tunesam says what matters."""
    import SimpleITK as sitk

    was = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(was)


def _dicom_header(file: str) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.LoadPrivateTagsOff()
    with _quiet_itk():
        reader.ReadImageInformation()
    return reader


def _describe_series(path: Path, uid: str) -> str:
    """``UID (description, N files)`` for a listing of a folder's series."""
    import SimpleITK as sitk

    with _quiet_itk():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid)
    try:
        head = _dicom_header(files[0])
        what = head.GetMetaData("0008|103e").strip() if head.HasMetaDataKey("0008|103e") else ""
    except (RuntimeError, IndexError):
        what = ""
    return f"{uid} ({what + ', ' if what else ''}{len(files)} files)"


def _check_even_slices(path: Path, uid: str, files: list[str]) -> None:
    """Refuse a series whose slice positions along its normal are not evenly spaced (a slice
    missing, or a file too damaged to be read as part of the series)."""
    if len(files) < 3:
        return
    positions, normal = [], None
    for f in files:
        try:
            head = _dicom_header(f)
            if normal is None:
                d = np.array(head.GetDirection(), float).reshape(3, 3)
                normal = d[:, 2]
            positions.append(float(np.dot(np.array(head.GetOrigin(), float), normal)))
        except RuntimeError as exc:
            raise DataError(f"{path}: DICOM series {uid}: {Path(f).name} cannot be read ({_first_line(exc)}); "
                            "the file is truncated or damaged") from exc
    steps = np.diff(np.sort(positions))
    typical = float(np.median(steps))
    if typical <= 0:
        raise DataError(f"{path}: DICOM series {uid}: several slices at one position ({len(files)} files); "
                        "it mixes series or repeats slices")
    uneven = np.flatnonzero(np.abs(steps - typical) > 0.05 * typical)
    if uneven.size:
        where = ", ".join(f"{steps[i]:.3g} mm after slice {i + 1}" for i in uneven[:4])
        missing = int(round(float(np.sum(steps[uneven]) / typical - uneven.size)))
        raise DataError(f"{path}: DICOM series {uid} is not evenly spaced: slices {typical:.3g} mm apart but "
                        f"{where} ({len(files)} files" + (f", about {missing} slice(s) missing" if missing > 0 else "")
                        + "); a slice is missing or unreadable. Restore the series (its mask would not line up)")


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


# A colour mask's pixel: COLOUR | 0xRRGGBB (black stays 0, the background); --label-map takes
# "#rrggbb" keys for them (tunesam.data.prepare.parse_label_map).
COLOUR = 1 << 24
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def colour_name(value: int) -> str:
    """``#rrggbb`` of a colour mask's value."""
    return f"#{int(value) & 0xFFFFFF:06x}"


def read_mask(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """A mask file: as :func:`read_image`, but a lossy format (JPEG) is refused, and a colour
    image keeps its colours (values ``COLOUR | 0xRRGGBB``) rather than becoming luminance."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.name.lower().endswith(LOSSY_SUFFIXES):
        raise DataError(f"{path}: a JPEG mask; JPEG is lossy, so its edges hold blended values that are no label "
                        "(a mask of 2 labels reads as dozens). Save the masks losslessly: PNG, TIFF or NIfTI")
    reader = reader_for(path)
    if not isinstance(reader, PillowReader):
        return reader.read(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if "jpeg" in str(im.info.get("compression", "")).lower():
                raise DataError(f"{path}: a JPEG-compressed TIFF mask; JPEG is lossy, so its edges hold blended "
                                "values that are no label. Save the masks losslessly (PNG, or TIFF without JPEG)")
            im.load()
            arr = np.asarray(im.convert("RGB")) if im.mode in ("RGBA", "CMYK", "YCbCr") else _pil_to_array(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot be read as an image ({_first_line(exc)})") from exc
    if arr.ndim == 3:
        if all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[2])):
            arr = arr[..., 0]
        else:
            rgb = arr[..., :3].astype(np.int64)
            packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            arr = np.where(packed == 0, 0, packed | COLOUR)
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


def reader_for(path: Path, dicom_series: str | tuple[str, ...] | None = None) -> Reader:
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


def read_image(path: str | Path, dicom_series: str | tuple[str, ...] | None = None) -> tuple[np.ndarray, Geometry]:
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
