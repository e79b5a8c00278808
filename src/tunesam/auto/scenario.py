"""Which of the paper's Table 4 scenarios a dataset is, and why.

Table 4 (Gu et al., MELBA 2025) gives the optimal strategy per scenario: single dataset
(ViT-H + En/Decoder + LoRA), multiple datasets (SSLSAM + En/Decoder + Adapter), few-shot
(ViT-B + En/Decoder + Adapter) and prompt-based (ViT-T + En/Decoder + Adapter). The rule
below reads the user's request and the fingerprints, in this order: prompts asked for; extra
datasets or unlabelled images given (what pre-training uses); few labelled training slices;
otherwise a single dataset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The paper's few-shot regime trains on 5 images (section 4.4; its k-shot figure goes to 20):
# at most this many labelled training slices is few-shot.
FEW_SHOT_MAX_SLICES = 20

SCENARIOS = {
    "single": ("Single dataset", "-", "ViT-H + En/Decoder + LoRA"),
    "multiple": ("Multiple datasets", "-", "SSLSAM + En/Decoder + Adapter"),
    "few-shot": ("Single dataset", "Few-shot", "ViT-B + En/Decoder + Adapter"),
    "prompt": ("Single dataset", "Prompt-based", "ViT-T + En/Decoder + Adapter"),
}


@dataclass(frozen=True)
class Scenario:
    name: str  # a key of SCENARIOS
    reason: str

    @property
    def paper_optimum(self) -> str:
        return SCENARIOS[self.name][2]

    def to_dict(self) -> dict[str, Any]:
        setting, condition, optimum = SCENARIOS[self.name]
        return {"name": self.name, "setting": setting, "condition": condition, "paper_optimum": optimum,
                "reason": self.reason}


def choose_scenario(target: dict[str, Any], extra: list[dict[str, Any]], mode: str = "auto") -> Scenario:
    """The scenario of ``target`` (its fingerprint), with ``extra`` datasets' fingerprints
    (labelled or not) given beside it, for ``mode`` (``auto``, ``box`` or ``point``)."""
    if mode not in ("auto", "box", "point"):
        raise ValueError(f"mode must be auto, box or point, got {mode!r}")
    if not target.get("labelled", False):
        raise ValueError(f"{target.get('data')}: image-only (prepared with --unlabelled): the dataset to segment "
                         "needs masks; give image-only data as an extra dataset, after the labelled one")
    n = int(target["labelled_train_slices"])
    few = n <= FEW_SHOT_MAX_SLICES
    if mode != "auto":
        return Scenario("prompt", f"{mode} prompts were asked for (--mode {mode}): Table 4's prompt-based row"
                        + (f"; the training split is also few-shot ({n} labelled slices)" if few else ""))
    if extra:
        unlabelled = sum(not e.get("labelled", False) for e in extra)
        what = (f"{len(extra)} extra dataset(s)" + (f", {unlabelled} of them image-only" if unlabelled else ""))
        return Scenario("multiple", f"{what} given beside the target: Table 4's multiple-datasets row, where "
                        "pre-training on them (SSLSAM, SupSAM) is a candidate"
                        + (f"; the target is few-shot ({n} labelled training slices)" if few else ""))
    if few:
        return Scenario("few-shot", f"{n} labelled training slices (at most {FEW_SHOT_MAX_SLICES} is few-shot, as the "
                        f"paper's 5-shot regime): Table 4's few-shot row")
    return Scenario("single", f"one labelled dataset with {n} training slices from "
                    f"{target['splits']['train']['cases']} cases, no prompts: Table 4's single-dataset row")
