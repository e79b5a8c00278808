from __future__ import annotations

import importlib.util
import types

import pytest
import torch

from official import import_official


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


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
