"""``tunesam export``: a run's model as a checkpoint others open, by its kind.

SAM runs are written in the official key layout (:mod:`tunesam.peft.export`); other kinds
say what they keep instead.
"""
from __future__ import annotations

from pathlib import Path

from tunesam.io import refuse_dangling_link
from tunesam.kinds import kind_of, open_run


def export_run(run_folder: str | Path, out: str | Path, weights: str = "best", overwrite: bool = False) -> list[str]:
    """``tunesam export``: a run's fine-tuned model in the official layout (LoRA merged), at the
    architecture's native input size. Adapter runs are refused: their layers have no place in
    plain SAM weights (their run folder is what to keep). Returns notes on what was adapted."""
    out = Path(out)
    run = open_run(run_folder)
    refuse_dangling_link(out)
    target = out.resolve()
    if target.is_relative_to(run.folder.resolve()):
        raise ValueError(f"{out}: inside the run folder {run.folder}, whose own files it could replace (its trained "
                         "weights among them); write the export somewhere else")
    base = (run.config.checkpoint and Path(run.config.checkpoint).resolve())
    if base and target == base:
        raise ValueError(f"{out}: the base checkpoint {run.folder} was trained on, which the run needs; write the "
                         "export somewhere else")
    if out.exists() and not overwrite:
        raise ValueError(f"{out}: exists; choose another --out or pass --overwrite")
    # through a link, the file it points to is replaced (the link stays), as prepare --force does
    return kind_of(run.config.arch).export(run, target if out.is_symlink() else out, weights)
