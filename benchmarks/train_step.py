"""Time one training step (forward, Dice+CE loss, backward, AdamW) and its peak memory.

    python benchmarks/train_step.py --arch vit_b --tune encoder-decoder --method lora \
        --batch-size 4 --image-size 1024 --device cuda

Random weights and random data (speed and memory do not depend on them); bf16 autocast and
fused AdamW on CUDA. Prints one JSON line per configuration: seconds per step (median of
the timed steps after warm-up) and peak allocated GPU memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tunesam.engine.losses import dice_ce_loss
from tunesam.models import image_encoder
from tunesam.models.registry import build_sam
from tunesam.peft.strategy import Strategy, apply_strategy


def measure(arch: str, tune: str, method: str, batch: int, size: int, device: str,
            steps: int, warmup: int, checkpointing: bool) -> dict[str, object]:
    torch.manual_seed(0)
    model = build_sam(arch, num_classes=1, image_size=size)
    apply_strategy(model, Strategy(tune, method))
    model.image_encoder.grad_checkpointing = checkpointing
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    cuda = device.startswith("cuda")
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, fused=cuda)
    x = torch.rand(batch, 3, size, size, device=device) * 255
    y = (torch.rand(batch, size, size, device=device) > 0.5).long()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=cuda):
            loss = dice_ce_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {
        "arch": arch, "tune": tune, "method": method, "batch": batch, "image_size": size,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "bf16": cuda, "checkpointing": checkpointing, "rel_pos_in_qk": image_encoder.REL_POS_IN_QK,
        "s_per_step": round(statistics.median(times), 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "trainable_params": sum(p.numel() for p in params),
        "loss": round(loss.item(), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["vit_b"])
    p.add_argument("--tune", nargs="+", default=["encoder-decoder"])
    p.add_argument("--method", nargs="+", default=["lora", "adapter"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the encoder")
    p.add_argument("--rel-pos-mask", action="store_true",
                   help="pass ViT's relative-position bias as an attention mask instead of folding it into q, k")
    args = p.parse_args()
    if args.rel_pos_mask:
        image_encoder.REL_POS_IN_QK = False
    for arch in args.arch:
        for tune in args.tune:
            for method in args.method:
                r = measure(arch, tune, method, args.batch_size, args.image_size, args.device,
                            args.steps, args.warmup, args.checkpointing)
                print(json.dumps(r), flush=True)
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
