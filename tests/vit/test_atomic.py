"""vit/atomic.py: a write replaces the file whole, and a failure leaves the old file and no temporary."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import vit.atomic as atomic_module
from vit.atomic import atomic_file, write_atomic


def test_write_replaces_the_file_with_plain_open_permissions(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "report.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_failure_while_filling_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous good model")
    with pytest.raises(RuntimeError, match="disk full"), atomic_file(target) as tmp:
        tmp.write_bytes(b"half a mod")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"previous good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_interrupted_rename_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "labels.txt"
    target.write_bytes(b"a\nb\n")

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"c\nd\n")
    assert target.read_bytes() == b"a\nb\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt"]


def test_a_block_that_deletes_its_file_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous good model")
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"a model that failed its check")
        tmp.unlink()
    assert target.read_bytes() == b"previous good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_the_block_may_set_its_own_mode(tmp_path: Path) -> None:
    target = tmp_path / "run.sh"
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"#!/bin/sh\n")
        os.chmod(tmp, 0o750)
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
