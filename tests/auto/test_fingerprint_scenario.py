"""tunesam auto's first steps on constructed data: the fingerprint, the Table 4 scenario rule,
the budget's syntax (issue 20)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunesam.auto.budget import parse_budget
from tunesam.auto.fingerprint import fingerprint
from tunesam.auto.scenario import FEW_SHOT_MAX_SLICES, choose_scenario
from tunesam.data.prepare import PrepareOptions, prepare


@pytest.fixture(scope="module")
def nnunet_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_factory import nnunet_dataset

    root = tmp_path_factory.mktemp("fp")
    nnunet_dataset(root / "raw", n_cases=10)
    out = root / "prep"
    prepare(root / "raw", out, PrepareOptions(split="6:2:2", seed=0))
    return out


def test_the_fingerprint_reads_what_the_data_was_built_with(nnunet_prepared: Path) -> None:
    """data_factory.volume_and_mask: per case, 3 axial slices carry label 1 (a 5 x 4 block on a
    12 x 10 slice) and the middle one label 2 (2 x 2); spacing 0.8 x 0.6 mm in plane."""
    fp = fingerprint(nnunet_prepared)
    assert [fp["splits"][s]["cases"] for s in ("train", "val", "test")] == [6, 2, 2]
    assert fp["labelled"] and fp["classes"] == {1: "gland", 2: "lesion"}
    assert fp["labelled_train_slices"] == 6 * 3  # the slices with foreground, as fine-tuning takes them
    gland, lesion = fp["object_size"]["gland"], fp["object_size"]["lesion"]
    assert gland["slices"] == 18 and gland["fraction"]["median"] == pytest.approx(20 / 120)
    assert lesion["slices"] == 6 and lesion["fraction"]["max"] == pytest.approx(4 / 120)
    assert sorted(fp["in_plane_spacing_mm"]["median"]) == pytest.approx([0.6, 0.8])
    assert fp["in_plane_spacing_mm"]["known"] is True
    assert fp["splits"]["train"]["slices_per_case"]["min"] >= 3  # train keeps non-blank slices without labels too


def test_the_fingerprint_never_reads_validation_or_test_masks(nnunet_prepared: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesam.data.store import PreparedData

    read = []
    real = PreparedData.slice

    def spy(self: PreparedData, i: int) -> tuple[np.ndarray, np.ndarray]:
        read.append(int(self.index[i]["split"]))
        return real(self, i)

    monkeypatch.setattr(PreparedData, "slice", spy)
    fingerprint(nnunet_prepared)
    from tunesam.data.store import SPLIT_CODES

    assert read and set(read) == {SPLIT_CODES["train"]}


def _fp(slices: int, labelled: bool = True, cases: int = 10) -> dict:
    return {"data": "d", "labelled": labelled, "labelled_train_slices": slices, "splits": {"train": {"cases": cases}}}


@pytest.mark.parametrize(("target", "extra", "mode", "expected"), [
    (_fp(99), [], "auto", "single"),
    (_fp(99), [], "box", "prompt"),
    (_fp(5), [], "point", "prompt"),                     # prompts asked for come first
    (_fp(5, cases=5), [], "auto", "few-shot"),
    (_fp(FEW_SHOT_MAX_SLICES), [], "auto", "few-shot"),
    (_fp(FEW_SHOT_MAX_SLICES + 1), [], "auto", "single"),
    (_fp(99), [_fp(0, labelled=False)], "auto", "multiple"),  # unlabelled images: pre-training's data
    (_fp(5), [_fp(300)], "auto", "multiple"),
])
def test_the_scenario_rule(target: dict, extra: list, mode: str, expected: str) -> None:
    s = choose_scenario(target, extra, mode)
    assert s.name == expected
    assert s.reason and s.to_dict()["paper_optimum"] == s.paper_optimum
    if expected == "multiple" and target["labelled_train_slices"] <= FEW_SHOT_MAX_SLICES:
        assert "few-shot" in s.reason  # the other row that applies is named


def test_an_unlabelled_target_and_a_bad_mode_are_refused() -> None:
    with pytest.raises(ValueError, match="image-only"):
        choose_scenario(_fp(0, labelled=False), [], "auto")
    with pytest.raises(ValueError, match="mode must be"):
        choose_scenario(_fp(99), [], "points")


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90),
                                               ("1.5h", 5400), (" 20M ", 1200)])
def test_budgets_parse(text: str, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["30", "m", "", "30 minutes", "0m", "-5m", "2h30x"])
def test_bad_budgets_are_refused_with_the_syntax(text: str) -> None:
    with pytest.raises(ValueError, match="--budget must be"):
        parse_budget(text)
