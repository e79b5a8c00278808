"""Pre-training: SupSAM's prompt sampling and frozen prompt encoder, MAE's masking, loss and
schedule, the SAM-layout checkpoints they write, and resuming after a kill."""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from tunesam.data.preprocess import is_blank
from tunesam.data.prompts import simulate
from tunesam.models.build import build_model
from tunesam.models.checkpoint import read_state_dict
from tunesam.models.registry import build_sam
from tunesam.pretrain import mae as M
from tunesam.pretrain.config import PretrainConfig
from tunesam.pretrain.data import PromptSlices, collate_prompts
from tunesam.pretrain.runner import pretrain

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def _start_checkpoint(tmp_path: Path, arch: str, seed: int = 1) -> Path:
    """A random SAM-layout checkpoint of ``arch`` at its native size, written as a user's file."""
    torch.manual_seed(seed)
    path = tmp_path / f"{arch}_start.pth"
    torch.save(build_sam(arch).state_dict(), path)
    return path


# -- SupSAM -----------------------------------------------------------------------------------
class _Store:
    """The two calls PromptSlices makes of a prepared store, on hand-made slices."""

    def __init__(self, masks: list[np.ndarray]) -> None:
        self.masks = masks
        self.folder = Path("hand-made")

    def rows(self, split: str, include_empty: bool = True) -> np.ndarray:
        return np.arange(len(self.masks))

    def slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.masks[i].shape, 90, np.uint8), self.masks[i]


# The components of _two_class_mask as (class, rows, cols), and their tight boxes (x0, y0, x1, y1).
COMPONENTS = [(1, slice(5, 12), slice(5, 12)), (1, slice(30, 40), slice(10, 18)), (1, slice(45, 55), slice(60, 75)),
              (2, slice(5, 9), slice(40, 70)), (2, slice(20, 24), slice(40, 70))]
TIGHT_BOXES = [(c.start, r.start, c.stop - 1, r.stop - 1) for _, r, c in COMPONENTS]
SCALE_64 = 64 / 80  # the 60 x 80 slice's longest side to the 64-px input


def _two_class_mask() -> np.ndarray:
    """Class 1: three separate squares; class 2: two separate bars."""
    m = np.zeros((60, 80), np.uint8)
    for cls, rows, cols in COMPONENTS:
        m[rows, cols] = cls
    return m


def _component_masks() -> list[np.ndarray]:
    masks = []
    for _, rows, cols in COMPONENTS:
        m = np.zeros((60, 80), np.uint8)
        m[rows, cols] = 1
        masks.append(m)
    return masks


def test_supsam_items_prompt_one_class_and_every_component_once() -> None:
    mask = _two_class_mask()
    ds = PromptSlices([_Store([mask])], "train", image_size=64, augment=True, seed=3)
    from tunesam.letterbox import letterbox_mask

    classes_64 = letterbox_mask(mask, 64).numpy()  # the class map at the input size
    component_masks = [letterbox_mask(m, 64).numpy().astype(bool) for m in _component_masks()]
    seen_classes, kinds, shifts = set(), [], []
    for epoch in range(40):
        item = ds[(0, epoch)]
        targets = item["masks"].numpy().astype(bool)
        classes = {int(c) for t in targets for c in np.unique(classes_64[t])}
        assert len(classes) == 1  # one object class per image
        cls = classes.pop()
        seen_classes.add(cls)
        assert len(targets) == {1: 3, 2: 2}[cls]  # one prompt per connected component
        for t in targets:
            assert ndimage.label(t)[1] == 1  # each target is one component
        assert targets.sum(0).max() == 1  # distinct components, none prompted twice
        kinds += item["kind"].tolist()
        # a box prompt is its component's tight box moved by at most the noise cap; a point
        # prompt lies on its component
        for k, t, box, point in zip(item["kind"], targets, item["box"], item["point"]):
            if k == 0:
                (tight,) = [b for b, m in zip(TIGHT_BOXES, component_masks) if np.array_equal(m, t)]
                shifts += (box.numpy() - np.array(tight) * SCALE_64).tolist()
            else:
                x, y = (int(round(v)) for v in point.tolist())
                assert t[min(y, 47), min(x, 63)] or t[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any()
    assert seen_classes == {1, 2}
    # The paper's rule: noise of sd 10% of the box side, clipped at 20 px at 1024. The prompt
    # is drawn on the 60 x 80 slice (cap 20 * 80 / 1024 = 1.5625 px) and scaled by 64 / 80 to
    # the input: 1.25 px. The 30-px bars' sd (3 px) exceeds the cap, so some sides sit at it.
    cap = 20.0 * 80 / 1024 * SCALE_64
    shifts = np.abs(np.array(shifts))
    assert shifts.max() <= cap + 1e-5
    assert np.isclose(shifts, cap, atol=1e-5).sum() > 10  # clipped sides: the cap binds
    assert np.median(shifts) > 0.1  # noise, not tight boxes with rounding
    val = PromptSlices([_Store([mask])], "val", image_size=64, augment=False, seed=3)[(0, 0)]
    for k, t, box in zip(val["kind"], val["masks"], val["box"]):
        if k == 0:  # validation prompts are the tight boxes themselves
            (tight,) = [b for b, m in zip(TIGHT_BOXES, component_masks) if np.array_equal(m, t.numpy() > 0)]
            assert np.allclose(box.numpy(), np.array(tight) * SCALE_64, atol=1e-5)
    assert 0.3 < np.mean(kinds) < 0.7  # boxes and points with equal odds
    batch = collate_prompts([ds[(0, 0)], ds[(0, 1)]])
    assert batch["image"].shape == (2, 1, 64, 64)
    assert len(batch["owner"]) == len(batch["kind"]) == len(batch["masks"])
    assert set(batch["owner"].tolist()) == {0, 1}


def test_validation_prompts_are_fixed_and_the_cap_keeps_a_subset() -> None:
    mask = _two_class_mask()
    val = PromptSlices([_Store([mask])], "val", image_size=64, augment=False, seed=3)
    a, b = val[(0, 0)], val[(0, 7)]
    assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["box"], b["box"]) and torch.equal(a["kind"], b["kind"])
    capped = PromptSlices([_Store([mask])], "train", image_size=64, augment=True, seed=0, max_prompts=1)
    assert all(len(capped[(0, e)]["kind"]) == 1 for e in range(10))


def test_code_rules_grow_boxes_and_pick_deep_points() -> None:
    comp = np.zeros((100, 100), bool)
    comp[20:60, 30:50] = True  # 20 wide, 40 tall
    rng = np.random.default_rng(0)
    dist = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
    top = np.quantile(dist[comp], 0.9)
    for _ in range(50):
        x0, y0, x1, y1 = simulate(comp, "box", 100, rng, rules="code").box
        assert 30 - 2.0 <= x0 <= 30 and 49 <= x1 <= 49 + 2.0 and 20 - 4.0 <= y0 <= 20 and 59 <= y1 <= 59 + 4.0
        x, y = simulate(comp, "point", 100, rng, rules="code").point
        assert dist[int(y), int(x)] >= top
    with pytest.raises(ValueError, match="must be one of paper, code, tight"):
        simulate(comp, "box", 100, rng, rules="other")


def test_pretrain_prompt_keeps_the_prompt_encoder_and_exports_sam_layout(prepared: Path, tmp_path: Path) -> None:
    start = _start_checkpoint(tmp_path, "litemedsam_test")
    cfg = PretrainConfig(objective="prompt", data=(str(prepared),), out=str(tmp_path / "sup"), arch=None,
                         checkpoint=str(start), epochs=3, batch_size=4, lr=2e-3, warmup=3, device="cpu",
                         num_workers=0, patience=0)
    run = pretrain(cfg)
    rows = _rows(run)
    assert len(rows) == 3 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    before, after = read_state_dict(start), read_state_dict(run / "checkpoint.pth")
    assert before.keys() == after.keys()  # the official layout, key for key
    prompt_keys = [k for k in before if k.startswith("prompt_encoder.")]
    assert prompt_keys and all(torch.equal(before[k], after[k]) for k in prompt_keys)  # frozen: same bytes
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder."))
    # round trip: the checkpoint is the best epoch's model, loaded strictly by build_model
    best = max(range(3), key=lambda i: (float(rows[i]["val_dsc"]), -i)) + 1
    import json

    assert json.loads((run / "summary.json").read_text())["checkpoint_epoch"] == best
    model = build_model(None, run / "checkpoint.pth")
    assert model.arch == "litemedsam_test"
    for k, v in model.state_dict().items():
        assert torch.equal(v, after[k])
    from tunesam.eval.evaluate import evaluate_checkpoint

    # evaluate --checkpoint scores the export as the model's own box masks do (the random start
    # too, whose masks are not empty, so the comparison has something to find)
    for checkpoint in (run / "checkpoint.pth", start):
        scored = evaluate_checkpoint(str(checkpoint), None, str(prepared), "box", "test", device="cpu",
                                     prompt_rules="tight")
        by_hand = _tight_box_dsc(build_model(None, checkpoint), prepared, "test")
        assert len(scored["per_image"]) == len(by_hand) == 6
        ours = [100.0 * r["scores"]["1"]["dsc"] for r in scored["per_image"]]
        assert np.allclose(ours, by_hand, atol=1e-6), (checkpoint.name, ours, by_hand)
        assert math.isclose(scored["mean"]["dsc"], float(np.mean(by_hand)), abs_tol=1e-4)
        if checkpoint == start:
            assert min(by_hand) > 1.0


@torch.no_grad()
def _tight_box_dsc(model: torch.nn.Module, prepared: Path, split: str) -> list[float]:
    """DSC (percent) per slice of ``split`` with foreground, worked out here through the
    segmenter's forward (logits at the input size) rather than evaluate's path: one tight box
    per 8-connected component, scaled by S / max(h, w); each single-mask output cropped to the
    letterboxed extent, resized bilinearly to the slice and taken above 0; their union scored."""
    import torch.nn.functional as F

    from tunesam.letterbox import letterbox_image
    from tunesam.data.store import PreparedData

    data = PreparedData.open(prepared)
    model.eval()
    size = model.image_size
    scores = []
    for row in data.rows(split, include_empty=False):
        image, mask = data.slice(int(row))
        ref = np.asarray(mask) > 0
        h, w = ref.shape
        labels, n = ndimage.label(ref, structure=np.ones((3, 3), int))
        boxes = []
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels == k)
            boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
        scale = size / max(h, w)
        rh, rw = round(h * scale), round(w * scale)
        x = letterbox_image(np.asarray(image), size, model.interpolation)[None].expand(n, -1, -1, -1)
        logits = model(x, boxes=torch.tensor(boxes, dtype=torch.float32) * scale,
                       valid=torch.tensor([[rh, rw]] * n))[:, :1, :rh, :rw]
        pred = (F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0).any(0).numpy()
        scores.append(100.0 * 2 * (pred & ref).sum() / (pred.sum() + ref.sum()))
    return scores


def test_prompt_pretraining_stops_after_patience_epochs_without_a_better_val_dsc(prepared: Path,
                                                                                 tmp_path: Path) -> None:
    # lr 1e-30 leaves every weight as it was (and vit_test has no batch norm), so validation
    # never improves after epoch 1: patience 2 stops the run at epoch 3 of 10
    cfg = PretrainConfig(objective="prompt", data=(str(prepared),), out=str(tmp_path / "stop"), arch="vit_test",
                         image_size=64, epochs=10, batch_size=6, lr=1e-30, warmup=0, patience=2, device="cpu",
                         num_workers=0)
    rows = _rows(pretrain(cfg))
    assert len(rows) == 3 and len({r["val_dsc"] for r in rows}) == 1
    resolved = PretrainConfig(objective="prompt", data=("d",), out="o", arch="vit_b").resolved()
    assert (resolved.patience, resolved.batch_size, resolved.lr, resolved.prompt_rules) == (5, 3, 1e-4, "paper")


# -- MAE ----------------------------------------------------------------------------------------
def test_random_mask_hides_exactly_the_ratio() -> None:
    g = torch.Generator().manual_seed(0)
    mask = M.random_mask(5, 256, 0.75, g)
    assert mask.shape == (5, 256) and (mask.sum(1) == 192).all()
    assert not torch.equal(mask[0], mask[1])  # drawn per image
    assert 0.7 < mask.float().mean(0).mean() < 0.8


def _tiny_mae(arch: str = "litemedsam_test", variant: str = "masked-grid", size: int = 64) -> tuple:
    from tunesam.models.registry import get_spec

    sam = build_sam(arch, image_size=size)
    net = M.MaskedAutoencoder(sam.image_encoder, size, get_spec(arch).patch_size, 16, variant, 32, 2, 4)
    return sam, net


@pytest.mark.parametrize("arch, variant", [("litemedsam_test", "masked-grid"), ("vit_t_test", "masked-grid"),
                                           ("vit_test", "masked-grid"), ("vit_test", "visible")])
def test_mae_loss_counts_hidden_real_patches_only(arch: str, variant: str) -> None:
    sam, net = _tiny_mae(arch, variant)
    net.eval()
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    valid = torch.tensor([[64, 64], [64, 40]])  # the second image: letterbox padding on the right
    images[1, :, :, 40:] = 0
    mask = M.random_mask(2, 16, 0.75, torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss, pred = net(images, valid, mask)
    # worked out by hand: mean over hidden patches with a real pixel of the per-patch MSE
    target = M.patchify(images, 16)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    cols = torch.arange(16) % 4
    real = torch.stack([torch.ones(16, dtype=torch.bool), cols * 16 < 40])
    counted = mask & real
    expected = ((pred - target) ** 2).mean(-1)[counted].mean()
    assert math.isclose(float(loss), float(expected), rel_tol=1e-5)
    # predictions of visible patches (and of padding) do not count
    def scramble_visible(_, __, out: torch.Tensor) -> torch.Tensor:
        return torch.where(counted[..., None], out, out + 1e3)

    handle = net.decoder_pred.register_forward_hook(scramble_visible)
    try:
        with torch.no_grad():
            scrambled, _ = net(images, valid, mask)
    finally:
        handle.remove()
    assert math.isclose(float(scrambled), float(loss), rel_tol=1e-5)
    # hidden pixels reach nothing: changing them leaves every prediction as it was
    hidden_px = torch.nn.functional.interpolate(mask.reshape(2, 1, 4, 4).float(), scale_factor=16)[:, 0].bool()
    changed = images + 5.0 * hidden_px[:, None]
    with torch.no_grad():
        _, pred2 = net(changed, valid, mask)
    assert torch.allclose(pred, pred2, atol=1e-5)


def test_mae_schedule_and_recipe_values() -> None:
    base = 1.5e-4 * 32 / 256
    assert M.cosine_lr_at(0, base, 10, 110) == 0.0
    assert math.isclose(M.cosine_lr_at(5, base, 10, 110), base / 2)
    assert math.isclose(M.cosine_lr_at(10, base, 10, 110), base)
    assert math.isclose(M.cosine_lr_at(60, base, 10, 110), base / 2)  # half-way through the cosine
    assert math.isclose(M.cosine_lr_at(110, base, 10, 110), 0.0, abs_tol=1e-15)
    cfg = PretrainConfig(objective="mae", data=("d",), out="o", arch="vit_b").resolved()
    assert (cfg.batch_size, cfg.accumulate, cfg.weight_decay, cfg.mask_ratio) == (2, 16, 0.05, 0.75)
    assert math.isclose(cfg.lr, base)  # 1.5e-4 x (2 x 16) / 256
    assert math.isclose(PretrainConfig(objective="mae", data=("d",), out="o", arch="vit_b").resolved(world=8).lr,
                        1.5e-4 * 256 / 256)
    assert (cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.mae_variant) == (512, 8, 16, "visible")
    sam, net = _tiny_mae()
    groups = M.mae_parameter_groups(net, 0.05)
    names = {id(p): n for n, p in net.named_parameters()}
    plain = {names[id(p)] for p in groups[1]["params"]}
    assert "mask_token" in plain and all(names[id(p)].endswith("weight") for p in groups[0]["params"])
    assert not any(n.endswith("bias") or "norm" in n for n in (names[id(p)] for p in groups[0]["params"]))
    with pytest.raises(ValueError, match="TinyViT"):
        PretrainConfig(objective="mae", data=("d",), out="o", arch="vit_t", mae_variant="visible").resolved()


def test_sine_cosine_positions() -> None:
    pos = M.sincos_2d(8, 3)
    assert pos.shape == (9, 8)
    # cell (row 1, col 2): row half sin/cos of 1 * omega, column half of 2 * omega, omega = (1, 1e-2)
    omega = np.array([1.0, 1e-2])
    want = np.concatenate([np.sin(1 * omega), np.cos(1 * omega), np.sin(2 * omega), np.cos(2 * omega)])
    assert np.allclose(pos[1 * 3 + 2].numpy(), want, atol=1e-6)


def test_pretrain_mae_exports_the_encoder_with_the_start_prompt_parts(prepared: Path, tmp_path: Path) -> None:
    start = _start_checkpoint(tmp_path, "litemedsam_test")
    cfg = PretrainConfig(objective="mae", data=(str(prepared),), out=str(tmp_path / "ssl"), arch=None,
                         checkpoint=str(start), epochs=3, batch_size=4, accumulate=2, lr=2e-3, warmup=2,
                         device="cpu", num_workers=0, decoder_dim=32, decoder_depth=2, decoder_heads=4)
    run = pretrain(cfg)
    rows = _rows(run)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert sorted(p.name for p in (run / "reconstructions").iterdir()) == [f"epoch_00{i}.png" for i in (1, 2, 3)]
    before, after = read_state_dict(start), read_state_dict(run / "checkpoint.pth")
    assert before.keys() == after.keys()
    for k in before:
        if not k.startswith("image_encoder."):
            assert torch.equal(before[k], after[k]), k  # prompt encoder and decoder: the start's
    trained = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["weights"]
    for k, v in after.items():
        if k.startswith("image_encoder."):
            assert torch.equal(v, trained["encoder." + k.removeprefix("image_encoder.")]), k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder.layers."))
    model = build_model(None, run / "checkpoint.pth")  # strict load
    assert model.load_report is not None and model.arch == "litemedsam_test"


def test_blank_slices_are_dropped() -> None:
    assert is_blank(np.zeros((20, 20), np.uint8))
    few = np.zeros((20, 20), np.uint8)
    few[0, :3] = 200  # 3 of 400 pixels
    assert is_blank(few)
    few[:3, :] = 50
    assert not is_blank(few)


# -- runs: CLI, resume after a kill ------------------------------------------------------------
KILLER = """
import os, signal, sys
import tunesam.engine.fit as R
from tunesam.cli import main

original, calls = R.save_state, [0]

def kill_at(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)

R.save_state = kill_at
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("objective", ["prompt", "mae"])
def test_killed_pretraining_resumes_to_the_same_checkpoint(prepared: Path, tmp_path: Path, objective: str) -> None:
    def cli(out: Path, *extra: str) -> list[str]:
        args = ["pretrain", objective, "--data", str(prepared), "--out", str(out), "--arch", "vit_t_test",
                "--image-size", "64", "--epochs", "3", "--batch-size", "6", "--lr", "1e-3", "--warmup", "2",
                "--device", "cpu", "--num-workers", "0", "--patience", "0", *extra]
        if objective == "mae":
            args += ["--accumulate", "2", "--decoder-dim", "32", "--decoder-depth", "1", "--decoder-heads", "2"]
        return args

    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, "-m", "tunesam", *cli(full)], check=True, env=ENV, capture_output=True)
    (tmp_path / "killer.py").write_text(KILLER)
    res = subprocess.run([sys.executable, str(tmp_path / "killer.py"), *cli(killed)], env=ENV, capture_output=True)
    assert res.returncode == -signal.SIGKILL
    assert len(_rows(killed)) == 1  # killed while saving epoch 2's state
    res = subprocess.run([sys.executable, "-m", "tunesam", *cli(killed, "--resume")], env=ENV, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert [r["train_loss"] for r in _rows(full)] == [r["train_loss"] for r in _rows(killed)]
    a, b = read_state_dict(full / "checkpoint.pth"), read_state_dict(killed / "checkpoint.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    res = subprocess.run([sys.executable, "-m", "tunesam", *cli(killed, "--resume", "--lr", "2e-3")], env=ENV,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--lr: run 0.001, now 0.002" in res.stderr
    res = subprocess.run([sys.executable, "-m", "tunesam", *cli(full)], env=ENV, capture_output=True, text=True)
    assert res.returncode == 2 and "already exists" in res.stderr
    if objective == "mae":  # a resume after the last epoch draws its figure again (a kill there lost it)
        (full / "reconstructions" / "epoch_003.png").unlink()
        subprocess.run([sys.executable, "-m", "tunesam", *cli(full, "--resume")], check=True, env=ENV,
                       capture_output=True)
        assert (full / "reconstructions" / "epoch_003.png").stat().st_size > 1000


def test_study_cells_from_pretraining_checkpoints_answer_the_multi_dataset_row(tmp_path: Path) -> None:
    from tunesam.study.config import parse_study

    runs = {}
    for name, objective in (("ssl", "mae"), ("sup", "prompt")):
        run = tmp_path / name
        run.mkdir()
        torch.save(build_sam("vit_t_test", image_size=64).state_dict(), run / "checkpoint.pth")
        (run / "config.yaml").write_text(f"objective: {objective}\n")
        runs[name] = str(run / "checkpoint.pth")
    plain = tmp_path / "plain.pth"
    torch.save(build_sam("vit_t_test", image_size=64).state_dict(), plain)
    study = parse_study({"datasets": {"d": str(tmp_path / "d")},
                         "grid": {"arch": ["vit_t_test"], "checkpoint": [runs["ssl"], runs["sup"], str(plain)],
                                  "image_size": 64}})
    cells, _ = study.cells()
    by_name = {c.weights_name: c for c in cells}
    assert set(by_name) == {"ssl", "sup", "plain"}  # a run's checkpoint.pth is named by its run folder
    assert by_name["ssl"].pretrained and by_name["sup"].pretrained and not by_name["plain"].pretrained


@pytest.mark.parametrize("objective", ["prompt", "mae"])
def test_two_process_ddp_pretraining_on_cpu(prepared: Path, tmp_path: Path, objective: str) -> None:
    import json

    run = tmp_path / objective
    args = ["pretrain", objective, "--data", str(prepared), "--out", str(run), "--arch", "vit_t_test",
            "--image-size", "64", "--epochs", "2", "--batch-size", "3", "--device", "cpu", "--num-workers", "0"]
    if objective == "mae":  # lr left to MAE's rule: 1.5e-4 x (3 x 2 x 2 processes) / 256
        args += ["--accumulate", "2", "--decoder-dim", "32", "--decoder-depth", "1", "--decoder-heads", "2"]
    else:
        args += ["--warmup", "2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tunesam",
           *args]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[:4000]  # a rank's own error precedes torchrun's
    assert len(_rows(run)) == 2
    summary = json.loads((run / "summary.json").read_text())
    # 18 training slices over 2 processes: 9 each, batch 3 -> 3 micro-batches per epoch and process
    if objective == "mae":
        assert summary["effective_batch"] == 12 and summary["steps"] == 2 * 2  # ceil(3 / 2) steps an epoch
        assert math.isclose(float(yaml_value(run, "lr")), 1.5e-4 * 12 / 256)
    else:
        assert summary["effective_batch"] == 6 and summary["steps"] == 2 * 3
    build_model(None, run / "checkpoint.pth")


def yaml_value(run: Path, key: str) -> object:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())[key]


def test_visible_token_attention_equals_a_global_block_on_the_whole_grid() -> None:
    from helpers import randomize_

    sam = randomize_(build_sam("vit_test", image_size=64))
    blk = sam.image_encoder.blocks[1]  # a global-attention block: its table spans the whole 4 x 4 grid
    assert blk.window_size == 0
    grid = torch.randn(2, 4, 4, 32)
    rows, cols = (torch.arange(16) // 4).expand(2, -1), (torch.arange(16) % 4).expand(2, -1)
    with torch.no_grad():
        every = M._global_block(blk, grid.reshape(2, 16, 32), rows, cols)
        assert torch.allclose(every, blk(grid).reshape(2, 16, 32), atol=1e-5)
        # visible tokens only: the full grid's attention with the hidden keys masked out, its bias
        # built from the block's own decomposed relative positions (tested against SAM's code)
        keep = torch.tensor([0, 3, 5, 6, 12, 15])
        sub = M._global_block(blk, grid.reshape(2, 16, 32)[:, keep], rows[:, keep], cols[:, keep])
        attn = blk.attn
        x = grid.reshape(2, 16, 32)
        q, k, v = attn.qkv(blk.norm1(x)).reshape(2, 16, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
        bias_h, bias_w = attn._rel_pos_terms(q, 4, 4)  # B x heads x 16 x 4 (key row), x 4 (key column)
        bias = bias_h[..., rows[0]] + bias_w[..., cols[0]]  # B x heads x 16 x 16
        scores = (q * 16**-0.5) @ k.transpose(-1, -2) + bias
        hidden = torch.ones(16, dtype=torch.bool)
        hidden[keep] = False
        out = scores.masked_fill(hidden, float("-inf")).softmax(-1) @ v
        y = x + attn.proj(out.transpose(1, 2).reshape(2, 16, 32))
        want = (y + blk.mlp(blk.norm2(y)))[:, keep]
        assert torch.allclose(sub, want, atol=1e-5)


def test_mae_says_when_its_decoder_dwarfs_the_encoder(prepared: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """MAE's 512 x 8 decoder with a tiny encoder made a 295 MB last.pt without a word."""
    import logging

    cfg = PretrainConfig(objective="mae", data=(str(prepared),), out=str(tmp_path / "ssl"), arch="vit_test",
                         image_size=32, epochs=1, batch_size=8, accumulate=1, warmup=1, device="cpu", num_workers=0,
                         mask_patch=16)
    with caplog.at_level(logging.WARNING):
        run = pretrain(cfg)
    (note,) = [r.getMessage() for r in caplog.records if "MAE decoder" in r.getMessage()]
    assert "512 wide, 8 blocks" in note and "--decoder-dim 128 --decoder-depth 2" in note
    megabytes = (run / "last.pt").stat().st_size / 1e6
    said = float(note.split("about ")[1].split(" MB")[0])
    assert 0.5 * said < megabytes < 2 * said  # the size it announces is the size written
