"""The study's answer: the paper's Table 4 rows, filled from the user's own cells.

Each row ranks **SAM fine-tuning strategies** (backbone x weights x tune x method) of one
condition; baselines are not candidates, and each row says separately how its best SAM
strategy does against the best baseline (the paper's other question). Rows:

* ``Single dataset``: what a user with one dataset can run, any public start (the original
  SAM family, public medical SAMs, random weights), automated with all the data, K-shot, and
  with box and with point prompts (ranked apart);
* ``Multiple datasets``: the best start from the user's own pre-training on extra data
  (``tunesam pretrain``: SSLSAM, SupSAM) against the best single-dataset start.

Strategies are ranked on **common ground only**: the datasets and seeds every ranked
strategy finished and the test images all of them scored. A row whose strategies have cells
still to run is ``provisional`` and names them. Scores and comparisons are per case (see
:mod:`tunesam.study.stats`).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tunesam.kinds import kind_of
from tunesam.study.config import WEIGHT_CLASSES, Cell
from tunesam.study.stats import ImageKey, blocked_mean, case_scores, compare, image_dsc, verdict

SINGLE_DATASET_STARTS = ("original", "medical", "random", "other")
Metrics = Mapping[tuple[str, str], Mapping[str, Any]]  # (dataset, cell key) -> metrics.json


@dataclass
class Candidate:
    """One strategy of a row: its planned cells, the finished ones and their image scores."""

    name: str
    label: str
    weights_class: str
    planned: list[Cell] = field(default_factory=list)
    images: dict[ImageKey, float] = field(default_factory=dict)
    units: set[tuple[str, int]] = field(default_factory=set)  # finished (dataset, seed)

    def missing(self, metrics: Metrics) -> list[str]:
        return [f"{c.dataset}/{c.key}" for c in self.planned if (c.dataset, c.key) not in metrics]


def strategy_label(cell: Cell) -> str:
    """The paper's way of naming a strategy, e.g. ``litemedsam + En/Decoder + LoRA``."""
    if cell.baseline:
        return kind_of(cell.arch).label(str(cell.arch))
    start = cell.weights_name if cell.checkpoint else f"{cell.arch} (random)"
    tune = {"decoder": "Decoder", "encoder-decoder": "En/Decoder"}[cell.tune]
    method = {"vanilla": "Vanilla", "adapter": "Adapter", "lora": "LoRA"}[cell.method]
    return f"{start} + {tune} + {method}"


@functools.lru_cache(maxsize=None)
def _patients(data: str) -> dict[str, str]:
    """Case id -> patient, from a prepared dataset's manifest ({} where it cannot be read)."""
    from tunesam.data.readers import DataError
    from tunesam.data.store import PreparedData

    try:
        cases = PreparedData.open(data).manifest.get("cases", [])
    except (OSError, ValueError, DataError):
        return {}
    return {str(c["id"]): str(c.get("patient", c["id"])) for c in cases}


def _candidates(cells: list[Cell], metrics: Metrics, keep: Callable[[Cell], bool]) -> dict[str, Candidate]:
    out: dict[str, Candidate] = {}
    for c in cells:
        if not keep(c):
            continue
        cand = out.setdefault(c.strategy, Candidate(c.strategy, strategy_label(c), c.weights_class))
        cand.planned.append(c)
        m = metrics.get((c.dataset, c.key))
        if m is not None:
            cand.images.update(image_dsc(m, c.dataset, c.seed, _patients(c.data)))
            cand.units.add((c.dataset, c.seed))
    return out


@dataclass
class Ranking:
    ranked: list[tuple[Candidate, float]]  # best first, scored on ``common``
    common: set[ImageKey]
    left_out: list[Candidate]  # finished cells, but none on the others' common ground

    @property
    def units(self) -> list[str]:
        """The (dataset, seed) units ranked on, as ``dataset/seed``."""
        return sorted({f"{k[0]}/s{k[1]}" for k in self.common})

    def top(self, keep: Callable[[Candidate], bool] = lambda c: True) -> tuple[Candidate, float] | None:
        return next(((c, s) for c, s in self.ranked if keep(c)), None)


def rank(cands: list[Candidate]) -> Ranking:
    """Rank on the (dataset, seed) units every candidate finished and the images all scored.

    Where no unit is shared by all, the candidate with the fewest finished units is left out
    (named) until one is: a strategy is never ranked on other data than its rivals.
    """
    pool = sorted([c for c in cands if c.units], key=lambda c: c.name)
    left_out: list[Candidate] = []
    while pool:
        units = set.intersection(*(c.units for c in pool))
        if units:
            break
        weakest = min(pool, key=lambda c: (len(c.units), c.name))
        pool.remove(weakest)
        left_out.append(weakest)
    if not pool:
        return Ranking([], set(), left_out)
    common = set.intersection(*({k for k in c.images if (k[0], k[1]) in units} for c in pool))
    scored = [(c, blocked_mean(case_scores(c.images, common))) for c in pool]
    ranked = sorted([(c, s) for c, s in scored if s is not None], key=lambda t: (-t[1], t[0].name))
    return Ranking(ranked, common, left_out)


def _comparison(a: Candidate, b: Candidate, common: set[ImageKey]) -> tuple[dict[str, Any], str, str]:
    cmp = compare({k: a.images[k] for k in common}, {k: b.images[k] for k in common})
    word, text = verdict(cmp)
    return cmp, word, text


def _condition(mode: str, shots: int | None) -> str:
    few = f"few-shot ({shots}-shot)" if shots is not None else ""
    if mode == "auto":
        return few.capitalize() if few else "-"
    return f"Prompt-based ({mode})" + (f", {few}" if few else "")


def scenario_name(mode: str, shots: int | None) -> str:
    """``automated, full data``, ``box prompts, 5-shot``, ...: a condition in the tables' words."""
    return ("automated" if mode == "auto" else f"{mode} prompts") + (", full data" if shots is None else f", {shots}-shot")


def _conditions(cells: list[Cell]) -> list[tuple[str, int | None]]:
    """(mode, shots) of the SAM cells, the paper's order: automated full data (always), K-shot,
    box, point."""
    found = {(c.mode, c.shots) for c in cells if not c.baseline} | {("auto", None)}
    order = {"auto": 0, "box": 1, "point": 2}
    return sorted(found, key=lambda t: (order[t[0]], -1 if t[1] is None else t[1]))


def _row_base(setting: str, mode: str, shots: int | None) -> dict[str, Any]:
    return {"setting": setting, "condition": _condition(mode, shots), "scenario": scenario_name(mode, shots),
            "mode": mode, "shots": shots, "best": None, "runner_up": None, "comparison": None,
            "verdict": "inconclusive", "verdict_text": "", "provisional": False, "missing": [], "baseline": None}


def _describe(c: Candidate, score: float) -> dict[str, Any]:
    return {"strategy": c.name, "label": c.label, "weights_class": c.weights_class, "dsc": score}


def _fill(row: dict[str, Any], cands: list[Candidate], metrics: Metrics, best_of: Callable[[Candidate], bool],
          rival_of: Callable[[Candidate], bool], empty_note: str) -> Candidate | None:
    """Rank ``cands``; the best of ``best_of`` against the best other of ``rival_of``."""
    if not any(best_of(c) for c in cands):
        row["verdict_text"] = empty_note
        return None
    row["missing"] = sorted(m for c in cands for m in c.missing(metrics))
    row["provisional"] = bool(row["missing"])
    ranking = rank(cands)
    row["ranking"] = [_describe(c, s) for c, s in ranking.ranked]
    row["common_units"] = ranking.units
    if ranking.left_out:
        row["left_out"] = [c.name for c in ranking.left_out]
    top = ranking.top(best_of)
    if top is None:
        row["verdict_text"] = "no finished cells to rank yet"
        return None
    best, score = top
    row.update(best=best.name, best_label=best.label, best_weights_class=best.weights_class, best_dsc=score)
    rival = ranking.top(lambda c: c is not best and rival_of(c))
    if rival is None:
        row["verdict_text"] = "the only strategy of this row with finished cells: nothing to compare it with"
        return best
    row.update(runner_up=rival[0].name, runner_up_label=rival[0].label,
               runner_up_weights_class=rival[0].weights_class, runner_up_dsc=rival[1])
    row["comparison"], row["verdict"], row["verdict_text"] = _comparison(best, rival[0], ranking.common)
    return best


def _baseline_line(best: Candidate | None, baselines: list[Candidate], metrics: Metrics, prompted: bool
                   ) -> dict[str, Any] | None:
    if not baselines:
        return None
    missing = sorted(m for c in baselines for m in c.missing(metrics))
    line: dict[str, Any] = {"best_sam": best.name if best else None, "best_baseline": None, "comparison": None,
                            "verdict": "inconclusive", "verdict_text": "", "missing": missing,
                            "provisional": bool(missing)}
    if prompted:
        line["note"] = "the baselines segment without prompts"
    top = rank(baselines).top()
    if top is None or best is None:
        line["verdict_text"] = "no finished baseline or SAM cell to compare"
        return line
    line.update(best_baseline=top[0].name, best_baseline_label=top[0].label)
    line["augmentation"] = {"sam": sorted({c.augmentation for c in best.planned}),
                            "baseline": sorted({c.augmentation for c in top[0].planned})}
    pair = rank([best, top[0]])
    if len(pair.ranked) < 2:
        line["verdict_text"] = "the best SAM strategy and the best baseline share no finished dataset and seed"
        return line
    line["comparison"], line["verdict"], line["verdict_text"] = _comparison(best, top[0], pair.common)
    line["common_units"] = pair.units
    return line


def recommend(cells: list[Cell], metrics: Metrics) -> list[dict[str, Any]]:
    """The rows of ``recommendation.json`` for the planned ``cells`` and the finished cells'
    ``metrics`` (by (dataset, key))."""
    rows = []
    winners: dict[str, dict[str, Any]] = {}
    for mode, shots in _conditions(cells):
        here = _candidates(cells, metrics, lambda c: not c.baseline and c.mode == mode and c.shots == shots)
        baselines = list(_candidates(cells, metrics, lambda c: c.baseline and c.shots == shots).values())
        single = [c for c in here.values() if c.weights_class in SINGLE_DATASET_STARTS]
        own = [c for c in here.values() if c.weights_class == "pretrain"]

        row = _row_base("Single dataset", mode, shots)
        best = _fill(row, single, metrics, lambda c: True, lambda c: True, "no SAM cells of this kind in the study")
        if best is not None:
            row["weights_text"] = f"the winner starts from {WEIGHT_CLASSES[best.weights_class]}"
        row["baseline"] = _baseline_line(best, baselines, metrics, mode != "auto")
        rows.append(row)
        if mode != "auto" and shots is None and best is not None:
            winners[mode] = row

        if own or (mode, shots) == ("auto", None):
            multi = _row_base("Multiple datasets", mode, shots)
            best_own = _fill(multi, own + single, metrics, lambda c: c.weights_class == "pretrain",
                             lambda c: c.weights_class != "pretrain",
                             "no cells start from your own pre-training: run 'tunesam pretrain mae|prompt' on your "
                             "extra data and list its RUN/checkpoint.pth under checkpoint: in the study config")
            if best_own is not None and multi["runner_up"]:
                multi["question"] = "is pre-training on my extra data worth it? (best own pre-trained start against " \
                                    "the best single-dataset start)"
            multi["baseline"] = _baseline_line(best_own, baselines, metrics, mode != "auto") if best_own else None
            rows.append(multi)
    if {"box", "point"} <= set(winners):
        fam = {m: winners[m]["best_label"] for m in ("box", "point")}
        if fam["box"] == fam["point"]:
            for m in ("box", "point"):
                winners[m]["wins_both_prompts"] = True
    return rows


def missing_cells(cells: list[Cell], metrics: Metrics) -> list[str]:
    return [f"{c.dataset}/{c.key}" for c in cells if (c.dataset, c.key) not in metrics]
