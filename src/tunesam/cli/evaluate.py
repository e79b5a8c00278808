"""``tunesam evaluate``, ``predict`` and ``export``: what a run (or a checkpoint) does on data."""
from __future__ import annotations

import argparse

from tunesam.cli import common as C
from tunesam.data.prompts import RULES as PROMPT_RULES
from tunesam.peft.strategy import MODES


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="DSC and NSD of a run (or an un-fine-tuned checkpoint)")
    p.add_argument("run", nargs="?", help="run folder")
    p.add_argument("--data", help="prepared dataset (default: the run's)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--mode", choices=MODES, help="default: the run's mode")
    p.add_argument("--checkpoint", help="evaluate these weights un-fine-tuned, with prompts, instead of a run: "
                   + C.CHECKPOINT_HELP)
    C.add_arch(p)
    p.add_argument("--image-size", type=int, help=C.IMAGE_SIZE_HELP)
    p.add_argument("--pixel-norm", choices=C.PIXEL_NORMS, help=C.PIXEL_NORM_HELP)
    p.add_argument("--out", help="also write the metrics JSON here (a run always writes RUN/metrics.json)")
    p.add_argument("--cache-embeddings", action="store_true",
                   help="with --checkpoint: keep the encoder's embeddings in DATA/embeddings for reuse by "
                        "decoder-only training on the same weights (a run trained with the cache uses it anyway)")
    p.add_argument("--embedding-cache", metavar="DIR", help="with --checkpoint: the cache folder")
    p.add_argument("--weights", choices=["best", "last"],
                   help="a run's best epoch (by validation DSC) or its last (no selection on the validation set)")
    p.add_argument("--prompt-rules", choices=PROMPT_RULES,
                   help="prompted modes: paper (the training rules, as the paper evaluates: noisy boxes, points deeper "
                        "than the median edge distance; default for --checkpoint), code (the authors' released "
                        "code), tight (tight box or deepest point, as MedSAM evaluates). Default for a run: its "
                        "training rules")
    p.add_argument("--prompt-seed", type=int, default=0, help="prompts are drawn per image from this seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, help="slices per forward of a RUN (default 8)")
    p.set_defaults(func=run_evaluate)


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment new scans; masks keep each scan's geometry")
    p.add_argument("run", help="run folder")
    p.add_argument("inputs", nargs="+", help="NIfTI/MHA/NRRD files, DICOM series folders, PNG/JPG/BMP/TIFF images")
    p.add_argument("--out", required=True, help="folder for the masks")
    p.add_argument("--prompts", help="JSON prompts file (point/box runs)")
    p.add_argument("--save-probabilities", action="store_true", help="also write NAME.probabilities.npz")
    p.add_argument("--overlay", action="store_true", help="also write NAME.overlay.png")
    p.add_argument("--overwrite", action="store_true", help="replace masks that already exist")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, help="slices per forward, automated runs (default 8)")
    p.add_argument("--series", action="append", default=[], metavar="UID",
                   help="a DICOM folder holding several series: read the one with this series instance UID "
                        "(repeat for several folders)")
    p.set_defaults(func=run_predict)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a run's model as a checkpoint in the official SAM layout (LoRA merged)",
                       description="Write the run's fine-tuned model in segment-anything's key layout, LoRA merged "
                                   "into the weights, so segment-anything's builders (and MobileSAM's, LiteMedSAM's) "
                                   "load it strictly. Adapter runs cannot be exported: adapters add layers.")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="file to write (.pth or .safetensors)")
    p.add_argument("--weights", default="best", choices=["best", "last"])
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run_export)


def run_evaluate(args: argparse.Namespace) -> int:
    from tunesam.eval.evaluate import evaluate_checkpoint, evaluate_run, format_metrics

    if args.run and args.checkpoint:
        raise ValueError("give a RUN folder or --checkpoint, not both")
    if args.checkpoint:
        C.refuse(args, "to --checkpoint (un-fine-tuned weights have no run epochs; prompts go one image at a time)",
                 "weights", "batch_size")
        if not (args.data and args.mode):
            raise ValueError("--checkpoint needs --data and --mode box|point (and --arch unless it can be read "
                             "from the file)")
        cache = None
        if args.cache_embeddings or args.embedding_cache:
            from tunesam.data.store import default_cache_folder

            cache = args.embedding_cache or default_cache_folder(args.data)
        metrics = evaluate_checkpoint(args.checkpoint, args.arch, args.data, args.mode, args.split,
                                      args.image_size, args.pixel_norm, args.device, args.out, cache,
                                      args.prompt_rules or "paper", args.prompt_seed)
    elif args.run:
        C.refuse(args, "to a RUN: its architecture, input size, normalisation and cache come from the run",
                 "arch", "image_size", "pixel_norm", "cache_embeddings", "embedding_cache")
        metrics = evaluate_run(args.run, args.data, args.split, args.mode, args.device, args.batch_size or 8,
                               args.weights or "best", args.prompt_rules, args.prompt_seed, out=args.out)
    else:
        raise ValueError("give a RUN folder, or --checkpoint FILE|litemedsam --data DIR --mode box|point")
    print(format_metrics(metrics))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from tunesam.inference.predictor import predict

    written = predict(args.run, args.inputs, args.out, args.prompts, args.save_probabilities, args.overlay,
                      args.overwrite, args.device, args.batch_size, args.series)
    for path in written:
        print(path)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from tunesam.export import export_run

    notes = export_run(args.run, args.out, args.weights, args.overwrite)
    print(f"wrote {args.out} in the official segment-anything layout (LoRA, if any, merged into the weights)")
    for note in notes:
        print(f"  {note}")
    return 0
