"""The training configuration: typed, validated, with the paper's recipe as defaults."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from tunesam.data.prompts import RULES
from tunesam.peft.strategy import Strategy

# The paper's recipe (section 4.1; few-shot: section 4.4), in one place: AdamW at LR with
# WEIGHT_DECAY, WARMUP warm-up steps then polynomial decay; length, patience and batch below.
LR = 1e-4
WEIGHT_DECAY = 0.1
WARMUP = 200
FULL = {"epochs": 200, "patience": 20, "batch_size": 4}
FEW_SHOT = {"epochs": 1000, "patience": 0, "batch_size": 2}


def number(x: float) -> str:
    """``x`` as people write it in a recipe: 1e-4, 0.1, 200."""
    if x and abs(x) < 1e-3:
        mantissa, exponent = f"{x:.1e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"


RECIPE_TEXT = (f"AdamW {number(LR)}, wd {number(WEIGHT_DECAY)}, {WARMUP} warm-up steps then polynomial decay, batch "
               f"{FULL['batch_size']}, <= {FULL['epochs']} epochs, early stop after {FULL['patience']}")


def check_ranges(cfg: Any, at_least_1: tuple[str, ...] = (), at_least_0: tuple[str, ...] = ()) -> None:
    """Every numeric option in its range, or an error naming its flag (``None``: not given)."""
    for names, low in ((at_least_1, 1), (at_least_0, 0)):
        for name in names:
            v = getattr(cfg, name)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= low
                                      and v == v):
                raise ValueError(f"--{name.replace('_', '-')} must be a number >= {low}, got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; written to ``RUN/config.yaml`` resolved.

    ``epochs``, ``patience`` and ``batch_size`` default to the paper's recipe (200 / 20 / 4,
    or 1000 / none / 2 with ``few_shot``); ``patience`` 0 disables early stopping. ``arch``
    ``None`` is read from the checkpoint; ``image_size`` defaults to the architecture's native
    input (1024, LiteMedSAM 256), ``pixel_norm`` to the one that belongs to the weights and
    ``interpolation`` (the image resize to the input) to the architecture's (LiteMedSAM: area).
    ``cache_embeddings`` computes a frozen encoder's embeddings once (in ``embedding_cache``,
    default ``DATA/embeddings``) and trains the decoder on them; the images are then not
    augmented (the paper's histogram equalisation and brightness/contrast jitter are off), unless
    ``cache_views`` N > 0: then N augmented views of each training slice are embedded once and
    each epoch draws one of them.
    ``prompt_rules`` (prompt modes): how training, validation and, by default, evaluation draw
    prompts: ``paper`` (section 2.3), ``code`` (the authors' released code) or ``tight``.
    """

    data: str
    out: str
    arch: str | None
    tune: str
    method: str
    checkpoint: str | None = None
    pixel_norm: str | None = None
    adapter_blocks: str = "default"
    lora_rank: int = 4
    mode: str = "auto"
    prompt_rules: str = "paper"
    few_shot: int | None = None
    epochs: int | None = None
    patience: int | None = None
    batch_size: int | None = None
    lr: float = LR
    weight_decay: float = WEIGHT_DECAY
    warmup: int = WARMUP
    constant_lr: bool = False
    image_size: int | None = None
    device: str = "auto"
    seed: int = 0
    num_workers: int | None = None
    checkpointing: bool = False
    tensorboard: bool = False
    interpolation: str | None = None
    cache_embeddings: bool = False
    cache_views: int = 0
    embedding_cache: str | None = None
    iterations: int | None = None  # nnU-Net's iterations per epoch (its default 250); no other kind takes it
    pixel_norm_rule: str | None = None  # filled by the kind's resolve: why pixel_norm is what it is

    def __post_init__(self) -> None:
        self.strategy()  # validates tune / method / mode
        if self.few_shot is not None and self.few_shot < 1:
            raise ValueError(f"--few-shot must be >= 1, got {self.few_shot}")
        check_ranges(self, at_least_1=("epochs", "batch_size", "image_size", "lora_rank", "iterations"),
                     at_least_0=("patience", "warmup", "weight_decay", "num_workers", "seed"))
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.cache_embeddings and self.tune != "decoder":
            raise ValueError("--cache-embeddings needs a frozen image encoder: use it with --tune decoder")
        if self.cache_views < 0:
            raise ValueError(f"--cache-views must be a count of augmented views (>= 1), got {self.cache_views}")
        if self.cache_views and not self.cache_embeddings:
            raise ValueError(f"--cache-views {self.cache_views} augments cached embeddings: it needs --cache-embeddings, "
                             "which is off")
        if self.prompt_rules not in RULES:
            raise ValueError(f"--prompt-rules must be one of {', '.join(RULES)}, got {self.prompt_rules!r}")
        if self.interpolation not in (None, "bilinear", "nearest", "area"):
            raise ValueError("--interpolation must be bilinear, nearest or area")

    def strategy(self) -> Strategy:
        return Strategy(self.tune, self.method, self.mode, self.adapter_blocks, lora_rank=self.lora_rank)

    def with_recipe(self, iterations: bool = False) -> TrainConfig:
        """The recipe's length, patience and batch where not given (the paper's, or its few-shot
        one), and the embedding cache's default folder. Each run kind's ``resolve`` calls this
        and fills in its own defaults (architecture, input size, pixel normalisation);
        ``iterations``: the kind takes ``--iterations`` (nnU-Net)."""
        from tunesam.data.store import default_cache_folder

        if self.iterations is not None and not iterations:
            raise ValueError(f"--iterations is nnU-Net's; {self.arch} trains on every training slice once per epoch")

        recipe = FEW_SHOT if self.few_shot else FULL
        cache = (self.embedding_cache or str(default_cache_folder(self.data))) if self.cache_embeddings else None
        return dataclasses.replace(
            self, embedding_cache=cache,
            epochs=self.epochs or recipe["epochs"],
            patience=recipe["patience"] if self.patience is None else self.patience,
            batch_size=self.batch_size or recipe["batch_size"],
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        return cls(**d)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (YAML lets the last one
    win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                    "keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it (no tags, no objects), but a key given twice in one
    mapping is an error (``yaml.YAMLError``), never the last one silently winning."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def save_yaml(data: dict[str, Any], path: Path, title: str) -> None:
    """Write a resolved configuration as YAML, atomically, under a ``# title`` line."""
    from tunesam.io import atomic_write

    text = f"# {title}\n" + yaml.safe_dump(data, sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def load_yaml(path: Path, build: Callable[[dict[str, Any]], Any], what: str) -> Any:
    """Read a configuration written by :func:`save_yaml` and ``build`` it, with errors that
    name the file (``what``: the kind of run, for the messages)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: not a {what} run (no config.yaml)")
    try:
        data = load_yaml_text(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping of options, found {type(data).__name__}")
        return build(data)
    except (yaml.YAMLError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid {what} configuration ({str(exc).splitlines()[0]})") from exc


def save_config(cfg: TrainConfig, path: Path) -> None:
    save_yaml(cfg.to_dict(), path, "tunesam training configuration (resolved)")


def load_config(path: Path) -> TrainConfig:
    return load_yaml(path, TrainConfig.from_dict, "training")
