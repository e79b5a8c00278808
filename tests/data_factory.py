"""Small synthetic datasets with known contents, written in the layouts tunesam reads."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

SPACING = (0.8, 0.6, 2.5)  # x, y, z
ORIGIN = (-10.0, 20.0, 5.0)
# A rotation about z by 90 degrees: a non-trivial direction.
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
SHAPE = (8, 12, 10)  # z, y, x


def volume_and_mask(case: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A float image and an integer mask: label 1 on z-slices 2..4, label 2 on slice 3 only
    (plus a case-dependent shift), so the non-empty axial slices are known by construction."""
    rng = np.random.default_rng(case)
    image = rng.normal(100.0, 20.0, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    z0 = 2 + case % 2
    mask[z0 : z0 + 3, 3:8, 2:6] = 1
    mask[z0 + 1, 5:7, 3:5] = 2
    return image, mask, list(range(z0, z0 + 3))


def write_nifti(path: Path, array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def nnunet_dataset(root: Path, n_cases: int = 10, labels: dict | None = None, channel_names: dict | None = None) -> dict[str, list[int]]:
    """An nnU-Net v2 raw folder; returns each case's non-empty axial slices."""
    nonempty = {}
    for i in range(n_cases):
        cid = f"case_{i:03d}"
        image, mask, slices = volume_and_mask(i)
        write_nifti(root / "imagesTr" / f"{cid}_0000.nii.gz", image)
        write_nifti(root / "imagesTr" / f"{cid}_0001.nii.gz", image * 0 + 7)
        write_nifti(root / "labelsTr" / f"{cid}.nii.gz", mask)
        nonempty[cid] = slices
    meta = {
        "channel_names": channel_names or {"0": "T2", "1": "ADC"},
        "labels": labels or {"background": 0, "gland": 1, "lesion": 2},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return nonempty


def png_pairs(root: Path, patients: int = 6, per_patient: int = 2, size: tuple[int, int] = (40, 30)) -> dict[str, int]:
    """images/ and masks/ folders of 8-bit PNGs named ``patientP_sliceS``; returns foreground pixels per image."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    fg = {}
    for p in range(patients):
        for s in range(per_patient):
            name = f"patient{p}_slice{s}"
            rng = np.random.default_rng(p * 10 + s)
            img = rng.integers(0, 256, size, dtype=np.uint8)
            mask = np.zeros(size, np.uint8)
            mask[5 : 10 + p, 4 : 8 + s] = 255
            Image.fromarray(img).save(root / "images" / f"{name}.png")
            Image.fromarray(mask).save(root / "masks" / f"{name}_mask.png")
            fg[name] = int((mask > 0).sum())
    return fg


def learnable_pngs(root: Path, patients: int = 10, per_patient: int = 3, size: int = 48) -> None:
    """images/ + masks/ where the mask is exactly the bright disc in the image: learnable."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    for p in range(patients):
        for s in range(per_patient):
            rng = np.random.default_rng(1000 + p * 10 + s)
            cy, cx = rng.integers(12, size - 12, 2)
            r = int(rng.integers(6, 11))
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img = rng.normal(60, 15, (size, size))
            img[disc] += 120
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"patient{p}_s{s}.png")
            Image.fromarray(disc.astype(np.uint8) * 255).save(root / "masks" / f"patient{p}_s{s}.png")


def write_dicom_series(folder: Path, volume: np.ndarray, uid: str, suffix: str = "") -> None:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    for z in range(volume.shape[0]):
        sl = sitk.GetImageFromArray(volume[z].astype(np.int16))
        sl.SetSpacing((0.7, 0.9))
        for tag, value in {
            "0020|000e": uid,  # series instance UID
            "0020|0032": f"-5\\10\\{2.5 * z}",  # image position (patient)
            "0020|0037": "1\\0\\0\\0\\1\\0",  # image orientation (patient)
            "0018|0050": "2.5",
            "0020|0013": str(z + 1),
            "0008|0060": "MR",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{z:04d}{suffix}"))
        writer.Execute(sl)


def tiny_study(path: Path, prepared: Path, methods: str = "[lora, adapter]", tunes: str = "[decoder, encoder-decoder]",
               epochs: int = 2, baselines: str = "[unet_test]") -> Path:
    """A study config of tiny vit_t_test cells at 32 px on the CPU, and the given baselines."""
    path.write_text(textwrap.dedent(f"""\
        datasets: {{disc: {prepared}}}
        grid:
          arch: [vit_t_test]
          checkpoint: [null]
          tune: {tunes}
          method: {methods}
          mode: [auto]
          epochs: {epochs}
          image_size: 32
          warmup: 5
          lr: 0.002
          device: cpu
          num_workers: 0
        baselines: {baselines}
        baseline_image_size: 32
        """))
    return path
