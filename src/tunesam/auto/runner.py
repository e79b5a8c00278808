"""``tunesam auto``: from prepared data to the best model within a budget.

The steps, in one output folder ``DIR``:

1. **fingerprint** the target dataset (the first) and any extra ones, and pick Table 4's
   **scenario** (:mod:`tunesam.auto.scenario`);
2. **plan**: the scenario's candidates (the paper's optimum first, its close rivals) on the
   weights given, each timed here by the study's dry-run measurement
   (:func:`tunesam.study.estimate.measure`), and the longest schedule a breadth-first
   halving of them fits in the budget (:mod:`tunesam.auto.plan`); ``DIR/plan.json``;
3. **search** by successive halving on validation DSC (:mod:`tunesam.auto.search`), each
   trial a run folder ``DIR/trials/KEY`` (``DIR/search.db`` holds Optuna's state);
4. the **baselines** asked for, each trained in an equal share of the budget
   (``DIR/baselines/NAME``);
5. the **winner** fixed, copied to ``DIR/winner`` (a run folder: evaluate, predict, export
   take it), scored on the test split **once** (nothing reads a test slice before), exported
   where its kind can be (``DIR/export/``);
6. ``DIR/report/``: ``auto.json`` (the contract), ``curves.png`` and ``report.md``.

The budget is wall clock from the start to the exported model, summed over sessions
(``DIR/clock.json``, written every few seconds): a resumed run counts only its own time. A
killed run resumes with ``--resume``: the plan is kept, finished trials are kept, trials
that were cut short continue from their last epoch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesam.auto.budget import parse_budget
from tunesam.auto.fingerprint import fingerprint
from tunesam.auto.plan import plan_length, strategies
from tunesam.auto.scenario import choose_scenario
from tunesam.auto.search import Candidate, SearchResult, search
from tunesam.auto.trials import make_trainer, validation_curve
from tunesam.engine.run_folder import read_log
from tunesam.io import write_json
from tunesam.study.estimate import format_time

# The recipe every candidate shares (the worked study's: docs/study_brain.yaml): AdamW at
# 5e-4 after 10 warm-up steps, no early stop (the halving stops trials). The baselines take
# the study's baseline recipe (1e-3, 25 warm-up steps).
RECIPE = {"lr": 5e-4, "warmup": 10, "patience": 0}
BASELINE_RECIPE = {"lr": 1e-3, "warmup": 25, "patience": 0}
ETA = 2
MAX_EPOCHS = 200
END_MARGIN_S = 20.0  # the end's fixed costs beyond the timed test pass: copying, the report, the export
# A real epoch costs more than its timed steps (data loading and augmentation share the CPU,
# last.pt is written): on a 2-core CPU LiteMedSAM encoder+decoder epochs took 1.07-1.20x the
# timed estimate (docs/results/2026-12-02-auto.md). The plan counts the upper end; once a
# trial has run a segment the search uses what its epochs really took.
EPOCH_OVERHEAD = 1.2
CLOCK_EVERY_S = 5.0
TUNE_KEYS = {"decoder": "dec", "encoder-decoder": "encdec"}
TUNE_LABELS = {"decoder": "Decoder", "encoder-decoder": "En/Decoder"}
METHOD_LABELS = {"vanilla": "Vanilla", "adapter": "Adapter", "lora": "LoRA"}


class AutoError(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    """What ``tunesam auto`` was asked: what a resumed run must ask again."""

    data: list[str]  # prepared datasets, the target first
    budget_s: float
    device: str = "auto"
    weights: list[str] = field(default_factory=lambda: ["litemedsam"])  # names, files, or random:ARCH
    mode: str = "auto"
    baselines: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # training options every candidate takes
    max_epochs: int = MAX_EPOCHS  # the longest schedule the plan may give

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


class Clock:
    """Seconds spent on one output folder, over sessions: the earlier sessions' total (from
    ``path``) plus this one's, written back every few seconds so a kill loses at most that."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.before = float(json.loads(path.read_text())["seconds"]) if path.is_file() else 0.0
        self.sessions = int(json.loads(path.read_text()).get("sessions", 0)) + 1 if path.is_file() else 1
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._forgotten = False

    def spent(self) -> float:
        return self.before + time.monotonic() - self.t0

    def save(self) -> None:
        write_json(self.path, {"seconds": round(self.spent(), 1), "sessions": self.sessions})

    def _beat(self) -> None:
        while not self._stop.wait(CLOCK_EVERY_S):
            self.save()

    def forget(self) -> None:
        """Stop and remove this clock (a run refused while it planned leaves no trace)."""
        self._stop.set()
        self._thread.join()
        self._forgotten = True
        self.path.unlink(missing_ok=True)
        if not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()

    def __enter__(self) -> Clock:
        self.save()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if not self._forgotten:
            self.save()


# -- candidates --------------------------------------------------------------------------------
def _weights(entry: str) -> tuple[str, str | None, str]:
    """(arch or "", checkpoint file or None, a short name) for a ``--weights`` entry: a known
    name (``litemedsam``), a SAM-format file, or ``random:ARCH``."""
    from tunesam.models.known import KNOWN, resolve_checkpoint

    if entry.startswith("random:"):
        from tunesam.kinds import kind_of

        arch = entry.split(":", 1)[1]
        try:
            kind = kind_of(arch)
        except ValueError as exc:
            raise AutoError(f"--weights {entry}: {exc}") from None
        if kind.baseline:
            raise AutoError(f"--weights {entry}: {arch} is a baseline; name it in --baselines")
        return arch, None, f"{arch}-random"
    if entry in KNOWN:
        return KNOWN[entry].arch, str(resolve_checkpoint(entry)), entry
    path = Path(entry)
    if not path.is_file():
        raise AutoError(f"--weights {entry}: no such file; give a SAM-format checkpoint, a known name "
                        f"({', '.join(KNOWN)}) or random:ARCH")
    return "", str(path), path.stem


def _cells(request: Request, scenario: str, data: str) -> list[Any]:
    """The study cells of the candidates, the paper's optimum for ``scenario`` first on each
    weights entry (in the order given)."""
    from tunesam.study.config import Cell

    cells = []
    for entry in request.weights:
        arch, ckpt, name = _weights(entry)
        for tune, method in strategies(scenario):
            opts = {**RECIPE, **request.options, "device": request.device,
                    "cache_embeddings": tune == "decoder"}  # a frozen encoder: each slice embedded once
            cells.append(Cell(name, data, "sam", arch or None, ckpt, ckpt, tune, method, request.mode, None, 0, opts))
    return cells


def _label(cell: Any) -> str:
    return f"{cell.dataset} + {TUNE_LABELS[cell.tune]} + {METHOD_LABELS[cell.method]}"


def _key(cell: Any) -> str:
    return f"{cell.dataset}_{TUNE_KEYS[cell.tune]}_{cell.method}"


def _epoch_s(m: dict[str, Any]) -> float:
    """A real epoch's seconds from the timed step and forward (see :data:`EPOCH_OVERHEAD`)."""
    return EPOCH_OVERHEAD * (math.ceil(m["n_train"] / m["batch"]) * m["step_s"] + m["n_val"] * m["fwd_s"])


def _measure_candidates(cells: list[Any], out: Path, say: Callable[[str], None],
                        check: Callable[[dict[str, Any]], None] = lambda row: None) -> list[dict[str, Any]]:
    """Each candidate timed here (the study's dry-run measurement): its epoch, its one-off
    cost (the first decoder candidate on a weights entry fills the embedding cache), its test
    pass. ``check`` sees the prior's row before the others are timed."""
    from tunesam.study.estimate import measure

    rows, cached = [], set()
    for i, cell in enumerate(cells):
        if i == 1:
            check(rows[0])
        m = measure(cell, out)
        setup = 0.0
        if cell.options.get("cache_embeddings") and cell.dataset not in cached:
            cached.add(cell.dataset)
            setup = m["enc_s"] * (m["n_train"] + m["n_val"])
        row = {"key": _key(cell), "label": _label(cell), "epoch_s": _epoch_s(m), "setup_s": setup,
               "test_s": m["n_test"] * (m["fwd_s"] + m["enc_s"]), "step_s": m["step_s"], "batch": m["batch"],
               "trainable_params": m["trainable"], "cell": cell.to_dict()}
        say(f"  {row['label']:<40} {row['epoch_s']:7.1f} s an epoch" + (f", {setup:.0f} s to fill the embedding "
                                                                          "cache" if setup else ""))
        rows.append(row)
    return rows


def _baseline_cells(request: Request, data: str) -> list[Any]:
    from tunesam.kinds import baseline_names, kind_of
    from tunesam.study.config import Cell

    known = baseline_names(test=True)
    cells = []
    for name in request.baselines:
        if name not in known:
            raise AutoError(f"--baselines {name}: not a baseline; one of {', '.join(baseline_names())}")
        if not kind_of(name).timed:
            raise AutoError(f"--baselines {name}: it plans its own network and batch, so auto cannot size it to a "
                            f"budget; train it with `tunesam baseline {name}` or in a study")
        opts = {**BASELINE_RECIPE, "device": request.device,
                **{k: v for k, v in request.options.items() if k in ("image_size", "batch_size", "num_workers")}}
        cells.append(Cell("baseline", data, "baseline", name, None, None, "encoder-decoder", "vanilla", "auto", None, 0,
                          opts))
    return cells


def _check(request: Request) -> None:
    """What can be refused at once: the datasets, the weights, the baselines, the mode."""
    from tunesam.data.store import PreparedData

    if request.mode not in ("auto", "box", "point"):
        raise AutoError(f"--mode must be auto, box or point, got {request.mode!r}")
    if request.max_epochs < 1:
        raise AutoError(f"--max-epochs must be at least 1, got {request.max_epochs}")
    if not request.data:
        raise AutoError("no dataset given")
    for i, folder in enumerate(request.data):
        data = PreparedData.open(folder)
        if i == 0:
            data.require_labels("tunesam auto's target dataset (the first)")
    names = [_weights(entry)[2] for entry in request.weights]
    if len(set(names)) < len(names):
        raise AutoError(f"--weights {' '.join(request.weights)}: two entries share a name "
                        f"({', '.join(sorted({n for n in names if names.count(n) > 1}))}); give each once, "
                        "files with different names")
    if len(set(request.baselines)) < len(request.baselines):
        raise AutoError(f"--baselines {','.join(request.baselines)}: a baseline named twice")
    _baseline_cells(request, request.data[0])
    from tunesam.device import pick_device

    pick_device(request.device)  # a bad --device is named now


# -- planning ----------------------------------------------------------------------------------
def make_plan(request: Request, out: Path, clock: Clock, say: Callable[[str], None]) -> dict[str, Any]:
    """Fingerprints, scenario, candidates timed here, the schedule, the budget's shares."""
    from tunesam.data.store import PreparedData

    target, *extra = request.data
    PreparedData.open(target).require_labels("tunesam auto's target dataset (the first)")
    fp = fingerprint(target)
    extra_fps = [fingerprint(e) for e in extra]
    scenario = choose_scenario(fp, extra_fps, request.mode)
    sc = scenario.to_dict()
    say(f"Scenario: {sc['setting']}" + (f", {sc['condition']}" if sc["condition"] != "-" else "")
        + f" (Table 4's optimum: {scenario.paper_optimum}): {scenario.reason}")
    if scenario.name == "multiple":
        say("  the pre-training route (SSLSAM, SupSAM on the extra data) is not searched yet: the candidates "
            "fine-tune the given weights on the target")
    say("Timing the candidates here (a warm-up step, then 3 timed steps each):")

    def prior_fits(row: dict[str, Any]) -> None:  # said as soon as the prior is timed
        need = clock.spent() + row["epoch_s"] + row["setup_s"] + row["test_s"] + END_MARGIN_S
        if need > request.budget_s:
            raise AutoError(f"the budget ({format_time(request.budget_s)}) cannot fit one short run of the paper's "
                            f"strategy ({row['label']}): one epoch of it takes about "
                            f"{format_time(row['epoch_s'] + row['setup_s'])} here, the test evaluation and the end "
                            f"about {format_time(row['test_s'] + END_MARGIN_S)}, after "
                            f"{format_time(clock.spent())} of fingerprinting and timing; give at least "
                            f"--budget {math.ceil((need + row['epoch_s']) / 60)}m")

    cands = _measure_candidates(_cells(request, scenario.name, target), out, say, prior_fits)
    bases = []
    for cell in _baseline_cells(request, target):
        from tunesam.study.estimate import measure

        m = measure(cell, out)
        bases.append({"name": cell.arch, "epoch_s": _epoch_s(m), "test_s": m["n_test"] * m["fwd_s"],
                      "cell": cell.to_dict()})
        say(f"  baseline {cell.arch:<31} {bases[-1]['epoch_s']:7.1f} s an epoch")
    reserve = max(c["test_s"] for c in cands) + sum(b["test_s"] for b in bases) + END_MARGIN_S
    left = request.budget_s - clock.spent()
    share = (left - reserve) / (1 + len(bases))  # the search and each baseline: equal parts
    epoch_s, setup_s = [c["epoch_s"] for c in cands], [c["setup_s"] for c in cands]
    lengths = {}
    for m in (2, 1):
        try:
            lengths[m] = plan_length(epoch_s, share + reserve, reserve, m, ETA, request.max_epochs, setup_s)
        except ValueError:
            continue
    # a first rung of 2 epochs (the first is mostly warm-up), unless it leaves candidates out
    min_epochs = 2 if 2 in lengths and (1 not in lengths or lengths[2].candidates >= lengths[1].candidates) else 1
    length = lengths.get(min_epochs)
    if length is None:
        need = clock.spent() + reserve + (1 + len(bases)) * (epoch_s[0] + setup_s[0])
        raise AutoError(f"the budget ({format_time(request.budget_s)}) cannot fit one short run of the paper's "
                        f"strategy ({cands[0]['label']}): fingerprinting and timing took {format_time(clock.spent())}, "
                        f"one epoch of it takes about {format_time(epoch_s[0] + setup_s[0])} here, and the test "
                        f"evaluation and the end about {format_time(reserve)}"
                        + (f", with {len(bases)} baseline(s) given an equal share each" if bases else "")
                        + f"; give at least --budget {math.ceil(need / 60)}m")
    for b in bases:
        b["epochs"] = max(0, min(request.max_epochs, math.floor(share / b["epoch_s"])))
        b["share_s"] = share
    searched = cands[:length.candidates]
    for c in cands[length.candidates:]:
        c["left_out"] = f"does not fit the budget beside the first {length.candidates}"
    plan = {"request": request.to_dict(), "fingerprint": fp, "extra_fingerprints": extra_fps,
            "scenario": scenario.to_dict(), "candidates": cands, "searched": [c["key"] for c in searched],
            "epochs": length.epochs, "min_epochs": min_epochs, "eta": ETA, "estimate_s": length.estimate_s,
            "reserve_s": reserve, "search_share_s": share, "baselines": bases, "planned_at_s": clock.spent()}
    say(f"Plan: {len(searched)} candidate(s), each with a {length.epochs}-epoch schedule, judged at epochs "
        f"{', '.join(map(str, _rungs(plan)))}; the search estimated at {format_time(length.estimate_s - reserve)} "
        f"of the {format_time(share)} it has" + (f"; {len(bases)} baseline(s), {format_time(share)} each" if bases
                                                 else ""))
    return plan


def _rungs(plan: dict[str, Any]) -> list[int]:
    from tunesam.auto.search import rung_epochs

    return rung_epochs(plan["min_epochs"], plan["eta"], plan["epochs"])


# -- the run -----------------------------------------------------------------------------------
def _open(request: Request, out: Path, resume: bool) -> dict[str, Any] | None:
    """The plan of an earlier session in ``out`` (None for a new one); refuses to mix runs."""
    plan_path = out / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        if not resume:
            raise AutoError(f"{out}: holds a tunesam auto run; pass --resume to continue it, or choose another --out")
        was, now = plan["request"], request.to_dict()
        diff = ", ".join(f"{k}: {was.get(k)!r} then, {now.get(k)!r} now" for k in now
                         if k != "budget_s" and was.get(k) != now.get(k))
        if diff:  # the budget may grow (or shrink) on a resume; what was planned may not change
            raise AutoError(f"{out}: was started with other settings ({diff}); resume it with the same ones "
                            "(only --budget may change)")
        return plan
    # a run killed while it planned left its clock (and perhaps the timing's scratch) only
    if out.exists() and any(p.name not in ("clock.json", "cells", "embeddings") for p in out.iterdir()):
        raise AutoError(f"{out}: exists and is not a tunesam auto run; choose another --out")
    return None


def run_auto(request: Request, out: str | Path, resume: bool = False, storage: str | None = None,
             say: Callable[[str], None] = print) -> Path:
    """Run (or resume) ``tunesam auto`` in ``out``; returns ``out/winner``, the winner's run."""
    out = Path(out)
    plan = _open(request, out, resume)
    if plan is None:
        _check(request)  # before anything is written or timed
    out.mkdir(parents=True, exist_ok=True)
    with Clock(out / "clock.json") as clock:
        if plan is None:
            try:
                plan = make_plan(request, out, clock, say)
            except AutoError:  # refused before anything trained: the folder is left as it was
                clock.forget()
                raise
            write_json(out / "plan.json", plan)
        else:
            say(f"Resuming {out} ({format_time(clock.before)} spent before, {format_time(request.budget_s)} budget)")
        result = _search(plan, out, clock, request.budget_s, storage, say)
        if result.winner is None:
            raise AutoError(f"{result.reason}: no winner; --resume with a larger --budget continues it")
        baselines = []
        for i, b in enumerate(plan["baselines"]):
            later = sum(x["share_s"] for x in plan["baselines"][i + 1:])  # kept for the baselines after it
            left = request.budget_s - clock.spent() - plan["reserve_s"] - later
            baselines.append(_train_baseline(b, out, left, say))
        # The winner is fixed: from here on, and only here, the test split is read.
        winner = _fix_winner(out, result, say)
        report = _finish(plan, out, result, winner, baselines, request, clock, say)
    report["seconds"] = round(clock.spent(), 1)
    write_json(out / "report" / "auto.json", report)
    say(f"Done in {format_time(report['seconds'])} of the {format_time(request.budget_s)} budget "
        f"({clock.sessions} session(s)). The winner's run: {winner}; the report: {out / 'report'}")
    return winner


def _search(plan: dict[str, Any], out: Path, clock: Clock, budget_s: float, storage: str | None,
            say: Callable[[str], None]) -> SearchResult:
    from tunesam.study.config import Cell

    by_key = {c["key"]: c for c in plan["candidates"]}
    cands, configs = [], {}
    for key in plan["searched"]:
        c = by_key[key]
        configs[key] = dataclasses.replace(Cell.from_dict(c["cell"]).train_config(out), out=str(out / "trials" / key),
                                           epochs=plan["epochs"])
        rows = read_log(out / "trials" / key)  # a resumed trial: what its epochs really took
        epoch_s = sum(float(r["seconds"]) for r in rows) / len(rows) if rows else c["epoch_s"]
        cands.append(Candidate(key, c["label"], epoch_s, setup_s=c["setup_s"]))
    trainer = make_trainer(lambda cand: configs[cand.key])

    def train_to(cand: Candidate, epochs: int) -> list[float]:
        before = len(validation_curve(out / "trials" / cand.key))
        curve = trainer(cand, epochs)
        if len(curve) > before:
            say(f"  {cand.label:<40} epochs {before + 1}-{len(curve)}: validation DSC {curve[-1]:.2f} "
                f"({format_time(clock.spent())} spent)")
        return curve

    reserve = plan["reserve_s"] + plan["search_share_s"] * len(plan["baselines"])
    say(f"Searching ({plan['epochs']}-epoch schedules, the best 1/{plan['eta']} go on at each rung):")
    result = search(cands, train_to, plan["epochs"], storage or out / "search.db", plan["min_epochs"], plan["eta"],
                    seconds_left=lambda: budget_s - clock.spent(), reserve_s=reserve,
                    done=lambda c: len(validation_curve(out / "trials" / c.key)))
    for t in result.trials:
        say(f"  {by_key[t.key]['label']:<40} {t.state:<9} {t.reason}")
    say(f"Winner: {result.winner}: {result.reason}")
    return result


def _train_baseline(b: dict[str, Any], out: Path, left_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Train a baseline in its share, or in what is left when the search overran its own
    (its length is fixed when it starts: a resumed baseline keeps it)."""
    from tunesam.kinds import kind_of, open_run, train
    from tunesam.study.config import Cell

    cell = Cell.from_dict(b["cell"])
    folder = out / "baselines" / b["name"]
    if (folder / "config.yaml").is_file():
        epochs = int(open_run(folder).config.epochs or b["epochs"])
    else:
        epochs = max(0, min(b["epochs"], math.floor(left_s / b["epoch_s"])))
    rec = {"name": b["name"], "label": kind_of(b["name"]).label(b["name"]), "epochs": epochs,
           "planned_epochs": b["epochs"], "share_s": b["share_s"], "run": str(folder.relative_to(out))}
    if epochs < 1:
        return {**rec, "skipped": f"one epoch ({b['epoch_s']:.0f} s) does not fit the {max(0, left_s):.0f} s left"}
    if not (folder / "summary.json").is_file():
        cfg = dataclasses.replace(cell.train_config(out), out=str(folder), epochs=epochs)
        say(f"Baseline {rec['label']}: {epochs} epochs in its {format_time(b['share_s'])}")
        t0 = time.perf_counter()
        train(cfg, resume=folder.exists(), progress=False)  # a folder a kill left is resumed, never refused
        rec["seconds_this_session"] = round(time.perf_counter() - t0, 1)
    rec["curve"] = validation_curve(folder)
    return rec


def _fix_winner(out: Path, result: SearchResult, say: Callable[[str], None]) -> Path:
    """``out/winner``: a copy of the winning trial's run folder (made under a temporary name,
    moved into place whole)."""
    winner = out / "winner"
    source = out / "trials" / str(result.winner)
    marker = winner / "trial.json"
    if marker.is_file() and json.loads(marker.read_text())["trial"] == result.winner:
        return winner
    if winner.exists():
        raise AutoError(f"{winner}: holds another run than the search's winner {result.winner}; remove it and --resume")
    tmp = out / ".winner.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    if (out / "export").exists():  # an export of an earlier winner
        shutil.rmtree(out / "export")
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("*.lock", "last.pt"))
    write_json(tmp / "trial.json", {"trial": result.winner, "copied_from": str(source.relative_to(out))})
    tmp.rename(winner)
    say(f"The winner's run folder: {winner}")
    return winner


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    keep = ("split", "mode", "mean", "pooled", "mean_3d", "classes", "classes_3d", "nsd_tolerance", "nsd_unit")
    return {k: metrics[k] for k in keep if k in metrics}


def _finish(plan: dict[str, Any], out: Path, result: SearchResult, winner: Path, baselines: list[dict[str, Any]],
            request: Request, clock: Clock, say: Callable[[str], None]) -> dict[str, Any]:
    from tunesam.data.store import PreparedData
    from tunesam.eval.evaluate import evaluate_run, format_metrics
    from tunesam.study.stats import compare, image_dsc, verdict

    data = PreparedData.open(plan["request"]["data"][0])
    test_rows = data.rows("test", include_empty=True)
    metrics = None
    if len(test_rows):
        path = winner / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else evaluate_run(winner, device=request.device)
        say("The winner on the test split (scored once, after the search):\n" + format_metrics(metrics))
    else:
        say("The target has no test split: the winner is not scored on held-out data (its validation DSC chose it)")
    patients = {str(c["id"]): str(c.get("patient", c["id"])) for c in data.manifest.get("cases", [])}
    for b in baselines:
        folder = out / b["run"]
        if "skipped" in b or not len(test_rows):
            continue
        path = folder / "metrics.json"
        bm = json.loads(path.read_text()) if path.is_file() else evaluate_run(folder, device=request.device)
        b["test"] = _scores(bm)
        cmp = compare(image_dsc(metrics, "target", 0, patients), image_dsc(bm, "target", 0, patients))
        b["comparison"] = cmp
        b["verdict"], b["verdict_reason"] = verdict(cmp)
        say(f"The winner against {b['label']}: {cmp['mean_diff']:+.2f} DSC points per case "
            f"(95% CI {_ci(cmp)}, p {cmp['p'] if cmp['p'] is None else round(cmp['p'], 4)}, {cmp['n_cases']} cases): "
            f"{b['verdict']}")
    exported = _export(winner, out, say)
    trials = []
    by_key = {c["key"]: c for c in plan["candidates"]}
    for t in result.trials:
        c = by_key[t.key]
        spent = sum(float(r["seconds"]) for r in read_log(out / "trials" / t.key)) + c["setup_s"] * bool(t.curve)
        trials.append({"candidate": t.key, "strategy": c["label"], "estimated_epoch_s": round(c["epoch_s"], 2),
                       "planned_epochs": plan["epochs"], "budget_spent_s": round(spent, 1),
                       "epochs_run": len(t.curve), "val_dsc_per_rung": {str(k): v for k, v in t.rungs.items()},
                       "val_dsc_per_epoch": t.curve, "state": t.state, "pruned": t.state == "pruned",
                       "reason": t.reason})
    win = by_key[str(result.winner)]
    report = {"scenario": plan["scenario"], "fingerprint": plan["fingerprint"],
              "extra_fingerprints": plan["extra_fingerprints"],
              "budget_s": request.budget_s, "device": _device_name(request.device),
              "candidates": [{"key": c["key"], "strategy": c["label"], "estimated_epoch_s": round(c["epoch_s"], 2),
                              "setup_s": round(c["setup_s"], 1), "searched": c["key"] in plan["searched"],
                              **({"left_out": c["left_out"]} if "left_out" in c else {})} for c in plan["candidates"]],
              "plan": {k: plan[k] for k in ("epochs", "min_epochs", "eta", "estimate_s", "reserve_s", "search_share_s")}
              | {"rungs": _rungs(plan)},
              "trials": trials,
              "winner": {"candidate": result.winner, "strategy": win["label"], "reason": result.reason,
                         "run": "winner", "best_val_dsc": max(validation_curve(winner), default=None)},
              "test": None if metrics is None else _scores(metrics),
              "baselines": baselines, "export": exported, "sessions": clock.sessions,
              "seconds": round(clock.spent(), 1)}
    _write_report(out, report, say)
    return report


def _device_name(device: str) -> str:
    """``--device`` as it resolved here (``auto`` says which)."""
    from tunesam.device import pick_device

    resolved = str(pick_device(device))
    return resolved if resolved == device else f"{resolved} ({device})"


def _ci(cmp: dict[str, Any]) -> str:
    ci = cmp.get("ci95")
    return "-" if not ci else f"{ci[0]:+.2f} to {ci[1]:+.2f}"


def _export(winner: Path, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from tunesam.export import export_run
    from tunesam.kinds import open_run

    run = open_run(winner)
    if run.config.method == "adapter":
        why = ("adapter layers have no place in plain SAM weights: the run folder is the model (evaluate, predict "
               "take it)")
        say(f"Not exported: {why}")
        return {"exported": False, "reason": why}
    target = out / "export" / "model.pth"
    if target.is_file():
        return {"exported": True, "file": str(target.relative_to(out))}
    target.parent.mkdir(parents=True, exist_ok=True)
    notes = export_run(winner, target)
    say(f"Exported: {target}")
    return {"exported": True, "file": str(target.relative_to(out)), "notes": notes}


def _write_report(out: Path, report: dict[str, Any], say: Callable[[str], None]) -> None:
    from tunesam.auto.report import curves_figure, markdown

    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    curves_figure(report, folder / "curves.png")
    (folder / "report.md.partial").write_text(markdown(report))
    (folder / "report.md.partial").replace(folder / "report.md")


def auto(data: str | list[str], out: str | Path, budget: str | float = "30m", device: str = "auto",
         weights: list[str] | None = None, mode: str = "auto", baselines: list[str] | None = None,
         resume: bool = False, storage: str | None = None, options: dict[str, Any] | None = None,
         max_epochs: int = MAX_EPOCHS, say: Callable[[str], None] = print) -> Path:
    """``tunesam auto`` from Python: the best model for ``data`` (a prepared dataset, or a
    list with the target first) within ``budget`` (``"30m"``, ``"2h"``, or seconds); returns
    the winner's run folder, ``out/winner``."""
    request = Request([str(Path(d).resolve()) for d in ([data] if isinstance(data, (str, Path)) else data)],
                      parse_budget(budget) if isinstance(budget, str) else float(budget), device,
                      list(weights or ["litemedsam"]), mode, list(baselines or []), dict(options or {}), int(max_epochs))
    return run_auto(request, out, resume, storage, say)
