"""Paired comparison of two strategies, with the case as the unit of replication.

Slices of one volume are not independent evidence: a model that fails on one patient fails
on most of that patient's slices. So the scores are averaged to one number per case first
(the mean DSC of its test images, over the seeds that both strategies ran), and the
comparison is made over cases. A case is the patient where the data records one with
several images or volumes (the split keeps a patient's images together), else the volume:

* **effect**: the mean case difference (a - b, DSC points), each dataset weighing equally
  and each case equally within its dataset (datasets are blocks: fixed, not sampled);
* **test**: a paired permutation test of that effect (``scipy.stats.permutation_test``,
  the signs of the case differences flipped), exact up to 16 cases, 99,999 random flips
  beyond; two-sided;
* **interval**: a 95% percentile bootstrap that resamples cases within each dataset
  (``scipy.stats.bootstrap``, 10,000 resamples; datasets with one case enter as they are).

With n cases no two-sided sign-flip test can go below p = 2 / 2**n (0.125 for 4 cases): the
comparison says so instead of calling a loss "could be chance".
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

ALPHA = 0.05
NEGLIGIBLE = 1.0  # DSC points: a consistent difference below this is a tie in practice
EXACT_UP_TO = 16  # cases: exact sign-flip distribution (2**16 flips) up to here
PERMUTATIONS = 99_999
BOOTSTRAPS = 10_000
TIE_CASES = 5  # cases per dataset, at least, before an interval within +-1 point is called a tie
VERDICTS = ("better", "worse", "tie", "inconclusive")

# (dataset, seed, case: the unit of replication, image: "volume#slice")
ImageKey = tuple[str, int, str, str]


def image_dsc(metrics: Mapping[str, Any], dataset: str, seed: int,
              patients: Mapping[str, str] | None = None) -> dict[ImageKey, float]:
    """(dataset, seed, case, image) -> the image's DSC (percent): the mean over its scored
    classes. The case is the row's patient (metrics.json records it; for older files
    ``patients`` maps case ids to patients, from the prepared manifest), else its volume."""
    out = {}
    for row in metrics.get("per_image", []):
        vals = [v["dsc"] for v in row["scores"].values() if v["dsc"] is not None and not math.isnan(v["dsc"])]
        if vals:
            case = str(row["case"])
            unit = str(row.get("patient") or (patients or {}).get(case, case))
            out[(dataset, int(seed), unit, f"{row['case']}#{row['slice']}")] = 100.0 * float(np.mean(vals))
    return out


def case_scores(images: Mapping[ImageKey, float], keep: Iterable[ImageKey] | None = None
                ) -> dict[tuple[str, str], float]:
    """(dataset, case) -> the mean over seeds of the case's mean image DSC, on ``keep`` only."""
    keys = set(images) if keep is None else set(keep)
    per_seed: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for k in keys:
        dataset, seed, case, _ = k
        per_seed[(dataset, case, seed)].append(images[k])
    per_case: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (dataset, case, _), vals in per_seed.items():
        per_case[(dataset, case)].append(float(np.mean(vals)))
    return {k: float(np.mean(v)) for k, v in per_case.items()}


def dataset_weights(cases: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Weights that make each dataset count equally and each of its cases equally."""
    cases = list(cases)
    per_ds: dict[str, int] = defaultdict(int)
    for d, _ in cases:
        per_ds[d] += 1
    return {(d, c): 1.0 / (len(per_ds) * per_ds[d]) for d, c in cases}


def blocked_mean(scores: Mapping[tuple[str, str], float]) -> float | None:
    """The mean over datasets of the mean over their cases."""
    if not scores:
        return None
    w = dataset_weights(scores)
    return float(sum(w[k] * v for k, v in scores.items()))


def min_p_value(n_nonzero: int) -> float:
    """The smallest two-sided p a sign-flip test can give with this many non-zero differences."""
    return min(1.0, 2.0 / 2.0**n_nonzero)


def compare(a: Mapping[ImageKey, float], b: Mapping[ImageKey, float], seed: int = 0) -> dict[str, Any]:
    """``a`` against ``b`` on the images both scored (same dataset, seed, case and slice).

    Returns the ``comparison`` object of ``recommendation.json``: ``unit`` ("case"),
    ``n_cases``, ``n_images`` (distinct test slices), ``n_datasets``, ``n_seeds``,
    ``mean_diff`` (a - b, DSC points), ``ci95``, ``p``, ``min_p`` (the smallest p possible
    with these cases), ``test`` and ``interval`` (what was computed), ``wins``/``losses``
    (cases), ``per_dataset`` (each dataset's mean case difference) and ``cases_per_dataset``.
    """
    from scipy.stats import permutation_test

    common = set(a) & set(b)
    out: dict[str, Any] = {"unit": "case", "n_cases": 0, "n_images": len({(k[0], k[2], k[3]) for k in common}),
                           "n_datasets": len({k[0] for k in common}), "n_seeds": len({k[1] for k in common}),
                           "mean_diff": None, "ci95": None, "p": None, "min_p": None, "test": None, "interval": None}
    if not common:
        return out
    ca, cb = case_scores(a, common), case_scores(b, common)
    keys = sorted(ca)
    w = dataset_weights(keys)
    weights = np.array([w[k] for k in keys])
    xa, xb = np.array([ca[k] for k in keys]), np.array([cb[k] for k in keys])
    diff = xa - xb
    effect = float(weights @ diff)
    nonzero = int(np.count_nonzero(diff))
    per_ds: dict[str, list[float]] = defaultdict(list)
    for (d, _), v in zip(keys, diff):
        per_ds[d].append(float(v))
    out.update(n_cases=len(keys), mean_diff=effect, wins=int((diff > 0).sum()), losses=int((diff < 0).sum()),
               per_dataset={d: float(np.mean(v)) for d, v in sorted(per_ds.items())},
               cases_per_dataset={d: len(v) for d, v in sorted(per_ds.items())})
    blocks = "datasets weighted equally, " if out["n_datasets"] > 1 else ""

    def weighted(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sum(weights * (x - y), axis=axis)

    if nonzero == 0:
        out.update(p=1.0, test="paired permutation test on case means (every difference is 0)")
    else:
        exact = len(keys) <= EXACT_UP_TO
        res = permutation_test((xa, xb), weighted, permutation_type="samples", vectorized=True,
                               n_resamples=np.inf if exact else PERMUTATIONS, alternative="two-sided",
                               rng=np.random.default_rng(seed))
        floor = min_p_value(nonzero) if exact else max(min_p_value(nonzero), 2.0 / (PERMUTATIONS + 1))
        out.update(p=float(min(1.0, res.pvalue)), min_p=floor,
                   test=f"paired permutation test on case means ({blocks}"
                        + ("exact: all sign flips)" if exact else f"{PERMUTATIONS:,} random sign flips)"))
    out["ci95"], out["interval"] = _stratified_interval(per_ds, seed)
    return out


def _stratified_interval(by_ds: Mapping[str, list[float]], seed: int) -> tuple[list[float] | None, str]:
    """95% percentile bootstrap of the blocked mean difference, cases resampled within datasets.

    A dataset with a single test case has nothing to resample: its difference would enter as
    if known exactly and make the interval too narrow, so then no interval is given.
    ``by_ds``: each dataset's case differences.
    """
    from scipy.stats import bootstrap

    single = sorted(d for d, v in by_ds.items() if len(v) < 2)
    if single:
        return None, f"no interval: {', '.join(single)} {'has' if len(single) == 1 else 'have'} a single test case"
    samples = [np.array(v) for v in by_ds.values()]
    how = "95% bootstrap over cases" + (" within each dataset" if len(samples) > 1 else "") + \
        f" (percentile, {BOOTSTRAPS:,})"
    if all(np.all(v == v[0]) for v in samples):  # nothing varies: the interval is the point
        value = float(np.mean([v[0] for v in samples]))
        return [value, value], how

    def stat(*groups: np.ndarray, axis: int = -1) -> np.ndarray:
        return sum(g.mean(axis=axis) for g in groups) / len(groups)

    res = bootstrap(tuple(samples), stat, n_resamples=BOOTSTRAPS, vectorized=True, method="percentile",
                    rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return [float(ci.low), float(ci.high)], how


def verdict(cmp: Mapping[str, Any], alpha: float = ALPHA, negligible: float = NEGLIGIBLE) -> tuple[str, str]:
    """(``better`` | ``worse`` | ``tie`` | ``inconclusive``, why) for ``a`` against ``b``.

    Too few cases for any test to reach ``alpha``: inconclusive, saying so. Significant
    (p < ``alpha``): better or worse by the sign, a tie in practice when the difference is
    under ``negligible`` points. Not significant: a tie when the 95% interval lies within
    +-``negligible`` and every dataset has at least ``TIE_CASES`` cases (a percentile
    bootstrap of fewer is too narrow to vouch for it), otherwise inconclusive. When one
    dataset is ahead and another behind by more than ``negligible``, the reason lists each
    dataset's difference: the blocked mean hides it.
    """
    word, why = _verdict(cmp, alpha, negligible)
    per_ds = {d: round(v, 2) for d, v in (cmp.get("per_dataset") or {}).items()}
    if (cmp.get("wins") or cmp.get("losses")) and any(v > negligible for v in per_ds.values()) \
            and any(v < -negligible for v in per_ds.values()):
        split = ", ".join(f"{d} {v:+.2f}" for d, v in per_ds.items())
        why += f"; the datasets point in opposite directions ({split})"
    return word, why


def _verdict(cmp: Mapping[str, Any], alpha: float, negligible: float) -> tuple[str, str]:
    if not cmp.get("n_cases"):
        return "inconclusive", "no test cases in common: nothing to compare on"
    diff, p, ci = cmp["mean_diff"], cmp["p"], cmp["ci95"]
    n = f"{cmp['n_cases']} case{'s' if cmp['n_cases'] != 1 else ''}"
    if not cmp.get("wins") and not cmp.get("losses"):
        return "tie", f"the same score on every one of {n}"
    if cmp["min_p"] is not None and cmp["min_p"] >= alpha:
        return "inconclusive", (f"{diff:+.2f} DSC points, but with {n} no test can reach p < {alpha:g} (the smallest "
                                f"possible p is {cmp['min_p']:.3g}): more test cases are needed")
    if p < alpha:
        if abs(diff) < negligible:
            return "tie", (f"in practice: consistently {'ahead' if diff > 0 else 'behind'} on {n} (p = {p:.2g}), "
                           f"but by {abs(diff):.2f} < {negligible:g} DSC point")
        return ("better" if diff > 0 else "worse"), f"by {abs(diff):.2f} DSC points on {n} (p = {p:.2g})"
    if ci is not None and -negligible < ci[0] and ci[1] < negligible:
        fewest = min((cmp.get("cases_per_dataset") or {"": cmp["n_cases"]}).values())
        if fewest < TIE_CASES:
            return "inconclusive", (f"{diff:+.2f} DSC points on {n}, p = {p:.2g}; the 95% interval [{ci[0]:+.2f}, "
                                    f"{ci[1]:+.2f}] lies within +-{negligible:g}, but a dataset has only {fewest} "
                                    f"test case{'s' if fewest != 1 else ''}: too few to call it a tie")
        return "tie", (f"in practice: not significant (p = {p:.2g}) and the 95% interval [{ci[0]:+.2f}, {ci[1]:+.2f}] "
                       f"lies within +-{negligible:g} DSC point")
    return "inconclusive", f"{diff:+.2f} DSC points on {n}, p = {p:.2g}: could be chance"
