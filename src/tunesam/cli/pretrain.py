"""``tunesam pretrain prompt|mae``."""
from __future__ import annotations

import argparse

from tunesam.cli import common as C
from tunesam.pretrain.config import PretrainConfig

MAE_ONLY = ("mask_ratio", "mae_variant", "mask_patch", "no_norm_pix_loss", "decoder_dim", "decoder_depth",
            "decoder_heads")
PROMPT_ONLY = ("prompt_rules", "max_prompts")


def add(sub: argparse._SubParsersAction) -> None:
    d = lambda name: C.default(PretrainConfig, name)  # noqa: E731
    p = sub.add_parser("pretrain", help="pre-train on extra data first: prompt (SupSAM) or mae (SSLSAM)",
                       description="prompt: the paper's task-expansive prompt-based learning on several labelled "
                                   "datasets (per image one class, one box or point per connected component; "
                                   "prompt encoder frozen, image encoder and mask decoder vanilla; batch 3, AdamW "
                                   "1e-4, early stop after 5 epochs). mae: masked autoencoding of the image encoder "
                                   "on the datasets' images (every non-blank train slice, with or without "
                                   "foreground; image-only datasets from prepare --unlabelled too; 75%% hidden, "
                                   "512-wide 8-block decoder, AdamW (0.9, 0.95) wd 0.05, lr 1.5e-4 x batch/256, "
                                   "cosine; batch 2 x 16 accumulated; SAM's ViT drops the hidden tokens, TinyViT "
                                   "masks them on the whole grid). Both "
                                   "write RUN/checkpoint.pth in the official SAM layout for train --checkpoint.")
    p.add_argument("objective", choices=["prompt", "mae"])
    p.add_argument("--data", required=True, nargs="+", metavar="DIR", help="prepared dataset folders, pooled")
    p.add_argument("--out", required=True, help="run folder to write")
    C.add_arch(p)
    p.add_argument("--checkpoint", help=C.CHECKPOINT_HELP + "; default: random weights")
    p.add_argument("--pixel-norm", choices=C.PIXEL_NORMS, help=C.PIXEL_NORM_HELP)
    p.add_argument("--image-size", type=int, help=C.IMAGE_SIZE_HELP)
    p.add_argument("--epochs", type=int, help="default: prompt 100 (early stop), mae 50")
    p.add_argument("--patience", type=int, help="early stop after N epochs without a better validation "
                                                "DSC (prompt) or loss (mae) (default prompt 5; mae 0: never)")
    p.add_argument("--batch-size", type=int, help="per process (default prompt 3, mae 2)")
    p.add_argument("--accumulate", type=int, help="micro-batches per optimiser step (default prompt 1, mae 16)")
    p.add_argument("--lr", type=float, help="default prompt 1e-4; mae 1.5e-4 x effective batch / 256")
    p.add_argument("--weight-decay", type=float, help="default prompt 0.1, mae 0.05")
    p.add_argument("--warmup", type=int, help="warm-up optimiser steps (default prompt 200; mae 5%% of the run)")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--seed", type=int, help=f"default {d('seed')}")
    p.add_argument("--num-workers", type=int, help="data loader workers (default: up to 4)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the encoder")
    C.add_run_args(p)
    p.add_argument("--prompt-rules", choices=["paper", "code"],
                   help="prompt: paper (default: Gaussian box noise, points above the median edge distance) or code "
                        "(the authors' released code: boxes grown by U(0, 10%%), points from the top 10%%)")
    p.add_argument("--max-prompts", type=int,
                   help=f"prompt: components prompted per image at most (default {d('max_prompts')})")
    p.add_argument("--mask-ratio", type=float, help=f"mae: share of patches hidden (default {d('mask_ratio')})")
    p.add_argument("--mae-variant", choices=["masked-grid", "visible"],
                   help="mae: visible (default for SAM's ViT: visible tokens only, global attention in every "
                        "block, as MAE and the paper) or masked-grid (the whole grid, hidden patches as a learned "
                        "mask token; TinyViT's default and only choice: its convolutions cannot take a sequence "
                        "with tokens dropped)")
    p.add_argument("--mask-patch", type=int, help="mae: side of a hidden square in input pixels (default 16)")
    p.add_argument("--no-norm-pix-loss", action="store_true", help="mae: raw pixel targets, not per-patch normalised")
    p.add_argument("--decoder-dim", type=int, help=f"mae: decoder width (default {d('decoder_dim')})")
    p.add_argument("--decoder-depth", type=int, help=f"mae: decoder blocks (default {d('decoder_depth')})")
    p.add_argument("--decoder-heads", type=int, help=f"mae: decoder heads (default {d('decoder_heads')})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tunesam.pretrain.runner import pretrain

    C.logging_at("INFO")
    if args.objective == "prompt":
        C.refuse(args, "to pretrain prompt (MAE options)", *MAE_ONLY)
    else:
        C.refuse(args, "to pretrain mae (prompt options)", *PROMPT_ONLY)
    cfg = C.config_from_args(PretrainConfig, args, data=tuple(args.data), norm_pix_loss=not args.no_norm_pix_loss)
    run = pretrain(cfg, resume=args.resume, progress=C.progress(args))
    print(f"pre-trained weights written to {run / 'checkpoint.pth'} (SAM layout: use them with train --checkpoint)")
    return 0
