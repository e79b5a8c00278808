"""Where a model runs and in which precision: shared by training, evaluation and prediction."""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from pathlib import Path

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


CPU_BF16_ENV = "TUNESAM_CPU_BF16"
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bf16_in(cpuinfo: str) -> bool:
    """Whether a Linux ``/proc/cpuinfo`` text lists AMX or AVX512-BF16 among its x86 ``flags``
    (Intel since Sapphire Rapids / Cooper Lake, AMD since Zen 4). ARM CPUs list ``Features``
    instead: their bf16 is left out (float32 there)."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.split(":", 1)[0].strip() == "flags" and ":" in line), [])
    return any(f in flags for f in _NATIVE_BF16_FLAGS)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively, from Linux's ``/proc/cpuinfo``; False where
    there is none (macOS, Windows)."""
    try:
        return native_bf16_in(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def cpu_bf16() -> bool:
    """bf16 autocast on the CPU: where it is native, unless ``TUNESAM_CPU_BF16=0`` (``=1``
    forces it; without native support bf16 is several times slower than float32)."""
    value = os.environ.get(CPU_BF16_ENV, "").strip()
    if value in ("0", "1"):
        return value == "1"
    if value:
        raise ValueError(f"{CPU_BF16_ENV} must be 0 (float32), 1 (bf16) or unset (bf16 where the CPU has it), "
                         f"got {value!r}")
    return cpu_has_native_bf16()


def precision_for(device: torch.device) -> str:
    """``bf16`` (autocast) or ``fp32``: what :func:`autocast_for` uses on ``device``."""
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_bf16()) else "fp32"


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, and on a CPU with native bf16 (see :func:`cpu_bf16`); else float32.

    Under it, attention on the CPU still runs in float32 (:func:`tunesam.models.common.attention`)."""
    if precision_for(device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PeakMemory:
    """Peak memory during a block: CUDA's max allocated, or the process's resident set
    sampled every ``every`` seconds on the CPU (Linux ``/proc``). ``growth``: the peak less
    what was resident (or allocated) on entry, the memory the block itself took."""

    def __init__(self, cuda: bool, every: float = 0.1) -> None:
        self.cuda, self.peak, self.every, self._stop = cuda, 0, every, threading.Event()
        self.start = 0

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.start)

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = int(torch.cuda.memory_allocated())
        else:
            self.start = self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _rss(self) -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.every)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            self._thread.join()

    @property
    def kind(self) -> str:
        return "CUDA max allocated" if self.cuda else "process resident set (peak, sampled)"
