"""Single-process or DDP (``torchrun``): rank, device, and an epoch-seeded sharded sampler."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from tunesam.device import pick_device


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``distributed`` when it joined a process group (started by
    torchrun, even with one process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_pref: str) -> tuple[Context, torch.device]:
    """Join the process group when started by torchrun; pick the device."""
    want_cuda = pick_device(device_pref).type == "cuda"
    if device_pref.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        ctx = Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")),
                      distributed=True)
        if not dist.is_initialized():
            if want_cuda:  # naming the device spares NCCL its guess of rank -> GPU
                dist.init_process_group("nccl", device_id=torch.device("cuda", ctx.local_rank))
            else:
                dist.init_process_group("gloo")
    else:
        ctx = Context()
    if want_cuda:
        index = ctx.local_rank if ctx.distributed else (torch.device(device_pref).index or 0 if ":" in device_pref else 0)
        torch.cuda.set_device(index)
        return ctx, torch.device("cuda", index)
    return ctx, torch.device("cpu")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device_pref: str) -> Iterator[tuple[Context, torch.device]]:
    """``setup`` on entry; on a clean exit every rank waits for the others (rank 0 still
    writing its summary) before the group is destroyed, so no rank leaves while another
    still holds the group; the group is destroyed on any exit."""
    ctx, device = setup(device_pref)
    try:
        yield ctx, device
        if ctx.distributed:
            dist.barrier()
    finally:
        teardown()


class EpochSampler(Sampler[tuple[int, int]]):
    """A permutation fixed by (seed, epoch), sharded by rank: the same on every process and
    after a resume.

    With ``pad`` (training) the order is padded to a multiple of the world size, so every
    rank takes the same number of steps (DDP needs that); without it (validation) every item
    is seen exactly once, and ranks may hold one item less. It yields ``(index, epoch)``
    pairs, so the dataset knows the epoch even inside persistent DataLoader workers (which
    never see a ``set_epoch`` made in the main process).
    """

    def __init__(self, n: int, seed: int, ctx: Context, shuffle: bool = True, pad: bool = True) -> None:
        self.n, self.seed, self.ctx, self.shuffle, self.pad = n, seed, ctx, shuffle, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        pad = (-len(order)) % self.ctx.world if self.pad else 0
        return order + order[:pad]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(i, self.epoch) for i in self._order()[self.ctx.rank :: self.ctx.world]])

    def __len__(self) -> int:
        if self.pad:
            return (self.n + self.ctx.world - 1) // self.ctx.world
        return len(range(self.ctx.rank, self.n, self.ctx.world))


def all_sum(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Sum ``values`` over processes (callers pass sums and counts, then divide).

    The reduction runs where the backend can: NCCL only reduces CUDA tensors, so CPU values
    travel to the process's GPU and back.
    """
    if ctx.distributed:
        where = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else values.device
        reduced = values.to(where, copy=True)
        dist.all_reduce(reduced)
        values = reduced.to(values.device)
    return values
