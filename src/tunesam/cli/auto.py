"""``tunesam auto``: from prepared data to the best model within a budget."""
from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("auto", help="the best model for a dataset within a time budget (Table 4's scenario, a "
                                    "successive-halving search, the winner tested once and exported)",
                       description="Fingerprint the prepared data, pick the paper's Table 4 scenario, time the "
                                   "scenario's candidate strategies here, search them by successive halving on "
                                   "validation DSC (Optuna), train the winner to its full length, score it on the "
                                   "test split once and export it. DIR/winner is the winner's run folder, "
                                   "DIR/report/auto.json the report. Kill it and --resume: it continues.")
    p.add_argument("data", nargs="+", metavar="DATA",
                   help="prepared dataset folder(s) (tunesam prepare): the target first, then extra datasets")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--budget", required=True, help="wall clock for the whole run: 30m, 2h, 1h30m, 90s")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:N")
    p.add_argument("--weights", nargs="+", default=["litemedsam"], metavar="W",
                   help="starting weights: litemedsam (installed, the default), SAM-format files, or random:ARCH")
    p.add_argument("--mode", default="auto", choices=["auto", "box", "point"],
                   help="automated (no prompt, the default) or prompted: Table 4's prompt-based row")
    p.add_argument("--baselines", default="", metavar="A,B",
                   help="baselines trained in an equal share of the budget and compared with the winner per case "
                        "(unet, swinunetr)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage (default DIR/search.db; a database URL keeps it elsewhere)")
    p.add_argument("--image-size", type=int, help="input size of every candidate (default: each model's own)")
    p.add_argument("--max-epochs", type=int, default=200, help="the longest schedule a trial may get (default 200)")
    p.add_argument("--resume", action="store_true", help="continue a run in DIR (after a kill, or a crash)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tunesam.auto.runner import auto

    options = {"image_size": args.image_size} if args.image_size else {}
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    auto(args.data, args.out, args.budget, device=args.device, weights=args.weights, mode=args.mode,
         baselines=baselines, resume=args.resume, storage=args.storage, options=options, max_epochs=args.max_epochs,
         say=lambda s: print(s, flush=True))
    return 0
