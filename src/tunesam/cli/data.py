"""``tunesam prepare``."""
from __future__ import annotations

import argparse

from tunesam.cli.common import default
from tunesam.data.prepare import PrepareOptions


def add(sub: argparse._SubParsersAction) -> None:
    d = lambda name: default(PrepareOptions, name)  # noqa: E731
    p = sub.add_parser(
        "prepare", help="turn a dataset into training-ready 2D slices",
        description="Read a dataset (nnU-Net/MSD folder, CSV list(s), image/mask folders) and write "
                    "2D slices, a manifest and a patient-level split to --out. With --unlabelled, image-only data "
                    "(a folder of volumes, 2D images or DICOM series folders, an nnU-Net imagesTr without labelsTr, "
                    "a one-column CSV list) becomes a dataset for pretrain mae alone.",
    )
    p.add_argument("source", nargs="?", help="dataset folder, CSV list, or folder of train/val/test lists")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--example", choices=["mni152"], help="prepare the embedded real example instead")
    p.add_argument("--layout", choices=["auto", "nnunet", "msd", "csv", "folders", "images"],
                   help="default: detected; images (with --unlabelled): any folder of images, searched recursively")
    p.add_argument("--root", help="folder that CSV paths are relative to (default: the lists' parent folder)")
    p.add_argument("--axis", type=int, choices=[0, 1, 2],
                   help=f"slicing axis of the z-y-x array (default {d('axis')}: axial for standard volumes)")
    p.add_argument("--size", type=int, help=f"largest side stored (bigger slices are downsampled; default {d('size')})")
    p.add_argument("--split", help=f"train:val:test ratio by patient (default {d('split')})")
    p.add_argument("--seed", type=int, help=f"seed of the split (default {d('seed')})")
    p.add_argument("--keep-empty", action="store_true",
                   help="train on train/val slices with empty masks too (their non-blank ones are stored "
                        "either way, for pretrain mae)")
    p.add_argument("--labels", choices=["all", "merge"],
                   help="all (default): one class per non-zero value; merge: every non-zero value is class 1")
    p.add_argument("--label-map", help="JSON (or a JSON file) mapping raw mask values to classes")
    p.add_argument("--channel", type=int, help=f"image channel of multi-channel cases (default {d('channel')})")
    p.add_argument("--case-pattern", help="regex finding the patient id in CSV/folder paths")
    p.add_argument("--modality", choices=["mr", "ct", "other"], help="intensity rule (default from the dataset)")
    p.add_argument("--window", help="CT window 'level,width' (default 40,400 for CT)")
    p.add_argument("--unlabelled", action="store_true",
                   help="image-only data (masks, where the layout has them, are not read): every non-blank slice "
                        "is kept; only pretrain mae takes the result")
    p.add_argument("--series", action="append", metavar="UID",
                   help="DICOM folders holding several series: read the one with this series instance UID (repeat "
                        "it, one per folder; a folder with one series needs none)")
    p.add_argument("--force", action="store_true", help="replace an existing prepared folder")
    p.add_argument("-v", "--verbose", action="store_true", help="log each case")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from tunesam.cli.common import config_from_args
    from tunesam.data.prepare import parse_label_map, parse_window, prepare

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    opts = config_from_args(PrepareOptions, args,
                            label_map=parse_label_map(args.label_map) if args.label_map else None,
                            window=parse_window(args.window) if args.window else None,
                            series=tuple(args.series or ()))
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
