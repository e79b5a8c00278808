"""Forward time of a TinyViT encoder on this machine's CPU: as trained vs the fused inference
copy (batch norms folded into the convolutions, channels-last), per slice.

    python benchmarks/encoder_cpu.py [--arch litemedsam] [--batch 1 2 4] [--repeats 5]

Random weights (the time does not depend on them) unless --checkpoint is given. The two
forms alternate within each repeat so that load on the machine hits both alike; the
median over repeats is printed with the largest difference between their outputs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from tunesam.models.registry import build_sam, get_spec
from tunesam.models.tiny_vit import fuse_for_inference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="litemedsam")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = get_spec(args.arch).native_size
    encoder = build_sam(args.arch).image_encoder.eval()
    fused = fuse_for_inference(encoder)
    print(f"{args.arch} encoder at {size} px, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for batch in args.batch:
        x = torch.rand(batch, 3, size, size)
        xc = x.contiguous(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {"as trained": [], "fused": []}
        with torch.inference_mode():
            ref, out = encoder(x), fused(xc)  # warm-up
            for _ in range(args.repeats):
                for name, fn, inp in (("as trained", encoder, x), ("fused", fused, xc)):
                    t = time.perf_counter()
                    fn(inp)
                    times[name].append((time.perf_counter() - t) / batch)
        a, b = (statistics.median(times[k]) for k in ("as trained", "fused"))
        print(f"batch {batch}: as trained {a:.3f} s/slice, fused {b:.3f} s/slice ({a / b:.2f}x), "
              f"max |difference| {(ref - out).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
