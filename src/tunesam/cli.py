"""The ``tunesam`` command: one thin subcommand per verb, each one library call."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tunesam.models.registry import ARCHS
from tunesam.peft.strategy import ADAPTER_BLOCKS, METHODS, MODES, TUNES, Strategy

PUBLIC_ARCHS = [name for name, spec in ARCHS.items() if not spec.test_only]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, choices=list(ARCHS), metavar="ARCH",
                   help=f"backbone: {', '.join(PUBLIC_ARCHS)}")
    p.add_argument("--tune", required=True, choices=TUNES, help="what is adapted")
    p.add_argument("--method", required=True, choices=METHODS, help="how it is adapted")
    p.add_argument("--mode", default="auto", choices=MODES, help="automated (no prompt) or prompted")
    p.add_argument("--num-classes", type=int, default=1, help="foreground classes K (automated mode)")
    p.add_argument("--image-size", type=int, default=1024, help="model input side in pixels")
    p.add_argument("--adapter-blocks", default="default", choices=ADAPTER_BLOCKS,
                   help="encoder blocks given adapters: first two and last two, or all")
    p.add_argument("--lora-rank", type=int, default=4, help="LoRA rank")
    p.add_argument("--checkpoint", default=None, help="SAM-format weights to load (.pth/.pt/.safetensors)")


def _cmd_info(args: argparse.Namespace) -> int:
    from tunesam.info import describe, format_info

    strategy = Strategy(args.tune, args.method, args.mode, args.adapter_blocks, lora_rank=args.lora_rank)
    info = describe(args.arch, strategy, args.num_classes, args.image_size, args.checkpoint)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    import logging

    from tunesam.data.prepare import PrepareOptions, parse_label_map, parse_window, prepare

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    opts = PrepareOptions(
        layout=args.layout, root=args.root, axis=args.axis, size=args.size, split=args.split, seed=args.seed,
        keep_empty=args.keep_empty, labels=args.labels,
        label_map=parse_label_map(args.label_map) if args.label_map else None,
        channel=args.channel, case_pattern=args.case_pattern, modality=args.modality,
        window=parse_window(args.window) if args.window else None,
    )
    if args.example:
        from tunesam.data.examples import prepare_example

        if args.source:
            raise ValueError("give either SOURCE or --example, not both")
        result = prepare_example(args.example, args.out, opts, force=args.force)
    elif args.source:
        result = prepare(args.source, args.out, opts, force=args.force)
    else:
        raise ValueError("give a SOURCE dataset (folder or CSV list) or --example mni152")
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesam",
        description="Fine-tune the Segment Anything family for medical image segmentation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="parameter counts of an architecture x strategy",
                          description="Total, trainable and frozen parameters per part.")
    _add_model_args(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_cmd_info)

    prep = sub.add_parser(
        "prepare", help="turn a dataset into training-ready 2D slices",
        description="Read a dataset (nnU-Net/MSD folder, CSV list(s), image/mask folders) and write "
                    "2D slices, a manifest and a patient-level split to --out.",
    )
    prep.add_argument("source", nargs="?", help="dataset folder, CSV list, or folder of train/val/test lists")
    prep.add_argument("--out", required=True, help="folder to write")
    prep.add_argument("--example", choices=["mni152"], help="prepare the embedded real example instead")
    prep.add_argument("--layout", default="auto", choices=["auto", "nnunet", "msd", "csv", "folders"])
    prep.add_argument("--root", help="folder that CSV paths are relative to (default: the lists' parent folder)")
    prep.add_argument("--axis", type=int, default=0, choices=[0, 1, 2],
                      help="slicing axis of the z-y-x array (0: axial for standard volumes)")
    prep.add_argument("--size", type=int, default=1024, help="largest side stored (bigger slices are downsampled)")
    prep.add_argument("--split", default="7:1:2", help="train:val:test ratio by patient")
    prep.add_argument("--seed", type=int, default=0, help="seed of the split")
    prep.add_argument("--keep-empty", action="store_true", help="keep train/val slices with empty masks")
    prep.add_argument("--labels", default="all", choices=["all", "merge"],
                      help="all: one class per non-zero value; merge: every non-zero value is class 1")
    prep.add_argument("--label-map", help="JSON (or a JSON file) mapping raw mask values to classes")
    prep.add_argument("--channel", type=int, default=0, help="image channel of multi-channel cases")
    prep.add_argument("--case-pattern", help="regex finding the patient id in CSV/folder paths")
    prep.add_argument("--modality", choices=["mr", "ct", "other"], help="intensity rule (default from the dataset)")
    prep.add_argument("--window", help="CT window 'level,width' (default 40,400 for CT)")
    prep.add_argument("--force", action="store_true", help="replace an existing prepared folder")
    prep.add_argument("-v", "--verbose", action="store_true", help="log each case")
    prep.set_defaults(func=_cmd_prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"tunesam {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
