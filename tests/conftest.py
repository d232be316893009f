"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imagegen import write_class_folder


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """A flat image folder: 3 classes x 12 PNGs of 40x36 px."""
    return write_class_folder(tmp_path / "data")
