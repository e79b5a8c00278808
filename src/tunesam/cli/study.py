"""``tunesam study [run] CONFIG.yaml --out DIR`` and ``tunesam study report DIR``."""
from __future__ import annotations

import argparse

VERBS = ("run", "report")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="a grid of runs and baselines on the same splits; its tables and figures",
                       description="tunesam study CONFIG.yaml --out DIR [--dry-run] [--engine local|ray] (short for "
                                   "'study run') trains and scores every cell of the grid (resumable: finished cells "
                                   "are kept); tunesam study report DIR writes DIR/report/ (results.csv, tables.md, "
                                   "recommendation.md, recommendation.json, figures/) from the cells' metrics. See "
                                   "docs/studies.md for the config reference.")
    verbs = p.add_subparsers(dest="study_command", required=True, metavar="{run,report}")
    r = verbs.add_parser("run", help="train and score the grid's cells (the default: 'study CONFIG.yaml')",
                         description="Train and score every cell of the grid in CONFIG.yaml into DIR/cells/ "
                                     "(resumable: finished cells are kept, interrupted ones continue).")
    r.add_argument("config", metavar="CONFIG.yaml", help="the study's configuration")
    r.add_argument("--out", required=True, help="study folder")
    r.add_argument("--dry-run", action="store_true", help="print the cells, estimated time (a short measured step) "
                                                          "and disk; train nothing")
    r.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (default): one cell at a time, one per GPU where there are several; ray: cells as Ray "
                        "tasks")
    r.set_defaults(func=run_study)
    rep = verbs.add_parser("report", help="the tables, figures and recommendation of a study folder",
                           description="Write DIR/report/ (results.csv, tables.md, recommendation.md, "
                                       "recommendation.json, figures/) from the cells' metrics, and print the tables "
                                       "and the recommendation.")
    rep.add_argument("folder", metavar="DIR", help="the study folder (tunesam study ... --out DIR)")
    rep.add_argument("--device", default="cpu", help="where the overlay figure's predictions run")
    rep.set_defaults(func=run_report)


def shorthand(argv: list[str]) -> list[str]:
    """``study CONFIG.yaml ...`` is ``study run CONFIG.yaml ...``."""
    if len(argv) >= 2 and argv[0] == "study" and argv[1] not in (*VERBS, "-h", "--help"):
        return [argv[0], "run", *argv[1:]]
    return argv


def run_study(args: argparse.Namespace) -> int:
    import logging

    from tunesam.study.runner import run_study as run

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run(args.config, args.out, dry_run=args.dry_run, engine=args.engine)
    if not args.dry_run:
        print(f"study done; tables and figures: tunesam study report {args.out}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    import logging

    from tunesam.study.report import write_report

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    report = write_report(args.folder, device=args.device)
    print(f"report written to {report}")
    for name in ("tables.md", "recommendation.md"):
        print(f"\n{(report / name).read_text()}")
    return 0
