"""Where a LiteMedSAM encoder+decoder training step spends its time on the CPU, stage by stage.

    python benchmarks/cpu_stages.py --method lora adapter --batch-size 4 --repeats 3

For each method and precision (float32, and bf16 autocast), the median over ``--repeats``
steps of: forward and backward of the stem with the first stage (frozen: through the fused
copy, forward only), of each attention stage, of the neck and of the mask decoder with the
loss, and AdamW's step. Times are taken by module hooks (forward pre/post; backward: when
each stage's output has its gradient), so that the parts add up to the step. Random weights and data (the time does not depend on
them); 256 px, LiteMedSAM's input.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import time

import torch

from tunesam.engine.losses import dice_ce_loss
from tunesam.models.registry import build_sam
from tunesam.peft.strategy import Strategy, apply_strategy


STAGES = ("stage 1 (attention, 128 px)", "stage 2 (attention, 64 px)", "stage 3 (attention, 64 px)", "neck")


def measure(method: str, batch: int, bf16: bool, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per step of each part, forward and backward (median over ``repeats`` steps)."""
    torch.manual_seed(0)
    model = build_sam("litemedsam", num_classes=1, image_size=256)
    apply_strategy(model, Strategy("encoder-decoder", method))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.rand(batch, 3, 256, 256) * 255
    y = (torch.rand(batch, 256, 256) > 0.5).long()
    enc = model.image_encoder
    modules = dict(zip(STAGES, (*enc.layers[1:], enc.neck)))
    t: dict[str, float] = {}

    def stamp(key: str):  # noqa: ANN202 - a hook
        return lambda *_: t.__setitem__(key, time.perf_counter())

    for name, module in modules.items():
        module.register_forward_pre_hook(stamp(f"{name} in"))
        module.register_forward_hook(stamp(f"{name} out"))
        module.register_full_backward_pre_hook(stamp(f"{name} grad"))  # its output's gradient is ready
    cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    parts: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for r in range(repeats + 1):  # the first step warms up
        t["start"] = time.perf_counter()
        with cast():
            loss = dice_ce_loss(model(x), y)
        t["loss"] = time.perf_counter()
        loss.backward()
        t["backward"] = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t["step"] = time.perf_counter()
        if not r:
            continue
        # forward in order; backward in reverse (autograd on the CPU runs one node at a time)
        parts["stem + stage 0 (frozen, fused copy)"].append((t[f"{STAGES[0]} in"] - t["start"], 0.0))
        for i, name in enumerate(STAGES):  # stage k's backward ends when stage k-1's output has its gradient
            ends = t["backward"] if i == 0 else t[f"{STAGES[i - 1]} grad"]
            parts[name].append((t[f"{name} out"] - t[f"{name} in"], ends - t[f"{name} grad"]))
        parts["prompt encoder, mask decoder, loss"].append((t["loss"] - t["neck out"], t["neck grad"] - t["loss"]))
        parts["AdamW"].append((0.0, t["step"] - t["backward"]))
        parts["step"].append((t["loss"] - t["start"], t["step"] - t["loss"]))
    return {name: {"forward": statistics.median(f for f, _ in v), "backward": statistics.median(b for _, b in v)}
            for name, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", nargs="+", default=["lora", "adapter"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"seconds per training slice (forward / backward), median of {args.repeats} steps")
    for method in args.method:
        results = {p: measure(method, args.batch_size, p == "bf16", args.repeats) for p in ("fp32", "bf16")}
        print(f"\n{method:<46}{'float32':>18}{'bf16 autocast':>18}")
        for name in results["fp32"]:
            cells = []
            for p in ("fp32", "bf16"):
                v = results[p][name]
                cells.append(f"{v.get('forward', 0) / args.batch_size:.3f} / {v.get('backward', 0) / args.batch_size:.3f}")
            print(f"{name:<46}{cells[0]:>18}{cells[1]:>18}")


if __name__ == "__main__":
    main()
