"""Budgets: ``30m``, ``2h``, ``1h30m``, ``90s`` to seconds."""
from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_budget(text: str) -> float:
    """Seconds in ``text``: a sum of numbers with units h, m, s (``2h``, ``30m``, ``1h30m``, ``90s``)."""
    s = str(text).strip().lower().replace(" ", "")
    parts = _PART.findall(s)
    if not s or "".join(a + u for a, u in parts) != s:
        raise ValueError(f"--budget must be a duration such as 30m, 2h, 1h30m or 90s (h, m, s), got {text!r}")
    seconds = sum(float(a) * _UNITS[u] for a, u in parts)
    if seconds <= 0:
        raise ValueError(f"--budget must be more than 0, got {text!r}")
    return seconds

