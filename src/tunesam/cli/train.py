"""``tunesam train`` and ``tunesam baseline``: a run folder, by its kind."""
from __future__ import annotations

import argparse

from tunesam.cli import common as C
from tunesam.config import RECIPE_TEXT, TrainConfig
from tunesam.data.prompts import RULES as PROMPT_RULES


def add_train(sub: argparse._SubParsersAction) -> None:
    d = lambda name: C.default(TrainConfig, name)  # noqa: E731
    p = sub.add_parser("train", help="fine-tune a SAM-family model on a prepared dataset",
                       description=f"Fine-tune with the paper's recipe (Dice + CE, {RECIPE_TEXT}).")
    C.add_arch(p)
    C.add_strategy_args(p)
    p.add_argument("--checkpoint", help=C.CHECKPOINT_HELP + "; default: random weights")
    p.add_argument("--pixel-norm", choices=C.PIXEL_NORMS, help=C.PIXEL_NORM_HELP)
    p.add_argument("--prompt-rules", choices=PROMPT_RULES,
                   help="prompt modes: how prompts are drawn in training and validation, and by default in evaluate "
                        f"(default {d('prompt_rules')}: section 2.3; code: the authors' released code; tight: tight "
                        "box or deepest point)")
    C.add_training_args(p)
    p.add_argument("--weight-decay", type=float, help=f"AdamW's weight decay (default {d('weight_decay')})")
    p.add_argument("--constant-lr", action="store_true", help="no decay after the warm-up")
    p.add_argument("--image-size", type=int, help=C.IMAGE_SIZE_HELP)
    p.add_argument("--interpolation", choices=["bilinear", "nearest", "area"],
                   help="image resize to the model input (default: the architecture's: bilinear; litemedsam area, "
                        "as its own preprocessing)")
    p.add_argument("--cache-embeddings", action="store_true",
                   help="decoder-only strategies: compute the frozen encoder's embeddings once and train on them "
                        "(many times faster; the images are then not augmented)")
    p.add_argument("--embedding-cache", metavar="DIR", help="where they are kept (default: DATA/embeddings)")
    p.add_argument("--cache-views", type=int, metavar="N",
                   help="with --cache-embeddings: also embed N augmented views of each training slice once (histogram "
                        "equalisation, brightness/contrast jitter as in training) and draw one per epoch, so cached "
                        "training is augmented too (N encoder passes per training slice, N times the disk)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the encoder")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard")
    p.set_defaults(func=run_train)


def add_baseline(sub: argparse._SubParsersAction) -> None:
    from tunesam.kinds import baseline_names

    p = sub.add_parser("baseline", help="train UNet, SwinUNETR or nnU-Net on a prepared dataset's split",
                       description="A baseline on the same split as the SAM runs, as a run folder that evaluate and "
                                   "predict take. unet: MONAI's UNet (2D); swinunetr: MONAI's SwinUNETR (2D), the "
                                   "substitute for SwinUNet; nnunet: the real nnU-Net (nnunetv2, 2D configuration; "
                                   "pip install 'tunesam[baselines]'). UNet and SwinUNETR follow the paper's recipe "
                                   f"({RECIPE_TEXT}) at 256 px with z-score intensities; nnU-Net plans its own.")
    p.add_argument("name", choices=baseline_names(test=True), metavar="{" + ",".join(baseline_names()) + "}")
    C.add_training_args(p, nnunet="; nnU-Net: its own 1000")
    p.add_argument("--iterations", type=int, help="nnU-Net: iterations per epoch (its default 250)")
    p.add_argument("--image-size", type=int, help="input side (default 256; SwinUNETR: a multiple of 32)")
    p.set_defaults(func=run_baseline)


def run_train(args: argparse.Namespace) -> int:
    from tunesam.kinds import train

    C.logging_at("INFO")
    C.check_method_options(args)
    run = train(C.config_from_args(TrainConfig, args), resume=args.resume, progress=C.progress(args))
    print(f"run written to {run}")
    return 0


def run_baseline(args: argparse.Namespace) -> int:
    from tunesam.kinds import train

    C.logging_at("INFO")
    cfg = C.config_from_args(TrainConfig, args, arch=args.name, tune="encoder-decoder", method="vanilla")
    run = train(cfg, resume=args.resume, progress=C.progress(args))
    print(f"run written to {run}")
    return 0
