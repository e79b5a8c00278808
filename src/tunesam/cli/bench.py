"""``tunesam bench``: seconds per step, memory and TFLOP/s of strategies on this machine."""
from __future__ import annotations

import argparse
import itertools

from tunesam.cli import common as C
from tunesam.models.registry import ARCHS
from tunesam.peft.strategy import METHODS, TUNES


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time training steps, encoder forwards and prompted decodes on this machine",
                       description="Every combination of the given archs, tunes, methods, batch sizes and image "
                                   "sizes, on random data: seconds per step (median after warm-up), peak memory, "
                                   "FLOPs, samples/s and achieved TFLOP/s; the encoder's forward and a box-prompted "
                                   "decode the same way. --baseline eager-fp32 measures every row again with the "
                                   "speed-ups off, in the same process, and gives each row its ratio.")
    p.add_argument("--arch", nargs="+", default=["vit_b"], choices=list(ARCHS), metavar="ARCH",
                   help="backbones (default vit_b): " + ", ".join(C.PUBLIC_ARCHS))
    p.add_argument("--tune", nargs="+", default=["encoder-decoder"], choices=list(TUNES))
    p.add_argument("--method", nargs="+", default=["lora", "adapter"], choices=list(METHODS))
    p.add_argument("--batch-size", nargs="+", type=int, default=[4])
    p.add_argument("--image-size", nargs="+", type=int, help="input sizes (default: each arch's own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls; the median is kept (default 5)")
    p.add_argument("--baseline", choices=["eager-fp32", "rel-pos-mask"],
                   help="also measure each row with every speed-up off (eager-fp32), or with ViT's relative-position "
                        "bias passed as an attention mask (rel-pos-mask)")
    p.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", help="write the results here (one object per row)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from tunesam.bench import Row, bench, format_table
    from tunesam.io import write_json
    from tunesam.models.registry import get_spec

    for name in ("warmup", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            raise ValueError(f"--{name} must be at least {0 if name == 'warmup' else 1}, got {value}")
    if any(b < 1 for b in args.batch_size) or any(s < 16 for s in args.image_size or ()):
        raise ValueError("--batch-size must be at least 1 and --image-size at least 16")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [Row(arch, tune, method, batch, size)
            for arch in args.arch
            for size in (args.image_size or [get_spec(arch).native_size])
            for tune, method, batch in itertools.product(args.tune, args.method, args.batch_size)]
    print(f"{len(rows)} rows on {args.device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
          flush=True)
    print(format_table([]), flush=True)
    results = bench(rows, args.device, args.baseline, args.warmup, args.repeats,
                    say=lambda r: print(format_table([r]).splitlines()[1], flush=True))
    print("s/step: a training step (forward, loss, backward, AdamW); enc s / dec s: the encoder's forward and a "
          "box-prompted decode, per batch; vs eager: eager-fp32 seconds / these (step/encoder/decode)")
    if args.json:
        write_json(args.json, results)
        print(f"written {args.json}")
    return 0
