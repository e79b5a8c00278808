#!/usr/bin/env python3
"""A rerunnable hostile-user campaign against the real ``tunesam`` command line.

It replays faults of the classes the first campaign (2026-12-01) found defects in (data and
prepare, DICOM, study, pretrain, train, evaluate, predict, export, a full disk, a read-only
folder, two processes at once, file permissions, security) and writes a results page.

Run it from the repository, in its virtual environment::

    python scripts/bad_input_campaign.py                      # everything, ~15 min on 2 cores
    python scripts/bad_input_campaign.py --only T_is0,P_img4d  # some cases (and the controls they need)
    python scripts/bad_input_campaign.py --class study --work /tmp/camp --out /tmp/page.md

It builds its own tiny synthetic data in a scratch folder (``--work``, default a new temporary
folder), runs ``python -m tunesam ...`` there as child processes (``OMP_NUM_THREADS=1``, a
180 s timeout each) with tiny settings (``vit_test`` at 32 px, one epoch, CPU), and judges each
case by its exit status and output. The full-disk and read-only cases need root (``mount``);
without it they are SKIPPED.

Verdicts:

* OK: the good outcome. A refusal exits 2, prints no traceback, and its message holds every
  fragment the case requires (case-insensitive: what a user needs, e.g. the option or file
  named and the key idea); an acceptance exits 0 and its output (or a named file, e.g. a
  warning in manifest.json) holds the required fragments; or a custom check passed.
* SILENT: exit 0 (or the wrong files written) where a refusal or a warning was required.
* TRACEBACK: a Python traceback in the output, or an exit status other than 0 and 2 (e.g. 1, or
  killed by a signal) that the case did not expect.
* UNCLEAR: refused (exit 2) but a required fragment is missing from the message.
* SKIPPED: a control the case depends on failed (or the case needs root), so it was not run.

The exit status is 1 if any case is SILENT or TRACEBACK, else 0.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PAGE = REPO / "docs" / "results" / "2026-12-01-bad-input-campaign-2.md"
TIMEOUT_S = 180
TRACEBACK = "Traceback (most recent call last)"
VERDICTS = ("OK", "SILENT", "TRACEBACK", "UNCLEAR", "SKIPPED")

# The tiny settings every training command shares.
TINY = ["--image-size", "32", "--epochs", "1", "--device", "cpu", "--num-workers", "0", "--warmup", "1"]
LORA = ["--arch", "vit_test", "--tune", "decoder", "--method", "lora"]


# -- running tunesam ------------------------------------------------------------------------------
@dataclass
class Result:
    """One finished (or killed) command: exit status and merged output."""

    argv: list[str]
    rc: int
    output: str
    seconds: float
    shown_rc: str = ""  # when one status does not say it (two processes)
    found: str = ""  # what the campaign saw besides the output (files left on a full disk), for the note
    pair: tuple = ()  # the two results of a two-process case


class Context:
    """The scratch folder, the live child processes and the mounts to undo at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.children: list[subprocess.Popen] = []
        self.mounts: list[Path] = []
        self.control_ok: dict[str, bool] = {}  # case id: passed (controls, and cases others build on)

    def path(self, rel: str) -> Path:
        return self.work / rel

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        env.update(extra)
        return env

    def start(self, argv: list[str], umask: int | None = None) -> subprocess.Popen:
        """Start ``python -m tunesam ARGV`` in the scratch folder (its own process group)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunesam", *argv],
            cwd=self.work,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            umask=-1 if umask is None else umask,
        )
        self.children.append(proc)
        return proc

    def finish(
        self, proc: subprocess.Popen, argv: list[str], t0: float, timeout: float = TIMEOUT_S
    ) -> Result:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            out, _ = proc.communicate()
            out += f"\n[campaign: killed after {timeout:.0f} s]"
        self.children.remove(proc)
        return Result(argv, proc.returncode, out or "", time.perf_counter() - t0)

    def tunesam(self, *argv: str, umask: int | None = None, timeout: float = TIMEOUT_S) -> Result:
        t0 = time.perf_counter()
        proc = self.start(list(argv), umask=umask)
        return self.finish(proc, list(argv), t0, timeout)

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def mount(self, *args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)

    def cleanup(self) -> None:
        for proc in list(self.children):
            self.kill(proc)
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(m)], capture_output=True, check=False)
        self.mounts.clear()


# -- synthetic data ---------------------------------------------------------------------------
def write_image(path: Path, array: np.ndarray, spacing=(0.8, 0.6, 2.5), origin=(-10.0, 20.0, 5.0)) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    if array.ndim == 3:
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def block_case(i: int, shape: tuple[int, int, int] = (8, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy float volume with a bright block, and the block as label 1."""
    rng = np.random.default_rng(i)
    image = rng.normal(60.0, 10.0, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    z0, y0, x0 = 2 + i % 2, 5 + i % 4, 4 + i % 3
    mask[z0 : z0 + 4, y0 : y0 + 9, x0 : x0 + 8] = 1
    image[mask > 0] += 120.0
    return image, mask


NN_META = {"channel_names": {"0": "T2"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}


def nnunet(root: Path, n: int = 8, shape: tuple[int, int, int] = (8, 24, 20)) -> Path:
    """An nnU-Net v2 raw folder of ``n`` cases."""
    for i in range(n):
        image, mask = block_case(i, shape)
        write_image(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image)
        write_image(root / "labelsTr" / f"case_{i:03d}.nii.gz", mask)
    (root / "dataset.json").write_text(json.dumps({**NN_META, "numTraining": n}))
    return root


def msd(root: Path, n: int = 6) -> Path:
    """A Medical Segmentation Decathlon folder (imagesTr, labelsTr, dataset.json with 'training')."""
    training = []
    for i in range(n):
        image, mask = block_case(i)
        write_image(root / "imagesTr" / f"org_{i:03d}.nii.gz", image)
        write_image(root / "labelsTr" / f"org_{i:03d}.nii.gz", mask)
        training.append(
            {"image": f"./imagesTr/org_{i:03d}.nii.gz", "label": f"./labelsTr/org_{i:03d}.nii.gz"}
        )
    meta = {
        "name": "Organ",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "organ"},
        "numTraining": n,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def disc(size: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def pngs(root: Path, patients: int = 6, per_patient: int = 2, size: int = 40) -> Path:
    """images/ + masks/ of 8-bit PNGs (masks 0/255): a bright disc and its mask."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for p in range(patients):
        for s in range(per_patient):
            rng = np.random.default_rng(100 + p * 10 + s)
            d = disc(size, 14 + p % 3 * 4, 14 + s * 6, 7 + p % 3)
            img = rng.normal(60, 15, (size, size))
            img[d] += 120
            name = f"patient{p}_slice{s}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / name)
            Image.fromarray(d.astype(np.uint8) * 255).save(root / "masks" / name)
    return root


def dicom_series(
    folder: Path, volume: np.ndarray, uid: str, skip: tuple[int, ...] = (), first: int = 0
) -> Path:
    """One file per slice, written by GDCM with the tags a scanner sets (z = 2.5 * k)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    for z in range(volume.shape[0]):
        if z in skip:
            continue
        sl = sitk.GetImageFromArray(volume[z].astype(np.int16))
        sl.SetSpacing((0.7, 0.9))
        for tag, value in {
            "0020|000e": uid,
            "0020|0032": f"-5\\10\\{2.5 * z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": "2.5",
            "0020|0013": str(z + 1),
            "0008|0060": "MR",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{first + z:04d}.dcm"))
        writer.Execute(sl)
    return folder


def copy_tree(ctx: Context, src: str, dst: str) -> Path:
    target = ctx.path(dst)
    if target.exists() or target.is_symlink():
        remove(target)
    shutil.copytree(ctx.path(src), target, symlinks=True)
    return target


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def base_data(ctx: Context) -> None:
    """The good inputs every control and most cases start from."""
    nnunet(ctx.path("data/nn"))
    pngs(ctx.path("data/png"))
    msd(ctx.path("data/msd"))
    vol = block_case(0)[0] * 5
    dicom_series(ctx.path("data/dicom/good"), vol, "1.2.826.0.1.3680043.8.498.1")
    dicom_data(ctx)


# -- cases ---------------------------------------------------------------------------------------
Check = Callable[[Context, Result], tuple[str, str]]


@dataclass
class Case:
    """One fault: how to make it, the command, and the good outcome.

    ``refuse``: exit 2 with every fragment in the output. ``accept``: exit 0 with every fragment in
    the output, or in ``files`` when given (paths relative to the scratch folder; ``FILE#KEY``: one
    top-level key of a JSON file, e.g. ``prep/x/manifest.json#warnings``). ``check``: a
    custom judgement of the result. ``run``: a custom driver (two processes, a kill, a mount);
    returns the result to judge. ``needs``: the controls it builds on."""

    cls: str
    id: str
    what: str
    argv: list[str] = field(default_factory=list)
    setup: Callable[[Context], None] | None = None
    refuse: list[str] | None = None
    accept: list[str] | None = None
    files: list[str] = field(default_factory=list)
    check: Check | None = None
    run: Callable[[Context, Case], Result] | None = None
    needs: tuple[str, ...] = ()
    keeps: list[str] = field(default_factory=list)  # files that must survive the command
    forbid: list[str] = field(default_factory=list)  # fragments the output must not hold (misleading advice)
    root: bool = False
    shown: str = ""  # the command as shown, when ``argv`` does not say it

    def command(self, ctx: Context) -> str:
        text = self.shown or "tunesam " + shlex.join(self.argv)
        return text.replace(str(ctx.work), "WORK")


def has_all(text: str, fragments: list[str]) -> list[str]:
    """The fragments missing from ``text`` (case-insensitive; ``a|b``: either will do)."""
    low = text.lower()
    return [f for f in fragments if not any(alt.lower() in low for alt in f.split("|"))]


def payload_markers(ctx: Context) -> list[str]:
    """Marker files a payload would have created (pwned*), anywhere under the scratch folder."""
    return sorted(str(p.relative_to(ctx.work)) for p in ctx.work.rglob("pwned*"))


def judge(ctx: Context, case: Case, res: Result) -> tuple[str, str]:
    if case.cls == "security":
        ran = payload_markers(ctx)
        if ran:
            return "SILENT", "a payload ran: " + ", ".join(ran)
    lost = [k for k in case.keeps if not ctx.path(k).exists()]
    if lost:
        return "SILENT", "lost: " + ", ".join(lost)
    if case.check is not None:
        return case.check(ctx, res)
    if TRACEBACK in res.output:
        return "TRACEBACK", "a Python traceback"
    if case.refuse is not None:
        if res.rc == 0:
            return "SILENT", "exit 0 where a refusal was required"
        if res.rc != 2:
            return "TRACEBACK", f"exit {res.rc}"
        missing = has_all(res.output, case.refuse)
        bad = [f for f in case.forbid if f.lower() in res.output.lower()]
        if bad and not missing:
            return "UNCLEAR", "misleading: " + ", ".join(repr(b) for b in bad)
        return ("UNCLEAR", "missing: " + ", ".join(repr(m) for m in missing)) if missing else ("OK", "")
    if res.rc == 2:
        return "UNCLEAR", "refused where it should have worked"
    if res.rc != 0:
        return "TRACEBACK", f"exit {res.rc}"
    text = res.output
    if case.files:
        text = "\n".join(read_part(ctx, rel) for rel in case.files)
    missing = has_all(text, case.accept or [])
    return ("SILENT", "missing: " + ", ".join(repr(m) for m in missing)) if missing else ("OK", "")


def read_part(ctx: Context, rel: str) -> str:
    """A file's text, or with ``FILE#KEY`` one top-level key of a JSON file."""
    name, _, key = rel.partition("#")
    path = ctx.path(name)
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace")
    return json.dumps(json.loads(text).get(key)) if key else text


def last_line(output: str) -> str:
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    return text[:200] + ("..." if len(text) > 200 else "")


# -- controls: good input, the cases build on what they write ------------------------------------
def controls() -> list[Case]:
    c = "control"
    return [
        Case(
            c,
            "CTL_prep_nn",
            "prepare an nnU-Net v2 folder",
            ["prepare", "data/nn", "--out", "prep/nn", "--size", "64"],
            accept=["organ"],
        ),
        Case(
            c,
            "CTL_prep_png",
            "prepare PNG images/ + masks/",
            ["prepare", "data/png", "--out", "prep/png", "--size", "64", "--split", "4:1:1"],
            accept=[],
        ),
        Case(
            c,
            "CTL_train_lora",
            "train decoder LoRA",
            ["train", "--data", "prep/nn", "--out", "runs/good", *LORA, *TINY],
            accept=[],
            needs=("CTL_prep_nn",),
        ),
        Case(
            c,
            "CTL_train_box",
            "train decoder LoRA, box prompts",
            ["train", "--data", "prep/nn", "--out", "runs/box", *LORA, "--mode", "box", *TINY],
            accept=[],
            needs=("CTL_prep_nn",),
        ),
        Case(
            c,
            "CTL_evaluate",
            "evaluate the run",
            ["evaluate", "runs/good"],
            accept=["DSC"],
            needs=("CTL_train_lora",),
        ),
        Case(
            c,
            "CTL_predict",
            "predict a NIfTI volume",
            ["predict", "runs/good", "data/nn/imagesTr/case_000_0000.nii.gz", "--out", "pred/good"],
            accept=[],
            needs=("CTL_train_lora",),
        ),
        Case(
            c,
            "CTL_export",
            "export the run",
            ["export", "runs/good", "--out", "exp/good.pth"],
            accept=[],
            needs=("CTL_train_lora",),
        ),
    ]


# -- data and prepare ----------------------------------------------------------------------------
Edit = Callable[[Path], None]


def from_copy(src: str, name: str, edit: Edit) -> Callable[[Context], None]:
    """A setup: copy ``data/SRC`` to ``data/NAME`` and break the copy with ``edit``."""

    def setup(ctx: Context) -> None:
        edit(copy_tree(ctx, f"data/{src}", f"data/{name}"))

    return setup


def prep(name: str, *extra: str) -> list[str]:
    return ["prepare", f"data/{name}", "--out", f"prep/{name}", "--size", "64", *extra]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def set_nan(case: str, everywhere: bool) -> Edit:
    def edit(root: Path) -> None:
        i = int(case[-3:])
        image = block_case(i)[0]
        if everywhere:
            image[:] = np.nan
        else:
            image[3:5, 2:6, 2:6] = np.nan
        write_image(root / "imagesTr" / f"{case}_0000.nii.gz", image)

    return edit


def img4d(root: Path) -> None:
    image = block_case(0)[0]
    write_image(root / "imagesTr" / "case_000_0000.nii.gz", np.stack([image, image]))


def splits(content: str) -> Edit:
    return lambda root: write(root / "splits_final.json", content).touch()


def msd_edit(change: Callable[[dict], None]) -> Edit:
    def edit(root: Path) -> None:
        meta = json.loads((root / "dataset.json").read_text())
        change(meta)
        (root / "dataset.json").write_text(json.dumps(meta))

    return edit


def png_masks(kind: str) -> Edit:
    """Rewrite every mask of a PNG folder as a JPEG, a red-on-black RGB image or a blurred PNG."""

    def edit(root: Path) -> None:
        from PIL import Image, ImageFilter

        for path in sorted((root / "masks").glob("*.png")):
            mask = Image.open(path).convert("L")
            if kind == "jpeg":
                path.unlink()
                mask.save(path.with_suffix(".jpg"), quality=75)
            elif kind == "rgb":
                m = np.asarray(mask) > 0
                rgb = np.zeros((*m.shape, 3), np.uint8)
                rgb[m] = (255, 0, 0)
                Image.fromarray(rgb).save(path)
            elif kind == "soft":
                mask.filter(ImageFilter.GaussianBlur(1.5)).save(path)

    return edit


def mha_dataset(ctx: Context) -> None:
    """An nnU-Net folder of .mha files, one image truncated."""
    root = ctx.path("data/trunc_mha")
    for i in range(4):
        image, mask = block_case(i)
        write_image(root / "imagesTr" / f"case_{i:03d}_0000.mha", image)
        write_image(root / "labelsTr" / f"case_{i:03d}.mha", mask)
    (root / "dataset.json").write_text(json.dumps({**NN_META, "numTraining": 4, "file_ending": ".mha"}))
    truncate(root / "imagesTr" / "case_001_0000.mha", 0.6)


def csv_lists(ctx: Context, name: str, files: dict[str, str]) -> None:
    """``data/NAME``: images/, masks/ (the PNGs) and lists/ with the given CSV files."""
    root = copy_tree(ctx, "data/png", f"data/{name}")
    for fname, text in files.items():
        write(root / "lists" / fname, text)


def png_rows(first: int, last: int) -> str:
    return "".join(
        f"images/patient{p}_slice{s}.png,masks/patient{p}_slice{s}.png\n"
        for p in range(first, last)
        for s in range(2)
    )


def data_cases() -> list[Case]:
    c = "data"
    sf_good = json.dumps(
        [
            {
                "train": ["case_000", "case_001", "case_002", "case_003", "case_004"],
                "val": ["case_005", "case_006", "case_007"],
            }
        ]
    )
    sf_overlap = json.dumps(
        [
            {
                "train": ["case_000", "case_001", "case_002", "case_003", "case_004", "case_005"],
                "val": ["case_005", "case_006", "case_007"],
            }
        ]
    )
    sf_unknown = json.dumps(
        [
            {
                "train": ["case_000", "case_001", "case_002", "case_003", "case_099"],
                "val": ["case_005", "case_006", "case_007"],
            }
        ]
    )
    return [
        # nnU-Net folders
        Case(
            c,
            "P_img4d",
            "4D (2-frame) image inside an nnU-Net dataset",
            prep("img4d"),
            setup=from_copy("nn", "img4d", img4d),
            refuse=["4D image", "case_000"],
        ),
        Case(
            c,
            "P_missing_label",
            "imagesTr case without its labelsTr file",
            prep("missing_label"),
            setup=from_copy("nn", "missing_label", lambda r: (r / "labelsTr" / "case_003.nii.gz").unlink()),
            refuse=["without a label", "case_003"],
        ),
        Case(
            c,
            "P_nan_img",
            "NaN block in an image",
            prep("nan_img"),
            setup=from_copy("nn", "nan_img", set_nan("case_002", False)),
            accept=["NaN", "case_002"],
            files=["prep/nan_img/manifest.json#warnings"],
        ),
        Case(
            c,
            "P_allnan_img",
            "all-NaN image volume",
            prep("allnan_img"),
            setup=from_copy("nn", "allnan_img", set_nan("case_002", True)),
            refuse=["every voxel is NaN", "case_002"],
        ),
        Case(
            c,
            "P_trunc_mha",
            "truncated MHA",
            prep("trunc_mha"),
            setup=mha_dataset,
            refuse=["truncated", "case_001"],
        ),
        # splits_final.json
        Case(
            c,
            "P_sf_good",
            "a valid splits_final.json (regression)",
            prep("sf_good"),
            setup=from_copy("nn", "sf_good", splits(sf_good)),
            accept=["using fold 0 of splits_final.json"],
            files=["prep/sf_good/manifest.json#warnings"],
        ),
        Case(
            c,
            "P_sf_broken",
            "splits_final.json not valid JSON",
            prep("sf_broken"),
            setup=from_copy("nn", "sf_broken", splits('[{"train": ["case_000",')),
            refuse=["splits_final.json"],
        ),
        Case(
            c,
            "P_sf_notlist",
            "splits_final.json a dict, not a list",
            prep("sf_notlist"),
            setup=from_copy("nn", "sf_notlist", splits('{"train": ["case_000"], "val": ["case_001"]}')),
            refuse=["splits_final.json", "list"],
        ),
        Case(
            c,
            "P_sf_empty",
            "splits_final.json = []",
            prep("sf_empty"),
            setup=from_copy("nn", "sf_empty", splits("[]")),
            refuse=["splits_final.json"],
        ),
        Case(
            c,
            "P_sf_str",
            "splits_final.json train/val as strings",
            prep("sf_str"),
            setup=from_copy("nn", "sf_str", splits('[{"train": "case_000", "val": "case_001"}]')),
            refuse=["splits_final.json"],
        ),
        Case(
            c,
            "P_sf_unknown",
            "splits_final.json names a case that does not exist",
            prep("sf_unknown"),
            setup=from_copy("nn", "sf_unknown", splits(sf_unknown)),
            refuse=["splits_final.json", "case_099"],
        ),
        Case(
            c,
            "P_sf_overlap",
            "splits_final.json with a case in train and val",
            prep("sf_overlap"),
            setup=from_copy("nn", "sf_overlap", splits(sf_overlap)),
            accept=["case_005", "both"],
            files=["prep/sf_overlap/manifest.json#warnings"],
        ),
        # Decathlon folders
        Case(
            c,
            "P_msd_nolabelkey",
            "MSD training entry without 'label'",
            prep("msd_nolabelkey"),
            setup=from_copy("msd", "msd_nolabelkey", msd_edit(lambda m: m["training"][1].pop("label"))),
            refuse=['has no "label"'],
        ),
        Case(
            c,
            "P_msd_trainingstr",
            "MSD dataset.json whose 'training' is a string",
            prep("msd_trainingstr"),
            setup=from_copy("msd", "msd_trainingstr", msd_edit(lambda m: m.update(training="imagesTr"))),
            refuse=["Decathlon", "training"],
        ),
        Case(
            c,
            "P_msd_notraining",
            "MSD dataset.json without 'training'",
            prep("msd_notraining"),
            setup=from_copy("msd", "msd_notraining", msd_edit(lambda m: m.pop("training"))),
            refuse=["training"],
        ),
        Case(
            c,
            "P_msd_labels_names",
            "MSD dataset.json with v2-style labels",
            prep("msd_labels_names"),
            setup=from_copy(
                "msd", "msd_labels_names", msd_edit(lambda m: m.update(labels={"background": 0, "organ": 1}))
            ),
            refuse=["labels"],
        ),
        # PNG folders
        Case(
            c,
            "P_png_jpgmask",
            "JPEG-compressed mask",
            prep("png_jpgmask", "--split", "4:1:1"),
            setup=from_copy("png", "png_jpgmask", png_masks("jpeg")),
            refuse=["a JPEG mask"],
        ),
        Case(
            c,
            "P_png_rgbmask",
            "colour (RGB) PNG mask",
            prep("png_rgbmask", "--split", "4:1:1"),
            setup=from_copy("png", "png_rgbmask", png_masks("rgb")),
            refuse=["a colour mask", "--label-map"],
        ),
        Case(
            c,
            "P_png_rgbmask_map",
            "colour mask with --label-map '{\"#ff0000\": 1}'",
            [
                "prepare",
                "data/png_rgbmask",
                "--out",
                "prep/png_rgbmask_map",
                "--size",
                "64",
                "--split",
                "4:1:1",
                "--label-map",
                '{"#ff0000": 1}',
            ],
            accept=[],
            needs=(),
        ),
        Case(
            c,
            "P_png_soft_mask",
            "anti-aliased (blurred) PNG mask",
            prep("png_soft_mask", "--split", "4:1:1"),
            setup=from_copy("png", "png_soft_mask", png_masks("soft")),
            refuse=["cover under 0.5%"],
        ),
        # CSV lists
        Case(
            c,
            "C2_emptyfield",
            "CSV row with an empty image field",
            [
                "prepare",
                "data/csv_empty/lists/all.csv",
                "--out",
                "prep/csv_empty",
                "--size",
                "64",
                "--split",
                "4:1:1",
            ],
            setup=lambda ctx: csv_lists(
                ctx,
                "csv_empty",
                {"all.csv": png_rows(0, 3) + ",masks/patient3_slice0.png\n" + png_rows(4, 6)},
            ),
            refuse=["empty path", "all.csv:7"],
        ),
        Case(
            c,
            "C_trainonly",
            "lists folder with only train.csv",
            ["prepare", "data/trainonly/lists", "--out", "prep/trainonly", "--size", "64"],
            setup=lambda ctx: csv_lists(ctx, "trainonly", {"train.csv": png_rows(0, 6)}),
            refuse=["lists", "val"],
        ),
        Case(
            c,
            "L3",
            "--label-map naming a missing file",
            [
                "prepare",
                "data/png",
                "--out",
                "prep/lm3",
                "--size",
                "64",
                "--split",
                "4:1:1",
                "--label-map",
                "nonexistent.json",
            ],
            refuse=["no such file", "nonexistent.json"],
        ),
    ]


def force_link_check(ctx: Context, res: Result) -> tuple[str, str]:
    """``prepare --force --out LINK``: LINK stays a link, the linked dataset is the new one."""
    link, target = ctx.path("linkprep"), ctx.path("prep/linked/manifest.json")
    if TRACEBACK in res.output or res.rc not in (0, 2):
        return "TRACEBACK", f"exit {res.rc}"
    if res.rc != 0:
        return "UNCLEAR", "refused"
    if not link.is_symlink():
        return "SILENT", "the link was replaced by a folder"
    source = json.loads(target.read_text()).get("source", {}) if target.is_file() else {}
    if "png" not in str(source.get("path", "")):
        return "SILENT", "the linked dataset still holds the old data"
    return "OK", ""


def link_setup(ctx: Context) -> None:
    ctx.tunesam("prepare", "data/nn", "--out", "prep/linked", "--size", "64")
    remove(ctx.path("linkprep"))
    ctx.path("linkprep").symlink_to("prep/linked")


def dangling(name: str) -> Callable[[Context], None]:
    def setup(ctx: Context) -> None:
        remove(ctx.path(name))
        ctx.path(name).symlink_to("nowhere/at/all")

    return setup


def nn_case_edit(case: str, image: np.ndarray | None = None, mask: np.ndarray | None = None) -> Edit:
    def edit(root: Path) -> None:
        if image is not None:
            write_image(root / "imagesTr" / f"{case}_0000.nii.gz", image)
        if mask is not None:
            write_image(root / "labelsTr" / f"{case}.nii.gz", mask)

    return edit


def meta_edit(change: Callable[[dict], None]) -> Edit:
    return msd_edit(change)


def mask_plus(value: int, scale: int = 1) -> np.ndarray:
    mask = block_case(1)[1] * scale
    if value:
        mask[0, 0:3, 0:3] = value
    return mask


def data_more_cases() -> list[Case]:
    c = "data"
    rng = np.random.default_rng(7)
    return [
        # output folders and links
        Case(
            c,
            "SL_prep_dangling",
            "--out is a dangling symlink (prepare)",
            ["prepare", "data/nn", "--out", "danglink", "--size", "64"],
            setup=dangling("danglink"),
            refuse=["danglink", "is a link to"],
        ),
        Case(
            c,
            "SL_prep_force_link",
            "prepare --force --out LINK, a symlink to an existing dataset",
            ["prepare", "data/png", "--out", "linkprep", "--size", "64", "--split", "4:1:1", "--force"],
            setup=link_setup,
            check=force_link_check,
        ),
        Case(
            c,
            "SL_prep_link",
            "prepare --out a symlink to a non-dataset folder (regression)",
            ["prepare", "data/nn", "--out", "docslink", "--size", "64"],
            setup=lambda ctx: (
                write(ctx.path("mydocs/thesis.txt"), "chapter 1"),
                remove(ctx.path("docslink")),
                ctx.path("docslink").symlink_to("mydocs"),
            ),
            refuse=["mydocs", "not a prepared dataset"],
            keeps=["mydocs/thesis.txt"],
        ),
        Case(
            c,
            "P_dirlink",
            "dataset folder is a symlink (regression)",
            ["prepare", "data/nnlink", "--out", "prep/dirlink", "--size", "64"],
            setup=lambda ctx: ctx.path("data/nnlink").symlink_to("nn"),
            accept=["organ"],
        ),
        Case(
            c,
            "O1",
            "prepare --out an unrelated non-empty folder (regression)",
            ["prepare", "data/nn", "--out", "mydocs2", "--size", "64"],
            setup=lambda ctx: write(ctx.path("mydocs2/notes.txt"), "keep me"),
            refuse=["mydocs2", "not a prepared dataset"],
            keeps=["mydocs2/notes.txt"],
        ),
        Case(
            c,
            "O1_force",
            "prepare --force --out an unrelated non-empty folder (regression)",
            ["prepare", "data/nn", "--out", "mydocs2", "--size", "64", "--force"],
            refuse=["mydocs2", "not a prepared dataset"],
            keeps=["mydocs2/notes.txt"],
        ),
        Case(
            c,
            "O3",
            "prepare the same command twice: reused (regression)",
            ["prepare", "data/nn", "--out", "prep/nn", "--size", "64"],
            accept=[],
            needs=("CTL_prep_nn",),
        ),
        Case(
            c,
            "O5",
            "prepare --out inside the source folder (regression)",
            ["prepare", "data/nn", "--out", "data/nn/prepared", "--size", "64"],
            accept=[],
        ),
        Case(
            c,
            "O7",
            "prepare --out an existing file (regression)",
            ["prepare", "data/nn", "--out", "mydocs/thesis.txt", "--size", "64"],
            refuse=["thesis.txt", "not a prepared dataset"],
            keeps=["mydocs/thesis.txt"],
        ),
        # options
        Case(
            c,
            "SZ_0",
            "--size 0 (regression)",
            ["prepare", "data/nn", "--out", "prep/sz0", "--size", "0"],
            refuse=["--size", "16"],
        ),
        Case(
            c,
            "SPL_a_b_c",
            "malformed --split a:b:c (regression)",
            ["prepare", "data/nn", "--out", "prep/spl", "--split", "a:b:c"],
            refuse=["--split"],
        ),
        Case(
            c,
            "WIN_bad",
            "malformed --window (regression)",
            ["prepare", "data/nn", "--out", "prep/win", "--modality", "ct", "--window", "forty"],
            refuse=["--window"],
        ),
        Case(
            c,
            "CP_badregex",
            "invalid --case-pattern regex (regression)",
            ["prepare", "data/png", "--out", "prep/cp", "--case-pattern", "(patient"],
            refuse=["--case-pattern"],
        ),
        Case(
            c,
            "L1",
            "--label-map '254:1,255:1' (not JSON) (regression)",
            ["prepare", "data/png", "--out", "prep/lm1", "--split", "4:1:1", "--label-map", "254:1,255:1"],
            refuse=["--label-map"],
        ),
        Case(
            c,
            "L4",
            "--label-map missing a raw value (regression)",
            ["prepare", "data/png", "--out", "prep/lm4", "--split", "4:1:1", "--label-map", '{"254": 1}'],
            refuse=["--label-map", "[255]"],
        ),
        Case(
            c,
            "L7",
            "--label-map a JSON list (regression)",
            ["prepare", "data/png", "--out", "prep/lm7", "--split", "4:1:1", "--label-map", "[255]"],
            refuse=["--label-map"],
        ),
        # broken files and metadata
        Case(
            c,
            "P_garbage",
            "random bytes named .nii.gz (regression)",
            prep("garbage"),
            setup=from_copy(
                "nn", "garbage", lambda r: write(r / "imagesTr" / "case_004_0000.nii.gz", rng.bytes(3000))
            ),
            refuse=["case_004_0000.nii.gz"],
        ),
        Case(
            c,
            "P_zero_img",
            "zero-byte NIfTI image (regression)",
            prep("zero_img"),
            setup=from_copy("nn", "zero_img", lambda r: write(r / "imagesTr" / "case_004_0000.nii.gz", b"")),
            refuse=["case_004_0000.nii.gz"],
        ),
        Case(
            c,
            "P_trunc_gz",
            "truncated .nii.gz image (regression)",
            prep("trunc_gz"),
            setup=from_copy("nn", "trunc_gz", lambda r: truncate(r / "imagesTr" / "case_004_0000.nii.gz")),
            refuse=["case_004_0000.nii.gz"],
        ),
        Case(
            c,
            "P_json_broken",
            "dataset.json not valid JSON (regression)",
            prep("json_broken"),
            setup=from_copy("nn", "json_broken", lambda r: write(r / "dataset.json", '{"labels": {')),
            refuse=["dataset.json"],
        ),
        Case(
            c,
            "P_shape_mm",
            "image/mask shape mismatch (regression)",
            prep("shape_mm"),
            setup=from_copy("nn", "shape_mm", nn_case_edit("case_004", mask=np.zeros((8, 20, 20), np.uint8))),
            refuse=["case_004", "shape"],
        ),
        Case(
            c,
            "P_labels_extra",
            "mask holds label 2 not in dataset.json (regression)",
            prep("labels_extra"),
            setup=from_copy("nn", "labels_extra", nn_case_edit("case_001", mask=mask_plus(2))),
            refuse=["case_001", "[2]", "not in the label map"],
        ),
        Case(
            c,
            "P_ignore",
            "nnU-Net ignore label (regression)",
            prep("ignore"),
            setup=from_copy(
                "nn",
                "ignore",
                meta_edit(lambda m: m.update(labels={"background": 0, "organ": 1, "ignore": 2})),
            ),
            refuse=["ignore"],
        ),
        Case(
            c,
            "P_regions",
            "region-based labels (regression)",
            prep("regions"),
            setup=from_copy(
                "nn",
                "regions",
                meta_edit(
                    lambda m: m.update(labels={"background": 0, "organ": [1, 2]}, regions_class_order=[1])
                ),
            ),
            refuse=["region"],
        ),
        Case(
            c,
            "P_png_zero",
            "zero-byte PNG (regression)",
            prep("png_zero", "--split", "4:1:1"),
            setup=from_copy("png", "png_zero", lambda r: write(r / "images" / "patient2_slice1.png", b"")),
            refuse=["patient2_slice1.png"],
        ),
        Case(
            c,
            "P_png_trunc_mask",
            "truncated PNG mask (regression)",
            prep("png_trunc_mask", "--split", "4:1:1"),
            setup=from_copy(
                "png", "png_trunc_mask", lambda r: truncate(r / "masks" / "patient2_slice1.png", 0.4)
            ),
            refuse=["patient2_slice1.png"],
        ),
        Case(
            c,
            "P_png_size_mm",
            "PNG mask of another size (regression)",
            prep("png_size_mm", "--split", "4:1:1"),
            setup=from_copy(
                "png",
                "png_size_mm",
                lambda r: (
                    __import__("PIL.Image").Image.new("L", (30, 20)).save(r / "masks" / "patient2_slice1.png")
                ),
            ),
            refuse=["patient2_slice1", "shape"],
        ),
        Case(
            c,
            "P_orphan_label",
            "labelsTr file without image (regression)",
            prep("orphan_label"),
            setup=from_copy(
                "nn", "orphan_label", lambda r: (r / "imagesTr" / "case_007_0000.nii.gz").unlink()
            ),
            refuse=["case_007", "no image"],
        ),
        Case(
            c,
            "P_one_case",
            "1 patient, 7:1:2 split (regression)",
            prep("one_case"),
            setup=lambda ctx: nnunet(ctx.path("data/one_case"), n=1),
            refuse=["1 patients", "split"],
        ),
        Case(
            c,
            "C_crlf",
            "CSV with Windows line endings (regression)",
            [
                "prepare",
                "data/csv_crlf/lists/all.csv",
                "--out",
                "prep/csv_crlf",
                "--size",
                "64",
                "--split",
                "4:1:1",
            ],
            setup=lambda ctx: csv_lists(ctx, "csv_crlf", {"all.csv": png_rows(0, 6).replace("\n", "\r\n")}),
            accept=[],
        ),
        Case(
            c,
            "C_bom",
            "CSV with a UTF-8 BOM and a header (regression)",
            [
                "prepare",
                "data/csv_bom/lists/all.csv",
                "--out",
                "prep/csv_bom",
                "--size",
                "64",
                "--split",
                "4:1:1",
            ],
            setup=lambda ctx: csv_lists(ctx, "csv_bom", {"all.csv": "\ufeffimage,mask\n" + png_rows(0, 6)}),
            accept=[],
        ),
        Case(
            c,
            "C_missing",
            "CSV row naming a missing file (regression)",
            [
                "prepare",
                "data/csv_missing/lists/all.csv",
                "--out",
                "prep/csv_missing",
                "--size",
                "64",
                "--split",
                "4:1:1",
            ],
            setup=lambda ctx: csv_lists(
                ctx, "csv_missing", {"all.csv": png_rows(0, 6) + "images/patient9.png,masks/patient9.png\n"}
            ),
            refuse=["patient9.png", "all.csv:13", "not found"],
        ),
    ]


def dicom_data(ctx: Context) -> None:
    vol = block_case(0)[0] * 5
    root = ctx.path("data/dicom")
    dicom_series(root / "gap", vol, "1.2.826.0.1.3680043.8.498.2", skip=(3,))
    dicom_series(root / "trunc", vol, "1.2.826.0.1.3680043.8.498.3")
    truncate(root / "trunc" / "IM0003.dcm", 0.5)
    dicom_series(root / "mixed", vol, "1.2.826.0.1.3680043.8.498.4")
    dicom_series(root / "mixed", vol[:6] * 0.5, "1.2.826.0.1.3680043.8.498.5", first=100)
    dicom_series(root / "onefile", vol[:1], "1.2.826.0.1.3680043.8.498.6")
    (root / "empty").mkdir(parents=True, exist_ok=True)
    import SimpleITK as sitk

    mask = sitk.GetImageFromArray(block_case(0)[1])
    mask.SetSpacing((0.7, 0.9, 2.5))
    mask.SetOrigin((-5.0, 10.0, 0.0))
    sitk.WriteImage(mask, str(root / "mask.nii.gz"))
    mask.SetOrigin((40.0, 10.0, 0.0))
    sitk.WriteImage(mask, str(root / "mask_other_origin.nii.gz"))
    shutil.copytree(root / "good", root / "good2")
    shutil.copytree(root / "mixed", root / "mixed2")
    write(
        ctx.path("data/lists/good_dicom.csv"), "dicom/good,dicom/mask.nii.gz\ndicom/good2,dicom/mask.nii.gz\n"
    )
    write(
        ctx.path("data/lists/mixed_dicom.csv"),
        "dicom/mixed,dicom/mask.nii.gz\ndicom/mixed2,dicom/mask.nii.gz\n",
    )
    write(ctx.path("data/lists/other_origin.csv"), "dicom/good,dicom/mask_other_origin.nii.gz\n")


def dicom_cases() -> list[Case]:
    c = "dicom"
    uid = "1.2.826.0.1.3680043.8.498.4"
    run = ("CTL_train_lora",)

    def pred(src: str, *extra: str) -> list[str]:
        return [
            "predict",
            "runs/good",
            f"data/dicom/{src}",
            "--out",
            f"pred/dicom_{src.replace('/', '_')}",
            *extra,
        ]

    return [
        Case(
            c,
            "CTL_dicom_predict",
            "predict a good DICOM series (control for this class)",
            pred("good"),
            accept=[],
            needs=run,
        ),
        Case(
            c,
            "DC_gap_series",
            "DICOM series with a missing slice",
            pred("gap"),
            refuse=["not evenly spaced"],
            needs=run,
        ),
        Case(
            c,
            "DC_trunc_series",
            "DICOM series with one truncated slice",
            pred("trunc"),
            refuse=["not evenly spaced"],
            needs=run,
        ),
        Case(
            c,
            "DC_mixed",
            "DICOM folder with 2 series (predict)",
            pred("mixed"),
            refuse=["--series", uid],
            needs=run,
        ),
        Case(
            c,
            "DC_mixed_series",
            "DICOM folder with 2 series, predict --series UID",
            pred("mixed", "--series", uid),
            accept=[],
            needs=run,
        ),
        Case(
            c,
            "DC_IM0003.dcm",
            "single .dcm file to predict",
            pred("good/IM0003.dcm"),
            refuse=["a single DICOM file"],
            needs=run,
        ),
        Case(
            c,
            "DC_emptydir",
            "empty folder as DICOM input (regression)",
            pred("empty"),
            refuse=["no DICOM files"],
            needs=run,
        ),
        Case(
            c,
            "DC_onefile",
            "folder with a single DICOM file (regression)",
            pred("onefile"),
            accept=[],
            needs=run,
        ),
        Case(
            c,
            "DC_prep_mixed",
            "DICOM folder with 2 series (prepare, a CSV list)",
            [
                "prepare",
                "data/lists/mixed_dicom.csv",
                "--out",
                "prep/dc_mixed",
                "--split",
                "1:1:0",
                "--size",
                "64",
            ],
            refuse=["--series", uid],
        ),
        Case(
            c,
            "DC_prep_mixed_series",
            "DICOM folder with 2 series, prepare --series UID",
            [
                "prepare",
                "data/lists/mixed_dicom.csv",
                "--out",
                "prep/dc_mixed_series",
                "--split",
                "1:1:0",
                "--size",
                "64",
                "--series",
                uid,
            ],
            accept=[],
        ),
        Case(
            c,
            "DC_prep_good",
            "DICOM series + NIfTI mask (regression)",
            [
                "prepare",
                "data/lists/good_dicom.csv",
                "--out",
                "prep/dc_good",
                "--split",
                "1:1:0",
                "--size",
                "64",
            ],
            accept=[],
        ),
        Case(
            c,
            "DC_prep_single",
            "DICOM series + NIfTI mask with another origin (regression)",
            [
                "prepare",
                "data/lists/other_origin.csv",
                "--out",
                "prep/dc_origin",
                "--split",
                "1:0:0",
                "--size",
                "64",
            ],
            refuse=["mask_other_origin.nii.gz", "origin"],
        ),
    ]


# -- study --------------------------------------------------------------------------------------
GRID = """\
grid:
  arch: [vit_t_test]
  checkpoint: [null]
  tune: [decoder]
  method: {methods}
  mode: [auto]
  epochs: {epochs}
  image_size: 32
  warmup: 1
  lr: 0.002
  device: cpu
  num_workers: 0
"""


def study_text(
    methods: str = "[lora]",
    epochs: str = "1",
    grid: str | None = None,
    extra: str = "",
    datasets: str = "{nn: prep/nn}",
) -> str:
    body = GRID.format(methods=methods, epochs=epochs) if grid is None else grid
    return f"datasets: {datasets}\n{body}{extra}"


def study_file(name: str, text: str) -> Callable[[Context], None]:
    return lambda ctx: write(ctx.path(f"st/{name}.yaml"), text).touch()


def study(name: str, *extra: str, out: str | None = None) -> list[str]:
    return ["study", f"st/{name}.yaml", "--out", f"studies/{out or name}", *extra]


def dry(name: str) -> list[str]:
    return study(name, "--dry-run")


def damage_metrics(ctx: Context) -> None:
    root = copy_tree(ctx, "studies/good", "studies/good_dmg")
    cells = [m for m in root.rglob("metrics.json") if "report" not in m.parts]
    write(cells[0], '{"dsc": 0.5, "per_case": [')


def kill_study(name: str, mid_cell: bool) -> Callable[[Context, Case], Result]:
    """Start a 2-cell study into studies/NAME, SIGKILL it once the first cell has its
    metrics.json (``mid_cell``: once the second cell has started), then run ``study report`` on it;
    a kill that came too late (both cells finished) is the campaign's error, not a verdict."""

    def run(ctx: Context, case: Case) -> Result:
        write(ctx.path("st/two.yaml"), study_text(methods="[lora, vanilla]"))
        out = ctx.path(f"studies/{name}")

        def reached() -> bool:
            if not any(out.rglob("metrics.json")):
                return False
            return not mid_cell or len(list(out.glob("cells/*/*/config.yaml"))) >= 2

        t0 = time.perf_counter()
        proc = ctx.start(study("two", out=name))
        while proc.poll() is None and not reached() and time.perf_counter() - t0 < TIMEOUT_S:
            time.sleep(0.1)
        ctx.kill(proc)
        ctx.children.remove(proc)
        finished = len(list(out.rglob("metrics.json")))
        if proc.returncode >= 0 or not reached() or finished != 1:
            raise RuntimeError(f"the study ended (rc {proc.returncode}, {finished} cells finished) before the planned kill")
        return ctx.tunesam("study", "report", f"studies/{name}")

    return run


def as_if_killed_after_last_epoch(ctx: Context) -> None:
    """A copy of the finished study whose cell lost what comes after its last epoch (summary.json,
    metrics.json, efficiency.json): the state of a SIGKILL right after the last last.pt."""
    root = copy_tree(ctx, "studies/good", "studies/sk3")
    shutil.rmtree(root / "report", ignore_errors=True)
    for name in ("summary.json", "metrics.json", "efficiency.json"):
        for f in root.glob(f"cells/*/*/{name}"):
            f.unlink()


def csv_field(rel: str, column: str) -> Check:
    """Exit 0, and every row of the CSV file has a value in ``column``."""

    def check(ctx: Context, res: Result) -> tuple[str, str]:
        import csv

        if TRACEBACK in res.output or res.rc not in (0, 2):
            return "TRACEBACK", f"exit {res.rc}"
        if res.rc != 0:
            return "UNCLEAR", "refused"
        path = ctx.path(rel)
        rows = list(csv.DictReader(path.open())) if path.is_file() else []
        empty = [r.get("cell", "?") for r in rows if not r.get(column)]
        if not rows or empty:
            return "SILENT", f"{rel}: no {column} for " + (", ".join(empty) if empty else "any row")
        return "OK", ""

    return check


def study_cases() -> list[Case]:
    c = "study"
    nn = ("CTL_prep_nn",)
    dup = GRID.format(methods="[lora]", epochs="1").replace(
        "  mode: [auto]\n", "  mode: [auto]\n  method: [vanilla]\n"
    )
    left_out = (
        GRID.format(methods="[lora]", epochs="1").replace("tune: [decoder]", "tune: [encoder-decoder]")
        + "  cache_embeddings: true\n"
    )
    return [
        Case(
            c,
            "CTL_study",
            "a one-cell study (control for this class)",
            study("good"),
            setup=study_file("good", study_text()),
            accept=["study done"],
            needs=nn,
        ),
        Case(
            c,
            "SC_dupkey",
            "duplicate 'method:' key in the grid",
            dry("dupkey"),
            setup=study_file("dupkey", study_text(grid=dup)),
            refuse=["given twice", "method"],
            needs=nn,
        ),
        Case(
            c,
            "SC_empty_grid",
            "empty grid: {}",
            dry("empty_grid"),
            setup=study_file("empty_grid", study_text(grid="grid: {}\n")),
            refuse=["grid: empty"],
            needs=nn,
        ),
        Case(
            c,
            "SC_empty_grid_list",
            "empty grid: []",
            dry("empty_grid_list"),
            setup=study_file("empty_grid_list", study_text(grid="grid: []\n")),
            refuse=["grid"],
            needs=nn,
        ),
        Case(
            c,
            "SC_no_grid",
            "no grid at all",
            dry("no_grid"),
            setup=study_file("no_grid", study_text(grid="")),
            refuse=["grid"],
            needs=nn,
        ),
        Case(
            c,
            "SC_empty_grid_run",
            "empty grid, a real run",
            study("empty_grid", out="sc_empty_run"),
            refuse=["grid: empty"],
            needs=nn,
        ),
        Case(
            c,
            "SC_empty_grid_report",
            "report on the refused empty-grid study",
            ["study", "report", "studies/sc_empty_run"],
            refuse=["studies/sc_empty_run"],
            needs=nn,
        ),
        Case(
            c,
            "SC_otherarch2",
            "every cell left out (cache_embeddings with tune encoder-decoder)",
            dry("left_out"),
            setup=study_file("left_out", study_text(grid=left_out)),
            refuse=["gives no cells", "cache_embeddings"],
            needs=nn,
        ),
        Case(
            c,
            "SC_epochs_str",
            "epochs: one",
            dry("epochs_str"),
            setup=study_file("epochs_str", study_text(epochs="one")),
            refuse=["epochs", "one"],
            needs=nn,
        ),
        Case(
            c,
            "SC_baseline_str",
            "baselines: unet (a string, not a list)",
            dry("baseline_str"),
            setup=study_file("baseline_str", study_text(extra="baselines: unet\n")),
            accept=["2 cells"],
            needs=nn,
        ),
        Case(
            c,
            "SC_bad_baseline",
            "baselines: [unet2] (regression)",
            dry("bad_baseline"),
            setup=study_file("bad_baseline", study_text(extra="baselines: [unet2]\n")),
            refuse=["unet2"],
            needs=nn,
        ),
        Case(
            c,
            "SC_typo_method",
            "method: [lorra] (regression)",
            dry("typo_method"),
            setup=study_file("typo_method", study_text(methods="[lorra]")),
            refuse=["lorra"],
            needs=nn,
        ),
        Case(
            c,
            "SC_unknown_top",
            "unknown top-level key 'gird' (regression)",
            dry("unknown_top"),
            setup=study_file("unknown_top", study_text(extra="gird: {}\n")),
            refuse=["gird"],
            needs=nn,
        ),
        Case(
            c,
            "SC_neglr",
            "lr: -5 (regression)",
            dry("neglr"),
            setup=study_file("neglr", study_text().replace("lr: 0.002", "lr: -5")),
            refuse=["lr"],
            needs=nn,
        ),
        Case(
            c,
            "SC_imgsize",
            "image_size: 63 (regression)",
            dry("imgsize"),
            setup=study_file("imgsize", study_text().replace("image_size: 32", "image_size: 63")),
            refuse=["--image-size", "63"],
            needs=nn,
        ),
        Case(
            c,
            "SC_malformed",
            "malformed YAML (regression)",
            dry("malformed"),
            setup=study_file("malformed", "datasets: {nn: prep/nn\ngrid: [\n"),
            refuse=["malformed.yaml"],
        ),
        Case(
            c,
            "SC_nodata",
            "dataset path missing (regression)",
            dry("nodata"),
            setup=study_file("nodata", study_text(datasets="{nn: prep/nothere}")),
            refuse=["prep/nothere"],
        ),
        Case(
            c,
            "SC_rawdata",
            "dataset is a raw, unprepared folder (regression)",
            dry("rawdata"),
            setup=study_file("rawdata", study_text(datasets="{nn: data/nn}")),
            refuse=["data/nn", "tunesam prepare"],
        ),
        Case(
            c,
            "SO_notstudy",
            "study --out a non-empty folder that is no study",
            study("good", out="../mydocs3"),
            setup=lambda ctx: write(ctx.path("mydocs3/notes.txt"), "keep me"),
            refuse=["mydocs3", "is not a study folder"],
            keeps=["mydocs3/notes.txt"],
            needs=nn,
        ),
        Case(
            c,
            "SO_run",
            "study --out a training run folder",
            ["study", "st/good.yaml", "--out", "runs/good"],
            refuse=["runs/good", "is not a study folder"],
            keeps=["runs/good/weights/best.safetensors"],
            needs=("CTL_train_lora", "CTL_study"),
        ),
        Case(
            c,
            "SC_changed_epochs",
            "changed epoch cap on an existing study (regression)",
            study("good_e2", out="good"),
            setup=study_file("good_e2", study_text(epochs="2")),
            refuse=["epoch"],
            needs=("CTL_study",),
        ),
        Case(
            c,
            "SR_badmetrics",
            "report with one corrupt cell metrics.json",
            ["study", "report", "studies/good_dmg"],
            setup=damage_metrics,
            refuse=["metrics.json"],
            needs=("CTL_study",),
        ),
        Case(
            c,
            "SR_notstudy",
            "report on a training run folder (regression)",
            ["study", "report", "runs/good"],
            refuse=["runs/good"],
            needs=("CTL_train_lora",),
        ),
        Case(
            c,
            "SR_nonexist",
            "report on a missing folder (regression)",
            ["study", "report", "studies/nothere"],
            refuse=["studies/nothere"],
        ),
        Case(
            c,
            "SK_report1",
            "SIGKILL between the 2 cells of a study (SK_kill), then report",
            ["study", "report", "studies/killed"],
            run=kill_study("killed", mid_cell=False),
            accept=["not finished"],
            shown="tunesam study st/two.yaml --out studies/killed (SIGKILL after cell 1); tunesam study report studies/killed",
            needs=nn,
        ),
        Case(
            c,
            "SK_resume",
            "rerun the killed study: it finishes",
            study("two", out="killed"),
            accept=["study done"],
            needs=("SK_report1",),
        ),
        Case(
            c,
            "SK_report2",
            "SIGKILL inside the second cell of a study (SK_kill2), then report",
            ["study", "report", "studies/killed2"],
            run=kill_study("killed2", mid_cell=True),
            accept=["not finished"],
            shown="tunesam study st/two.yaml --out studies/killed2 (SIGKILL in cell 2); tunesam study report studies/killed2",
            needs=nn,
        ),
        Case(
            c,
            "SK3_resume",
            "a cell killed after its last epoch (SK3_kill, simulated), study rerun",
            study("good", out="sk3"),
            setup=as_if_killed_after_last_epoch,
            accept=["study done"],
            needs=("CTL_study",),
        ),
        Case(
            c,
            "SK3_report",
            "... then report: s / iteration of that cell",
            ["study", "report", "studies/sk3"],
            check=csv_field("studies/sk3/report/results.csv", "seconds_per_step"),
            needs=("SK3_resume",),
        ),
    ]


# -- hostile files: NaN weights, pickles ------------------------------------------------------------
def nan_safetensors(path: Path) -> None:
    """Fill every float32 tensor of a .safetensors file with NaN (the format: an 8-byte header
    length, a JSON header of dtype/shape/offsets, then the raw data)."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    start = 8 + n
    for name, info in header.items():
        if name == "__metadata__" or info.get("dtype") != "F32":
            continue
        b, e = info["data_offsets"]
        raw[start + b : start + e] = np.full((e - b) // 4, np.nan, np.float32).tobytes()
    path.write_bytes(bytes(raw))


class Payload:
    """Unpickling this runs a shell command (it would create a marker file)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # type: ignore[override]
        return (os.system, (self.command,))


def marker(ctx: Context, name: str) -> str:
    return f"touch {ctx.work}/pwned_{name}"


def evil_pickle(ctx: Context, rel: str, name: str, kind: str = "raw") -> Path:
    """A pickle payload: ``raw`` (pickle.dump), ``zip`` (a torch.save-style zip around it) or
    ``npy`` (an object array in .npy format)."""
    import pickle
    import zipfile

    path = ctx.path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = Payload(marker(ctx, name))
    if kind == "raw":
        path.write_bytes(pickle.dumps({"model": payload}, protocol=2))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("evil/data.pkl", pickle.dumps({"model": payload}, protocol=2))
            z.writestr("evil/version", "3\n")
            z.writestr("evil/byteorder", "little")
    elif kind == "npy":
        arr = np.empty(1, dtype=object)
        arr[0] = payload
        np.save(path, arr, allow_pickle=True)
    return path


# -- train ---------------------------------------------------------------------------------------
def train(data: str, out: str, *extra: str, arch: list[str] | None = None) -> list[str]:
    return ["train", "--data", data, "--out", out, *(arch or LORA), *TINY, *extra]


ED = ["--arch", "vit_t_test", "--tune", "encoder-decoder", "--method", "vanilla"]
KILL_TRAIN = [
    "train",
    "--data",
    "prep/nn16",
    "--out",
    "runs/k1",
    *ED,
    "--image-size",
    "64",
    "--epochs",
    "1",
    "--device",
    "cpu",
    "--num-workers",
    "0",
    "--warmup",
    "1",
    "--batch-size",
    "1",
]
KILL_PRETRAIN = [
    "pretrain",
    "mae",
    "--data",
    "prep/nn16",
    "--out",
    "runs/pt_kill",
    "--arch",
    "vit_test",
    "--image-size",
    "64",
    "--epochs",
    "1",
    "--device",
    "cpu",
    "--num-workers",
    "0",
    "--warmup",
    "1",
    "--batch-size",
    "1",
    "--decoder-dim",
    "32",
    "--decoder-depth",
    "1",
    "--decoder-heads",
    "1",
]


def kill_in_first_epoch(argv: list[str], folder: str) -> Callable[[Context], None]:
    """A setup: start ARGV, SIGKILL it a moment after its run folder's config.yaml appears, inside
    the first epoch (before its last.pt)."""

    def setup(ctx: Context) -> None:
        run = ctx.path(folder)
        remove(run)
        proc = ctx.start(argv)
        t0 = time.perf_counter()
        while (
            proc.poll() is None
            and not (run / "config.yaml").exists()
            and time.perf_counter() - t0 < TIMEOUT_S
        ):
            time.sleep(0.05)
        time.sleep(0.3)
        ctx.kill(proc)
        ctx.children.remove(proc)
        if (run / "last.pt").exists() or not run.exists():
            raise RuntimeError(f"could not kill {folder} inside its first epoch (rc {proc.returncode})")

    return setup


def damage_prepared(name: str, fname: str, how: str) -> Callable[[Context], None]:
    def setup(ctx: Context) -> None:
        root = copy_tree(ctx, "prep/nn", f"prep/{name}")
        if how == "truncate":
            truncate(root / fname, 0.5)
        else:
            (root / fname).unlink()

    return setup


def run_copy(
    name: str, edit: Callable[[Path], None] | None = None, src: str = "runs/good"
) -> Callable[[Context], None]:
    def setup(ctx: Context) -> None:
        root = copy_tree(ctx, src, f"runs/{name}")
        if edit is not None:
            edit(root)

    return setup


def edit_text(rel: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / rel
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new))

    return edit


def link_kept(rel: str, fragments: list[str]) -> Check:
    """--out is a symlink: refused (naming it), or written through with the link kept."""

    def check(ctx: Context, res: Result) -> tuple[str, str]:
        if TRACEBACK in res.output or res.rc not in (0, 2):
            return "TRACEBACK", f"exit {res.rc}"
        if res.rc == 2:
            missing = has_all(res.output, fragments)
            return ("UNCLEAR", "missing: " + ", ".join(map(repr, missing))) if missing else ("OK", "refused")
        if not ctx.path(rel).is_symlink():
            return "SILENT", f"{rel}: the link was replaced by a plain file; its target was not written"
        return "OK", "written through the link"

    return check


def resume_finished_check(ctx: Context, res: Result) -> tuple[str, str]:
    if TRACEBACK in res.output or res.rc not in (0, 2):
        return "TRACEBACK", f"exit {res.rc}"
    if res.rc != 0:
        return "UNCLEAR", "refused"
    summary = json.loads(ctx.path("runs/ref_copy/summary.json").read_text())
    if summary.get("seconds_per_step") is None:
        return "SILENT", "summary.json seconds_per_step became null"
    return "OK", ""


def train_cases() -> list[Case]:
    c = "train"
    nn, run = ("CTL_prep_nn",), ("CTL_train_lora",)
    return [
        Case(
            c,
            "CTL_prep_nn16",
            "prepare a 16-case dataset (control for the kill and concurrency cases)",
            ["prepare", "data/nn16", "--out", "prep/nn16", "--size", "64"],
            setup=lambda ctx: nnunet(ctx.path("data/nn16"), 16, (24, 24, 20)).touch(),
            accept=[],
        ),
        Case(
            c,
            "T_hugelr",
            "--lr 1e12 (diverges)",
            train("prep/nn", "runs/hugelr", "--lr", "1e12", "--warmup", "0", arch=ED),
            refuse=["diverged", "--lr"],
            needs=nn,
        ),
        Case(
            c,
            "T_is0",
            "--image-size 0",
            train("prep/nn", "runs/is0", "--image-size", "0"),
            refuse=["--image-size", "0"],
            needs=nn,
        ),
        Case(
            c,
            "T_is63",
            "--image-size 63 (regression)",
            train("prep/nn", "runs/is63", "--image-size", "63"),
            refuse=["--image-size", "63"],
            needs=nn,
        ),
        Case(
            c,
            "T_kill_norestart",
            "SIGKILL in epoch 1 (T_kill), then a plain rerun",
            KILL_TRAIN,
            setup=kill_in_first_epoch(KILL_TRAIN, "runs/k1"),
            refuse=["stopped before its first epoch ended", "--resume"],
            needs=("CTL_prep_nn16",),
        ),
        Case(
            c,
            "T_kill_resume",
            "SIGKILL in epoch 1, then --resume",
            [*KILL_TRAIN, "--resume"],
            accept=[],
            needs=("T_kill_norestart",),
        ),
        Case(
            c,
            "RC_resume_finished",
            "--resume a finished run",
            train("prep/nn", "runs/ref_copy", "--resume"),
            setup=run_copy("ref_copy", edit_text("config.yaml", "out: runs/good", "out: runs/ref_copy")),
            check=resume_finished_check,
            needs=run,
        ),
        Case(
            c,
            "T_exists",
            "train --out an existing run without --resume (regression)",
            train("prep/nn", "runs/good"),
            refuse=["runs/good", "--resume"],
            keeps=["runs/good/weights/best.safetensors"],
            needs=run,
        ),
        Case(
            c,
            "CK_lastpt",
            "--checkpoint RUN/last.pt",
            train("prep/nn", "runs/ck_lastpt", "--checkpoint", "runs/good/last.pt"),
            refuse=["tunesam export"],
            needs=run,
        ),
        Case(
            c,
            "CK_runweights",
            "--checkpoint RUN/weights/best.safetensors (a run's trained weights)",
            train("prep/nn", "runs/ck_runw", "--checkpoint", "runs/good/weights/best.safetensors"),
            refuse=["tunesam export"],
            needs=run,
        ),
        Case(
            c,
            "CK_missing",
            "--checkpoint a missing file (regression)",
            train("prep/nn", "runs/ck_missing", "--checkpoint", "nothere.pth"),
            refuse=["nothere.pth"],
            needs=nn,
        ),
        Case(
            c,
            "DMG1",
            "prepared dataset: truncated index.npy",
            train("prep/dmg1", "runs/dmg1"),
            setup=damage_prepared("dmg1", "index.npy", "truncate"),
            refuse=["index.npy", "damaged"],
            needs=nn,
        ),
        Case(
            c,
            "DMG2",
            "prepared dataset: truncated images.u8",
            train("prep/dmg2", "runs/dmg2"),
            setup=damage_prepared("dmg2", "images.u8", "truncate"),
            refuse=["images.u8", "damaged"],
            needs=nn,
        ),
        Case(
            c,
            "DMG2_rerun",
            "after the damaged-images.u8 refusal, the same --out with good data",
            train("prep/nn", "runs/dmg2"),
            accept=[],
            needs=("DMG2",),
        ),
        Case(
            c,
            "DMG3",
            "prepared dataset: truncated manifest.json",
            train("prep/dmg3", "runs/dmg3"),
            setup=damage_prepared("dmg3", "manifest.json", "truncate"),
            refuse=["manifest.json", "damaged"],
            needs=nn,
        ),
        Case(
            c,
            "DMG4",
            "prepared dataset: masks.u8 missing (regression)",
            train("prep/dmg4", "runs/dmg4"),
            setup=damage_prepared("dmg4", "masks.u8", "delete"),
            refuse=["masks.u8"],
            needs=nn,
        ),
        Case(
            c,
            "PT_unl_train",
            "train on a raw (unprepared) folder (regression)",
            train("data/nn", "runs/raw"),
            refuse=["data/nn", "tunesam prepare"],
        ),
    ]


# -- evaluate -----------------------------------------------------------------------------------
def evaluate_cases() -> list[Case]:
    c = "evaluate"
    run = ("CTL_train_lora",)
    return [
        Case(
            c,
            "EV_box_as_auto",
            "evaluate a box run with --mode auto",
            ["evaluate", "runs/box", "--mode", "auto"],
            refuse=["box mode", "leave out --mode"],
            forbid=["--checkpoint"],
            needs=("CTL_train_box",),
        ),
        Case(
            c,
            "E_nanw",
            "weights full of NaN",
            ["evaluate", "runs/nanw"],
            setup=run_copy("nanw", lambda r: nan_safetensors(r / "weights" / "best.safetensors")),
            refuse=["NaN"],
            needs=run,
        ),
        Case(
            c,
            "RC_datamoved_eval",
            "evaluate a run whose data folder was moved",
            ["evaluate", "runs/moved"],
            setup=run_copy("moved", edit_text("config.yaml", "data: prep/nn", "data: prep/moved_away")),
            refuse=["prep/moved_away", "--data"],
            needs=run,
        ),
        Case(
            c,
            "RC_datamoved_eval_data",
            "... then evaluate it with --data (regression)",
            ["evaluate", "runs/moved", "--data", "prep/nn"],
            accept=["DSC"],
            needs=("RC_datamoved_eval",),
        ),
        Case(
            c,
            "E_garbw",
            "evaluate with a garbage best.safetensors (regression)",
            ["evaluate", "runs/garbw"],
            setup=run_copy("garbw", lambda r: write(r / "weights" / "best.safetensors", b"\x00garbage" * 50)),
            refuse=["best.safetensors"],
            needs=run,
        ),
        Case(
            c,
            "E_truncw",
            "evaluate with a truncated best.safetensors (regression)",
            ["evaluate", "runs/truncw"],
            setup=run_copy("truncw", lambda r: truncate(r / "weights" / "best.safetensors")),
            refuse=["best.safetensors"],
            needs=run,
        ),
        Case(
            c,
            "E_now",
            "evaluate with no weights file (regression)",
            ["evaluate", "runs/now"],
            setup=run_copy("now", lambda r: shutil.rmtree(r / "weights")),
            refuse=["runs/now"],
            needs=run,
        ),
        Case(
            c,
            "EV_split_bad",
            "evaluate --split bogus (regression)",
            ["evaluate", "runs/good", "--split", "bogus"],
            refuse=["--split", "bogus"],
            needs=run,
        ),
        Case(
            c,
            "EV_notrun",
            "evaluate a folder that is no run (regression)",
            ["evaluate", "prep/nn"],
            refuse=["prep/nn"],
            needs=("CTL_prep_nn",),
        ),
        Case(
            c,
            "EV_val",
            "evaluate --split val (regression)",
            ["evaluate", "runs/good", "--split", "val", "--out", "ev/val.json"],
            accept=["dsc"],
            files=["ev/val.json"],
            needs=run,
        ),
    ]


# -- predict ------------------------------------------------------------------------------------
def predict_cases() -> list[Case]:
    c = "predict"
    run, box = ("CTL_train_lora",), ("CTL_train_box",)
    img = "data/nn/imagesTr/case_000_0000.nii.gz"
    return [
        Case(
            c,
            "SL_pred_dangling",
            "--out is a dangling symlink (predict)",
            ["predict", "runs/good", img, "--out", "danglink2"],
            setup=dangling("danglink2"),
            refuse=["danglink2", "is a link to"],
            needs=run,
        ),
        Case(
            c,
            "PP_boxx",
            "prompts file with an unknown key 'boxx'",
            ["predict", "runs/box", img, "--out", "pred/boxx", "--prompts", "prompts/boxx.json"],
            setup=lambda ctx: write(
                ctx.path("prompts/boxx.json"),
                json.dumps({"case_000_0000.nii.gz": [{"slice": 3, "boxx": [4, 4, 12, 14]}]}),
            ).touch(),
            refuse=["boxx"],
            needs=box,
        ),
        Case(
            c,
            "PP_good",
            "box prompts file (regression)",
            ["predict", "runs/box", img, "--out", "pred/box_ok", "--prompts", "prompts/good.json"],
            setup=lambda ctx: write(
                ctx.path("prompts/good.json"),
                json.dumps({"case_000_0000.nii.gz": [{"slice": 3, "box": [4, 4, 12, 14]}]}),
            ).touch(),
            accept=[],
            needs=box,
        ),
        Case(
            c,
            "PP_outside",
            "a box outside the slice (regression)",
            ["predict", "runs/box", img, "--out", "pred/box_out", "--prompts", "prompts/outside.json"],
            setup=lambda ctx: write(
                ctx.path("prompts/outside.json"),
                json.dumps({"case_000_0000.nii.gz": [{"slice": 3, "box": [4, 4, 400, 14]}]}),
            ).touch(),
            refuse=["box"],
            needs=box,
        ),
        Case(
            c,
            "PR_box_noprompts",
            "predict with a box run and no --prompts (regression)",
            ["predict", "runs/box", img, "--out", "pred/box_none"],
            refuse=["--prompts"],
            needs=box,
        ),
        Case(
            c,
            "PR_missing",
            "predict a missing input (regression)",
            ["predict", "runs/good", "data/nothere.nii.gz", "--out", "pred/missing"],
            refuse=["nothere.nii.gz"],
            needs=run,
        ),
        Case(
            c,
            "PR_exists",
            "predict into an existing --out without --overwrite (regression)",
            ["predict", "runs/good", img, "--out", "pred/good"],
            refuse=["--overwrite"],
            needs=("CTL_predict",),
        ),
        Case(
            c,
            "PR_4d",
            "predict a 4D image (regression: a warning)",
            ["predict", "runs/good", "data/img4d/imagesTr/case_000_0000.nii.gz", "--out", "pred/img4d"],
            accept=["4D"],
            needs=("CTL_train_lora", "P_img4d"),
        ),
        Case(
            c,
            "PR_png",
            "predict a PNG image (regression)",
            ["predict", "runs/good", "data/png/images/patient0_slice0.png", "--out", "pred/png"],
            accept=[],
            needs=run,
        ),
    ]


# -- export -------------------------------------------------------------------------------------
def export_cases() -> list[Case]:
    c = "export"
    run = ("CTL_train_lora",)
    return [
        Case(
            c,
            "X_overwrite_self",
            "export --overwrite --out RUN/weights/best.safetensors",
            ["export", "runs/xself", "--out", "runs/xself/weights/best.safetensors", "--overwrite"],
            setup=run_copy("xself"),
            refuse=["runs/xself"],
            needs=run,
        ),
        Case(
            c,
            "X_after_self",
            "... then evaluate that run",
            ["evaluate", "runs/xself"],
            accept=["DSC"],
            needs=("X_overwrite_self",),
        ),
        Case(
            c,
            "X_after_self_export",
            "... then export it elsewhere",
            ["export", "runs/xself", "--out", "exp/again.pth"],
            accept=[],
            needs=("X_overwrite_self",),
        ),
        Case(
            c,
            "X_after_self_pred",
            "... then predict with it",
            ["predict", "runs/xself", "data/nn/imagesTr/case_000_0000.nii.gz", "--out", "pred/after_self"],
            accept=[],
            needs=("X_overwrite_self",),
        ),
        Case(
            c,
            "X_into_run",
            "export --out a new file inside the run folder",
            ["export", "runs/good", "--out", "runs/good/sam.pth"],
            refuse=["runs/good"],
            needs=run,
        ),
        Case(
            c,
            "X_exists",
            "export onto an existing file without --overwrite (regression)",
            ["export", "runs/good", "--out", "exp/good.pth"],
            refuse=["--overwrite"],
            needs=("CTL_export",),
        ),
        Case(
            c,
            "X_dangling",
            "export --out a dangling symlink",
            ["export", "runs/good", "--out", "danglink3"],
            setup=dangling("danglink3"),
            check=link_kept("danglink3", ["danglink3", "is a link to"]),
            needs=run,
        ),
        Case(
            c,
            "X_link_overwrite",
            "export --overwrite --out LINK, a symlink to an earlier export",
            ["export", "runs/good", "--out", "exp/link.pth", "--overwrite"],
            setup=lambda ctx: (
                remove(ctx.path("exp/link.pth")),
                ctx.path("exp/link.pth").symlink_to("good.pth"),
            ),
            check=link_kept("exp/link.pth", ["link.pth"]),
            needs=("CTL_export",),
        ),
        Case(
            c,
            "X_notrun",
            "export a folder that is no run (regression)",
            ["export", "prep/nn", "--out", "exp/prep.pth"],
            refuse=["prep/nn"],
            needs=("CTL_prep_nn",),
        ),
        Case(
            c,
            "X_last",
            "export --weights last (regression)",
            ["export", "runs/good", "--out", "exp/last.pth", "--weights", "last"],
            accept=[],
            needs=run,
        ),
    ]


# -- pretrain -----------------------------------------------------------------------------------
PRETRAIN = ["--arch", "vit_test", *TINY]
MAE_SMALL = ["--decoder-dim", "32", "--decoder-depth", "1", "--decoder-heads", "1"]


def pretrain_cases() -> list[Case]:
    c = "pretrain"
    nn, pt = ("CTL_prep_nn",), ("CTL_pretrain_prompt",)
    return [
        Case(
            c,
            "CTL_pretrain_prompt",
            "pretrain prompt (control for this class)",
            ["pretrain", "prompt", "--data", "prep/nn", "--out", "runs/pt_prompt", *PRETRAIN],
            accept=["checkpoint.pth"],
            needs=nn,
        ),
        Case(
            c,
            "PT_kill_again",
            "pretrain mae: SIGKILL in epoch 1 (PT_kill), then a plain rerun",
            KILL_PRETRAIN,
            setup=kill_in_first_epoch(KILL_PRETRAIN, "runs/pt_kill"),
            refuse=["stopped before its first epoch ended", "--resume"],
            needs=("CTL_prep_nn16",),
        ),
        Case(
            c,
            "PT_kill_resume",
            "pretrain mae: SIGKILL in epoch 1, then --resume",
            [*KILL_PRETRAIN, "--resume"],
            accept=[],
            needs=("PT_kill_again",),
        ),
        Case(
            c,
            "PT_use_dir",
            "a pretrain RUN folder as --checkpoint (train)",
            train("prep/nn", "runs/from_pt_dir", "--checkpoint", "runs/pt_prompt"),
            accept=[],
            needs=pt,
        ),
        Case(
            c,
            "SC_otherarch",
            "a pretrain RUN folder as a study checkpoint",
            dry("pt_study"),
            setup=study_file(
                "pt_study",
                study_text(
                    grid=GRID.format(methods="[lora]", epochs="1").replace(
                        "arch: [vit_t_test]\n  checkpoint: [null]", "arch: [vit_test]\n  checkpoint: [pt]"
                    ),
                    extra="weights: {pt: runs/pt_prompt}\n",
                ),
            ),
            accept=["1 cell"],
            needs=pt,
        ),
        Case(
            c,
            "PT_use_wrongarch",
            "pretrain checkpoint with the wrong --arch (regression)",
            train("prep/nn", "runs/pt_wrongarch", "--checkpoint", "runs/pt_prompt", arch=ED),
            refuse=["vit_test"],
            needs=pt,
        ),
        Case(
            c,
            "PT_exists",
            "--out an existing pretrain run (regression)",
            ["pretrain", "prompt", "--data", "prep/nn", "--out", "runs/pt_prompt", *PRETRAIN],
            refuse=["runs/pt_prompt", "--resume"],
            keeps=["runs/pt_prompt/checkpoint.pth"],
            needs=pt,
        ),
        Case(
            c,
            "PT_raw",
            "--data a raw (unprepared) dataset (regression)",
            ["pretrain", "mae", "--data", "data/nn", "--out", "runs/pt_raw", *PRETRAIN, *MAE_SMALL],
            refuse=["data/nn", "tunesam prepare"],
        ),
        Case(
            c,
            "PT_ratio1",
            "--mask-ratio 1.0 (regression)",
            [
                "pretrain",
                "mae",
                "--data",
                "prep/nn",
                "--out",
                "runs/pt_r1",
                *PRETRAIN,
                *MAE_SMALL,
                "--mask-ratio",
                "1.0",
            ],
            refuse=["--mask-ratio"],
            needs=nn,
        ),
        Case(
            c,
            "PT_dup",
            "the same --data twice (regression)",
            ["pretrain", "prompt", "--data", "prep/nn", "prep/nn", "--out", "runs/pt_dup", *PRETRAIN],
            refuse=["prep/nn"],
            needs=nn,
        ),
    ]


# -- disk full, read-only, file modes ---------------------------------------------------------------
def on_full_disk(keep_kib: int | None = None) -> Callable[[Context, Case], Result]:
    """Run the case with WORK/full a fresh 512 KiB tmpfs (filled up to ``keep_kib`` free)."""

    def run(ctx: Context, case: Case) -> Result:
        mnt = ctx.path("full")
        remove(mnt)
        mnt.mkdir()
        ctx.mount("-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt))
        ctx.mounts.append(mnt)
        try:
            if keep_kib is not None:
                st = os.statvfs(mnt)
                free = st.f_bavail * st.f_frsize
                write(mnt / "filler.bin", b"\0" * max(0, free - keep_kib * 1024))
            res = ctx.tunesam(*case.argv)
            left = [
                f"{p.relative_to(ctx.work)} ({p.stat().st_size} bytes)"
                for p in sorted(mnt.rglob("*"))
                if p.is_file() and p.name != "filler.bin" and not p.name.startswith(".")
            ]
            res.found = "left on the full disk: " + (", ".join(left[:4]) if left else "nothing")
            return res
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
            ctx.mounts.remove(mnt)

    return run


def read_only(ctx: Context) -> None:
    """WORK/ro: a read-only bind mount of copies of a run, a prepared dataset and a raw dataset."""
    mnt = ctx.path("ro")
    if mnt in ctx.mounts:
        return
    src = ctx.path("ro_src")
    remove(src)
    shutil.copytree(ctx.path("runs/good"), src / "good")
    shutil.copytree(ctx.path("prep/nn"), src / "prep")
    shutil.copytree(ctx.path("data/nn"), src / "data")
    mnt.mkdir(exist_ok=True)
    ctx.mount("--bind", str(src), str(mnt))
    ctx.mounts.append(mnt)
    ctx.mount("-o", "remount,bind,ro", str(mnt))


def modes_check(pattern: str, expected: int) -> Check:
    def check(ctx: Context, res: Result) -> tuple[str, str]:
        if TRACEBACK in res.output or res.rc != 0:
            return ("TRACEBACK" if res.rc != 2 or TRACEBACK in res.output else "UNCLEAR"), f"exit {res.rc}"
        files = sorted(ctx.work.glob(pattern))
        if not files:
            return "SILENT", f"no file matches {pattern}"
        wrong = [
            f"{f.name} {oct(f.stat().st_mode & 0o777)}" for f in files if f.stat().st_mode & 0o777 != expected
        ]
        return (
            ("SILENT", "modes: " + ", ".join(wrong) + f", expected {oct(expected)}") if wrong else ("OK", "")
        )

    return check


def with_umask(mask: int) -> Callable[[Context, Case], Result]:
    return lambda ctx, case: ctx.tunesam(*case.argv, umask=mask)


def disk_cases() -> list[Case]:
    c = "disk"
    nn, run = ("CTL_prep_nn",), ("CTL_train_lora",)
    img = "data/nn/imagesTr/case_000_0000.nii.gz"
    full = ["the disk is full|no space left"]
    return [
        Case(
            c,
            "DF_train",
            "train to a full tmpfs",
            train("prep/nn", "full/run"),
            run=on_full_disk(),
            refuse=[*full, "full/run"],
            needs=nn,
            root=True,
        ),
        Case(
            c,
            "DF_pretrain",
            "pretrain to a full tmpfs",
            ["pretrain", "prompt", "--data", "prep/nn", "--out", "full/pt", *PRETRAIN],
            run=on_full_disk(),
            refuse=[*full, "full/pt"],
            needs=nn,
            root=True,
        ),
        Case(
            c,
            "DF_export",
            "export to a full tmpfs",
            ["export", "runs/good", "--out", "full/model.pth"],
            run=on_full_disk(),
            refuse=[*full, "model.pth"],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "DF_prepare",
            "prepare to a nearly full tmpfs (8 KiB left)",
            ["prepare", "data/nn", "--out", "full/prep", "--size", "64"],
            run=on_full_disk(8),
            refuse=[*full, "full/prep"],
            root=True,
        ),
        Case(
            c,
            "DF_predict",
            "predict to a full tmpfs",
            ["predict", "runs/good", img, "--out", "full/pred"],
            run=on_full_disk(0),
            refuse=[*full, "full/pred"],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "DF_evaluate",
            "evaluate --out a full tmpfs",
            ["evaluate", "runs/good", "--out", "full/metrics.json"],
            run=on_full_disk(0),
            refuse=[*full, "metrics.json"],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "DF_study",
            "study to a full tmpfs",
            ["study", "st/good.yaml", "--out", "full/study"],
            run=on_full_disk(),
            refuse=[*full, "full/study"],
            needs=("CTL_study",),
            root=True,
        ),
        Case(
            c,
            "UM_022",
            "weights file modes under umask 022",
            train("prep/nn", "runs/umask022"),
            run=with_umask(0o022),
            check=modes_check("runs/umask022/weights/*.safetensors", 0o644),
            needs=nn,
        ),
        Case(
            c,
            "UM_002",
            "weights file modes under umask 002",
            train("prep/nn", "runs/umask002"),
            run=with_umask(0o002),
            check=modes_check("runs/umask002/weights/*.safetensors", 0o664),
            needs=nn,
        ),
        Case(
            c,
            "UM_export",
            "export .safetensors under umask 022",
            ["export", "runs/good", "--out", "exp/um022.safetensors"],
            run=with_umask(0o022),
            check=modes_check("exp/um022.safetensors", 0o644),
            needs=run,
        ),
        Case(
            c,
            "UM_077",
            "run file modes under umask 077 (regression)",
            train("prep/nn", "runs/umask077"),
            run=with_umask(0o077),
            check=modes_check("runs/umask077/weights/*.safetensors", 0o600),
            needs=nn,
        ),
    ]


def read_only_cases() -> list[Case]:
    c = "read-only"
    run = ("CTL_train_lora",)
    img = "data/nn/imagesTr/case_000_0000.nii.gz"
    return [
        Case(
            c,
            "RO_eval_out",
            "evaluate a read-only run with --out elsewhere",
            ["evaluate", "ro/good", "--out", "ev/ro.json"],
            setup=read_only,
            accept=["dsc"],
            files=["ev/ro.json"],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "RO_eval",
            "evaluate a read-only run without --out",
            ["evaluate", "ro/good"],
            setup=read_only,
            refuse=["ro/good", "read-only", "--out"],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "RO_predict",
            "predict with a read-only run",
            ["predict", "ro/good", img, "--out", "pred/ro"],
            setup=read_only,
            accept=[],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "RO_export",
            "export a read-only run",
            ["export", "ro/good", "--out", "exp/ro.pth"],
            setup=read_only,
            accept=[],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "RO_train_data",
            "train on a read-only prepared dataset",
            train("ro/prep", "runs/from_ro"),
            setup=read_only,
            accept=[],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "RO_prepare_src",
            "prepare a read-only raw dataset",
            ["prepare", "ro/data", "--out", "prep/from_ro", "--size", "64"],
            setup=read_only,
            accept=[],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "RO_train_out",
            "train --out inside a read-only folder",
            train("prep/nn", "ro/newrun"),
            setup=read_only,
            refuse=["ro/newrun", "read-only"],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "RO_prepare_out",
            "prepare --out inside a read-only folder",
            ["prepare", "data/nn", "--out", "ro/prep2", "--size", "64"],
            setup=read_only,
            refuse=["ro/prep2", "read-only"],
            needs=run,
            root=True,
        ),
        Case(
            c,
            "RO_resume",
            "--resume a read-only run",
            train("prep/nn", "ro/good", "--resume"),
            setup=read_only,
            refuse=["ro/good", "read-only"],
            needs=run,
            root=True,
        ),
    ]


# -- two processes at once ------------------------------------------------------------------------
def two_at_once(second: list[str] | None = None, delay: float = 0.4) -> Callable[[Context, Case], Result]:
    """Start the case's command, and ``delay`` s later a second one (by default the same) into
    the same --out; the result holds both, the check judges them."""

    def run(ctx: Context, case: Case) -> Result:
        t0 = time.perf_counter()
        a = ctx.start(case.argv)
        time.sleep(delay)
        b = ctx.start(second or case.argv)
        ra = ctx.finish(a, case.argv, t0)
        rb = ctx.finish(b, second or case.argv, t0)
        out = f"[first, rc {ra.rc}] {ra.output.strip()}\n[second, rc {rb.rc}] {rb.output.strip()}"
        res = Result(case.argv, max(ra.rc, rb.rc, key=abs), out, time.perf_counter() - t0)
        res.pair = (ra, rb)
        return res

    return run


def one_refused(what: str) -> Check:
    """Of two processes writing one folder, one finishes (rc 0), the other is refused at once
    with "another tunesam process is writing this WHAT"."""

    def check(ctx: Context, res: Result) -> tuple[str, str]:
        ra, rb = res.pair
        rcs = sorted([ra.rc, rb.rc])
        res.shown_rc = f"{ra.rc}/{rb.rc}"
        if any(TRACEBACK in r.output for r in res.pair) or any(rc not in (0, 2) for rc in rcs):
            return "TRACEBACK", f"exits {res.shown_rc}"
        if rcs == [0, 0]:
            return "SILENT", "both wrote the folder"
        if rcs == [2, 2]:
            return "UNCLEAR", "both refused"
        refused = ra if ra.rc == 2 else rb
        missing = has_all(refused.output, ["another tunesam process", what])
        return (
            ("UNCLEAR", "refused, but missing: " + ", ".join(map(repr, missing))) if missing else ("OK", "")
        )

    return check


def big_dataset(ctx: Context) -> None:
    """An nnU-Net folder large enough that prepare holds its lock for seconds."""
    root = ctx.path("data/nnbig")
    for i in range(12):
        image, mask = block_case(i, (40, 128, 128))
        write_image(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image)
        write_image(root / "labelsTr" / f"case_{i:03d}.nii.gz", mask)
    (root / "dataset.json").write_text(json.dumps({**NN_META, "numTraining": 12}))


def concurrency_cases() -> list[Case]:
    c = "concurrency"
    base = [
        "train",
        "--data",
        "prep/nn16",
        *ED,
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--warmup",
        "1",
    ]
    t2 = [*base, "--out", "runs/conc_train2", "--lr", "1e-4"]
    return [
        Case(
            c,
            "CONCT2",
            "two trains into one --out 0.4 s apart, different --lr",
            t2,
            run=two_at_once([*base, "--out", "runs/conc_train2", "--lr", "1e-2"]),
            check=one_refused("run"),
            shown="two at once: tunesam " + shlex.join(t2) + " (the second with --lr 1e-2)",
            needs=("CTL_prep_nn16",),
        ),
        Case(
            c,
            "CONCT",
            "two identical trains into one --out at once",
            [*base, "--out", "runs/conc_train"],
            run=two_at_once(delay=0.0),
            check=one_refused("run"),
            shown="two at once: tunesam " + shlex.join([*base, "--out", "runs/conc_train"]),
            needs=("CTL_prep_nn16",),
        ),
        Case(
            c,
            "CONC",
            "two identical studies into one --out at once",
            ["study", "st/good.yaml", "--out", "studies/conc"],
            run=two_at_once(delay=0.0),
            check=one_refused("study"),
            shown="two at once: tunesam study st/good.yaml --out studies/conc",
            needs=("CTL_study",),
        ),
        Case(
            c,
            "CONC_report",
            "report on the study the two wrote",
            ["study", "report", "studies/conc"],
            accept=["report written"],
            needs=("CONC",),
        ),
        Case(
            c,
            "CONC_prep",
            "two prepares into one --out at once (12 volumes of 40 x 128 x 128)",
            ["prepare", "data/nnbig", "--out", "prep/conc", "--size", "128"],
            setup=big_dataset,
            run=two_at_once(delay=0.0),
            check=one_refused("prepared dataset"),
            shown="two at once: tunesam prepare data/nnbig --out prep/conc --size 128",
        ),
        Case(
            c,
            "CONC_pretrain",
            "two pretrains into one --out at once",
            ["pretrain", "prompt", "--data", "prep/nn16", "--out", "runs/conc_pt", *PRETRAIN],
            run=two_at_once(delay=0.0),
            check=one_refused("run"),
            shown="two at once: tunesam pretrain prompt --data prep/nn16 --out runs/conc_pt ...",
            needs=("CTL_prep_nn16",),
        ),
    ]


# -- security -------------------------------------------------------------------------------------
def security_cases() -> list[Case]:
    c = "security"
    nn, run = ("CTL_prep_nn",), ("CTL_train_lora",)
    tag = "!!python/object/apply:os.system"

    def evil(rel: str, name: str, kind: str = "raw") -> Callable[[Context], None]:
        return lambda ctx: evil_pickle(ctx, rel, name, kind).touch()

    def evil_index(ctx: Context) -> None:
        root = copy_tree(ctx, "prep/nn", "prep/evil_index")
        evil_pickle(ctx, "prep/evil_index/index.npy", "npy", "npy")
        assert (root / "index.npy").is_file()

    def evil_lastpt(ctx: Context) -> None:
        copy_tree(ctx, "runs/good", "runs/evil_last")
        edit_text("config.yaml", "out: runs/good", "out: runs/evil_last")(ctx.path("runs/evil_last"))
        evil_pickle(ctx, "runs/evil_last/last.pt", "lastpt", "zip")

    def cfg_tag(ctx: Context) -> None:
        root = copy_tree(ctx, "runs/good", "runs/evil_cfg")
        edit_text("config.yaml", "seed: 0", f"seed: {tag} ['{marker(ctx, 'cfg')}']")(root)

    def meta_names(ctx: Context) -> None:
        root = ctx.path("data/meta")
        for i, name in enumerate(
            ["a$(touch pwned_meta)b", "c;touch pwned_semi;d", "e`touch pwned_bt`f", "g'h\"i", "k_l", "m n"]
        ):
            image, mask = block_case(i)
            write_image(root / "imagesTr" / f"{name}_0000.nii.gz", image)
            write_image(root / "labelsTr" / f"{name}.nii.gz", mask)
        (root / "dataset.json").write_text(json.dumps({**NN_META, "numTraining": 6}))

    def msd_abs(root: Path) -> None:
        msd_edit(lambda m: m["training"][0].update(image="/etc/passwd"))(root)

    ck = ["--checkpoint"]
    return [
        Case(
            c,
            "S_train_evil_raw.pth",
            "a raw pickle payload as train --checkpoint",
            train("prep/nn", "runs/evil_raw", *ck, "evil/raw.pth"),
            setup=evil("evil/raw.pth", "raw"),
            refuse=["raw.pth"],
            needs=nn,
        ),
        Case(
            c,
            "S_train_evil_whole.pt",
            "a torch.save-style zip payload as train --checkpoint",
            train("prep/nn", "runs/evil_zip", *ck, "evil/whole.pt"),
            setup=evil("evil/whole.pt", "zip", "zip"),
            refuse=["whole.pt"],
            needs=nn,
        ),
        Case(
            c,
            "S_train_evil.safetensors",
            "a pickle named .safetensors as train --checkpoint",
            train("prep/nn", "runs/evil_st", *ck, "evil/evil.safetensors"),
            setup=evil("evil/evil.safetensors", "st"),
            refuse=["evil.safetensors"],
            needs=nn,
        ),
        Case(
            c,
            "S_eval",
            "a pickle payload to evaluate --checkpoint",
            [
                "evaluate",
                *ck,
                "evil/raw.pth",
                "--arch",
                "vit_test",
                "--data",
                "prep/nn",
                "--mode",
                "box",
                "--image-size",
                "32",
            ],
            setup=evil("evil/raw.pth", "eval"),
            refuse=["raw.pth"],
            needs=nn,
        ),
        Case(
            c,
            "S_info",
            "a pickle payload to info --checkpoint",
            ["info", "--arch", "vit_test", "--tune", "decoder", "--method", "lora", *ck, "evil/raw.pth"],
            setup=evil("evil/raw.pth", "info"),
            refuse=["raw.pth"],
        ),
        Case(
            c,
            "S_pre_mae",
            "a pickle payload to pretrain mae --checkpoint",
            [
                "pretrain",
                "mae",
                "--data",
                "prep/nn",
                "--out",
                "runs/evil_mae",
                *PRETRAIN,
                *MAE_SMALL,
                *ck,
                "evil/whole.pt",
            ],
            setup=evil("evil/whole.pt", "mae", "zip"),
            refuse=["whole.pt"],
            needs=nn,
        ),
        Case(
            c,
            "S_lastpt",
            "a pickle payload as a run's last.pt, --resume",
            train("prep/nn", "runs/evil_last", "--resume"),
            setup=evil_lastpt,
            refuse=["last.pt"],
            needs=run,
        ),
        Case(
            c,
            "S_npy",
            "a pickled object array as a dataset's index.npy",
            train("prep/evil_index", "runs/evil_npy"),
            setup=evil_index,
            refuse=["index.npy"],
            needs=nn,
        ),
        Case(
            c,
            "S_npy_eval",
            "... the same dataset to evaluate --data",
            ["evaluate", "runs/good", "--data", "prep/evil_index"],
            refuse=["index.npy"],
            needs=("S_npy", "CTL_train_lora"),
        ),
        Case(
            c,
            "SC_pytag",
            f"study YAML with {tag}",
            dry("pytag"),
            setup=lambda ctx: write(
                ctx.path("st/pytag.yaml"), study_text(extra=f"baselines: {tag} ['{marker(ctx, 'yaml')}']\n")
            ).touch(),
            refuse=["pytag.yaml"],
            needs=nn,
        ),
        Case(
            c,
            "SC_evil_weights",
            "a study's weights: a pickle payload",
            dry("evil_weights"),
            setup=lambda ctx: (
                evil_pickle(ctx, "evil/study.pth", "study"),
                write(
                    ctx.path("st/evil_weights.yaml"),
                    study_text(
                        grid=GRID.format(methods="[lora]", epochs="1").replace(
                            "arch: [vit_t_test]\n  checkpoint: [null]",
                            "arch: [vit_test]\n  checkpoint: [evil]",
                        ),
                        extra="weights: {evil: evil/study.pth}\n",
                    ),
                ),
            ),
            refuse=["study.pth"],
            needs=nn,
        ),
        Case(
            c,
            "RF_cfgtag",
            f"a run's config.yaml with {tag}",
            ["evaluate", "runs/evil_cfg"],
            setup=cfg_tag,
            refuse=["config.yaml"],
            needs=run,
        ),
        Case(
            c,
            "RF_cfgtag_pred",
            "... the same run to predict",
            ["predict", "runs/evil_cfg", "data/nn/imagesTr/case_000_0000.nii.gz", "--out", "pred/evil_cfg"],
            refuse=["config.yaml"],
            needs=("RF_cfgtag",),
        ),
        Case(
            c,
            "C_trav",
            "CSV row ../../etc/passwd",
            [
                "prepare",
                "data/csv_trav/lists/all.csv",
                "--out",
                "prep/csv_trav",
                "--size",
                "64",
                "--split",
                "4:1:1",
            ],
            setup=lambda ctx: csv_lists(
                ctx,
                "csv_trav",
                {"all.csv": png_rows(0, 6) + "../../../../../etc/passwd,masks/patient0_slice0.png\n"},
            ),
            refuse=["passwd"],
        ),
        Case(
            c,
            "P_msd_abs",
            "MSD training entry /etc/passwd",
            prep("msd_abs"),
            setup=from_copy("msd", "msd_abs", msd_abs),
            refuse=["passwd"],
        ),
        Case(
            c,
            "P_meta",
            "case ids with $(touch pwned), ;, backticks, quotes",
            prep("meta", "--split", "4:1:1"),
            setup=meta_names,
            accept=[],
        ),
        Case(
            c,
            "PR_meta",
            "predict inputs and --out with $(touch), ;, backticks",
            [
                "predict",
                "runs/good",
                "data/meta/imagesTr/a$(touch pwned_meta)b_0000.nii.gz",
                "data/meta/imagesTr/c;touch pwned_semi;d_0000.nii.gz",
                "--out",
                "pred/$(touch pwned_out)`touch pwned_out2`",
            ],
            accept=[],
            needs=("P_meta", "CTL_train_lora"),
        ),
        Case(
            c,
            "PP_trav",
            "prompts key ../../../../etc/passwd",
            [
                "predict",
                "runs/box",
                "data/nn/imagesTr/case_000_0000.nii.gz",
                "--out",
                "pred/pp_trav",
                "--prompts",
                "prompts/trav.json",
            ],
            setup=lambda ctx: write(
                ctx.path("prompts/trav.json"),
                json.dumps({"../../../../etc/passwd": [{"slice": 1, "box": [1, 1, 5, 5]}]}),
            ).touch(),
            refuse=["trav.json", "no entry"],
            needs=("CTL_train_box",),
        ),
        Case(
            c,
            "SC_trav_name",
            "study dataset name ../../../escaped",
            dry("trav_name"),
            setup=study_file("trav_name", study_text(datasets="{'../../../escaped': prep/nn}")),
            refuse=["escaped"],
            needs=nn,
        ),
    ]


# -- the campaign ----------------------------------------------------------------------------------
def all_cases() -> list[Case]:
    return [
        *controls(),
        *data_cases(),
        *data_more_cases(),
        *dicom_cases(),
        *study_cases(),
        *train_cases(),
        *evaluate_cases(),
        *predict_cases(),
        *export_cases(),
        *pretrain_cases(),
        *disk_cases(),
        *read_only_cases(),
        *concurrency_cases(),
        *security_cases(),
    ]


def run_case(ctx: Context, case: Case) -> tuple[Result | None, str, str]:
    missing = [n for n in case.needs if not ctx.control_ok.get(n, False)]
    if missing:
        return None, "SKIPPED", "control failed or not run: " + ", ".join(missing)
    if case.root and os.geteuid() != 0:
        return None, "SKIPPED", "needs root (mount)"
    try:
        if case.setup is not None:
            case.setup(ctx)
        res = case.run(ctx, case) if case.run is not None else ctx.tunesam(*case.argv)
    except Exception as exc:  # noqa: BLE001 - the campaign's own failure (a setup): reported as SKIPPED, not hidden
        return (
            Result(case.argv, -1, f"[campaign error] {type(exc).__name__}: {exc}", 0.0),
            "SKIPPED",
            f"campaign error: {exc}",
        )
    verdict, note = judge(ctx, case, res)
    if res.found and verdict != "OK":
        note = f"{note}; {res.found}" if note else res.found
    return res, verdict, note


def select(cases: list[Case], only: set[str], classes: set[str]) -> list[Case]:
    if not only and not classes:
        return cases
    chosen = [k for k in cases if k.id in only or k.cls in classes]
    by_id = {k.id: k for k in cases}
    wanted: set[str] = set()

    def need(k: Case) -> None:
        for n in k.needs:
            if n not in wanted:
                wanted.add(n)
                need(by_id[n])

    for k in chosen:
        need(k)
    return [k for k in cases if k.id in wanted or k in chosen]


def is_control(case_id: str) -> bool:
    """Controls (good input, ids CTL_*) are run first and not counted as faults."""
    return case_id.startswith("CTL_")


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def machine() -> str:
    cores = os.cpu_count() or 1
    arch = {"x86_64": "x86", "AMD64": "x86", "aarch64": "ARM", "arm64": "ARM"}.get(
        platform.machine(), platform.machine()
    )
    return f"a {cores}-core {arch} CPU"


def commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "unknown"


def write_page(page: Path, rows: list[dict], argv: list[str], seconds: float) -> None:
    counts = {v: sum(r["verdict"] == v for r in rows if not is_control(r["id"])) for v in VERDICTS}
    classes = list(dict.fromkeys(r["cls"] for r in rows))
    header = (
        f"Date: {_dt.date.today().isoformat()}. Machine: {machine()} (every command on --device cpu). "
        f"tunesam commit {commit()}. Run time: {seconds / 60:.1f} min."
    )
    method = (
        "Each case runs `python -m tunesam ...` in a scratch folder (WORK below) with tiny settings "
        "(vit_test at 32 px, one epoch, CPU). Verdicts: OK (refused with a message that names what the "
        "user needs, or accepted with the required warning); SILENT (exit 0 or wrong files where a refusal "
        "or a warning was required); TRACEBACK (a Python traceback, or an exit status other than 0 and 2); "
        "UNCLEAR (refused, but a required part of the message is missing); SKIPPED (a control it builds on "
        "failed, or root was needed). The controls (good input) are not counted."
    )
    rerun = f"    python scripts/bad_input_campaign.py {shlex.join(argv)}".rstrip()
    totals = f"Faults: {sum(counts.values())}: " + ", ".join(f"{v} {counts[v]}" for v in VERDICTS)
    lines = [
        "# tunesam bad-input campaign 2 (replay of the 2026-12-01 faults)",
        "",
        header,
        "",
        (
            "Rerun it from the repository, in its virtual environment (as root for the full-disk and read-only "
            "cases, which mount a tmpfs and a read-only bind mount):"
        ),
        "",
        rerun,
        "",
        method,
        "",
        totals,
        "",
        "| class | " + " | ".join(VERDICTS) + " |",
        "|---|" + "---|" * len(VERDICTS),
    ]
    for k in classes:
        sub = [r for r in rows if r["cls"] == k and not is_control(r["id"])]
        if not sub:
            continue
        lines.append(
            f"| {k} | " + " | ".join(str(sum(r["verdict"] == v for r in sub)) for v in VERDICTS) + " |"
        )
    bad = [r for r in rows if r["verdict"] != "OK"]
    if bad:
        lines += ["", "## Not OK", ""]
        for r in bad:
            tail = [ln for ln in r["output"].strip().splitlines() if ln.strip()][-3:]
            lines += [
                f"- **{r['id']}** ({r['verdict']}: {r['note']}): `{md_cell(r['command'])}`, rc {r['rc']}",
                "",
            ]
            lines += ["  ```", *[f"  {ln[:300]}" for ln in tail], "  ```", ""]
    lines += [
        "",
        "## All cases",
        "",
        "Controls (ids CTL_*) are good input the cases build on.",
        "",
        "| class | id | what was tried | command | rc | last output line | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = r["verdict"] + (f" ({r['note']})" if r["note"] and r["verdict"] != "OK" else "")
        lines.append(
            f"| {r['cls']} | {r['id']} | {md_cell(r['what'])} | `{md_cell(r['command'])}` | {r['rc']} | "
            f"{md_cell(r['last'])} | {md_cell(verdict)} |"
        )
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines) + "\n")


MARKER = ".tunesam-campaign"


def prepare_work(ap: argparse.ArgumentParser, work: Path) -> None:
    """An empty scratch folder; one a previous campaign left (it has the marker) is emptied."""
    if work.exists() and any(work.iterdir()):
        if not (work / MARKER).is_file():
            ap.error(f"{work}: not empty and not a campaign scratch folder; give a new or empty --work")
        for child in work.iterdir():
            remove(child)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("scratch folder of scripts/bad_input_campaign.py\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", type=Path, help="scratch folder (default: a new temporary folder)")
    ap.add_argument("--out", type=Path, default=DEFAULT_PAGE, help="the results page (Markdown)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--only", default="", help="comma-separated case ids (their controls run too)")
    ap.add_argument("--class", dest="classes", default="", help="comma-separated classes, e.g. data,study")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)
    cases = all_cases()
    ids = [k.id for k in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    only = {s for s in args.only.split(",") if s}
    unknown = only - set(ids)
    if unknown:
        ap.error(f"unknown case ids: {sorted(unknown)}")
    classes = {s for s in args.classes.split(",") if s}
    unknown = classes - {k.cls for k in cases}
    if unknown:
        ap.error(f"unknown classes: {sorted(unknown)}; known: {sorted({k.cls for k in cases})}")
    cases = select(cases, only, classes)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the mounts and children are cleaned up
    work = (args.work or Path(tempfile.mkdtemp(prefix="tunesam-campaign-"))).resolve()
    prepare_work(ap, work)
    ctx = Context(work)
    rows: list[dict] = []
    t0 = time.perf_counter()
    try:
        base_data(ctx)
        for case in cases:
            res, verdict, note = run_case(ctx, case)
            ctx.control_ok[case.id] = verdict == "OK"
            row = {
                "cls": case.cls,
                "id": case.id,
                "what": case.what,
                "command": case.command(ctx),
                "rc": "-" if res is None else (res.shown_rc or res.rc),
                "last": "" if res is None else last_line(res.output),
                "verdict": verdict,
                "note": note,
                "seconds": 0.0 if res is None else round(res.seconds, 1),
                "output": "" if res is None else res.output[-4000:].replace(str(work), "WORK"),
            }
            rows.append(row)
            print(
                f"{verdict:9s} {case.id:24s} rc={row['rc']!s:4s} {row['seconds']:5.1f}s {note[:80]}",
                flush=True,
            )
    finally:
        ctx.cleanup()
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    write_page(args.out, rows, argv, seconds)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    counts = {v: sum(r["verdict"] == v for r in rows if not is_control(r["id"])) for v in VERDICTS}
    print(
        f"{seconds / 60:.1f} min; " + ", ".join(f"{v} {n}" for v, n in counts.items()) + f"; page: {args.out}"
    )
    return 1 if counts["SILENT"] or counts["TRACEBACK"] else 0


if __name__ == "__main__":
    sys.exit(main())
