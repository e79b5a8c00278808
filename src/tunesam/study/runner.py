"""``tunesam study``: train and score every cell of a study grid, resumably.

Each cell is an ordinary run folder ``OUT/cells/DATASET/KEY`` (``evaluate`` and ``predict``
take it) with its settings in ``OUT/cells/DATASET/KEY.json``. A cell is done when its
``metrics.json`` exists; a cell that was interrupted resumes from its last finished epoch
(``last.pt``); one that died before finishing an epoch starts again. ``OUT/plan.json`` lists
the current grid's cells (what the report reads): a changed config adds cells and drops
others from the plan without touching finished ones. A cell whose settings changed under
the same name is refused, never silently retrained.

Cells that share a frozen encoder on a dataset share one embedding cache
(``OUT/embeddings/DATASET``); the first of them fills it before the others start.
Engines: ``local`` runs one cell at a time (one per GPU where a machine has several);
``ray`` hands each cell to Ray as a task asking for one GPU when cells run on CUDA
(``ray_address`` in the config, or ``RAY_ADDRESS``, joins an existing cluster; the output
folder must then be on storage every node sees).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesam.device import PeakMemory
from tunesam.io import owned, write_json
from tunesam.kinds import kind_of
from tunesam.study.config import Cell, StudyConfig, StudyError, load_study

TIGHT_METRICS = "metrics_tight.json"  # prompted cells: also scored with tight prompts (MedSAM's evaluation)


# -- cell status -----------------------------------------------------------------------------
def cell_status(cell: Cell, out: Path) -> str:
    """``done``, ``changed`` (other settings under the same name), ``partial`` (resumable),
    ``stale`` (started, no finished epoch) or ``new``."""
    record, folder = _record_path(cell, out), cell.folder(out)
    if record.is_file():
        if json.loads(record.read_text()) != _comparable(cell.to_dict()):
            return "changed"
    elif folder.exists():
        return "changed"  # a folder the study did not make
    if (folder / "metrics.json").is_file():
        return "done"
    if kind_of(cell.arch).resumable(folder):
        return "partial"
    return "stale" if folder.exists() else "new"


def _record_path(cell: Cell, out: Path) -> Path:
    return out / "cells" / cell.dataset / f"{cell.key}.json"


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    """A cell's settings as they read back from JSON."""
    return json.loads(json.dumps(d))


# -- one cell ------------------------------------------------------------------------------


def _train_cell(cell: Cell, out: Path, resume: bool) -> None:
    from tunesam.kinds import train

    train(cell.train_config(out), resume=resume, progress=False)


def run_cell(cell_dict: dict[str, Any], out: str) -> dict[str, Any]:
    """Train (or resume) and evaluate one cell; returns its efficiency record. A plain
    function of plain values, so that any engine can run it in any process."""
    from tunesam.device import pick_device
    from tunesam.eval.evaluate import evaluate_run

    cell, root = Cell.from_dict(cell_dict), Path(out)
    folder = cell.folder(root)
    status = cell_status(cell, root)
    if status == "changed":
        raise StudyError(f"{folder}: holds a run with other settings; remove it or use another --out")
    if status == "done":
        return json.loads((folder / "efficiency.json").read_text()) if (folder / "efficiency.json").is_file() else {}
    if status == "stale":
        shutil.rmtree(folder)  # started but never finished an epoch: nothing to keep
    write_json(_record_path(cell, root), _comparable(cell.to_dict()))
    device = str(cell.options.get("device", "auto"))
    cuda = pick_device(device).type == "cuda"
    t0 = time.perf_counter()
    with PeakMemory(cuda) as peak:
        if not (folder / "summary.json").is_file():  # summary.json: training finished
            _train_cell(cell, root, resume=status == "partial")
        if cell.mode != "auto" and cell.options.get("prompt_rules", "paper") != "tight":
            evaluate_run(folder, device=device, prompt_rules="tight", save_as=TIGHT_METRICS)
        evaluate_run(folder, device=device)  # metrics.json last: it marks the cell done
    summary = json.loads((folder / "summary.json").read_text())
    record = {**summary, "peak_memory_bytes": peak.peak, "peak_memory_kind": peak.kind,
              "cell_seconds": round(time.perf_counter() - t0, 2)}
    write_json(folder / "efficiency.json", record)
    return record


# -- the study ---------------------------------------------------------------------------------
def plan_study(cfg: StudyConfig, out: Path) -> tuple[list[Cell], list[str]]:
    from tunesam.data.store import PreparedData

    for name, folder in cfg.datasets.items():  # an image-only dataset trains nothing: say so before any cell runs
        PreparedData.open(folder).require_labels(f"the study's dataset {name!r}")
    cells, notes = cfg.cells()
    if not cells:
        raise StudyError("the grid gives no cells: " + ("; ".join(notes) if notes else "no datasets")
                         + ". Change the grid (see docs/studies.md)")
    changed = [c for c in cells if cell_status(c, out) == "changed"]
    if changed:
        raise StudyError("these cells already exist with other settings (a changed epoch cap or option under the "
                         "same name): " + ", ".join(f"{c.dataset}/{c.key}" for c in changed[:6])
                         + f". Remove their folders under {out / 'cells'} to retrain them, or use another --out")
    return cells, notes


def _cache_groups(cells: list[Cell]) -> dict[str, tuple[Any, ...]]:
    """Cell key -> the embedding cache it shares (cells of one group wait for the first)."""
    groups = {}
    for c in cells:
        if not c.baseline and c.options.get("cache_embeddings"):
            # views are part of the same caches (view v of a slice does not depend on the cell)
            groups[f"{c.dataset}/{c.key}"] = (c.dataset, c.arch, c.checkpoint, c.checkpoint_file,
                                              c.options.get("image_size"), c.options.get("interpolation"))
    return groups


def run_study(config: str | Path, out: str | Path, dry_run: bool = False, engine: str = "local",
              say: Callable[[str], None] = print) -> list[Cell]:
    """Run (or, ``dry_run``, describe) the study ``config`` in ``out``; returns its cells."""
    if engine not in ("local", "ray"):
        raise ValueError(f"--engine must be local or ray, got {engine!r}")
    cfg = load_study(config)
    out = Path(out)
    cells, notes = plan_study(cfg, out)
    for n in notes:
        say(n)
    status = {f"{c.dataset}/{c.key}": cell_status(c, out) for c in cells}
    if dry_run:
        from tunesam.study.estimate import describe_plan

        say(describe_plan(cells, status, out))
        return cells
    with owned(out, "study"):
        return _run_study(config, cfg, out, cells, status, notes, engine, say)


def _run_study(config: str | Path, cfg: StudyConfig, out: Path, cells: list[Cell], status: dict[str, str],
               notes: list[str], engine: str, say: Callable[[str], None]) -> list[Cell]:
    if (out.is_dir() and not (out / "plan.json").is_file()
            and any(p.resolve() != Path(config).resolve() for p in out.iterdir())):  # the config alone is fine
        raise StudyError(f"{out}: exists and is not a study folder (no plan.json); choose another --out, or an "
                         "empty or absent folder")
    out.mkdir(parents=True, exist_ok=True)
    if Path(config).resolve() != (out / "study.yaml").resolve():
        shutil.copyfile(config, out / "study.yaml")  # the config this plan came from
    write_json(out / "plan.json", {"cells": [c.to_dict() for c in cells], "notes": notes})
    todo = [c for c in cells if status[f"{c.dataset}/{c.key}"] != "done"]
    say(f"{len(cells)} cells: {len(cells) - len(todo)} done, {len(todo)} to run ({engine})")
    failures = (_run_ray(todo, out, cfg.ray_address, say) if engine == "ray" else _run_local(todo, out, say))
    if failures:
        raise RuntimeError(f"{len(failures)} cells failed: " + "; ".join(f"{k}: {e}" for k, e in failures[:5])
                           + ". Run the study again to retry them (finished cells are kept)")
    return cells


def _say_done(say: Callable[[str], None], i: int, n: int, cell: Cell, out: Path, record: dict[str, Any]) -> None:
    metrics = json.loads((cell.folder(out) / "metrics.json").read_text())
    say(f"[{i}/{n}] {cell.dataset}/{cell.key}: test DSC {metrics['mean']['dsc']:.2f}, NSD {metrics['mean']['nsd']:.2f}"
        f" ({record.get('cell_seconds', 0):.0f} s)")


def _gpu_count(cells: list[Cell]) -> int:
    import torch

    wants = {str(c.options.get("device", "auto")) for c in cells}
    if not torch.cuda.is_available() or not wants <= {"auto", "cuda"}:
        return 0
    return torch.cuda.device_count()


def _run_local(cells: list[Cell], out: Path, say: Callable[[str], None]) -> list[tuple[str, str]]:
    gpus = _gpu_count(cells)
    if gpus > 1:
        return _run_local_gpus(cells, out, say, gpus)
    failures = []
    for i, cell in enumerate(cells, 1):
        say(f"[{i}/{len(cells)}] {cell.dataset}/{cell.key} ...")
        try:
            record = run_cell(cell.to_dict(), str(out))
        except (ValueError, RuntimeError, FileNotFoundError) as exc:  # a cell's error; the others go on
            failures.append((f"{cell.dataset}/{cell.key}", str(exc)))
            say(f"[{i}/{len(cells)}] {cell.dataset}/{cell.key}: failed: {exc}")
            continue
        _say_done(say, i, len(cells), cell, out, record)
    return failures


def _pin_gpu(queue: Any) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())


def _run_local_gpus(cells: list[Cell], out: Path, say: Callable[[str], None], gpus: int) -> list[tuple[str, str]]:
    """One cell per GPU at a time: a process per GPU, pinned before CUDA starts."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    for g in range(gpus):
        queue.put(g)
    return _dispatch(cells, out, say, gpus, lambda: ProcessPoolExecutor(gpus, ctx, _pin_gpu, (queue,)),
                     FIRST_COMPLETED, wait)


def _dispatch(cells, out, say, slots, make_pool, first, wait):  # type: ignore[no-untyped-def]
    """Submit cells as slots free up; a cell sharing an embedding cache waits for its group's first."""
    groups = _cache_groups(cells)
    filled: set[tuple[Any, ...]] = set()
    leaders: dict[tuple[Any, ...], str] = {}
    pending, failures, done_n = list(cells), [], 0
    with make_pool() as pool:
        running: dict[Any, Cell] = {}
        while pending or running:
            for cell in list(pending):
                if len(running) >= slots:
                    break
                me = f"{cell.dataset}/{cell.key}"
                g = groups.get(me)
                if g is not None and g not in filled and leaders.get(g, me) != me:
                    continue  # its cache is being filled by the group's first cell
                if g is not None:
                    leaders.setdefault(g, me)
                running[pool.submit(run_cell, cell.to_dict(), str(out))] = cell
                pending.remove(cell)
            finished, _ = wait(list(running), return_when=first)
            for fut in finished:
                cell = running.pop(fut)
                done_n += 1
                g = groups.get(f"{cell.dataset}/{cell.key}")
                if g is not None:
                    filled.add(g)
                try:
                    _say_done(say, done_n, len(cells), cell, out, fut.result())
                except Exception as exc:  # noqa: BLE001 - reported, the study goes on
                    failures.append((f"{cell.dataset}/{cell.key}", str(exc)))
                    say(f"[{done_n}/{len(cells)}] {cell.dataset}/{cell.key}: failed: {exc}")
    return failures


class _RayPool:
    """Ray tasks behind the two calls :func:`_dispatch` makes of a pool."""

    def __init__(self, num_gpus: float) -> None:
        import ray

        self.ray = ray
        self.task = ray.remote(num_gpus=num_gpus, num_cpus=1, max_retries=0)(run_cell)

    def __enter__(self) -> _RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Any, *args: Any) -> Any:
        return _RayFuture(self.task.remote(*args), self.ray)


class _RayFuture:
    def __init__(self, ref: Any, ray: Any) -> None:
        self.ref, self.ray = ref, ray

    def result(self) -> Any:
        return self.ray.get(self.ref)


def _ray_wait(futures: list[_RayFuture], return_when: Any = None) -> tuple[list[_RayFuture], list[_RayFuture]]:
    ray = futures[0].ray
    ready, _ = ray.wait([f.ref for f in futures], num_returns=1)
    done = [f for f in futures if f.ref in ready]
    return done, [f for f in futures if f not in done]


def _run_ray(cells: list[Cell], out: Path, address: str | None, say: Callable[[str], None]) -> list[tuple[str, str]]:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("--engine ray needs Ray: pip install 'tunesam[ray]' (or pip install 'ray>=2.9')") from exc
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
    gpus = ray.cluster_resources().get("GPU", 0)
    wants_cuda = any(str(c.options.get("device", "auto")) in ("auto", "cuda") for c in cells)
    per_task = 1 if gpus >= 1 and wants_cuda else 0
    slots = int(gpus) if per_task else max(1, int(ray.cluster_resources().get("CPU", 1)))
    say(f"Ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, {gpus:.0f} GPUs; "
        f"{'one GPU' if per_task else 'CPU only'} per cell, up to {slots} at a time")
    return _dispatch(cells, out, say, slots, lambda: _RayPool(per_task), None, _ray_wait)

