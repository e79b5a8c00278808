"""``tunesam auto``: from a dataset to the best model within a budget (issue 20).

``tunesam.auto(data, out, budget="30m")`` runs it from Python and returns the winner's run
folder (this package is callable: :func:`tunesam.auto.runner.auto`).
"""
from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    """``tunesam.auto(...)`` is the verb, ``tunesam.auto.runner`` and the rest its parts."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from tunesam.auto.runner import auto

        return auto(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
