"""A study configuration (YAML) and the grid of cells it expands to.

```yaml
datasets: {brain: work/mni152, prostate: work/prostate}   # name: prepared dataset folder
weights: {sslsam: runs/sslsam/checkpoint.pth}              # optional names for checkpoint files
grid:
  arch: [litemedsam]          # or null: read from the checkpoint
  checkpoint: [litemedsam, null]   # known name, a weights name above, a file; null: random
  tune: [decoder]
  method: [lora, adapter]
  mode: [auto]
  shots: [null, 5]            # null: all training data; K: K-shot
  seed: [0]
  epochs: 2                   # scalars apply to every cell (epochs caps them)
baselines: [unet]
baseline_epochs: 2
```

``grid`` may also be a list of such mappings (families trained with different options, e.g.
LiteMedSAM's decoder at 256 px and a random ViT-T at 224 px): the cells are the union of
their products. ``few_shot_epochs`` caps the K-shot cells instead of ``epochs``. Decoder-only
cells train on cached embeddings of the plain images unless ``cache_views: N`` asks for N
augmented views (chosen on validation data: on the MNI152 example augmentation cost LiteMedSAM's
decoder about 1 DSC point in 10 epochs, see docs/results/2026-12-01-cache-views.md); each cell's
policy is in the report. Baselines
take ``baseline_*`` options (epochs, few_shot_epochs, lr, warmup, image_size, batch_size,
iterations for nnU-Net) and every shot count and seed of the grids.

Each cell is a training run, named by its key, in ``OUT/cells/DATASET/KEY``.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunesam.kinds import kind_of

if TYPE_CHECKING:
    from tunesam.config import TrainConfig

GRID_DIMS = ("arch", "checkpoint", "tune", "method", "mode", "shots", "seed")
ALIASES = {"few_shot": "shots", "seeds": "seed", "checkpoints": "checkpoint", "archs": "arch"}
# Options every cell of the grid takes as they are (scalars); anything else is an error.
TRAIN_OPTIONS = ("epochs", "few_shot_epochs", "batch_size", "lr", "warmup", "patience", "image_size", "weight_decay", "lora_rank",
                 "adapter_blocks", "cache_embeddings", "device", "interpolation", "num_workers", "prompt_rules",
                 "cache_views")
# baseline_iterations: nnU-Net's iterations per epoch (a CPU-sized run); the rest: UNet, SwinUNETR
BASELINE_OPTIONS = ("baseline_epochs", "baseline_few_shot_epochs", "baseline_lr", "baseline_image_size",
                    "baseline_batch_size", "baseline_iterations", "baseline_warmup")
TOP_LEVEL = ("datasets", "weights", "grid", "baselines", "pretrained", "ray_address", *BASELINE_OPTIONS)
PRETRAIN_CHECKPOINT = "checkpoint.pth"  # what 'tunesam pretrain' writes in its run folder
PRETRAINED_NAMES = ("sslsam", "supsam")  # weights names that mark pre-training cells (Table 4's multi-dataset row)
WEIGHT_CLASSES = {
    "original": "the original SAM family (SAM, MobileSAM)",
    "medical": "a public medical SAM (MedSAM, LiteMedSAM)",
    "pretrain": "your own pre-training on extra data (SSLSAM, SupSAM from tunesam pretrain)",
    "random": "random weights",
    "other": "another weights file",
}
AUGMENTATION = {
    "online": "histogram equalisation (p 0.1) and brightness/contrast jitter (0.3), drawn anew every epoch",
    "none": "none: the frozen encoder's embeddings of the plain images are cached",
    "views": "a fixed set of augmented views per slice, embedded once, one drawn per epoch",
    "nnunet": "nnU-Net's own augmentation",
}


class StudyError(ValueError):
    pass


@dataclass(frozen=True)
class Cell:
    """One training run of the study on one dataset."""

    dataset: str
    data: str
    kind: str  # "sam" | "baseline"
    arch: str | None
    checkpoint: str | None  # as written in the config (a name or a path), None: random
    checkpoint_file: str | None  # resolved path for names from ``weights:``
    tune: str
    method: str
    mode: str
    shots: int | None
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    pretraining: bool = False  # weights from a pre-training (SSLSAM, SupSAM): Table 4's multi-dataset row

    @property
    def baseline(self) -> bool:
        """A baseline cell (its kind trains from scratch; never a candidate of Table 4's rows)."""
        return kind_of(self.arch).baseline

    @property
    def weights_name(self) -> str:
        if self.baseline:
            return "random"
        if self.checkpoint is None:
            return "random"
        if "/" not in self.checkpoint and "." not in self.checkpoint:
            return self.checkpoint
        path = Path(self.checkpoint)
        # a pre-training run's RUN/checkpoint.pth is named by its run folder
        return path.parent.name if path.name == PRETRAIN_CHECKPOINT and path.parent.name else path.stem

    @property
    def strategy(self) -> str:
        """The cell's name without dataset and seed: what the tables compare."""
        shots = "full" if self.shots is None else f"{self.shots}shot"
        if self.baseline:
            return f"{self.arch}_{shots}"
        tune = {"decoder": "dec", "encoder-decoder": "encdec"}[self.tune]
        return f"{self.arch or 'auto'}_{self.weights_name}_{tune}_{self.method}_{self.mode}_{shots}"

    @property
    def key(self) -> str:
        return f"{self.strategy}_s{self.seed}"

    @property
    def pretrained(self) -> bool:
        return self.pretraining or self.weights_name.lower().startswith(PRETRAINED_NAMES)

    @property
    def weights_class(self) -> str:
        """The start's class (see :data:`WEIGHT_CLASSES`); baselines start from random weights."""
        if self.baseline:
            return "random"
        if self.pretrained:
            return "pretrain"
        from tunesam.models.known import weights_family

        return weights_family(self.checkpoint_file or self.checkpoint)

    @property
    def augmentation(self) -> str:
        """The image augmentation policy the cell trains with (see :data:`AUGMENTATION`)."""
        own = kind_of(self.arch).augmentation
        if own != "online":  # a kind that augments in its own way (nnU-Net)
            return own
        if self.options.get("cache_embeddings"):
            views = int(self.options.get("cache_views") or 0)
            return f"views:{views}" if views else "none"
        return "online"

    def folder(self, out: Path) -> Path:
        return out / "cells" / self.dataset / self.key

    def train_config(self, out: Path) -> TrainConfig:
        """The ``TrainConfig`` of the cell in study folder ``out`` (its run folder, and the
        dataset's shared embedding cache when the cell caches). A baseline cell takes those of
        the study's shared ``baseline_*`` settings that its kind takes (nnU-Net plans its own
        learning rate, batch and input: it takes the length, the device and its iterations)."""
        from tunesam.config import TrainConfig

        kind = kind_of(self.arch)
        o = {k: v for k, v in self.options.items() if kind.takes(k)}
        cache = bool(o.pop("cache_embeddings", False))
        return TrainConfig(
            data=self.data, out=str(self.folder(out)), arch=self.arch, tune=self.tune, method=self.method,
            checkpoint=self.checkpoint_file or self.checkpoint, mode=self.mode, few_shot=self.shots, seed=self.seed,
            cache_embeddings=cache, embedding_cache=str(out / "embeddings" / self.dataset) if cache else None, **o,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        return cls(**d)


def _cell_options(options: dict[str, Any], shots: int | None) -> dict[str, Any]:
    """A cell's options: ``few_shot_epochs`` is the epoch cap of its K-shot cells."""
    opts = dict(options)
    few = opts.pop("few_shot_epochs", None)
    if shots is not None and few is not None:
        opts["epochs"] = few
    return opts


@dataclass(frozen=True)
class StudyConfig:
    """``grids``: one or more (dimensions, options) pairs; the cells are their products together."""

    datasets: dict[str, str]
    grids: list[tuple[dict[str, list[Any]], dict[str, Any]]]
    baselines: list[str]
    baseline_options: dict[str, Any]
    weights: dict[str, str]
    pretrained: list[str]
    ray_address: str | None = None

    def cells(self) -> tuple[list[Cell], list[str]]:
        """Every cell of the grid, and notes on combinations left out (with why)."""
        cells: list[Cell] = []
        notes: list[str] = []
        shots_all = list(dict.fromkeys(k for grid, _ in self.grids for k in grid["shots"]))
        seeds_all = list(dict.fromkeys(k for grid, _ in self.grids for k in grid["seed"]))
        for name, data in self.datasets.items():
            for grid, options in self.grids:
                for arch, ckpt, tune, method, mode, shots, seed in itertools.product(*(grid[d] for d in GRID_DIMS)):
                    why = _combination_problem(arch, ckpt, tune, mode, options, self.weights)
                    if why:
                        note = f"left out {arch}/{ckpt}/{tune}/{method}/{mode}: {why}"
                        if note not in notes:
                            notes.append(note)
                        continue
                    opts = _cell_options(options, shots)
                    if opts.get("cache_embeddings", "auto") == "auto":
                        opts["cache_embeddings"] = tune == "decoder"  # a frozen encoder: embed each slice once
                    if not opts["cache_embeddings"]:
                        opts.pop("cache_views", None)  # augmented online anyway
                    cells.append(Cell(name, data, "sam", arch, ckpt, self.weights.get(ckpt) if ckpt else None, tune,
                                      method, mode, shots, int(seed), opts,
                                      pretraining=ckpt in self.pretrained
                                      or written_by_pretrain(self.weights.get(ckpt, ckpt) if ckpt else None)))
            for base in self.baselines:
                for shots, seed in itertools.product(shots_all, seeds_all):
                    cells.append(Cell(name, data, "baseline", base, None, None, "encoder-decoder", "vanilla", "auto",
                                      shots, int(seed), _cell_options(self.baseline_options, shots)))
        keys = [(c.dataset, c.key) for c in cells]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise StudyError(f"cells with the same name: {sorted(dup)[:4]} (two checkpoints with the same file stem?)")
        return cells, notes


@functools.lru_cache(maxsize=None)
def _checkpoint_arch(checkpoint: str) -> str:
    from tunesam.models.build import infer_arch

    return infer_arch(checkpoint)


def _combination_problem(arch: str | None, ckpt: str | None, tune: str, mode: str, options: dict[str, Any],
                         weights: dict[str, str] | None = None) -> str:
    if arch is None and ckpt is None:
        return "random weights need an arch"
    if arch is not None and ckpt is not None:
        found = _checkpoint_arch((weights or {}).get(ckpt, ckpt))
        if found != arch:
            return f"the checkpoint is a {found} file"
    if tune != "decoder" and options.get("cache_embeddings") is True:
        return "cache_embeddings needs a frozen encoder (tune: decoder)"
    return ""


def _as_list(name: str, value: Any) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise StudyError(f"grid.{name} is an empty list")
    return values


def parse_study(raw: Any, base: Path | None = None) -> StudyConfig:
    """Validate a loaded YAML mapping; relative dataset and weight paths are taken from ``base``."""
    if not isinstance(raw, dict):
        raise StudyError(f"a study config is a mapping (datasets:, grid:, ...), found {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise StudyError(f"unknown study keys {unknown}; known: {', '.join(TOP_LEVEL)}")
    base = base or Path.cwd()

    def where(p: Any) -> str:
        path = Path(str(p)).expanduser()
        return str(path if path.is_absolute() else (base / path))

    datasets = raw.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise StudyError("datasets: give at least one, as name: prepared dataset folder")
    for name in datasets:
        if not str(name).replace("-", "").replace("_", "").isalnum():
            raise StudyError(f"dataset name {name!r}: use letters, digits, - and _ (it names folders)")
    weights = {str(k): where(v) for k, v in (raw.get("weights") or {}).items()}
    raw_grids = raw.get("grid")
    if isinstance(raw_grids, dict):
        raw_grids = [raw_grids]
    if not isinstance(raw_grids, list) or not all(isinstance(g, dict) for g in raw_grids):
        raise StudyError("grid: a mapping of dimensions and options, or a list of such mappings, found "
                         f"{raw_grids!r}")
    if not raw_grids or not all(raw_grids):
        raise StudyError("grid: empty; a study compares SAM fine-tuning strategies, so give at least arch or "
                         "checkpoint (e.g. grid: {arch: [vit_b], tune: [decoder, encoder-decoder]}); see "
                         "docs/studies.md")
    grids = [_parse_grid(g, i if len(raw_grids) > 1 else None) for i, g in enumerate(raw_grids)]
    baselines = raw.get("baselines") or []
    if isinstance(baselines, str):  # one name, as a grid dimension takes one value
        baselines = [baselines]
    if not isinstance(baselines, list) or not all(isinstance(b, str) for b in baselines):
        raise StudyError(f"baselines: a list of names (e.g. [unet, nnunet]), found {baselines!r}")
    from tunesam.kinds import baseline_names

    bad = [b for b in baselines if b not in baseline_names(test=True)]
    if bad:
        raise StudyError(f"baselines: {bad} unknown; known: {', '.join(baseline_names())}")
    baseline_options = {k.removeprefix("baseline_"): raw[k] for k in BASELINE_OPTIONS if k in raw}
    first = grids[0][1]
    for k in ("epochs", "few_shot_epochs", "device", "num_workers"):  # from the (first) grid unless given
        if k in first:
            baseline_options.setdefault(k, first[k])
    return StudyConfig({str(k): where(v) for k, v in datasets.items()}, grids, list(baselines),
                       baseline_options, weights, list(raw.get("pretrained") or []), raw.get("ray_address"))


def written_by_pretrain(checkpoint: str | None) -> bool:
    """Whether ``checkpoint`` is a ``tunesam pretrain`` run's output (its folder's config.yaml
    names a pre-training objective): its cells answer Table 4's multi-dataset row."""
    if not checkpoint or not checkpoint.endswith(PRETRAIN_CHECKPOINT):
        return False
    try:
        saved = yaml.safe_load((Path(checkpoint).parent / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and saved.get("objective") in ("prompt", "mae")


def _parse_grid(grid_raw: dict[str, Any], index: int | None) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    where = "grid" if index is None else f"grid[{index}]"
    grid_raw = {ALIASES.get(k, k): v for k, v in grid_raw.items()}
    unknown = sorted(set(grid_raw) - set(GRID_DIMS) - set(TRAIN_OPTIONS))
    if unknown:
        raise StudyError(f"unknown {where} keys {unknown}; grid dimensions: {', '.join(GRID_DIMS)}; "
                         f"options for every cell: {', '.join(TRAIN_OPTIONS)}")
    defaults = {"arch": [None], "checkpoint": [None], "tune": ["decoder"], "method": ["vanilla"], "mode": ["auto"],
                "shots": [None], "seed": [0]}
    grid = {d: _as_list(d, grid_raw[d]) if d in grid_raw else defaults[d] for d in GRID_DIMS}
    from tunesam.peft.strategy import METHODS, MODES, TUNES

    for dim, allowed in (("tune", TUNES), ("method", METHODS), ("mode", MODES)):
        bad = [v for v in grid[dim] if v not in allowed]
        if bad:
            raise StudyError(f"{where}.{dim}: {bad} not among {list(allowed)}")
    for k in grid["shots"]:
        if k is not None and (not isinstance(k, int) or k < 1):
            raise StudyError(f"{where}.shots: {k!r} is neither null (all data) nor a positive count")
    grid["checkpoint"] = [None if c in (None, "null", "random") else str(c) for c in grid["checkpoint"]]
    options = {k: grid_raw[k] for k in TRAIN_OPTIONS if k in grid_raw}
    for k, v in options.items():
        if isinstance(v, list):
            raise StudyError(f"{where}.{k} is an option for every cell, not a dimension: give one value")
    return grid, options


def load_study(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such study config")
    from tunesam.config import load_yaml_text

    try:
        raw = load_yaml_text(path.read_text())
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError(f"{path}: not valid YAML ({problem})") from exc
    try:
        return parse_study(raw, Path.cwd())
    except StudyError as exc:
        raise StudyError(f"{path}: {exc}") from exc
