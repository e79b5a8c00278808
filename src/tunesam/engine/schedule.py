"""The learning-rate schedule: linear warm-up, then polynomial decay (power 0.9)."""
from __future__ import annotations


def lr_at(step: int, base_lr: float, warmup: int, total: int, power: float = 0.9, constant: bool = False) -> float:
    """Learning rate of optimiser step ``step`` (0-based) out of ``total``.

    Warm-up rises linearly to ``base_lr`` over ``warmup`` steps; afterwards the rate is
    ``base_lr * (1 - progress) ** power`` (or stays ``base_lr`` when ``constant``).
    """
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if constant:
        return base_lr
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return base_lr * (1.0 - progress) ** power
