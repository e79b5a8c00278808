"""``tunesam demo``: the whole pipeline on the embedded MNI152 example, on a laptop CPU.

prepare (MNI152 T1 + tissue maps) -> train (MobileSAM-size ViT-T, 224 px input, a few
epochs) -> evaluate on the test slabs -> an overlay figure. Without ``--checkpoint`` the
model starts from random weights: the demo shows the machinery, not SAM's pretraining.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tunesam.data.examples import prepare_example
from tunesam.data.store import PreparedData
from tunesam.engine.config import TrainConfig
from tunesam.engine.trainer import train
from tunesam.eval.evaluate import evaluate_run, format_metrics, predict_rows
from tunesam.models.checkpoint import PUBLISHED
from tunesam.viz import caption, montage, overlay, save_png

DEMO_EPOCHS = 14
# 224 = 7 x 32: TinyViT's windows (7, 14, 7) tile its stages without padding, 1.6x faster than 256.
DEMO_IMAGE_SIZE = 224


def demo(out: str | Path = "tunesam-demo", checkpoint: str | None = None, epochs: int = DEMO_EPOCHS,
         image_size: int = DEMO_IMAGE_SIZE, device: str = "auto", force: bool = False, arch: str = "vit_t") -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    if checkpoint is None:
        print("Starting from RANDOM weights (no checkpoint given). For MobileSAM's pretrained weights pass "
              f"--checkpoint mobile_sam.pt, published at {PUBLISHED['mobile_sam.pt']}.")
    prepared = prepare_example("mni152", out / "data", force=force)
    print(prepared.summary())
    run = out / "run"
    cfg = TrainConfig(
        data=str(out / "data"), out=str(run), arch=arch, tune="encoder-decoder",
        # From random weights everything must learn; from a checkpoint, the paper's best
        # small set-up (ViT-T, encoder+decoder, adapters).
        method="vanilla" if checkpoint is None else "adapter",
        checkpoint=checkpoint, image_size=image_size, epochs=epochs, patience=0, batch_size=4,
        lr=1e-3, warmup=25, device=device,
    )
    if run.exists() and force:
        import shutil

        shutil.rmtree(run)
    train(cfg, resume=False)
    metrics = evaluate_run(run, split="test", device=device)
    print(format_metrics(metrics))
    print("The test slabs are parts of one brain. 'pooled' scores all their pixels together, as that brain's "
          "test region; the 2D and 3D rows average over slices and slabs, where a slice or slab at the brain's "
          "ends with a few white-matter pixels weighs as much as a whole mid-brain one. "
          "scripts/resolution_ceiling.py shows the most any model can score at this input size.")
    figure = out / "overlays.png"
    _figure(run, out / "data", figure, device, metrics)
    print(f"overlay figure (image | reference | prediction): {figure}")
    print(f"run folder: {run}  (log.csv, curves.png, weights/, metrics.json)")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return metrics


def _figure(run: Path, data_dir: Path, path: Path, device: str, metrics: dict) -> None:
    """Four test slices across the range of foreground sizes, in slab order: image | reference |
    prediction, captioned with the slice's DSC per class from ``metrics``."""
    from tunesam.engine.distributed import pick_device
    from tunesam.engine.run import load_run_model, open_run

    data = PreparedData.open(data_dir)
    scored = {(r["case"], r["slice"]): r["scores"] for r in metrics["per_image"]}
    rows = data.rows("test", include_empty=False)
    fg = np.array([int((np.asarray(data.slice(int(r))[1]) > 0).sum()) for r in rows])
    picks = rows[np.argsort(-fg)[:: max(1, len(rows) // 4)][:4]]
    dev = pick_device(device)
    model = load_run_model(open_run(run), "best", dev)
    tiles = []
    for row, pred in predict_rows(model, data, sorted(int(r) for r in picks), dev):
        image, ref = (np.asarray(a) for a in data.slice(row))
        grey = np.repeat(image[..., None], 3, 2)
        case, index = data.case(row)["id"], int(data.index[row]["slice"])
        scores = "  ".join(f"{metrics['classes'][c]['name']} DSC {_pct(v['dsc'])}"
                           for c, v in scored[case, index].items())
        where = f"{case} slice {index}"
        tile = np.concatenate([grey, overlay(image, ref), overlay(image, pred)], 1)
        tiles.append(caption(tile, f"{where}: {scores}   (image | reference | prediction)"))
    save_png(path, montage(tiles, cols=1))


def _pct(v: float | None) -> str:
    return "-" if v is None or np.isnan(v) else f"{100 * v:.0f}"
