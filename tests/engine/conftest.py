from __future__ import annotations

from pathlib import Path

import pytest

from data_factory import learnable_pngs
from tunesam.data.prepare import PrepareOptions, prepare


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared set of learnable PNG slices (a bright disc and its mask), split 6:2:2."""
    root = tmp_path_factory.mktemp("learn")
    learnable_pngs(root / "src")
    prepare(root / "src", root / "prep", PrepareOptions(split="6:2:2"))
    return root / "prep"
