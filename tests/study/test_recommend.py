"""The study's answer on constructed scores, with every expected figure worked out by hand:
case-level statistics, common-ground ranking, the paper's rows and the baseline line."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from tunesam.study.config import Cell
from tunesam.study.recommend import recommend
from tunesam.study.stats import compare, verdict


def _cell(dataset: str, method: str, *, checkpoint: str | None = "litemedsam", mode: str = "auto",
          shots: int | None = None, seed: int = 0, tune: str = "encoder-decoder", pretraining: bool = False,
          kind: str = "sam", arch: str = "litemedsam") -> Cell:
    return Cell(dataset, f"/data/{dataset}", kind, arch, checkpoint, None, tune, method, mode, shots, seed, {},
                pretraining)


def _baseline(dataset: str, name: str, shots: int | None = None, seed: int = 0) -> Cell:
    return Cell(dataset, f"/data/{dataset}", "baseline", name, None, None, "encoder-decoder", "vanilla", "auto", shots,
                seed, {})


def _metrics(scores: dict[tuple[str, int], float]) -> dict:
    """metrics.json of one cell from (case, slice) -> DSC in percent (one class)."""
    rows = [{"case": c, "slice": s, "scores": {"1": {"dsc": v / 100, "nsd": v / 100}}} for (c, s), v in scores.items()]
    mean = float(np.mean(list(scores.values())))
    return {"mean": {"dsc": mean, "nsd": mean}, "per_image": rows}


def _images(cases: list[str], slices: int, value) -> dict[tuple[str, int], float]:  # value(case, slice)
    return {(c, s): float(value(c, s)) for c in cases for s in range(slices)}


def _row(rows: list[dict], setting: str, condition: str = "-") -> dict:
    return next(r for r in rows if r["setting"] == setting and r["condition"] == condition)


# -- compare --------------------------------------------------------------------------------
def test_compare_uses_cases_not_slices() -> None:
    # 10 cases x 3 slices; case i is better by i + 1 on each of its slices
    b = {("d", 0, f"c{i}", s): 40.0 + i for i in range(10) for s in range(3)}
    a = {k: v + int(k[2][1:]) + 1 for k, v in b.items()}
    c = compare(a, b)
    assert (c["unit"], c["n_cases"], c["n_images"]) == ("case", 10, 30)
    assert c["mean_diff"] == pytest.approx(5.5)
    assert c["p"] == pytest.approx(2 / 2**10)  # exact: only the observed and the all-flipped signs are as extreme
    assert c["min_p"] == pytest.approx(2 / 2**10)
    assert 1 <= c["ci95"][0] < 5.5 < c["ci95"][1] <= 10
    assert verdict(c)[0] == "better"
    same = compare(b, dict(b))
    assert same["mean_diff"] == 0 and same["p"] == 1.0 and same["ci95"] == [0.0, 0.0]
    assert verdict(same)[0] == "tie"  # identical on every case
    assert compare({("d", 0, "x", 0): 1.0}, {("d", 0, "y", 0): 1.0})["n_cases"] == 0
    assert verdict(compare({}, {}))[0] == "inconclusive"


def test_compare_blocks_datasets_and_averages_seeds() -> None:
    # d1: 3 cases, d2: 2 cases; two seeds whose case scores are averaged first
    # blocked 3.0, against 2.8 over the five cases alike and 3.25 over the 16 slices alike
    diffs = {("d1", "a"): 4.0, ("d1", "b"): -1.0, ("d1", "c"): 3.0, ("d2", "x"): -2.0, ("d2", "y"): 10.0}
    a, b = {}, {}
    for (d, case), diff in diffs.items():
        for seed in (0, 1):
            for s in range(2 if d == "d1" else 5):  # slice counts must not weigh
                base = 50.0 + seed
                b[(d, seed, case, s)] = base
                a[(d, seed, case, s)] = base + diff + (1.0 if seed == 0 else -1.0)  # seeds: +1 and -1 around diff
    c = compare(a, b)
    assert (c["n_cases"], c["n_images"], c["n_datasets"], c["n_seeds"]) == (5, 16, 2, 2)
    w = {"d1": 1 / 6, "d2": 1 / 4}  # each dataset half, each case equal within it
    expected = sum(w[d] * v for (d, _), v in diffs.items())
    assert c["mean_diff"] == pytest.approx(expected) and expected == pytest.approx(3.0)  # 6 / 6 + 8 / 4
    # the exact sign-flip p, enumerated here by hand over all 2**5 patterns
    keys = list(diffs)
    null = [sum(w[k[0]] * sg * diffs[k] for k, sg in zip(keys, signs))
            for signs in itertools.product((1, -1), repeat=len(keys))]
    p_hand = 2 * min(np.mean([t >= expected - 1e-12 for t in null]), np.mean([t <= expected + 1e-12 for t in null]))
    assert c["p"] == pytest.approx(min(1.0, p_hand))
    assert c["ci95"][0] <= expected <= c["ci95"][1]


def test_the_smallest_p_counts_the_cases_that_differ() -> None:
    b = {("d", 0, f"c{i}", 0): 50.0 for i in range(20)}  # 20 cases (random sign flips), 3 of them differ
    a = {k: v + (5.0 if int(k[2][1:]) < 3 else 0.0) for k, v in b.items()}
    c = compare(a, b)
    assert c["min_p"] == pytest.approx(0.25)  # 2 / 2**3, whatever the 17 ties
    word, text = verdict(c)
    assert word == "inconclusive" and "0.25" in text


def test_a_dataset_with_one_test_case_gives_no_interval() -> None:
    b = {("big", 0, f"c{i}", 0): 50.0 + i for i in range(10)}
    b[("one", 0, "x", 0)] = 40.0
    a = {k: v + (1.0 + 0.1 * (int(k[2][1:]) % 7) if k[0] == "big" else 40.0) for k, v in b.items()}
    c = compare(a, b)
    assert c["ci95"] is None and "one has a single test case" in c["interval"]
    assert verdict(c)[0] != "tie"  # no interval to call an equivalence on


def test_patients_come_from_the_manifest_for_older_metrics(tmp_path) -> None:
    import json

    from tunesam.data.store import FORMAT, INDEX_DTYPE

    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "format_version": 2, "cases": [
        {"id": f"img{i}", "patient": f"p{i // 3}"} for i in range(12)]}))  # read as PreparedData reads it
    np.save(tmp_path / "index.npy", np.zeros(12, dtype=INDEX_DTYPE))
    for pixels in ("images.u8", "masks.u8"):
        (tmp_path / pixels).write_bytes(b"")  # the index's slices are 0 x 0
    cells = [Cell("d", str(tmp_path), "sam", "litemedsam", "litemedsam", None, "decoder", m, "auto", None, 0, {})
             for m in ("lora", "adapter")]
    metrics = {("d", c.key): {"mean": {"dsc": 50.0, "nsd": 50.0}, "per_image": [  # no "patient": an older file
        {"case": f"img{i}", "slice": 0, "scores": {"1": {"dsc": (60 + i + (3 if c.method == "lora" else 0)) / 100,
                                                       "nsd": 0.5}}} for i in range(12)]} for c in cells}
    single = _row(recommend(cells, metrics), "Single dataset")
    assert (single["comparison"]["n_cases"], single["comparison"]["n_images"]) == (4, 12)  # 4 patients, not 12


def test_four_cases_can_never_be_significant() -> None:
    b = {("d", 0, f"c{i}", s): 50.0 for i in range(4) for s in range(10)}  # 40 slices, 4 cases
    a = {k: v + 10 for k, v in b.items()}
    c = compare(a, b)
    assert (c["n_cases"], c["n_images"]) == (4, 40)
    assert c["p"] == pytest.approx(0.125) and c["min_p"] == pytest.approx(0.125)
    word, text = verdict(c)
    assert word == "inconclusive" and "smallest possible p" in text and "0.125" in text


def test_verdict_words_in_every_direction() -> None:
    rng = np.random.default_rng(0)
    n = 30
    b = {("d", 0, f"c{i}", 0): 60.0 + rng.normal() for i in range(n)}
    worse = {k: v - 4.9 + 0.1 * rng.normal() for k, v in b.items()}
    c = compare(worse, b)
    assert verdict(c)[0] == "worse" and c["ci95"][1] < 0 and c["p"] < 1e-3
    tie = {k: v + 0.3 + 0.01 * rng.normal() for k, v in b.items()}
    ct = compare(tie, b)
    assert ct["p"] < 0.05 and verdict(ct)[0] == "tie"
    noisy = {k: v + rng.normal(0, 1.0) for k, v in b.items()}  # mean ~0, interval about +-0.4
    cn = compare(noisy, b)
    assert cn["p"] > 0.05 and -1 < cn["ci95"][0] and cn["ci95"][1] < 1 and verdict(cn)[0] == "tie"
    wide = {k: v + rng.normal(0, 15.0) for k, v in b.items()}
    cw = compare(wide, b)
    assert cw["p"] > 0.05 and verdict(cw)[0] == "inconclusive"


def test_datasets_that_disagree_are_named_in_the_verdict() -> None:
    # brain: a loses 20 points on each of 4 cases; prostate: a wins 28 on each of 2 cases.
    # Blocked mean (each dataset weighs half): (-20 + 28) / 2 = +4. Flipping signs, the statistic
    # is T = -2.5 * (sum of the 4 brain signs) + 7 * (sum of the 2 prostate signs); |T| >= 4 in
    # all 32 patterns whose prostate sum is +-2, and in 20 of the 32 whose prostate sum is 0
    # (brain sum +-2 or +-4: 10 of 16 brain patterns, times 2): p = 52 / 64.
    b = {("brain", 0, f"s{i}", "0"): 60.0 for i in range(4)} | {("prostate", 0, f"p{i}", "0"): 50.0 for i in range(2)}
    a = {k: v - 20.0 if k[0] == "brain" else v + 28.0 for k, v in b.items()}
    c = compare(a, b)
    assert c["mean_diff"] == pytest.approx(4.0) and c["ci95"] == pytest.approx([4.0, 4.0])
    assert c["per_dataset"] == pytest.approx({"brain": -20.0, "prostate": 28.0})
    assert c["cases_per_dataset"] == {"brain": 4, "prostate": 2}
    assert c["p"] == pytest.approx(52 / 64)
    word, why = verdict(c)
    assert word == "inconclusive" and "opposite directions (brain -20.00, prostate +28.00)" in why
    same_sign = compare({k: v + 2.0 for k, v in b.items()}, b)  # both datasets ahead: no such note
    assert "opposite" not in verdict(same_sign)[1]
    # a significant result keeps its word and gets the note: 12 brain cases -6, 12 prostate +2
    b2 = {("brain", 0, f"s{i}", "0"): 60.0 for i in range(12)} | {("prostate", 0, f"p{i}", "0"): 50.0 for i in range(12)}
    a2 = {k: v - 6.0 if k[0] == "brain" else v + 2.0 for k, v in b2.items()}
    c2 = compare(a2, b2)
    assert c2["mean_diff"] == pytest.approx(-2.0) and c2["p"] < 0.05  # the brain's 12 consistent losses carry it
    word2, why2 = verdict(c2)
    assert word2 == "worse" and "opposite directions (brain -6.00, prostate +2.00)" in why2


def test_a_narrow_interval_from_few_cases_is_not_a_tie() -> None:
    # six differences of +-0.1..0.3 around 0 in one dataset: the test cannot tell (p well above
    # 0.05) and the interval lies within +-1 point: a tie in practice, six cases being enough
    six = {("f", 0, f"c{i}", "0"): 60.0 + d for i, d in enumerate([0.3, -0.2, 0.2, -0.3, 0.1, -0.1])}
    c6 = compare(six, {k: 60.0 for k in six})
    assert c6["mean_diff"] == pytest.approx(0.0, abs=1e-9) and c6["p"] > 0.05
    assert -1 < c6["ci95"][0] and c6["ci95"][1] < 1 and verdict(c6)[0] == "tie"
    # the same six beside a second dataset of two cases (+-0.2): the interval stays within +-1,
    # but two cases give a percentile bootstrap three values: not a tie
    two = {("g", 0, f"c{i}", "0"): 60.0 + d for i, d in enumerate([0.2, -0.2])}
    both = six | two
    cb = compare(both, {k: 60.0 for k in both})
    assert cb["cases_per_dataset"] == {"f": 6, "g": 2} and -1 < cb["ci95"][0] and cb["ci95"][1] < 1
    word, why = verdict(cb)
    assert word == "inconclusive" and "only 2 test cases" in why


# -- rows -------------------------------------------------------------------------------------
def test_rank_by_case_means_over_datasets_and_seeds() -> None:
    # A: d1 90, d2 50; B: d1 80, d2 62 (seed means). Blocked means: A 70, B 71, so B wins; pooled over
    # slices A would win (d1 has 20 slices per case, d2 one).
    cells, metrics = [], {}
    for method, (v1, v2) in {"lora": (90, 50), "adapter": (80, 62)}.items():
        for seed in (0, 1):
            for d, (cases, slices, v) in {"d1": (["p1", "p2"], 10, v1), "d2": (["q1", "q2", "q3", "q4"], 1, v2)}.items():
                c = _cell(d, method, seed=seed)
                cells.append(c)
                metrics[(d, c.key)] = _metrics(_images(cases, slices, lambda *_: v + (2 if seed else -2)))
    rows = recommend(cells, metrics)
    single = _row(rows, "Single dataset")
    assert single["best"].endswith("_adapter_auto_full") and single["runner_up"].endswith("_lora_auto_full")
    assert single["best_dsc"] == pytest.approx(71.0) and single["runner_up_dsc"] == pytest.approx(70.0)
    assert single["best_weights_class"] == "medical" and not single["provisional"]
    cmp = single["comparison"]
    assert cmp["mean_diff"] == pytest.approx(1.0) and (cmp["n_cases"], cmp["n_images"]) == (6, 24)
    assert set(single["comparison"]) >= {"unit", "n_cases", "n_images", "mean_diff", "ci95", "p", "test"}
    assert single["verdict"] == "inconclusive"  # -10 on every d1 case, +12 on every d2 case: not a consistent gain
    assert single["common_units"] == ["d1/s0", "d1/s1", "d2/s0", "d2/s1"]


def test_partial_study_ranks_on_common_ground_only() -> None:
    # LoRA finished only the easy dataset, Adapter both; LoRA is 2 points worse on every image they share
    easy = [f"e{i}" for i in range(6)]
    hard = [f"h{i}" for i in range(6)]
    cells = [_cell("easy", "lora"), _cell("hard", "lora"), _cell("easy", "adapter"), _cell("hard", "adapter")]
    metrics = {("easy", cells[0].key): _metrics(_images(easy, 3, lambda c, s: 87 + s)),
               ("easy", cells[2].key): _metrics(_images(easy, 3, lambda c, s: 89 + s)),
               ("hard", cells[3].key): _metrics(_images(hard, 3, lambda c, s: 45 + s))}
    single = _row(recommend(cells, metrics), "Single dataset")
    assert single["best"].endswith("_adapter_auto_full")  # the old report named LoRA (89 vs 67.9)
    assert single["best_dsc"] == pytest.approx(90.0) and single["runner_up_dsc"] == pytest.approx(88.0)
    assert single["comparison"]["n_cases"] == 6 and single["comparison"]["mean_diff"] == pytest.approx(2.0)
    assert single["provisional"] and single["missing"] == [f"hard/{cells[1].key}"]
    assert single["verdict"] == "better" and single["comparison"]["p"] == pytest.approx(2 / 2**6)


def test_rows_are_the_papers_and_baselines_are_not_candidates() -> None:
    cases = [f"c{i}" for i in range(8)]
    cells = {
        "lora": _cell("d", "lora"), "adapter": _cell("d", "adapter"),
        "sam": _cell("d", "lora", checkpoint="sam_vit_b_01ec64.pth", arch="vit_b"),
        "random": _cell("d", "vanilla", checkpoint=None, arch="vit_t"),
        "sslsam": _cell("d", "adapter", checkpoint="runs/sslsam/checkpoint.pth", pretraining=True),
        "unet": _baseline("d", "unet"), "nnunet": _baseline("d", "nnunet"),
        "box_lora": _cell("d", "lora", mode="box"), "box_adapter": _cell("d", "adapter", mode="box"),
        "point_lora": _cell("d", "lora", mode="point"), "point_adapter": _cell("d", "adapter", mode="point"),
        "shot_lora": _cell("d", "lora", shots=5), "shot_adapter": _cell("d", "adapter", shots=5),
        "shot_unet": _baseline("d", "unet", shots=5),
    }
    value = {"lora": 80, "adapter": 78, "sam": 76, "random": 60, "sslsam": 75, "unet": 95, "nnunet": 85,
             "box_lora": 90, "box_adapter": 88, "point_lora": 70, "point_adapter": 69,
             "shot_lora": 60, "shot_adapter": 61, "shot_unet": 50}
    metrics = {("d", c.key): _metrics(_images(cases, 2, lambda case, s, n=name: value[n] + int(case[1:]) % 3))
               for name, c in cells.items()}
    rows = recommend(list(cells.values()), metrics)
    assert [(r["setting"], r["condition"]) for r in rows] == [
        ("Single dataset", "-"), ("Multiple datasets", "-"), ("Single dataset", "Few-shot (5-shot)"),
        ("Single dataset", "Prompt-based (box)"), ("Single dataset", "Prompt-based (point)")]
    single = _row(rows, "Single dataset")
    assert single["best"] == cells["lora"].strategy and single["runner_up"] == cells["adapter"].strategy
    ranked = [e["strategy"] for e in single["ranking"]]
    assert cells["unet"].strategy not in ranked and cells["sslsam"].strategy not in ranked
    assert {e["weights_class"] for e in single["ranking"]} == {"medical", "original", "random"}
    assert single["comparison"]["mean_diff"] == pytest.approx(2.0)
    line = single["baseline"]  # the paper's other question: does fine-tuned SAM beat the best baseline?
    assert line["best_sam"] == cells["lora"].strategy and line["best_baseline"] == cells["unet"].strategy
    assert line["comparison"]["mean_diff"] == pytest.approx(-15.0) and line["verdict"] == "worse"
    multi = _row(rows, "Multiple datasets")  # own pre-training against the best single-dataset start
    assert multi["best"] == cells["sslsam"].strategy and multi["runner_up"] == cells["lora"].strategy
    assert multi["comparison"]["mean_diff"] == pytest.approx(-5.0) and multi["verdict"] == "worse"
    few = _row(rows, "Single dataset", "Few-shot (5-shot)")
    assert few["best"] == cells["shot_adapter"].strategy and few["baseline"]["best_baseline"] == cells["shot_unet"].strategy
    box, point = _row(rows, "Single dataset", "Prompt-based (box)"), _row(rows, "Single dataset", "Prompt-based (point)")
    assert box["best"] == cells["box_lora"].strategy and point["best"] == cells["point_lora"].strategy
    assert box["wins_both_prompts"] and point["wins_both_prompts"]
    assert box["comparison"]["n_cases"] == 8 and box["baseline"]["note"] == "the baselines segment without prompts"


def test_multiple_datasets_row_says_what_is_missing() -> None:
    cells = [_cell("d", "lora"), _cell("d", "adapter")]
    metrics = {("d", c.key): _metrics(_images(["a", "b"], 1, lambda *_: 50)) for c in cells}
    multi = _row(recommend(cells, metrics), "Multiple datasets")
    assert multi["best"] is None and "tunesam pretrain" in multi["verdict_text"]
    assert multi["verdict"] == "inconclusive"


def test_the_report_states_each_strategys_augmentation_and_flags_a_mixed_row() -> None:
    from tunesam.study.report import recommendation_markdown

    cases = [f"c{i}" for i in range(5)]
    dec = Cell("d", "/data/d", "sam", "litemedsam", "litemedsam", None, "decoder", "lora", "auto", None, 0,
               {"cache_embeddings": True})
    views = Cell("d", "/data/d", "sam", "litemedsam", "litemedsam", None, "decoder", "adapter", "auto", None, 0,
                 {"cache_embeddings": True, "cache_views": 4})
    encdec = _cell("d", "adapter")
    assert (dec.augmentation, views.augmentation, encdec.augmentation) == ("none", "views:4", "online")
    metrics = {("d", c.key): _metrics(_images(cases, 1, lambda *_, v=v: v)) for c, v in ((dec, 70), (views, 71),
                                                                                         (encdec, 72))}
    text = recommendation_markdown(recommend([dec, views, encdec], metrics), [dec, views, encdec], [])
    assert "augmentation none" in text and "augmentation views:4" in text and "augmentation online" in text
    assert "train with different augmentation" in text
    same = recommendation_markdown(recommend([dec], {("d", dec.key): metrics[("d", dec.key)]}), [dec], [])
    assert "different augmentation" not in same
