"""Where a model runs and in which precision: shared by training, evaluation and prediction."""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on the CPU (fp32 there)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


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
