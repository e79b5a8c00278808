"""The nnU-Net baseline: the real ``nnunetv2`` (2D configuration) on tunesam's own split.

Steps, all inside the run folder (``RUN/nnunet/{raw,preprocessed,results}``, nnU-Net's three
environment variables set by us for the duration):

1. **export**: the prepared dataset becomes an nnU-Net raw dataset: each case's stored
   slices, stacked in slice order, as one NIfTI volume (the slices tunesam trains and tests
   on: the same 0-255 intensities and labels, in-plane spacing as stored; cases whose slices
   differ in size, 2D sources, and few-shot samples as one single-slice image per slice),
   with ``splits_final.json`` equal to our train/val split as fold 0;
2. **plan and preprocess** with nnU-Net's own fingerprint, ``ExperimentPlanner`` and
   preprocessor (its z-score normalisation of non-CT data, its spacing and patch size);
3. **train** fold 0 with ``nnUNetTrainer`` (its network, loss, SGD and poly schedule, its
   augmentation). The paper's setting, nnU-Net's own 1000 epochs of 250 iterations, is the
   default; ``epochs`` and ``iterations`` make a CPU-sized run;
4. **predict** with ``nnUNetPredictor`` (sliding window, mirroring) on the slices tunesam
   scores, so ``tunesam evaluate`` scores it with the same DSC and NSD as every other run,
   and ``tunesam predict`` uses it on new scans.

tunesam builds nnU-Net's trainer and predictor through its Python API and never through its
trainer-name search, which imports every trainer module (the Primus ones import timm and
with it torchvision, which may not match the local torch). Checkpoints are read with
``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesam.baselines.nets import refuse_sam_options
from tunesam.config import LR, WARMUP, TrainConfig, save_config
from tunesam.data.readers import DataError
from tunesam.data.store import PreparedData, stored_spacing
from tunesam.device import pick_device
from tunesam.engine.run_folder import Run, prepare_training, refuse_changed, write_log, write_preprocessing
from tunesam.io import owned, write_json
from tunesam.kinds import RunKind, register

DATASET_ID = 501
DATASET = f"Dataset{DATASET_ID:03d}_tunesam"
CONFIGURATION = "2d"
PLANS = "nnUNetPlans"
INSTALL = "pip install 'tunesam[baselines]' (nnunetv2 2.8)"


def require_nnunet() -> None:
    try:
        import nnunetv2  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"the nnU-Net baseline needs the nnunetv2 package: {INSTALL}") from exc


@contextlib.contextmanager
def nnunet_environment(run: Path, cpu: bool = False) -> Iterator[dict[str, Path]]:
    """nnU-Net's folders inside ``run``, in its environment variables while the block runs
    (``cpu``: and its augmentation workers sized for the machine, unless the user set them)."""
    paths = {"nnUNet_raw": run / "nnunet" / "raw", "nnUNet_preprocessed": run / "nnunet" / "preprocessed",
             "nnUNet_results": run / "nnunet" / "results"}
    saved = {k: os.environ.get(k) for k in [*paths, "nnUNet_n_proc_DA"]}
    for k, p in paths.items():
        p.mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(p.resolve())
    if cpu and saved["nnUNet_n_proc_DA"] is None:
        os.environ["nnUNet_n_proc_DA"] = str(max(1, min(4, (os.cpu_count() or 2) - 1)))
    try:
        yield paths
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _identifier(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """``array`` z-y-x; ``spacing`` (z, row, col) in mm."""
    import SimpleITK as sitk

    from tunesam.io import atomic_path

    image = sitk.GetImageFromArray(array)
    image.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp.with_name(tmp.name + ".nii.gz")), True)
        tmp.with_name(tmp.name + ".nii.gz").rename(tmp)


def export_raw_dataset(data: PreparedData, raw: Path, few_shot: int | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Write ``raw/DATASET`` (imagesTr, labelsTr, dataset.json); returns fold 0's split by
    nnU-Net identifiers."""
    from tunesam.data.dataset import few_shot_rows

    folder = raw / DATASET
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    split: dict[str, list[str]] = {"train": [], "val": []}
    for part in ("train", "val"):
        if few_shot:
            rows = few_shot_rows(data, part, few_shot, seed, at_most=part == "val")
        else:  # the slices fine-tuning trains on (empty-mask ones only with --keep-empty)
            rows = data.rows(part, include_empty=data.trains_on_empty)
        by_case: dict[int, list[int]] = {}
        for r in rows:
            by_case.setdefault(int(data.index[r]["case"]), []).append(int(r))
        for case_i, case_rows in sorted(by_case.items()):
            case = data.manifest["cases"][case_i]
            case_rows.sort(key=lambda r: int(data.index[r]["slice"]))
            pairs = [tuple(np.asarray(a) for a in data.slice(r)) for r in case_rows]
            row_sp, col_sp = stored_spacing(case)
            axis_sp = float(case["geometry"]["spacing"][2 - case["axis"]]) if len(case["geometry"]["spacing"]) == 3 \
                else 1.0
            same = len({p[0].shape for p in pairs}) == 1
            groups = [(case["id"], pairs)] if same and not few_shot else \
                [(f"{case['id']}_{int(data.index[r]['slice']):04d}", [p]) for r, p in zip(case_rows, pairs)]
            for name, items in groups:
                ident = _identifier(name)
                _write_nifti(folder / "imagesTr" / f"{ident}_0000.nii.gz", np.stack([i for i, _ in items]),
                             (axis_sp, row_sp, col_sp))
                _write_nifti(folder / "labelsTr" / f"{ident}.nii.gz", np.stack([m for _, m in items]).astype(np.uint8),
                             (axis_sp, row_sp, col_sp))
                split[part].append(ident)
    if not split["train"] or not split["val"]:
        raise DataError(f"{data.folder}: nnU-Net needs training and validation cases; found {len(split['train'])} "
                        f"and {len(split['val'])}")
    labels = {"background": 0}
    for k, name in data.manifest["labels"].items():
        if int(k) != 0:
            labels[name if name not in labels else f"{name}_{k}"] = int(k)
    write_json(folder / "dataset.json", {
        "channel_names": {"0": "prepared"},  # not "CT": nnU-Net's z-score normalisation
        "labels": labels, "numTraining": len(split["train"]) + len(split["val"]), "file_ending": ".nii.gz",
        "description": f"tunesam export of {data.folder.resolve()}",
    })
    return split


def _trainer_class(epochs: int, iterations: int, val_iterations: int) -> type:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class TunesamNnUNetTrainer(nnUNetTrainer):  # nnU-Net's trainer, with the run's length
        # the base class records its arguments by this signature's names: keep them
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")) -> None:
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = val_iterations

    return TunesamNnUNetTrainer


def _safe_load(path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint read without unpickling code: tensors, plain values and the
    numpy scalars of its training log are the only things allowed."""
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray.scalar, np.dtype,
               *[type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def results_folder(run: Path) -> Path:
    return run / "nnunet" / "results" / DATASET / f"TunesamNnUNetTrainer__{PLANS}__{CONFIGURATION}"


def train_nnunet(cfg: TrainConfig, resume: bool = False, processes: int | None = None) -> Path:
    """Train nnU-Net 2D on ``cfg.data``'s split into the run folder ``cfg.out`` (``cfg``
    resolved by :class:`NnUNetKind`: ``epochs``, ``iterations`` per epoch, ``few_shot``,
    ``seed``, ``device``); returns it."""
    require_nnunet()
    with owned(cfg.out, "run"):
        return _train_nnunet(cfg, resume, processes)


def _train_nnunet(cfg: TrainConfig, resume: bool, processes: int | None) -> Path:
    prepared = PreparedData.open(cfg.data)
    prepared.require_labels("the nnU-Net baseline")
    dev = pick_device(cfg.device)
    epochs = int(cfg.epochs or 1000)
    iterations = int(cfg.iterations or 250)

    def iterations_unchanged(run: Path) -> None:  # recorded in nnunet.json (older runs' config.yaml lacks it)
        saved = json.loads((run / "nnunet.json").read_text())["iterations_per_epoch"]
        refuse_changed(run, {"iterations": saved}, {"iterations": iterations})

    run = prepare_training(cfg, resume, free={"iterations"}, also=iterations_unchanged)
    run.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_config(cfg, run / "config.yaml")
        write_preprocessing(run, prepared)
        write_json(run / "nnunet.json", {"epochs": epochs, "iterations_per_epoch": iterations,
                                         "configuration": CONFIGURATION, "plans": PLANS})
    n_proc = processes or max(1, min(4, (os.cpu_count() or 2) - 1))
    with nnunet_environment(run, cpu=dev.type == "cpu") as paths:
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprints,
            plan_experiments,
            preprocess,
        )

        pre = paths["nnUNet_preprocessed"] / DATASET
        if not (pre / f"{PLANS}.json").is_file() or not (pre / "splits_final.json").is_file():
            split = export_raw_dataset(prepared, paths["nnUNet_raw"], cfg.few_shot, cfg.seed)
            extract_fingerprints([DATASET_ID], num_processes=n_proc, check_dataset_integrity=True, clean=True,
                                 verbose=False)
            plan_experiments([DATASET_ID])
            preprocess([DATASET_ID], PLANS, configurations=(CONFIGURATION,), num_processes=[n_proc])
            write_json(pre / "splits_final.json", [split])  # fold 0 is our train/val split
        plans = json.loads((pre / f"{PLANS}.json").read_text())
        dataset_json = json.loads((pre / "dataset.json").read_text())
        trainer_cls = _trainer_class(epochs, iterations, max(1, min(50, iterations // 5)))
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        plans["continue_training"] = resume  # as nnU-Net's own run_training sets it
        trainer = trainer_cls(plans=plans, configuration=CONFIGURATION, fold=0, dataset_json=dataset_json, device=dev)
        latest = Path(trainer.output_folder) / "checkpoint_latest.pth"
        final = Path(trainer.output_folder) / "checkpoint_final.pth"
        if not (resume and final.is_file()):  # else training finished before the interruption
            if resume and latest.is_file():
                trainer.load_checkpoint(_safe_load(latest))
            trainer.run_training()
            _write_run_records(run, trainer, iterations, dev)
    return run


def _write_run_records(run: Path, trainer: Any, iterations: int, device: torch.device) -> None:
    """log.csv and summary.json in tunesam's form, from nnU-Net's own log."""
    log = trainer.logger.get_checkpoint()  # nnU-Net's per-epoch lists
    n = len(log["train_losses"])
    rows = [{"epoch": e + 1, "train_loss": round(float(log["train_losses"][e]), 6),
             "val_dsc": round(100 * float(log["mean_fg_dice"][e]), 4), "lr": float(log["lrs"][e]),
             "seconds": round(float(log["epoch_end_timestamps"][e] - log["epoch_start_timestamps"][e]), 3)}
            for e in range(n)]
    write_log(run, rows)
    ema = [float(v) for v in log.get("ema_fg_dice", [])]
    best_epoch = int(np.argmax(ema)) + 1 if ema else n
    params = sum(p.numel() for p in trainer.network.parameters())
    per_step = float(np.mean([r["seconds"] for r in rows])) / (iterations + trainer.num_val_iterations_per_epoch)
    write_json(run / "summary.json", {
        "best_val_dsc": 100 * max(ema) if ema else None, "best_epoch": best_epoch, "epochs_run": n,
        "steps": n * iterations, "total_params": params, "trainable_params": params,
        "seconds_per_step": per_step, "batch_size": int(trainer.batch_size), "device": str(device),
        "cached_embeddings": False, "val_dsc_kind": "nnU-Net's pseudo Dice of its validation patches",
    })


class NnUNetSegmenter(nn.Module):
    """A trained nnU-Net fold behind the run-model interface: it segments whole stored
    slices (``segment_stored``) with nnU-Net's own preprocessing and sliding window."""

    image_size = None
    interpolation = "nnunet"
    pixel_norm = "nnunet"

    def __init__(self, run: Path, which: str = "best") -> None:
        super().__init__()
        require_nnunet()
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        folder = results_folder(run)
        name = {"best": "checkpoint_best.pth", "last": "checkpoint_final.pth"}[which]
        path = folder / "fold_0" / name
        if not path.is_file():
            path = folder / "fold_0" / "checkpoint_final.pth"
        if not path.is_file():
            raise DataError(f"{run}: no nnU-Net checkpoint in {folder / 'fold_0'} (did training finish?)")
        self.plans = json.loads((folder / "plans.json").read_text())
        self.dataset_json = json.loads((folder / "dataset.json").read_text())
        self.plans_manager = PlansManager(self.plans)
        self.configuration = self.plans_manager.get_configuration(CONFIGURATION)
        ckpt = _safe_load(path)
        n_in = determine_num_input_channels(self.plans_manager, self.configuration, self.dataset_json)
        n_out = self.plans_manager.get_label_manager(self.dataset_json).num_segmentation_heads
        self.net = nnUNetTrainer.build_network_architecture(self.plans_manager, self.configuration, n_in, n_out,
                                                            enable_deep_supervision=False)
        self.net.load_state_dict(ckpt["network_weights"])
        self.mirror_axes = ckpt.get("inference_allowed_mirroring_axes")
        self.trainer_name = ckpt.get("trainer_name", "nnUNetTrainer")
        self.arch, self.num_classes = "nnunet", n_out - 1
        self.checkpoint = path

    def encoder_is_frozen(self) -> bool:
        return False

    def _predictor(self) -> Any:
        """nnU-Net's predictor around this network, made once per device."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        device = next(self.net.parameters()).device
        cached = getattr(self, "_cached_predictor", None)
        if cached is not None and cached[0] == device:
            return cached[1]
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(self.net, self.plans_manager, self.configuration,
                                        [self.net.state_dict()], self.dataset_json, self.trainer_name,
                                        self.mirror_axes)
        object.__setattr__(self, "_cached_predictor", (device, predictor))
        return predictor

    whole_cases = True  # nnU-Net normalises the slices of one call as one image: give it a case's

    def segment_stored(self, slices: Sequence[np.ndarray], spacing: tuple[float, float] = (1.0, 1.0),
                       want_probs: bool = False, out_shape: tuple[int, int] | None = None, batch_size: int = 8
                       ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """0-255 slices of one case with in-plane ``spacing`` (row, col) -> labels (and class
        probabilities ``C x H x W``), ``H x W`` the ``out_shape`` (default each slice's own;
        labels resized nearest, probabilities bilinearly). The 2D configuration segments slices
        independently: each size's stack is one call."""
        labels: list[np.ndarray] = [np.empty(0)] * len(slices)
        probs: list[np.ndarray] | None = [np.empty(0)] * len(slices) if want_probs else None
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, s in enumerate(slices):
            by_shape.setdefault(tuple(s.shape), []).append(k)
        for order in by_shape.values():
            lab, prob = self._segment_stack(np.stack([slices[k] for k in order]), spacing, want_probs, out_shape)
            for j, k in enumerate(order):
                labels[k] = lab[j]
                if probs is not None and prob is not None:
                    probs[k] = prob[:, j]
        return labels, probs

    def _segment_stack(self, stack: np.ndarray, spacing: tuple[float, float], want_probs: bool,
                       out_shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | None]:
        volume = stack.astype(np.float32)[None]
        props = {"spacing": [1.0, float(spacing[0]), float(spacing[1])]}
        with torch.no_grad():
            result = self._predictor().predict_single_npy_array(volume, props, None, None, want_probs)
        labels, probs = (result if want_probs else (result, None))
        labels = np.asarray(labels, dtype=np.uint8)
        probs = None if probs is None else np.asarray(probs, dtype=np.float32)
        if out_shape is not None and tuple(out_shape) != labels.shape[1:]:
            size = tuple(int(v) for v in out_shape)
            labels = F.interpolate(torch.from_numpy(labels)[:, None].float(), size=size, mode="nearest-exact"
                                   )[:, 0].to(torch.uint8).numpy()
            if probs is not None:
                probs = F.interpolate(torch.from_numpy(probs), size=size, mode="bilinear", align_corners=False).numpy()
        return labels, probs


class NnUNetKind(RunKind):
    """nnU-Net (nnunetv2, 2D): it plans, trains and predicts itself; tunesam keeps the folder
    rules and scores it like every run."""

    name = "nnunet"
    baseline = True
    augmentation = "nnunet"

    def archs(self) -> Iterable[str]:
        return ("nnunet",)

    def label(self, arch: str) -> str:
        return "nnU-Net"

    def takes(self, option: str) -> bool:  # nnU-Net plans the rest itself
        return option in ("epochs", "device", "iterations")

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        refuse_sam_options(cfg, "nnunet")
        own = [flag for flag, given in (("--image-size", cfg.image_size is not None),
                                        ("--batch-size", cfg.batch_size is not None),
                                        ("--patience", cfg.patience is not None), ("--lr", cfg.lr != LR),
                                        ("--warmup", cfg.warmup != WARMUP)) if given]
        if own:
            raise ValueError("nnU-Net plans its own patch size, batch size, learning rate and schedule: "
                             f"{', '.join(own)} do not apply to it")
        return dataclasses.replace(
            dataclasses.replace(cfg, epochs=cfg.epochs or 1000).with_recipe(iterations=True), pixel_norm="nnunet",
            pixel_norm_rule="nnU-Net's own (planned)", interpolation=cfg.interpolation or "bilinear")

    def train(self, cfg: TrainConfig, resume: bool = False, progress: bool | None = None,
              until: int | None = None) -> Path:
        if until is not None:
            raise ValueError("an nnU-Net run cannot pause after a number of epochs (nnU-Net keeps its own loop)")
        return train_nnunet(cfg, resume)

    def resumable(self, folder: Path) -> bool:  # nnU-Net keeps its own state from the start
        return (folder / "nnunet.json").is_file()

    def load(self, run: Run, which: str = "best", device: str | torch.device = "cpu") -> NnUNetSegmenter:
        return NnUNetSegmenter(run.folder, which).to(device).eval()

    def export(self, run: Run, out: Path, weights: str = "best") -> list[str]:
        raise ValueError(f"{run.folder} is an nnU-Net baseline, not a SAM model: there is no SAM checkpoint to "
                         f"export. nnU-Net's own checkpoints are in {results_folder(run.folder) / 'fold_0'}")


NNUNET = register(NnUNetKind())
