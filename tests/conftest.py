"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imagegen import write_class_folder


@pytest.fixture(autouse=True, scope="session")
def own_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decoded images and measured throughputs (vit.sizing) go to a folder of the test run's."""
    import os

    os.environ["VIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("vit-cache") / "decoded")


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A flat image folder: 3 classes x 12 PNGs of 40x36 px."""
    return write_class_folder(tmp_path / "data")
