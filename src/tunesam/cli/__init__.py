"""The ``tunesam`` command: one thin subcommand per verb, each one library call.

Each module here adds its verbs' parsers (``add``) and their handlers; the flags fill the
configuration dataclasses field by field (:func:`tunesam.cli.common.config_from_args`), so
the defaults live in the dataclasses alone.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tunesam.cli import auto, bench, data, evaluate, info, pretrain, study, train
from tunesam.device import cpu_bf16

VERBS = (info.add_info, data.add, train.add_train, train.add_baseline, study.add, evaluate.add_evaluate,
         evaluate.add_predict, evaluate.add_export, pretrain.add, auto.add, bench.add, info.add_demo)  # `tunesam --help`'s order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesam",
        description="Fine-tune the Segment Anything family for medical image segmentation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(study.shorthand(list(sys.argv[1:] if argv is None else argv)))
    try:
        cpu_bf16()  # a bad TUNESAM_CPU_BF16 is named before anything is written
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
