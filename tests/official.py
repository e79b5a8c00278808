"""Import Meta's ``segment_anything`` and MobileSAM's ``mobile_sam`` for parity tests.

Both packages import a few torchvision and timm names at import time, although the model
code we compare against never calls them. Installing torchvision here would force a
5.5 GB CUDA build of torch, so when the real packages are absent (or installed but not
importable beside this torch) we register minimal
stand-ins for exactly those names before importing. The stand-ins that could be called by
the modules we test (``trunc_normal_``, ``DropPath`` at rate 0, ``to_2tuple``, and the PIL
``to_pil_image``/``resize`` that ``SamPredictor.set_image`` uses) behave like the real ones;
the rest raise if anything calls them.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

import torch
from torch import nn


def _unavailable(name: str) -> Any:
    def fn(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{name} is a test stand-in; the parity tests never call it")

    fn.__name__ = name
    return fn


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


class _DropPath(nn.Module):
    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob or 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _to_2tuple(x: Any) -> tuple[Any, Any]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)  # type: ignore[return-value]


def _to_pil_image(image: Any) -> Any:
    """torchvision's ``to_pil_image`` for the ``H x W x 3`` uint8 arrays SamPredictor passes."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.asarray(image))


def _resize_pil(image: Any, size: Any) -> Any:
    """torchvision's ``resize`` of a PIL image to ``(h, w)``: bilinear, anti-aliased (as PIL's)."""
    from PIL import Image

    h, w = size
    return image.resize((w, h), Image.Resampling.BILINEAR)


def _usable(name: str) -> bool:
    """Whether ``name`` imports. A torchvision built for another torch (PyPI's wheel beside a
    CPU build of torch, as the nnU-Net extra's timm brings) is installed yet fails to import:
    then it is dropped from ``sys.modules`` and stood in for, like a missing one."""
    if name in sys.modules:  # imported already, or our stand-in is in place: nothing to do
        return True
    if importlib.util.find_spec(name) is None:
        return False
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - any failure to import means: not usable here
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]
        return False


def install_stand_ins() -> None:
    """Register stand-ins for the torchvision and timm names the official code imports."""
    if not _usable("torchvision"):
        tv = _module("torchvision")
        tv.transforms = _module("torchvision.transforms")
        tv.transforms.functional = _module(
            "torchvision.transforms.functional", resize=_resize_pil, to_pil_image=_to_pil_image,
        )
        tv.ops = _module("torchvision.ops")
        tv.ops.boxes = _module(
            "torchvision.ops.boxes",
            batched_nms=_unavailable("batched_nms"), box_area=_unavailable("box_area"),
        )
    if not _usable("timm"):
        timm = _module("timm")
        timm.models = _module("timm.models")
        timm.models.layers = _module(
            "timm.models.layers",
            DropPath=_DropPath, to_2tuple=_to_2tuple,
            trunc_normal_=lambda t, mean=0.0, std=1.0, a=-2.0, b=2.0: nn.init.trunc_normal_(t, mean, std, a, b),
        )
        timm.models.registry = _module("timm.models.registry", register_model=lambda fn: fn)


def import_official(name: str) -> types.ModuleType:
    """``segment_anything`` or ``mobile_sam``, importing stand-ins first if needed."""
    install_stand_ins()
    return importlib.import_module(name)
