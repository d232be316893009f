"""Hashing and the near-duplicate search: the blocked scan equals a brute-force one, copies stay close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.vit.test_doctor import write_scene_folder
from vit.doctor_hash import connected_groups, fingerprint, near_pairs


def test_blocked_scan_finds_exactly_the_pairs_a_brute_force_finds() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 700, dtype=np.int64).astype(np.uint64)
    hashes[10] = hashes[500] ^ np.uint64(0b1011)  # 3 bits apart
    hashes[20] = hashes[600]  # identical
    found = {(int(a), int(b)) for i, j, _ in near_pairs(hashes, 8) for a, b in zip(i, j, strict=True)}
    bits = np.array([[bin(int(x) ^ int(y)).count("1") for y in hashes] for x in hashes])
    expected = {(a, b) for a, b in zip(*np.nonzero(bits <= 8), strict=True) if a < b}
    assert found == expected and {(10, 500), (20, 600)} <= found


def test_connected_groups_join_chains() -> None:
    groups = connected_groups(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert sorted(map(sorted, groups)) == [[0, 1, 2], [4, 5]]


def test_a_resized_re_encoded_copy_hashes_close_and_an_unreadable_file_says_why(tmp_path: Path) -> None:
    root = write_scene_folder(tmp_path / "d", classes=1, per_class=2)
    original = root / "c0/000.png"
    with Image.open(original) as image:
        image.resize((96, 80)).save(tmp_path / "copy.jpg", quality=70)
    a, b, other = (fingerprint(str(p)) for p in (original, tmp_path / "copy.jpg", root / "c0/001.png"))
    assert bin(a.phash ^ b.phash).count("1") <= 4 < bin(a.phash ^ other.phash).count("1")
    assert a.sha256 != b.sha256 and (a.width, a.height, a.mode) == (48, 40, "RGB")
    (tmp_path / "bad.png").write_bytes(b"")
    assert fingerprint(str(tmp_path / "bad.png")).reason
