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
