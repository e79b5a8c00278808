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

from tunesam.io import atomic_write, write_json
from tunesam.study.config import Cell
from tunesam.study.stats import paired_comparison, per_image_dsc, verdict

RESULT_FIELDS = ["dataset", "cell", "strategy", "kind", "arch", "weights", "tune", "method", "mode", "shots", "seed",
                 "dsc", "nsd", "dsc_3d", "nsd_3d", "pooled_dsc", "pooled_nsd", "test_images",
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
    return [Cell.from_dict(d) for d in json.loads(plan.read_text())["cells"]]


def collect(out: Path) -> tuple[list[dict[str, Any]], dict[tuple[str, str], dict[str, Any]], list[Cell]]:
    """Rows of results.csv, each cell's metrics by (dataset, key), and the finished cells."""
    rows, metrics, finished = [], {}, []
    for cell in load_cells(out):
        folder = cell.folder(out)
        if not (folder / "metrics.json").is_file():
            continue
        m = json.loads((folder / "metrics.json").read_text())
        eff_path = folder / "efficiency.json"
        eff = json.loads(eff_path.read_text()) if eff_path.is_file() else {}
        metrics[(cell.dataset, cell.key)] = m
        finished.append(cell)
        rows.append({
            "dataset": cell.dataset, "cell": cell.key, "strategy": cell.strategy, "kind": cell.kind,
            "arch": cell.arch, "weights": cell.weights_name, "tune": cell.tune, "method": cell.method,
            "mode": cell.mode, "shots": "" if cell.shots is None else cell.shots, "seed": cell.seed,
            "dsc": m["mean"]["dsc"], "nsd": m["mean"]["nsd"],
            "dsc_3d": m.get("mean_3d", {}).get("dsc", ""), "nsd_3d": m.get("mean_3d", {}).get("nsd", ""),
            "pooled_dsc": m.get("pooled", {}).get("mean", {}).get("dsc", ""),
            "pooled_nsd": m.get("pooled", {}).get("mean", {}).get("nsd", ""),
            "test_images": len(m.get("per_image", [])),
            **{k: eff.get(k, "") for k in ("trainable_params", "total_params", "seconds_per_step",
                                           "peak_memory_bytes", "peak_memory_kind", "device", "epochs_run",
                                           "best_epoch")},
        })
    return rows, metrics, finished


def _scenario(cell: Cell) -> str:
    shots = "full data" if cell.shots is None else f"{cell.shots}-shot"
    mode = "automated" if cell.mode == "auto" else f"{cell.mode} prompts"
    return f"{mode}, {shots}"


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def result_tables(rows: list[dict[str, Any]], cells: list[Cell]) -> dict[str, dict[str, Any]]:
    """Per scenario: {datasets, strategies, dsc[ds][st], nsd[ds][st]} (seed means)."""
    by_key = {(c.dataset, c.key): c for c in cells}
    groups: dict[str, dict[str, Any]] = {}
    acc: dict[str, dict[tuple[str, str], list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cell = by_key[(r["dataset"], r["cell"])]
        acc[_scenario(cell)][(r["dataset"], r["strategy"])].append((r["dsc"], r["nsd"]))
    for scen, vals in acc.items():
        datasets = sorted({d for d, _ in vals})
        strategies = sorted({s for _, s in vals})
        dsc = {d: {s: float(np.mean([v[0] for v in vals[(d, s)]])) for s in strategies if (d, s) in vals}
               for d in datasets}
        nsd = {d: {s: float(np.mean([v[1] for v in vals[(d, s)]])) for s in strategies if (d, s) in vals}
               for d in datasets}
        groups[scen] = {"datasets": datasets, "strategies": strategies, "dsc": dsc, "nsd": nsd}
    return groups


def _mean_over(table: dict[str, dict[str, float]], strategy: str) -> float | None:
    vals = [row[strategy] for row in table.values() if strategy in row]
    return float(np.mean(vals)) if vals else None


def markdown_table(t: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown (best DSC per row in bold) and CSV rows of one scenario's table."""
    sts = t["strategies"]
    head = "| dataset | " + " | ".join(sts) + " |"
    lines = [head, "|" + "---|" * (len(sts) + 1)]
    csv_rows = []
    for d in [*t["datasets"], "mean"]:
        dsc = t["dsc"][d] if d != "mean" else {s: _mean_over(t["dsc"], s) for s in sts}
        nsd = t["nsd"][d] if d != "mean" else {s: _mean_over(t["nsd"], s) for s in sts}
        present = [s for s in sts if dsc.get(s) is not None]
        best = max(present, key=lambda s: dsc[s]) if present else None
        cells = []
        for s in sts:
            text = f"{_fmt(dsc.get(s))} / {_fmt(nsd.get(s))}" if dsc.get(s) is not None else "-"
            cells.append(f"**{text}**" if s == best else text)
        lines.append(f"| {'**mean**' if d == 'mean' else d} | " + " | ".join(cells) + " |")
        csv_rows.append({"dataset": d, **{f"{s} dsc": dsc.get(s, "") for s in sts},
                         **{f"{s} nsd": nsd.get(s, "") for s in sts}, "best": best or ""})
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
def _candidates(cells: list[Cell], keep: Any) -> dict[str, list[Cell]]:
    out: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        if keep(c):
            out[c.strategy].append(c)
    return out


def _strategy_scores(strats: dict[str, list[Cell]], metrics: dict[tuple[str, str], dict[str, Any]]
                     ) -> dict[str, tuple[float, dict[Any, float]]]:
    """Strategy -> (mean DSC over datasets, per-image DSC averaged over seeds)."""
    out = {}
    for st, cs in strats.items():
        per_ds: dict[str, list[float]] = defaultdict(list)
        images: dict[Any, list[float]] = defaultdict(list)
        for c in cs:
            m = metrics[(c.dataset, c.key)]
            per_ds[c.dataset].append(m["mean"]["dsc"])
            for k, v in per_image_dsc(m, c.dataset).items():
                images[k].append(v)
        out[st] = (float(np.mean([np.mean(v) for v in per_ds.values()])),
                   {k: float(np.mean(v)) for k, v in images.items()})
    return out


def recommend(cells: list[Cell], metrics: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Table 4's scenarios from this study: the best strategy of each, its runner-up and the
    paired comparison of the two over the test images."""
    shots = sorted({c.shots for c in cells if c.shots is not None})
    scenarios: list[tuple[str, str, Any]] = [
        ("Single dataset", "-", lambda c: c.mode == "auto" and c.shots is None and not c.pretrained),
        ("Multiple datasets", "-", lambda c: c.mode == "auto" and c.shots is None),
        *[("Single dataset", f"Few-shot ({k}-shot)", lambda c, k=k: c.mode == "auto" and c.shots == k) for k in shots],
        ("Single dataset", "Prompt-based", lambda c: c.mode != "auto" and c.shots is None),
    ]
    out = []
    for setting, condition, keep in scenarios:
        row: dict[str, Any] = {"setting": setting, "condition": condition}
        strats = _candidates(cells, keep)
        if setting == "Multiple datasets" and not any(c.pretrained for cs in strats.values() for c in cs):
            row["note"] = ("no cells start from pre-trained weights (SSLSAM/SupSAM): run 'tunesam pretrain mae|prompt' "
                           "and list its RUN/checkpoint.pth under checkpoint: in the study config")
            out.append(row)
            continue
        if not strats:
            row["note"] = "no cells of this kind in the study"
            out.append(row)
            continue
        scores = _strategy_scores(strats, metrics)
        ranked = sorted(scores, key=lambda s: scores[s][0], reverse=True)
        row["best"], row["best_dsc"] = ranked[0], scores[ranked[0]][0]
        if setting == "Multiple datasets":
            pre = [s for s in ranked if any(c.pretrained for c in strats[s])]
            row["best"], row["best_dsc"] = pre[0], scores[pre[0]][0]
            rivals = [s for s in ranked if s != pre[0] and not any(c.pretrained for c in strats[s])]
        else:
            rivals = ranked[1:]
        if rivals:
            row["runner_up"], row["runner_up_dsc"] = rivals[0], scores[rivals[0]][0]
            row["comparison"] = paired_comparison(scores[row["best"]][1], scores[rivals[0]][1])
            row["verdict"] = verdict(row["comparison"])
        out.append(row)
    return out


def _recommendation_markdown(recs: list[dict[str, Any]]) -> str:
    lines = ["# Recommendation from this study", "",
             "Best strategy per scenario by mean test DSC over the study's datasets (seeds averaged), against the "
             "runner-up on the same test images: mean per-image DSC difference with a 95% bootstrap interval, and "
             "the Wilcoxon signed-rank p-value.", "",
             "| setting | condition | best (DSC) | runner-up (DSC) | difference [95% CI] | Wilcoxon p | n | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if "note" in r:
            lines.append(f"| {r['setting']} | {r['condition']} | - | - | - | - | - | {r['note']} |")
            continue
        best = f"{r['best']} ({r['best_dsc']:.2f})"
        if "runner_up" not in r:
            lines.append(f"| {r['setting']} | {r['condition']} | {best} | - | - | - | - | the only strategy |")
            continue
        c = r["comparison"]
        diff = "-" if not c["n"] else f"{c['mean_diff']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
        p = "-" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
        lines.append(f"| {r['setting']} | {r['condition']} | {best} | {r['runner_up']} ({r['runner_up_dsc']:.2f}) | "
                     f"{diff} | {p} | {c['n']} | {r['verdict']} |")
    lines += ["", "## The paper's Table 4 (the prior)", "", "| setting | condition | optimal strategy |", "|---|---|---|"]
    lines += [f"| {s} | {c} | {o} |" for s, c, o in PAPER_TABLE_4]
    lines += ["", "The paper's answer comes from 17 datasets on GPUs at 1024 px; this one from your data, cells and "
              "budget. Where they differ, trust your own only where the comparison above says it is a clear win."]
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
            log = c.folder(out) / "log.csv"
            if not log.is_file():
                continue
            with open(log) as f:
                rs = list(csv.DictReader(f))
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
    from tunesam.run import load_run_model, open_run
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
          "unit); seeds averaged; best DSC per row in bold.", ""]
    figures = report / "figures"
    for scen, t in sorted(tables.items()):
        text, csv_rows = markdown_table(t)
        md += [f"## {scen}", "", text, ""]
        slug = scen.replace(", ", "_").replace(" ", "-")
        _write_csv(report / "tables" / f"{slug}.csv",
                   ["dataset", *[f"{s} {m}" for s in t["strategies"] for m in ("dsc", "nsd")], "best"], csv_rows)
        _bars(t, f"Test DSC per dataset ({scen})", figures / f"bars_{slug}.png")
    eff = efficiency_rows(rows)
    md += ["## Efficiency (Table 3's columns, measured in this study)", "", _efficiency_markdown(eff), ""]
    _write_csv(report / "tables" / "efficiency.csv", list(eff[0]), eff)
    _write_text(report / "tables.md", "\n".join(md))
    _curves(cells, out, figures / "validation_curves.png")
    _kshot(rows, cells, figures / "kshot.png")
    if overlays:
        _overlays(cells, out, metrics, lambda d: figures / f"overlays_{d}.png", device)
    recs = recommend(cells, metrics)
    _write_text(report / "recommendation.md", _recommendation_markdown(recs))
    write_json(report / "recommendation.json", recs)
    return report
