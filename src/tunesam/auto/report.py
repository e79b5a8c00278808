"""``DIR/report/`` of ``tunesam auto``: the learning curves of every trial and a page that
reads the search (candidates, rungs, pruning decisions, the winner, its test scores, the
baselines and the paired comparison)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesam.study.estimate import format_time

STATE_STYLE = {"complete": "-", "pruned": "--", "budget": ":"}


def curves_figure(report: dict[str, Any], path: Path) -> None:
    """Validation DSC per epoch of every trial (solid: to its full length; dashed: pruned;
    dotted: stopped by the budget), the rungs as vertical lines, the baselines in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for rung in report["plan"]["rungs"][:-1]:
        ax.axvline(rung, color="0.85", lw=1, zorder=0)
    for t in report["trials"]:
        curve = t["val_dsc_per_epoch"]
        label = f"{t['strategy']} ({t['state']})" + (" - winner" if t["candidate"] == report["winner"]["candidate"]
                                                      else "")
        ax.plot(range(1, len(curve) + 1), curve, STATE_STYLE.get(t["state"], "-"), marker="o", ms=3,
                lw=2.5 if t["candidate"] == report["winner"]["candidate"] else 1.5, label=label)
    for b in report.get("baselines", []):
        if b.get("curve"):
            ax.plot(range(1, len(b["curve"]) + 1), b["curve"], "-", color="0.5", lw=1, label=f"baseline {b['label']}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (of each trial's one schedule)")
    ax.set_ylabel("validation DSC (%)")
    ax.set_title("tunesam auto: the search on validation DSC (grey lines: rungs)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_suffix(".partial.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _mean(scores: dict[str, Any] | None, key: str) -> str:
    """The mean DSC (percent) of ``key``: ``mean`` (2D slices), ``mean_3d`` or ``pooled``."""
    if not scores or scores.get(key) is None:
        return "-"
    value = scores[key]["mean"] if key == "pooled" else scores[key]
    return f"{value['dsc']:.2f}"


def markdown(report: dict[str, Any]) -> str:
    fp, sc, plan = report["fingerprint"], report["scenario"], report["plan"]
    tr = fp["splits"]["train"]
    lines = ["# tunesam auto", "",
             f"**Data.** {fp['data']}: {tr['cases']} training case(s), {tr['slices']} slices "
             f"({fp.get('labelled_train_slices')} labelled for training), {fp['splits']['val']['cases']} validation "
             f"and {fp['splits']['test']['cases']} test case(s); classes "
             f"{', '.join(fp.get('classes', {}).values())}; modality {fp.get('modality') or 'not recorded'}.", "",
             f"**Scenario.** {sc['setting']}" + (f", {sc['condition']}" if sc["condition"] != "-" else "")
             + f": {sc['reason']}. Table 4's optimum: {sc['paper_optimum']}.", "",
             f"**Plan.** Budget {format_time(report['budget_s'])} on {report['device']}; each trial has a "
             f"{plan['epochs']}-epoch schedule, judged at epochs {', '.join(map(str, plan['rungs']))} (the best "
             f"1/{plan['eta']} go on); the search was estimated at {format_time(plan['estimate_s'] - plan['reserve_s'])}"
             f" of its {format_time(plan['search_share_s'])}.", "",
             "| candidate | s/epoch (timed here) | searched |", "|---|---:|---|"]
    for c in report["candidates"]:
        lines.append(f"| {c['strategy']} | {c['estimated_epoch_s']:.1f} | "
                     f"{'yes' if c['searched'] else 'no: ' + c.get('left_out', '')} |")
    lines += ["", "## Trials", "", "| strategy | state | val DSC per rung | epochs | time | decision |",
              "|---|---|---|---:|---:|---|"]
    for t in report["trials"]:
        rungs = ", ".join(f"{e}: {v:.2f}" for e, v in t["val_dsc_per_rung"].items())
        lines.append(f"| {t['strategy']} | {t['state']} | {rungs} | {t['epochs_run']} | "
                     f"{format_time(t['budget_spent_s'])} | {t['reason']} |")
    w = report["winner"]
    lines += ["", "![validation curves](curves.png)", "", "## Winner", "",
              f"**{w['strategy']}** (`{w['candidate']}`, run folder `winner/`): {w['reason']}.", ""]
    test = report.get("test")
    if test:
        lines += [f"Test split (scored once, after the winner was fixed): mean DSC {_mean(test, 'mean')} per slice, "
                  f"{_mean(test, 'pooled')} pooled, {_mean(test, 'mean_3d')} per case (3D).", ""]
    else:
        lines += ["The target has no test split: the winner was not scored on held-out data.", ""]
    for b in report.get("baselines", []):
        if "skipped" in b:
            lines.append(f"Baseline {b['label']}: skipped ({b['skipped']}).")
            continue
        if "comparison" not in b:
            lines.append(f"Baseline {b['label']}: {b['epochs']} epochs; not scored (no test split).")
            continue
        c = b["comparison"]
        ci = "-" if not c.get("ci95") else f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
        lines.append(f"Baseline {b['label']} ({b['epochs']} epochs in {format_time(b['share_s'])}): test mean DSC "
                     f"{_mean(b.get('test'), 'mean')} per slice, {_mean(b.get('test'), 'pooled')} pooled. The winner "
                     f"minus the baseline, per case: {c['mean_diff']:+.2f} DSC points, 95% CI {ci}, p "
                     f"{'-' if c['p'] is None else format(c['p'], '.4f')} (smallest possible with {c['n_cases']} "
                     f"cases: {'-' if c['min_p'] is None else format(c['min_p'], '.4f')}): **{b['verdict']}** "
                     f"({b['verdict_reason']}).")
    e = report.get("export", {})
    lines += ["", "Export: " + (f"`{e['file']}` (segment-anything's layout)" if e.get("exported")
                                else f"none ({e.get('reason')})") + ".", "",
              f"Wall clock: {format_time(report.get('seconds', 0))} over {report['sessions']} session(s).", ""]
    return "\n".join(lines)
