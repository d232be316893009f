"""vit/batches.py: files -> preprocessed batches, in order, with the unreadable ones reported."""

from __future__ import annotations

from pathlib import Path

from vit.batches import image_batches
from vit.classifier import load_classifier


def test_batches_keep_order_and_report_failures(tiny_onnx: Path, mixed_folder: Path) -> None:
    files = sorted(p for p in mixed_folder.rglob("*") if p.is_file())
    preprocessing = load_classifier(tiny_onnx).preprocessing
    batches = list(image_batches(files, preprocessing, batch_size=2))
    assert [p for b in batches for p in b.items] == [p for p in files if p.name.startswith("good")]
    assert sorted(p.name for b in batches for p, _ in b.failed) == [
        "broken.png",
        "notes.txt",
        "truncated.png",
    ]
    assert all(b.images.shape == (len(b.items), 3, 32, 32) for b in batches)
