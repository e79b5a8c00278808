"""``tunesam study report DIR``: the paper's tables, figures and a recommendation, from the
cells' own ``metrics.json`` (and ``log.csv``, ``efficiency.json``), at any time.

Writes ``DIR/report/``: ``results.csv`` (one row per cell and dataset), ``tables.md`` with
the result tables (rows datasets, columns strategies, DSC / NSD, a mean row, the best per row
in bold; seeds averaged) and the efficiency table (Table 3's columns as measured), each table
also as CSV under ``tables/``, ``figures/`` (grouped bars per dataset as Figure 4, validation
curves as Figure 5, k-shot curves as Figure 12, overlays of the same test slices across cells
as Figure 11) and ``recommendation.md`` (Table 4's scenarios from these results, with a paired
comparison of each winner against its runner-up).
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tunesam.engine.run_folder import read_log
from tunesam.io import atomic_write, write_json
from tunesam.study.config import AUGMENTATION, WEIGHT_CLASSES, Cell
from tunesam.study.recommend import missing_cells, recommend, scenario_name
from tunesam.study.runner import TIGHT_METRICS

RESULT_FIELDS = ["dataset", "cell", "strategy", "kind", "arch", "weights", "weights_class", "tune", "method", "mode",
                 "shots", "seed", "augmentation", "prompt_rules", "dsc", "nsd", "dsc_tight", "nsd_tight",
                 "dsc_3d", "nsd_3d", "pooled_dsc", "pooled_nsd", "test_cases", "test_images",
                 "trainable_params", "total_params", "seconds_per_step", "peak_memory_bytes", "peak_memory_kind",
                 "device", "epochs_run", "best_epoch"]

# The paper's Table 4 (Gu et al., MELBA 2025), quoted as the prior.
PAPER_TABLE_4 = [
    ("Single dataset", "-", "ViT-H + En/Decoder + LoRA"),
    ("Multiple datasets", "-", "SSLSAM + En/Decoder + Adapter"),
    ("Single dataset", "Few-shot", "ViT-B + En/Decoder + Adapter"),
    ("Single dataset", "Prompt-based", "ViT-T + En/Decoder + Adapter"),
]


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))  # makes the folder too


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    _write_text(path, buf.getvalue())


def load_cells(out: Path) -> list[Cell]:
    plan = out / "plan.json"
    if not plan.is_file():
        raise FileNotFoundError(f"{out}: not a study folder (no plan.json); run 'tunesam study CONFIG --out {out}'")
    return [Cell.from_dict(d) for d in _read_json(plan, "rerun the study command to write it again")["cells"]]


_REEVALUATE = "delete it and run the study again: the cell is evaluated again (its training is kept)"


def _read_json(path: Path, remedy: str) -> Any:
    """A study file's JSON, or an error naming the damaged file and what to do."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: damaged, not valid JSON ({exc}); {remedy}") from exc


def collect(out: Path) -> tuple[list[dict[str, Any]], dict[tuple[str, str], dict[str, Any]], list[Cell]]:
    """Rows of results.csv, each cell's metrics by (dataset, key), and the finished cells."""
    rows, metrics, finished = [], {}, []
    for cell in load_cells(out):
        folder = cell.folder(out)
        if not (folder / "metrics.json").is_file():
            continue
        m = _read_json(folder / "metrics.json", _REEVALUATE)
        eff_path, tight_path = folder / "efficiency.json", folder / TIGHT_METRICS
        eff = _read_json(eff_path, _REEVALUATE) if eff_path.is_file() else {}
        tight = _read_json(tight_path, _REEVALUATE)["mean"] if tight_path.is_file() else {}
        metrics[(cell.dataset, cell.key)] = m
        finished.append(cell)
        rows.append({
            "dataset": cell.dataset, "cell": cell.key, "strategy": cell.strategy, "kind": cell.kind,
            "arch": cell.arch, "weights": cell.weights_name, "weights_class": cell.weights_class, "tune": cell.tune,
            "method": cell.method, "mode": cell.mode, "shots": "" if cell.shots is None else cell.shots,
            "seed": cell.seed, "augmentation": cell.augmentation, "prompt_rules": m.get("prompt_rules", ""),
            "dsc": m["mean"]["dsc"], "nsd": m["mean"]["nsd"],
            "dsc_tight": tight.get("dsc", ""), "nsd_tight": tight.get("nsd", ""),
            "dsc_3d": m.get("mean_3d", {}).get("dsc", ""), "nsd_3d": m.get("mean_3d", {}).get("nsd", ""),
            "pooled_dsc": m.get("pooled", {}).get("mean", {}).get("dsc", ""),
            "pooled_nsd": m.get("pooled", {}).get("mean", {}).get("nsd", ""),
            "test_cases": len({r.get("patient", r["case"]) for r in m.get("per_image", [])}),  # the unit
            "test_images": len(m.get("per_image", [])),
            **{k: eff.get(k, "") for k in ("trainable_params", "total_params", "seconds_per_step",
                                           "peak_memory_bytes", "peak_memory_kind", "device", "epochs_run",
                                           "best_epoch")},
        })
    return rows, metrics, finished


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def result_tables(rows: list[dict[str, Any]], cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """Per scenario: {datasets, strategies, dsc[ds][st], nsd[ds][st]} (seed means)."""
    by_key = {(c.dataset, c.key): c for c in cells}
    groups: dict[str, dict[str, Any]] = {}
    acc: dict[str, dict[tuple[str, str], list[tuple[float, ...]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cell = by_key[(r["dataset"], r["cell"])]
        tight = r["dsc_tight"] if r["dsc_tight"] not in ("", None) else math.nan
        acc[scenario_name(cell.mode, cell.shots)][(r["dataset"], r["strategy"])].append((r["dsc"], r["nsd"], tight))
    for scen, vals in acc.items():
        datasets = sorted({d for d, _ in vals})
        strategies = sorted({s for _, s in vals})

        def mean_of(i: int) -> dict[str, dict[str, float]]:
            return {d: {s: float(np.mean([v[i] for v in vals[(d, s)]])) for s in strategies if (d, s) in vals}
                    for d in datasets}

        groups[scen] = {"datasets": datasets, "strategies": strategies, "dsc": mean_of(0), "nsd": mean_of(1),
                        "dsc_tight": mean_of(2) if scen.split(",")[0] != "automated" else None}
    return groups


def _mean_over(table: dict[str, dict[str, float]], strategy: str) -> float | None:
    """The mean over datasets, only for a strategy that has every dataset of the table (a
    mean over fewer datasets would compare it on other data than its rivals)."""
    if not all(strategy in row for row in table.values()):
        return None
    return float(np.mean([row[strategy] for row in table.values()]))


def markdown_table(t: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown (best DSC per row in bold) and CSV rows of one scenario's table; prompted
    scenarios also give the DSC with tight prompts (MedSAM's evaluation) after a ``|``."""
    sts = t["strategies"]
    tight = t.get("dsc_tight")
    head = "| dataset | " + " | ".join(sts) + " |"
    lines = [head, "|" + "---|" * (len(sts) + 1)]
    csv_rows = []
    for d in [*t["datasets"], "mean"]:
        def pick(table: dict[str, dict[str, float]]) -> dict[str, float | None]:
            return table[d] if d != "mean" else {s: _mean_over(table, s) for s in sts}

        dsc, nsd = pick(t["dsc"]), pick(t["nsd"])
        dsc_t = pick(tight) if tight is not None else {}
        present = [s for s in sts if dsc.get(s) is not None]
        best = max(present, key=lambda s: dsc[s]) if present else None
        cells = []
        for s in sts:
            text = f"{_fmt(dsc.get(s))} / {_fmt(nsd.get(s))}" if dsc.get(s) is not None else "-"
            if tight is not None and dsc.get(s) is not None:
                text += f" \\| {_fmt(dsc_t.get(s))}"
            cells.append(f"**{text}**" if s == best else text)
        lines.append(f"| {'**mean**' if d == 'mean' else d} | " + " | ".join(cells) + " |")
        csv_rows.append({"dataset": d, **{f"{s} dsc": dsc.get(s, "") for s in sts},
                         **{f"{s} nsd": nsd.get(s, "") for s in sts},
                         **{f"{s} dsc_tight": dsc_t.get(s, "") for s in sts if tight is not None}, "best": best or ""})
    return "\n".join(lines), csv_rows


def efficiency_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table 3's columns per strategy, as measured in this study (means over its cells)."""
    acc: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        acc[r["strategy"]].append(r)
    out = []
    for st, rs in sorted(acc.items()):
        def mean(k: str) -> float | None:
            v = [float(r[k]) for r in rs if r.get(k) not in ("", None)]
            return float(np.mean(v)) if v else None

        out.append({"strategy": st, "trainable_params": mean("trainable_params"), "total_params": mean("total_params"),
                    "seconds_per_iteration": mean("seconds_per_step"), "peak_memory_gib":
                    (mean("peak_memory_bytes") or 0) / 2**30 if mean("peak_memory_bytes") is not None else None,
                    "memory": rs[0].get("peak_memory_kind", ""), "device": rs[0].get("device", "")})
    return out


def _efficiency_markdown(eff: list[dict[str, Any]]) -> str:
    lines = ["| strategy | trainable params | total params | s / iteration | peak memory (GiB) | device |",
             "|---|---|---|---|---|---|"]
    for e in eff:
        def m(v: float | None) -> str:
            return "-" if v is None else f"{v / 1e6:.3f} M"

        sec, mem = e["seconds_per_iteration"], e["peak_memory_gib"]
        lines.append(f"| {e['strategy']} | {m(e['trainable_params'])} | {m(e['total_params'])} | "
                     f"{'-' if sec is None else f'{sec:.3f}'} | {'-' if mem is None else f'{mem:.2f}'} | "
                     f"{e['device']} |")
    kinds = sorted({e["memory"] for e in eff if e["memory"]})
    lines.append("")
    lines.append("s / iteration: mean time of a training step (forward, backward, optimiser; the first step "
                 "excluded) at the cell's batch size; cells on cached embeddings time the decoder only. Peak "
                 f"memory: {'; '.join(kinds) or 'not measured'}.")
    return "\n".join(lines)


# -- recommendation ----------------------------------------------------------------------------
def _diff(c: dict[str, Any] | None) -> tuple[str, str, str]:
    """(difference [CI], p (smallest possible p), cases / slices) of a comparison, as text."""
    if not c or not c.get("n_cases"):
        return "-", "-", "-"
    ci = "" if c["ci95"] is None else f" [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
    floor = f" (min {c['min_p']:.3g})" if c.get("min_p") is not None and c["min_p"] >= 0.05 else ""
    return f"{c['mean_diff']:+.2f}{ci}", f"{c['p']:.3g}{floor}", f"{c['n_cases']} / {c['n_images']}"


def recommendation_markdown(recs: list[dict[str, Any]], cells: list[Cell], missing: list[str]) -> str:
    lines = ["# Recommendation from this study", "",
             "Each row ranks SAM fine-tuning strategies (weights x tune x method) of one condition, on the datasets, "
             "seeds and test images all of them finished; baselines are compared separately below. The score of a "
             "strategy is the mean over datasets of the mean over test cases (patients or volumes) of each case's "
             "mean slice DSC, seeds averaged. The best is compared with the runner-up case by case.", "",
             "| setting | condition | best (DSC) | starts from | runner-up (DSC) | difference [95% CI] | p | "
             "cases / slices | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        flag = " (provisional)" if r["provisional"] else ""
        if r["best"] is None:
            lines.append(f"| {r['setting']} | {r['condition']} | - | - | - | - | - | - | {r['verdict_text']}{flag} |")
            continue
        best = f"{r['best_label']} ({r['best_dsc']:.2f})"
        runner = f"{r['runner_up_label']} ({r['runner_up_dsc']:.2f})" if r["runner_up"] else "-"
        diff, p, n = _diff(r["comparison"])
        word = f"**{r['verdict']}**: {r['verdict_text']}" if r["runner_up"] else r["verdict_text"]
        if r.get("wins_both_prompts"):
            word += "; the same strategy ranks first with box and with point prompts"
        lines.append(f"| {r['setting']} | {r['condition']} | {best} | {r['best_weights_class']} | {runner} | {diff} | "
                     f"{p} | {n} | {word}{flag} |")
    lines += ["", "## Best SAM strategy against the best baseline", "",
              "| setting | condition | best SAM strategy | best baseline | difference [95% CI] | p | cases / slices | "
              "verdict | augmentation (SAM / baseline) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        b = r.get("baseline")
        if not b:
            continue
        sam = r.get("best_label") or "-"
        base = b.get("best_baseline_label") or "-"
        diff, p, n = _diff(b["comparison"])
        note = f" ({b['note']})" if b.get("note") else ""
        if b.get("provisional"):
            note += " (provisional: baseline cells missing)"
        word = f"**{b['verdict']}**: {b['verdict_text']}" if b["comparison"] else b["verdict_text"]
        aug = " / ".join(", ".join(b["augmentation"][k]) for k in ("sam", "baseline")) if b.get("augmentation") else "-"
        lines.append(f"| {r['setting']} | {r['condition']} | {sam} | {base} | {diff} | {p} | {n} | {word}{note} | {aug} |")
    lines += ["", "## Rankings", ""]
    policies = {c.strategy: c.augmentation for c in cells}
    for r in recs:
        if not r.get("ranking") or r["best"] is None:
            continue
        lines.append(f"- **{r['setting']}, {r['condition']}**: " + "; ".join(
            f"{e['label']} {e['dsc']:.2f} ({e['weights_class']}, augmentation {policies.get(e['strategy'], '?')})"
            for e in r["ranking"]))
        if r.get("left_out"):
            lines.append(f"  - not ranked (no finished cell on the others' datasets and seeds): {', '.join(r['left_out'])}")
        kinds = {policies.get(e["strategy"]) for e in r["ranking"]}
        if len(kinds) > 1:
            lines.append(f"  - **the strategies of this row train with different augmentation** ({', '.join(sorted(kinds))}): "
                         "a difference between them may come from it")
    lines += ["", "Augmentation: " + "; ".join(f"`{k}` {v}" for k, v in AUGMENTATION.items()) + ".",
              "Starts: " + "; ".join(f"`{k}` {v}" for k, v in WEIGHT_CLASSES.items()) + "."]
    if missing:
        lines += ["", f"## Provisional: {len(missing)} cells have not finished", "",
                  "Rows marked provisional rank only what has finished; these cells are missing: "
                  + ", ".join(missing[:40]) + (" ..." if len(missing) > 40 else "")]
    lines += ["", "## How the comparisons are made", "",
              "- Unit of replication: the test case (patient or volume), not the slice; slices of one volume are not "
              "independent. A case's score is the mean DSC of its test slices (seeds averaged).",
              "- Difference: mean over cases of (best - rival), each dataset weighing equally (datasets are blocks).",
              "- Test: paired permutation test of that difference (sign flips of case differences; exact up to 16 "
              "cases), two-sided. With n cases no test can go below p = 2 / 2^n (0.125 for 4 cases): the table says "
              "so as the smallest possible p.",
              "- Interval: 95% percentile bootstrap resampling cases within each dataset (none when a dataset has a "
              "single test case: its difference cannot be resampled). With few cases per dataset a "
              "percentile bootstrap is too narrow (two cases give it three values), so it can exclude 0 while the "
              "exact test does not: with few cases, read the test. The datasets are fixed blocks; when one is ahead "
              "and another behind by more than 1 point the verdict lists each dataset's difference.",
              "- Verdict: inconclusive when the cases are too few for any test to reach p < 0.05; otherwise better / "
              "worse when p < 0.05 (a tie in practice when the difference is under 1 DSC point), a tie when the "
              "interval lies within +-1 point and every dataset has at least 5 test cases (or every case scores the "
              "same), inconclusive otherwise.",
              "", "## The paper's Table 4 (the prior)", "", "| setting | condition | optimal strategy |", "|---|---|---|"]
    lines += [f"| {s} | {c} | {o} |" for s, c, o in PAPER_TABLE_4]
    lines += ["", "The paper's answer comes from 17 datasets on GPUs at 1024 px; this one from your data, cells and "
              "budget. Where they differ, trust your own only where the verdict is better or worse."]
    return "\n".join(lines) + "\n"


# -- figures -------------------------------------------------------------------------------
def _bars(t: dict[str, Any], title: str, path: Path) -> None:
    from tunesam.viz import pyplot, save_figure

    plt = pyplot()

    datasets, sts = t["datasets"], t["strategies"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(datasets) * max(1, len(sts)) / 2), 4.2))
    width = 0.8 / max(1, len(sts))
    for j, s in enumerate(sts):
        vals = [t["dsc"][d].get(s, np.nan) for d in datasets]
        ax.bar(np.arange(len(datasets)) + (j - (len(sts) - 1) / 2) * width, vals, width, label=s)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("test DSC (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    save_figure(path, fig)


def _curves(cells: list[Cell], out: Path, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    from tunesam.viz import pyplot, save_figure

    plt = pyplot()

    datasets = sorted({c.dataset for c in cells})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for c in [c for c in cells if c.dataset == d]:
            rs = read_log(c.folder(out))
            if not rs:
                continue
            ax.plot([int(r["epoch"]) for r in rs], [float(r["val_dsc"]) for r in rs], marker=".", label=c.key)
        ax.set_title(f"{d}: validation DSC per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation DSC (%)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(path, fig)


def _kshot(rows: list[dict[str, Any]], cells: list[Cell], path: Path) -> bool:
    """DSC against training images (K-shot cells and full data) per strategy family."""
    from tunesam.viz import pyplot, save_figure

    plt = pyplot()

    by = {(c.dataset, c.key): c for c in cells}
    fam: dict[tuple[str, str], dict[int | None, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        c = by[(r["dataset"], r["cell"])]
        if c.mode != "auto":
            continue
        family = c.strategy.rsplit("_", 1)[0]
        fam[(c.dataset, family)][c.shots].append(r["dsc"])
    if not any(len(v) > 1 and any(k is not None for k in v) for v in fam.values()):
        return False
    datasets = sorted({d for d, _ in fam})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        ks = sorted({k for (dd, _), v in fam.items() if dd == d for k in v if k is not None})
        ticks = [*ks, None]
        for (dd, family), v in sorted(fam.items()):
            if dd != d:
                continue
            xs = [i for i, k in enumerate(ticks) if k in v]
            ax.plot(xs, [float(np.mean(v[ticks[i]])) for i in xs], marker="o", label=family)
        ax.set_xticks(range(len(ticks)), [f"{k}-shot" if k else "full" for k in ticks])
        ax.set_xlabel("training images")
        ax.set_ylabel("test DSC (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{d}: few-shot")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(path, fig)
    return True


def _overlays(cells: list[Cell], out: Path, metrics: dict[tuple[str, str], dict[str, Any]], path_for: Any,
              device: str = "cpu", slices: int = 3, columns: int = 6) -> list[Path]:
    """Per dataset: the same test slices (largest foreground, distinct cases) through the
    best automated cells (seed 0), beside the image and the reference."""
    import torch

    from tunesam.data.store import PreparedData
    from tunesam.eval.evaluate import predict_rows
    from tunesam.kinds import load_run_model, open_run
    from tunesam.viz import pyplot, save_figure

    plt = pyplot()
    from matplotlib.colors import ListedColormap

    written = []
    for d in sorted({c.dataset for c in cells}):
        auto = [c for c in cells if c.dataset == d and c.mode == "auto" and c.seed == min(x.seed for x in cells)]
        auto.sort(key=lambda c: metrics[(c.dataset, c.key)]["mean"]["dsc"], reverse=True)
        auto = auto[:columns]
        if not auto:
            continue
        data = PreparedData.open(auto[0].data)
        rows = data.rows("test", include_empty=False)
        sizes = [(int((np.asarray(data.slice(int(r))[1]) > 0).sum()), data.case(int(r))["id"], int(r)) for r in rows]
        chosen, seen = [], set()
        for _, case, r in sorted(sizes, reverse=True):
            if case not in seen:
                chosen.append(r)
                seen.add(case)
            if len(chosen) == slices:
                break
        preds = {}
        for c in auto:
            model = load_run_model(open_run(c.folder(out)), "best", torch.device(device))
            preds[c.key] = dict(predict_rows(model, data, chosen, torch.device(device)))
        k = data.num_classes
        cmap = ListedColormap([(0, 0, 0, 0), *[plt.get_cmap("tab10")(i)[:3] + (0.5,) for i in range(k)]])
        fig, axes = plt.subplots(len(chosen), 2 + len(auto), figsize=(2.2 * (2 + len(auto)), 2.3 * len(chosen)),
                                 squeeze=False)
        for i, r in enumerate(chosen):
            image, ref = (np.asarray(a) for a in data.slice(r))
            panels = [("image", None), ("reference", ref)] + [(c.strategy, preds[c.key][r]) for c in auto]
            for j, (title, lab) in enumerate(panels):
                ax = axes[i][j]
                ax.imshow(image, cmap="gray")
                if lab is not None:
                    ax.imshow(lab, cmap=cmap, vmin=0, vmax=k, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(title, fontsize=6)
            axes[i][0].set_ylabel(f"{data.case(r)['id']} #{int(data.index[r]['slice'])}", fontsize=7)
        fig.suptitle(f"{d}: the same test slices across cells (best first)", fontsize=9)
        fig.tight_layout()
        target = path_for(d)
        save_figure(target, fig)
        written.append(target)
    return written


def write_report(out: str | Path, device: str = "cpu", overlays: bool = True) -> Path:
    """Regenerate ``OUT/report/`` from the finished cells; returns the report folder."""
    out = Path(out)
    rows, metrics, cells = collect(out)
    report = out / "report"
    if not rows:
        raise RuntimeError(f"{out}: no finished cells yet (none has metrics.json)")
    _write_csv(report / "results.csv", RESULT_FIELDS, rows)
    tables = result_tables(rows, cells)
    md = ["# Study results", "", "Test DSC / NSD (%), mean over images per class then over classes (the paper's "
          "unit); seeds averaged; best DSC per row in bold. The mean row is given only for strategies that "
          "finished every dataset of the table.", ""]
    figures = report / "figures"
    for scen, t in sorted(tables.items()):
        text, csv_rows = markdown_table(t)
        md += [f"## {scen}", "", text, ""]
        slug = scen.replace(", ", "_").replace(" ", "-")
        measures = ("dsc", "nsd") if t.get("dsc_tight") is None else ("dsc", "nsd", "dsc_tight")
        if t.get("dsc_tight") is not None:
            md += ["DSC / NSD with the prompts drawn by the cells' training rules (the paper's evaluation), then after "
                   "the bar the DSC with tight prompts (tight box or deepest point, MedSAM's evaluation).", ""]
        _write_csv(report / "tables" / f"{slug}.csv",
                   ["dataset", *[f"{s} {m}" for s in t["strategies"] for m in measures], "best"], csv_rows)
        _bars(t, f"Test DSC per dataset ({scen})", figures / f"bars_{slug}.png")
    eff = efficiency_rows(rows)
    md += ["## Efficiency (Table 3's columns, measured in this study)", "", _efficiency_markdown(eff), ""]
    _write_csv(report / "tables" / "efficiency.csv", list(eff[0]), eff)
    _write_text(report / "tables.md", "\n".join(md))
    _curves(cells, out, figures / "validation_curves.png")
    _kshot(rows, cells, figures / "kshot.png")
    if overlays:
        _overlays(cells, out, metrics, lambda d: figures / f"overlays_{d}.png", device)
    planned = load_cells(out)
    recs = recommend(planned, metrics)
    _write_text(report / "recommendation.md", recommendation_markdown(recs, planned, missing_cells(planned, metrics)))
    write_json(report / "recommendation.json", recs)
    return report
