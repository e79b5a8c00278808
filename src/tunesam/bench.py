"""``tunesam bench``: what a strategy costs on this machine.

For every row (arch x tune x method x batch x image size, on one device) it measures a
training step (forward, Dice + cross-entropy, backward, AdamW), the encoder's forward at
inference, and one prompted decode (a box per image on given embeddings):

- seconds, the median of the timed repeats after a warm-up (CUDA synchronised);
- peak memory: CUDA's max allocated, or on the CPU the growth of the resident set (sampled);
- FLOPs of one call, counted by :class:`torch.utils.flop_counter.FlopCounterMode`, hence
  samples/s, achieved TFLOP/s and, on a GPU whose peak is known, the fraction of it.

Speed settings are explicit (:class:`Speed`): ``tunesam`` is what training and inference
use (bf16 autocast, fused AdamW and SDPA's fused kernels on CUDA; the fused TinyViT copy
for a frozen encoder), ``eager-fp32`` turns each off (float32, SDPA's math kernel, the
relative-position bias as an attention mask, the encoder as trained); ``rel-pos-mask`` only
passes that bias as a mask. ``baseline`` measures a row both ways in one process, so that
every row carries its own ratio.

Random weights and random data: time and memory do not depend on them.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tunesam.device import PeakMemory, pick_device
from tunesam.engine.losses import dice_ce_loss
from tunesam.models import image_encoder
from tunesam.models.registry import build_sam, get_spec
from tunesam.peft.strategy import Strategy, apply_strategy

# Dense peak TFLOP/s by device name fragment and precision (vendors' data sheets, SXM parts).
PEAK_TFLOPS = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp32": 19.5}}


@dataclass(frozen=True)
class Speed:
    """Which speed-ups a measurement uses."""

    name: str
    autocast: bool  # bf16 autocast on CUDA (the CPU trains in float32 either way)
    fused_optimizer: bool  # AdamW's fused CUDA kernel
    fused_attention: bool  # SDPA's flash / memory-efficient kernels (else its math kernel)
    rel_pos_in_qk: bool  # ViT's relative-position bias folded into q and k (else an attention mask)
    inference_encoder: bool  # a frozen TinyViT through its fused copy (BN folded, channels-last)


SPEEDS = {"tunesam": Speed("tunesam", True, True, True, True, True),
          "eager-fp32": Speed("eager-fp32", False, False, False, False, False),
          "rel-pos-mask": Speed("rel-pos-mask", True, True, True, False, True)}


@dataclass(frozen=True)
class Row:
    arch: str
    tune: str
    method: str
    batch_size: int
    image_size: int


@contextlib.contextmanager
def _settings(speed: Speed, device: torch.device) -> Iterator[None]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    was = image_encoder.REL_POS_IN_QK
    image_encoder.REL_POS_IN_QK = speed.rel_pos_in_qk
    kernels = contextlib.nullcontext() if speed.fused_attention else sdpa_kernel(SDPBackend.MATH)
    cast = (torch.autocast("cuda", dtype=torch.bfloat16) if speed.autocast and device.type == "cuda"
            else contextlib.nullcontext())
    try:
        with kernels, cast:
            yield
    finally:
        image_encoder.REL_POS_IN_QK = was


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> tuple[float, int]:
    """(median seconds of ``repeats`` calls after ``warmup``, peak memory growth over them)."""
    for _ in range(warmup):
        call()
    _sync(device)
    times = []
    with PeakMemory(device.type == "cuda", every=0.005) as peak:
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), peak.peak if device.type == "cuda" else peak.growth


def _flops(call: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        call()
    return int(counter.get_total_flops())


def _rates(seconds: float, flops: int, batch: int, device: torch.device, speed: Speed) -> dict[str, Any]:
    tflops = flops / seconds / 1e12 if seconds > 0 else None
    precision = "bf16" if speed.autocast and device.type == "cuda" else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((p[precision] for k, p in PEAK_TFLOPS.items() if k in name), None)
    return {"samples_per_s": round(batch / seconds, 3), "flops": flops,
            "tflops": None if tflops is None else round(tflops, 4),
            "peak_fraction": None if peak is None or tflops is None else round(tflops / peak, 4)}


def measure(row: Row, speed: Speed, device: torch.device, warmup: int = 2, repeats: int = 5) -> dict[str, Any]:
    """One row at one speed: the training step, the encoder forward and a prompted decode."""
    torch.manual_seed(0)
    x = torch.rand(row.batch_size, 3, row.image_size, row.image_size, device=device) * 255
    out: dict[str, Any] = {**asdict(row), "device": _device_name(device), "speed": speed.name,
                           **_training(row, speed, device, x, warmup, repeats)}
    out["encoder"], out["decode"] = _inference(row, speed, device, x, warmup, repeats)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _training(row: Row, speed: Speed, device: torch.device, x: torch.Tensor, warmup: int,
              repeats: int) -> dict[str, Any]:
    """A training step: forward, Dice + cross-entropy, backward, AdamW."""
    y = (torch.rand(row.batch_size, row.image_size, row.image_size, device=device) > 0.5).long()
    model = build_sam(row.arch, num_classes=1, image_size=row.image_size)
    apply_strategy(model, Strategy(row.tune, row.method))
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1,
                            fused=device.type == "cuda" and speed.fused_optimizer)

    def step() -> None:
        with _settings(speed, device):
            loss = dice_ce_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds, memory = _timed(step, device, warmup, repeats)
    return {"trainable_params": sum(p.numel() for p in params),
            "total_params": sum(p.numel() for p in model.parameters()),
            "seconds_per_step": round(seconds, 5), "peak_memory_bytes": memory,
            "peak_memory_kind": "CUDA max allocated" if device.type == "cuda" else "resident set growth",
            **_rates(seconds, _flops(step), row.batch_size, device, speed)}


def _inference(row: Row, speed: Speed, device: torch.device, x: torch.Tensor, warmup: int,
               repeats: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The frozen encoder's forward and one box-prompted decode on its embeddings."""
    model = build_sam(row.arch, num_classes=1, image_size=row.image_size).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if speed.inference_encoder:
        model.use_inference_encoder()

    def encode() -> torch.Tensor:
        with torch.inference_mode(), _settings(speed, device):
            return model.encode(x)

    embeddings = encode()
    s = row.image_size
    boxes = torch.tensor([[0.2 * s, 0.2 * s, 0.7 * s, 0.7 * s]], device=device).repeat(row.batch_size, 1)

    def decode() -> None:
        with torch.inference_mode(), _settings(speed, device):
            model(None, boxes=boxes, embeddings=embeddings)

    results = []
    for call in (encode, decode):
        seconds, memory = _timed(call, device, warmup, repeats)
        results.append({"seconds": round(seconds, 5), "peak_memory_bytes": memory,
                        **_rates(seconds, _flops(call), row.batch_size, device, speed)})
    return results[0], results[1]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def bench(rows: list[Row], device: str = "auto", baseline: str | None = None, warmup: int = 2, repeats: int = 5,
          say: Callable[[dict[str, Any]], None] = lambda r: None) -> list[dict[str, Any]]:
    """Every row with tunesam's speed settings, and with ``baseline``'s (``eager-fp32``) in the
    same process: each result then has ``ratio`` (baseline seconds / tunesam seconds) for
    the training step, the encoder forward and the decode."""
    if baseline is not None and baseline not in SPEEDS:
        raise ValueError(f"--baseline must be one of {', '.join(s for s in SPEEDS if s != 'tunesam')}, "
                         f"got {baseline!r}")
    dev = pick_device(device)
    for row in rows:  # a bad combination is refused before anything runs
        Strategy(row.tune, row.method)
        get_spec(row.arch)
    results = []
    for row in rows:
        fast = measure(row, SPEEDS["tunesam"], dev, warmup, repeats)
        if baseline is not None:
            slow = measure(row, SPEEDS[baseline], dev, warmup, repeats)
            fast["baseline"] = {"speed": baseline, "seconds_per_step": slow["seconds_per_step"],
                                "peak_memory_bytes": slow["peak_memory_bytes"],
                                "encoder_seconds": slow["encoder"]["seconds"],
                                "decode_seconds": slow["decode"]["seconds"]}
            fast["ratio"] = {"step": round(slow["seconds_per_step"] / fast["seconds_per_step"], 3),
                             "encoder": round(slow["encoder"]["seconds"] / fast["encoder"]["seconds"], 3),
                             "decode": round(slow["decode"]["seconds"] / fast["decode"]["seconds"], 3)}
        say(fast)
        results.append(fast)
    return results


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def format_table(results: list[dict[str, Any]]) -> str:
    """The results as a plain-text table (one line per row)."""
    head = (f"{'arch':<14}{'tune':<17}{'method':<9}{'batch':>6}{'size':>6}{'s/step':>9}{'samples/s':>11}"
            f"{'MiB':>8}{'GFLOP/s':>9}{'peak':>7}{'enc s':>8}{'dec s':>8}{'vs eager':>18}")
    lines = [head]
    for r in results:
        ratio = r.get("ratio")
        vs = "-" if ratio is None else f"{ratio['step']:.2f}/{ratio['encoder']:.2f}/{ratio['decode']:.2f}x"
        frac = "-" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f}%"
        lines.append(f"{r['arch']:<14}{r['tune']:<17}{r['method']:<9}{r['batch_size']:>6}{r['image_size']:>6}"
                     f"{r['seconds_per_step']:>9.4f}{r['samples_per_s']:>11.2f}{_mib(r['peak_memory_bytes']):>8}"
                     f"{1000 * (r['tflops'] or 0):>9.4g}{frac:>7}{r['encoder']['seconds']:>8.4f}{r['decode']['seconds']:>8.4f}"
                     f"{vs:>18}")
    return "\n".join(lines)
