"""``tunesam bench``: what a strategy costs on this machine.

For every row (arch x tune x method x batch x image size, on one device) it measures a
training step (forward, Dice + cross-entropy, backward, AdamW), the encoder's forward at
inference, and one prompted decode (a box per image on given embeddings):

- seconds, the median of the timed repeats after a warm-up (CUDA synchronised);
- peak memory: CUDA's max allocated, or on the CPU the growth of the resident set (sampled);
- FLOPs of one call, counted by :class:`torch.utils.flop_counter.FlopCounterMode`, hence
  samples/s, achieved TFLOP/s and, on a GPU whose peak is known, the fraction of it.

Speed settings are explicit (:class:`Speed`): ``tunesam`` is what training and inference
use (bf16 autocast on CUDA and on a CPU with native bf16, fused AdamW and SDPA's fused
kernels on CUDA; TinyViT's frozen stem and first stage through a fused copy), ``eager-fp32``
turns each off (float32, SDPA's math kernel, the relative-position bias as an attention mask,
the encoder as trained); ``rel-pos-mask`` only passes that bias as a mask. ``baseline``
measures a row both ways in one process, so that every row carries its own ratio; on the CPU
the two alternate call by call.

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

from tunesam.device import PeakMemory, autocast_for, pick_device, precision_for
from tunesam.engine.losses import dice_ce_loss
from tunesam.models import image_encoder, tiny_vit
from tunesam.models.registry import build_sam, get_spec
from tunesam.peft.strategy import Strategy, apply_strategy

# Dense peak TFLOP/s by device name fragment and precision (vendors' data sheets, SXM parts).
PEAK_TFLOPS = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp32": 19.5}}


@dataclass(frozen=True)
class Speed:
    """Which speed-ups a measurement uses."""

    name: str
    autocast: bool  # bf16 autocast where training uses it (CUDA; a CPU with native bf16)
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

    was = image_encoder.REL_POS_IN_QK, tiny_vit.FUSED_FROZEN_PREFIX
    image_encoder.REL_POS_IN_QK = speed.rel_pos_in_qk
    tiny_vit.FUSED_FROZEN_PREFIX = speed.inference_encoder
    kernels = contextlib.nullcontext() if speed.fused_attention else sdpa_kernel(SDPBackend.MATH)
    cast = autocast_for(device) if speed.autocast else contextlib.nullcontext()
    try:
        with kernels, cast:
            yield
    finally:
        image_encoder.REL_POS_IN_QK, tiny_vit.FUSED_FROZEN_PREFIX = was


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(calls: list[Callable[[], object]], device: torch.device, warmup: int, repeats: int
           ) -> list[tuple[float, int]]:
    """(median seconds of ``repeats`` calls after ``warmup``, peak memory) of each call. The
    calls alternate within each repeat, so that load on a shared machine hits them alike.
    Memory: CUDA's max allocated during the call, or the resident set's growth during it."""
    for call in calls:
        for _ in range(warmup):
            call()
    _sync(device)
    times: list[list[float]] = [[] for _ in calls]
    memory = [0] * len(calls)
    for _ in range(repeats):
        for i, call in enumerate(calls):
            with PeakMemory(device.type == "cuda", every=0.005) as peak:
                t0 = time.perf_counter()
                call()
                _sync(device)
                times[i].append(time.perf_counter() - t0)
            memory[i] = max(memory[i], peak.peak if device.type == "cuda" else peak.growth)
    return [(statistics.median(t), m) for t, m in zip(times, memory)]


def _flops(call: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        call()
    return int(counter.get_total_flops())


def _rates(seconds: float, flops: int, batch: int, device: torch.device, speed: Speed) -> dict[str, Any]:
    tflops = flops / seconds / 1e12 if seconds > 0 else None
    precision = precision_for(device) if speed.autocast else "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((p[precision] for k, p in PEAK_TFLOPS.items() if k in name), None)
    return {"samples_per_s": round(batch / seconds, 3), "flops": flops, "precision": precision,
            "tflops": None if tflops is None else round(tflops, 4),
            "peak_fraction": None if peak is None or tflops is None else round(tflops / peak, 4)}


PARTS = ("step", "encoder", "decode")


def _step_call(row: Row, speed: Speed, device: torch.device, x: torch.Tensor) -> tuple[dict[str, Callable[[], None]], dict]:
    """A training step (forward, Dice + cross-entropy, backward, AdamW), and the model's sizes."""
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

    return {"step": step}, {"trainable_params": sum(p.numel() for p in params),
                            "total_params": sum(p.numel() for p in model.parameters())}


def _inference_calls(row: Row, speed: Speed, device: torch.device, x: torch.Tensor
                     ) -> tuple[dict[str, Callable[[], object]], dict]:
    """The frozen encoder's forward and one box-prompted decode on its embeddings."""
    frozen = build_sam(row.arch, num_classes=1, image_size=row.image_size).to(device).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    if speed.inference_encoder:
        frozen.use_inference_encoder()

    def encode() -> torch.Tensor:
        with torch.inference_mode(), _settings(speed, device):
            return frozen.encode(x)

    embeddings = encode()
    s = row.image_size
    boxes = torch.tensor([[0.2 * s, 0.2 * s, 0.7 * s, 0.7 * s]], device=device).repeat(row.batch_size, 1)

    def decode() -> None:
        with torch.inference_mode(), _settings(speed, device):
            frozen(None, boxes=boxes, embeddings=embeddings)

    return {"encoder": encode, "decode": decode}, {}


def measure_speeds(row: Row, speeds: list[Speed], device: torch.device, warmup: int = 2, repeats: int = 5
                   ) -> list[dict[str, Any]]:
    """One row at each speed. On the CPU every speed's calls are built together and alternate
    within each repeat (a shared CPU's load changes by tens of percent within a minute). On
    CUDA, where timings are steady and max allocated counts everything resident, the training
    step and the inference calls of one speed are each measured alone on the card."""
    torch.manual_seed(0)
    x = torch.rand(row.batch_size, 3, row.image_size, row.image_size, device=device) * 255
    jobs = [(k, build) for k in range(len(speeds)) for build in (_step_call, _inference_calls)]
    groups = [jobs] if device.type == "cpu" else [[job] for job in jobs]
    results: list[dict[str, Any]] = [{**asdict(row), "device": _device_name(device), "speed": s.name} for s in speeds]
    for group in groups:
        built = [(k, *build(row, speeds[k], device, x)) for k, build in group]
        calls = [(k, part, call) for k, named, _ in built for part, call in named.items()]
        timed = _timed([call for _, _, call in calls], device, warmup, repeats)
        for (k, part, call), (seconds, memory) in zip(calls, timed):
            figures = {"seconds": round(seconds, 5), "peak_memory_bytes": memory,
                       **_rates(seconds, _flops(call), row.batch_size, device, speeds[k])}
            if part == "step":
                results[k].update(seconds_per_step=figures.pop("seconds"), **figures,
                                  peak_memory_kind="CUDA max allocated" if device.type == "cuda" else "resident set growth")
            else:
                results[k][part] = figures
        for k, _, sizes in built:
            results[k].update(sizes)
        del built, calls, call  # the loop's last closure holds a model too
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def measure(row: Row, speed: Speed, device: torch.device, warmup: int = 2, repeats: int = 5) -> dict[str, Any]:
    """One row at one speed: the training step, the encoder forward and a prompted decode."""
    return measure_speeds(row, [speed], device, warmup, repeats)[0]


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
        speeds = [SPEEDS["tunesam"]] + ([SPEEDS[baseline]] if baseline is not None else [])
        fast, *others = measure_speeds(row, speeds, dev, warmup, repeats)
        if others:
            (slow,) = others
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
