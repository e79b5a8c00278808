"""Training learns, resumes exactly after a kill, and runs under 2-process DDP on the CPU."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesam.config import TrainConfig
from tunesam.kinds import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def _cli(prepared: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tunesam", "train", "--data", str(prepared), "--out", str(out),
            "--arch", "vit_t_test", "--tune", "encoder-decoder", "--method", "vanilla", "--image-size", "64",
            "--lr", "2e-3", "--warmup", "5", "--batch-size", "4", "--device", "cpu", "--num-workers", "0",
            "--patience", "0", *extra]


def test_loss_falls_and_validation_dsc_rises(prepared: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=str(prepared), out=str(tmp_path / "run"), arch="vit_test", tune="encoder-decoder",
                      method="vanilla", image_size=64, epochs=12, batch_size=4, lr=2e-3, warmup=5,
                      device="cpu", num_workers=0, patience=0)
    run = train(cfg)
    rows = _rows(run)
    assert len(rows) == 12
    first, last = rows[0], rows[-1]
    assert float(last["train_loss"]) < 0.7 * float(first["train_loss"])
    best = max(float(r["val_dsc"]) for r in rows)
    assert best > float(first["val_dsc"]) + 20 and best > 60
    for name in ("config.yaml", "log.csv", "last.pt", "curves.png", "preprocessing.json",
                 "weights/best.safetensors", "weights/last.safetensors", "weights/base.json"):
        assert (run / name).is_file(), name
    with pytest.raises(ValueError, match="already exists"):
        train(cfg)


def test_prompted_training_learns(prepared: Path, tmp_path: Path) -> None:
    for mode in ("box", "point"):
        cfg = TrainConfig(data=str(prepared), out=str(tmp_path / mode), arch="vit_t_test", tune="decoder",
                          method="vanilla", mode=mode, image_size=64, epochs=6, batch_size=4, lr=2e-3, warmup=2,
                          device="cpu", num_workers=0, patience=0)
        rows = _rows(train(cfg))
        losses = [float(r["train_loss"]) for r in rows]
        assert len(rows) == 6 and losses[-1] < 0.8 * losses[0], (mode, losses)


# Runs the CLI with a deterministic SIGKILL: at the Nth training step, or at the Nth save of
# the resume state (after that epoch's weights were written: the worst moment before).
KILLER = """
import os, signal, sys
import tunesam.engine.fit as FIT
import tunesam.engine.trainer as TRAINER
from tunesam.cli import main

where, at = sys.argv[1], int(sys.argv[2])
T, name = {"step": (TRAINER, "forward_loss"), "state": (FIT, "save_state")}[where]
original, calls = getattr(T, name), [0]

def kill_at(*args, **kwargs):
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)

setattr(T, name, kill_at)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("where, at", [("step", 12), ("state", 3)])
def test_killed_run_resumes_to_the_same_weights(prepared: Path, tmp_path: Path, where: str, at: int) -> None:
    epochs = "5"  # 18 training slices, batch 4: 5 steps an epoch
    full = tmp_path / "full"
    subprocess.run(_cli(prepared, full, "--epochs", epochs), check=True, env=ENV, capture_output=True)
    killed = tmp_path / "killed"
    (tmp_path / "killer.py").write_text(KILLER)
    cmd = [sys.executable, str(tmp_path / "killer.py"), where, str(at), *_cli(prepared, killed, "--epochs", epochs)[3:]]
    res = subprocess.run(cmd, env=ENV, capture_output=True)
    assert res.returncode == -signal.SIGKILL
    done = len(_rows(killed))
    assert done == 2, done  # killed in epoch 3, or after epoch 3 wrote its weights but not its state
    subprocess.run(_cli(prepared, killed, "--epochs", epochs, "--resume"), check=True, env=ENV, capture_output=True)
    assert len(_rows(killed)) == int(epochs)
    a = load_file(str(full / "weights" / "last.safetensors"))
    b = load_file(str(killed / "weights" / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in _rows(full)] == [r["train_loss"] for r in _rows(killed)]


AFTER_LAST_SAVE = """
import os, signal, sys
import tunesam.engine.fit as FIT
from tunesam.cli import main

original, calls = FIT.save_state, [0]

def save_then_die(*args, **kwargs):
    original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):  # the last epoch's state is saved; its curves and summary are not
        os.kill(os.getpid(), signal.SIGKILL)

FIT.save_state = save_then_die
sys.exit(main(sys.argv[2:]))
"""


def test_a_run_killed_after_its_last_epoch_resumes_to_its_summary_and_curves(prepared: Path, tmp_path: Path) -> None:
    """Nothing is left to train: the resume still writes summary.json with the steps' time
    (saved in last.pt) and draws curves.png, where it wrote seconds_per_step null."""
    run = tmp_path / "run"
    (tmp_path / "killer.py").write_text(AFTER_LAST_SAVE)
    res = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "2", *_cli(prepared, run, "--epochs", "2")[3:]],
                         env=ENV, capture_output=True)
    assert res.returncode == -signal.SIGKILL and not (run / "summary.json").exists()
    (run / "curves.png").unlink(missing_ok=True)  # the last epoch's redraw never happened
    subprocess.run(_cli(prepared, run, "--epochs", "2", "--resume"), check=True, env=ENV, capture_output=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["seconds_per_step"] is not None and summary["seconds_per_step"] > 0
    assert (run / "curves.png").is_file()


def test_a_run_killed_in_its_first_epoch_is_no_dead_end(prepared: Path, tmp_path: Path) -> None:
    """--resume said "nothing to resume" and a rerun "already exists": now the rerun names the
    way out, and --resume starts the run from its first epoch."""
    run = tmp_path / "run"
    (tmp_path / "killer.py").write_text(KILLER)
    res = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "step", "2",
                          *_cli(prepared, run, "--epochs", "2")[3:]], env=ENV, capture_output=True)
    assert res.returncode == -signal.SIGKILL and (run / "config.yaml").is_file() and not (run / "last.pt").exists()
    again = subprocess.run(_cli(prepared, run, "--epochs", "2"), env=ENV, capture_output=True, text=True)
    assert again.returncode == 2 and "stopped before its first epoch ended); --resume starts it again" in again.stderr
    resumed = subprocess.run(_cli(prepared, run, "--epochs", "2", "--resume"), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "no epoch finished before the run stopped" in resumed.stderr + resumed.stdout
    assert [int(r["epoch"]) for r in _rows(run)] == [1, 2]


def test_resume_refuses_other_options(prepared: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    subprocess.run(_cli(prepared, run, "--epochs", "1"), check=True, env=ENV, capture_output=True)
    res = subprocess.run(_cli(prepared, run, "--epochs", "1", "--resume", "--lr", "1e-3"), env=ENV,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--lr: run 0.002, now 0.001" in res.stderr


def test_resume_with_other_epochs_is_refused_unless_the_rate_is_constant(prepared: Path, tmp_path: Path) -> None:
    import dataclasses

    cfg = TrainConfig(data=str(prepared), out=str(tmp_path / "run"), arch="vit_test", tune="decoder",
                      method="vanilla", image_size=64, epochs=1, batch_size=8, warmup=2, device="cpu",
                      num_workers=0, patience=0)
    train(cfg)
    with pytest.raises(ValueError, match=r"--epochs: run 1, now 2 \(the learning-rate schedule"):
        train(dataclasses.replace(cfg, epochs=2), resume=True)
    flat = dataclasses.replace(cfg, out=str(tmp_path / "flat"), constant_lr=True)
    train(flat)
    train(dataclasses.replace(flat, epochs=2), resume=True)
    assert len(_rows(tmp_path / "flat")) == 2


def _ddp_by_hand(cfg: TrainConfig, world: int = 2) -> tuple[dict[str, torch.Tensor], list[float], list[float]]:
    """What a ``world``-process DDP run should compute, worked out in this one process: each
    step takes every rank's shard of the epoch's permutation, back-propagates the mean of the
    shards' losses (DDP averages the ranks' gradients) and makes one AdamW step; an epoch's
    train loss is the mean over every rank's steps, its val DSC is over the whole val set.
    Returns the final weights and each epoch's train loss and val DSC."""
    import numpy as np

    from tunesam.data.store import PreparedData
    from tunesam.engine import distributed as D
    from tunesam.engine.schedule import lr_at
    from tunesam.engine.fit import loader as make_loader
    from tunesam.engine.trainer import datasets, forward_loss, optimizer, schedule_of, validate
    from tunesam.kinds import kind_of, resolve

    cfg = resolve(cfg)
    device = torch.device("cpu")
    data = PreparedData.open(cfg.data)
    torch.manual_seed(cfg.seed)
    model = kind_of(cfg.arch).build(cfg, data.num_classes).to(device)
    opt = optimizer(model, cfg, device)
    train_ds, val_ds = datasets(data, cfg)
    shards = [make_loader(train_ds, schedule_of(cfg), D.Context(rank=r, world=world), device, train=True)
              for r in range(world)]
    val_loader = make_loader(val_ds, schedule_of(cfg), D.Context(), device, train=False)
    total, step = cfg.epochs * len(shards[0]), 0
    losses, dscs = [], []
    for epoch in range(cfg.epochs):
        for loader in shards:
            loader.sampler.set_epoch(epoch)
        model.train()
        epoch_losses = []
        for batches in zip(*shards, strict=True):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg.lr, cfg.warmup, total, constant=cfg.constant_lr)
            per_rank = [forward_loss(model, b, cfg.mode, device) for b in batches]
            (sum(per_rank) / world).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            epoch_losses += [float(v.detach()) for v in per_rank]
        losses.append(float(np.mean(epoch_losses)))
        dscs.append(validate(model, val_loader, cfg.mode, data.num_classes, device, D.Context()))
    return model.state_dict(), losses, dscs


def test_two_process_ddp_equals_the_same_steps_in_one_process(prepared: Path, tmp_path: Path) -> None:
    from tunesam.config import load_config

    run = tmp_path / "ddp"
    # vit_test: no batch norm, whose per-rank batch statistics DDP would not share
    args = ["train", "--data", str(prepared), "--out", str(run), "--arch", "vit_test", "--tune", "encoder-decoder",
            "--method", "vanilla", "--image-size", "32", "--lr", "2e-3", "--warmup", "2", "--batch-size", "4",
            "--epochs", "2", "--device", "cpu", "--num-workers", "0", "--patience", "0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tunesam",
           *args]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[:4000]  # a rank's own error precedes torchrun's
    rows = _rows(run)
    summary = json.loads((run / "summary.json").read_text())
    assert len(rows) == 2 and summary["steps"] == 2 * 3  # 18 training slices: 9 a process, batches 4, 4, 1
    weights, losses, dscs = _ddp_by_hand(load_config(run / "config.yaml"))
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(losses, abs=2e-6)
    assert [float(r["val_dsc"]) for r in rows] == pytest.approx(dscs, abs=1e-3)
    saved = load_file(str(run / "weights" / "last.safetensors"))
    assert saved.keys() == weights.keys()
    # Measured: every weight within 2e-7 (one process with batch 8 ends 9e-3 away, its Dice
    # being over 8 images), except the attention key biases: a softmax ignores a constant
    # added to a query's scores, so their gradient is zero plus rounding noise, which Adam
    # scales up to steps of about lr in any direction. They are held to that walk only.
    dim = 32  # vit_test's width: its fused qkv bias is [q | k | v]
    for k in saved:
        diff = (saved[k] - weights[k]).abs()
        if k.endswith("k_proj.bias"):
            assert diff.max() < 6 * 2e-3, k
            continue
        if k.endswith("attn.qkv.bias"):
            diff = torch.cat([diff[:dim], diff[2 * dim:]])
        assert diff.max() < 1e-6, (k, diff.max().item())


def test_evaluate_and_predict_resize_images_as_the_run_was_trained(prepared: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import tunesam.letterbox as letterbox_module
    from tunesam.data.store import PreparedData
    from tunesam.eval.evaluate import evaluate_run
    from tunesam.inference.predictor import predict

    cfg = TrainConfig(data=str(prepared), out=str(tmp_path / "run"), arch="vit_test", tune="decoder",
                      method="vanilla", image_size=32, epochs=1, batch_size=8, device="cpu", num_workers=0,
                      patience=0, interpolation="nearest")
    run = train(cfg)
    modes: list[str] = []

    def spy(image, size, mode="bilinear"):  # type: ignore[no-untyped-def]
        modes.append(mode)
        return original(image, size, mode)

    original = letterbox_module.letterbox_image
    monkeypatch.setattr(letterbox_module, "letterbox_image", spy)  # the one letterbox of evaluate and predict
    evaluate_run(run, device="cpu")
    case = PreparedData.open(prepared).manifest["cases"][0]
    predict(run, [case["image"]], tmp_path / "pred", device="cpu")
    assert len(modes) > 1 and set(modes) == {"nearest"}


def test_curves_are_a_matplotlib_figure_with_labelled_axes_and_the_best_epoch(tmp_path: Path) -> None:
    from tunesam.viz import curves_figure, save_figure

    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_dsc": v} for e, v in zip(range(1, 6), (40, 55, 61, 58, 60))]
    fig = curves_figure(rows)
    loss_ax, dsc_ax = fig.axes
    assert (loss_ax.get_xlabel(), loss_ax.get_ylabel()) == ("epoch", "loss")
    assert (dsc_ax.get_xlabel(), dsc_ax.get_ylabel()) == ("epoch", "DSC (%)")
    assert "best epoch 3" in [t.get_text() for t in dsc_ax.get_legend().get_texts()]
    save_figure(tmp_path / "c.png", fig)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _train_output(prepared: Path, out: Path, terminal: bool) -> bytes:
    """stderr of a short CLI training run, attached to a pseudo-terminal or to a file."""
    import os
    import pty

    cmd = _cli(prepared, out, "--epochs", "2")
    if not terminal:
        return subprocess.run(cmd, env=ENV, capture_output=True, check=True).stderr
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait() == 0
    return b"".join(chunks)


def test_progress_bar_in_a_terminal_and_none_in_a_log(prepared: Path, tmp_path: Path) -> None:
    shown = _train_output(prepared, tmp_path / "tty", terminal=True)
    assert b"\r" in shown and (b"step/s" in shown or b"s/step" in shown)
    assert b"loss=" in shown
    logged = _train_output(prepared, tmp_path / "log", terminal=False)
    assert b"\r" not in logged and b"step/s" not in logged


def test_early_stopping_after_patience_epochs_without_a_better_validation_dsc(prepared: Path, tmp_path: Path) -> None:
    # lr so small that validation DSC cannot change: epoch 1 is the best, epochs 2 and 3 are not better
    cfg = TrainConfig(data=str(prepared), out=str(tmp_path / "run"), arch="vit_test", tune="decoder",
                      method="vanilla", image_size=32, epochs=10, batch_size=8, lr=1e-12, warmup=1, device="cpu",
                      num_workers=0, patience=2)
    run = train(cfg)
    rows = _rows(run)
    assert len(rows) == 3 and len({r["val_dsc"] for r in rows}) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 1 and summary["epochs_run"] == 3


def test_cpu_time_warning_once_per_process_and_table3_measurements(prepared: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses
    import re

    from tunesam.data.store import PreparedData

    def warnings_of(cfg: TrainConfig) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="tunesam.train"):
            train(cfg)
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("training on the CPU")]

    # 18 training slices, batch 4: 5 steps an epoch. Planned for 10^6 epochs, the run's real
    # estimate passes the warning's 10 minutes whatever a step takes (over 0.12 ms); lr 1e-12
    # leaves validation unchanged, so patience 1 ends it after two epochs.
    data = PreparedData.open(prepared)
    steps_per_epoch = -(-len(data.rows("train", include_empty=data.trains_on_empty)) // 4)  # the slices it trains on
    assert steps_per_epoch == 5
    long = TrainConfig(data=str(prepared), out=str(tmp_path / "run"), arch="vit_test", tune="decoder",
                       method="lora", image_size=32, epochs=10**6, batch_size=4, lr=1e-12, warmup=2, device="cpu",
                       num_workers=0, patience=1)
    (said,) = warnings_of(long)  # given once, after the first epoch's second step, not every epoch
    found = re.fullmatch(r"training on the CPU: about ([\d.]+) s per step, (\d+) steps to go: roughly ([\d.]+) "
                         r"hours(, about [\d.]+ GiB of memory)?\. .*", said)
    assert found, said
    assert int(found[2]) == 10**6 * steps_per_epoch - 2 and float(found[3]) > 0
    # a short run's estimate stays under the threshold: no warning
    assert warnings_of(dataclasses.replace(long, out=str(tmp_path / "short"), epochs=3, patience=0)) == []
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["seconds_per_step"] > 0 and summary["device"] == "cpu"


def test_bf16_on_the_cpu_trains_under_autocast_and_learns_as_float32(prepared: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the CPU has native bf16 training uses autocast (forced here, so that the test means
    the same on every CPU): its losses and validation DSC follow the float32 run's."""
    from tunesam.models.segmenter import SamSegmenter

    seen: list[bool] = []
    forward = SamSegmenter.forward

    def spy(self: SamSegmenter, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SamSegmenter, "forward", spy)
    rows = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("TUNESAM_CPU_BF16", flag)
        seen.clear()
        cfg = TrainConfig(data=str(prepared), out=str(tmp_path / flag), arch="litemedsam_test",
                          tune="encoder-decoder", method="lora", image_size=64, epochs=6, batch_size=4, lr=2e-3,
                          warmup=5, device="cpu", num_workers=0, patience=0)
        rows[flag] = _rows(train(cfg))
        assert seen and all(seen) == (flag == "1") and any(seen) == (flag == "1")
    for a, b in zip(rows["0"], rows["1"], strict=True):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=0.05)
    assert float(rows["1"][-1]["val_dsc"]) == pytest.approx(float(rows["0"][-1]["val_dsc"]), abs=5)
    # it learned (the loss fell by 14%), so that following it means something
    assert float(rows["0"][-1]["train_loss"]) < 0.9 * float(rows["0"][0]["train_loss"])


def test_a_paused_run_goes_on_to_the_same_weights_as_an_unpaused_one(prepared: Path, tmp_path: Path) -> None:
    """``until`` (what tunesam auto's rungs use): training stops after that many epochs of the
    run's own schedule, without summary.json, and a resume continues the same schedule."""
    common = dict(data=str(prepared), arch="vit_t_test", tune="encoder-decoder", method="vanilla", image_size=64,
                  epochs=4, batch_size=4, lr=2e-3, warmup=5, device="cpu", num_workers=0, patience=0)
    full = train(TrainConfig(out=str(tmp_path / "full"), **common))
    paused = TrainConfig(out=str(tmp_path / "paused"), **common)
    run = train(paused, until=1)
    assert len(_rows(run)) == 1 and not (run / "summary.json").exists() and (run / "last.pt").is_file()
    train(paused, resume=True, until=3)
    assert len(_rows(run)) == 3 and not (run / "summary.json").exists()
    train(paused, resume=True)
    assert len(_rows(run)) == 4 and (run / "summary.json").is_file()
    a, b = load_file(str(full / "weights" / "last.safetensors")), load_file(str(run / "weights" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["lr"] for r in _rows(full)] == [r["lr"] for r in _rows(run)]  # one schedule, 4 epochs long
    with pytest.raises(ValueError, match="until must be at least 1"):
        train(TrainConfig(out=str(tmp_path / "bad"), **common), until=0)
