"""Fingerprints of image files and the search for exact and near duplicates among them.

Every file is read once by a pool of worker processes: the project's readability check
(:func:`vit.folder.check_image`), a SHA-256 of the bytes (exact copies) and a 64-bit perceptual
hash (``imagehash.phash``: the same picture re-encoded or resized lands within a few bits), a
16 x 16 colour thumbnail, and the facts the report lists (size, mode, EXIF orientation).
Processes rather than threads: hashing is Python and numpy work that holds the GIL.

Near duplicates are found in two steps. Candidates are pairs whose hashes differ in at most
``max_bits`` bits: a blocked, vectorised Hamming-distance scan (``numpy.bitwise_count`` over XORs
of uint64 hashes), n^2/2 pair tests but tens of millions per numpy call instead of a Python loop.
On small images a 64-bit hash alone also matches unrelated pictures of the same layout (a car on
white), so each candidate is confirmed by the correlation of the two 16 px thumbnails and then,
for the few that pass, of the two images decoded again at 32 px (which separates pictures that
agree only in their coarse layout) and of their edges (what is left after a blur: two different
small aeroplanes on the same blue sky correlate at 0.9 in pixels but not in edges); a re-encoded
or resized copy keeps all three high.
Thresholds and timings: docs/DOCTOR.md.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from serve.preprocess import DEFAULT_MAX_PIXELS, Preprocessing, decode_image
from vit.folder import check_image

HASH_SIDE = 32  # phash reads a 32 x 32 grey image; JPEGs are decoded at reduced scale down to this
THUMB_SIDE = 16
NEAR_BITS = 12  # candidate pairs: phash distance in bits of 64 (docs/DOCTOR.md)
NEAR_CORRELATION = 0.9  # confirmed pairs: 16 px thumbnail correlation (docs/DOCTOR.md)
DETAIL_SIDE = 32
DETAIL_CORRELATION = 0.9  # ... and 32 px correlation (docs/DOCTOR.md)
EDGE_CORRELATION = 0.5  # ... and of the 32 px edges: small objects on the same sky differ here
_DRAFT = Preprocessing(input_size=(HASH_SIDE, HASH_SIDE), crop_pct=1.0)
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Fingerprint:
    """What one read of a file tells: why it cannot be used, or its hashes and facts."""

    path: str
    reason: str | None = None  # None: readable
    sha256: str = ""
    phash: int = 0  # 64 bits of imagehash.phash, row-major
    width: int = 0
    height: int = 0
    mode: str = ""
    exif_rotated: bool = False
    thumb: bytes = b""  # THUMB_SIDE x THUMB_SIDE x 3 uint8


def phash_bits(image: Image.Image) -> int:
    """``imagehash.phash`` of ``image`` as one 64-bit integer."""
    import imagehash

    bits = imagehash.phash(image).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def fingerprint(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Fingerprint:
    """Check ``path`` exactly as ``vit fit`` does; when readable, hash it and note its facts."""
    reason = check_image(path, max_pixels)
    if reason is not None:
        return Fingerprint(path, reason)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        with Image.open(io.BytesIO(data)) as probe:
            width, height, mode = probe.width, probe.height, probe.mode
            rotated = probe.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1)
        # The shared decoder (EXIF applied, alpha on white, 16-bit rescaled), at reduced scale.
        image = decode_image(data, max_pixels=max_pixels, preprocessing=_DRAFT)
        bits = phash_bits(image)
        thumb = image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX).tobytes()
    except Exception as exc:  # noqa: BLE001 - a file that changed since the check: report, not crash
        return Fingerprint(path, f"cannot decode image ({type(exc).__name__}: {exc})")
    digest = hashlib.sha256(data).hexdigest()
    return Fingerprint(path, None, digest, bits, width, height, mode, rotated, thumb)


def _fingerprint_chunk(paths: list[str], max_pixels: int) -> list[Fingerprint]:
    return [fingerprint(p, max_pixels) for p in paths]


def fingerprint_all(
    paths: list[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    advance: Callable[[int], None] = lambda n: None,
    chunk: int = 256,
) -> list[Fingerprint]:
    """:func:`fingerprint` of every path, in order, on ``workers`` processes (default: up to 2)."""
    workers = workers or min(2, os.cpu_count() or 1)
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    results: list[Fingerprint] = []
    if workers <= 1 or len(chunks) <= 1:
        for part in chunks:
            results += _fingerprint_chunk(part, max_pixels)
            advance(len(part))
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(_fingerprint_chunk, chunks, [max_pixels] * len(chunks)):
            results += part
            advance(len(part))
    return results


def exact_groups(digests: list[str]) -> list[list[int]]:
    """Indices sharing a SHA-256 (groups of two or more), each sorted, in order of first index."""
    by_digest: dict[str, list[int]] = {}
    for index, digest in enumerate(digests):
        if digest:
            by_digest.setdefault(digest, []).append(index)
    return [group for group in by_digest.values() if len(group) > 1]


def block_rows(n: int) -> int:
    """Rows per block of the pair scan: about 16 M pairs (128 MB of XORs) per numpy call."""
    return max(64, min(4096, (1 << 24) // max(n, 1)))


def near_pairs(
    hashes: np.ndarray, max_bits: int = NEAR_BITS
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(i, j, bits) arrays for every pair ``i < j`` whose 64-bit hashes differ in <= ``max_bits`` bits.

    Yields one triple per block of rows (:func:`block_rows`), so memory stays bounded.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    block = block_rows(n)
    for start in range(0, n, block):
        rows = hashes[start : start + block]
        distance = np.bitwise_count(rows[:, None] ^ hashes[None, start:])
        close = distance <= max_bits
        # keep the upper triangle only: each pair once, never an image with itself
        close &= np.arange(start, n)[None, :] > np.arange(start, start + len(rows))[:, None]
        i, j = np.nonzero(close)
        yield i + start, j + start, distance[i, j]


def connected_groups(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    """Connected components (two or more members) of the graph on ``n`` nodes with edges ``i``-``j``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(i) == 0:
        return []
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] > 1)
    groups: dict[int, list[int]] = {}
    for index in members:
        groups.setdefault(int(labels[index]), []).append(int(index))
    return list(groups.values())


def unit_rows(raw: np.ndarray) -> np.ndarray:
    """Rows made zero-mean and unit-length (flat rows stay zero, so they correlate with nothing)."""
    raw = raw.astype(np.float32) - raw.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    return np.divide(raw, norms, out=np.zeros_like(raw), where=norms > 1e-3)


def thumbnail_vectors(prints: list[Fingerprint]) -> np.ndarray:
    """:func:`unit_rows` of the 16 px thumbnails (zeros for unreadable images)."""
    size = THUMB_SIDE * THUMB_SIDE * 3
    raw = np.zeros((len(prints), size), np.float32)
    for row, item in enumerate(prints):
        if len(item.thumb) == size:
            raw[row] = np.frombuffer(item.thumb, np.uint8)
    return unit_rows(raw)


def detail_vector(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The image at DETAIL_SIDE px (RGB, box filter) as one flat float32 row."""
    image = decode_image(path, max_pixels=max_pixels, preprocessing=_DRAFT)
    return np.asarray(image.resize((DETAIL_SIDE, DETAIL_SIDE), Image.Resampling.BOX), np.float32).ravel()


def edge_rows(vectors: np.ndarray) -> np.ndarray:
    """What is left of each DETAIL_SIDE image after a 5 x 5 box blur: its edges and texture."""
    from scipy.ndimage import uniform_filter

    images = vectors.reshape(-1, DETAIL_SIDE, DETAIL_SIDE, 3)
    return (images - uniform_filter(images, size=(1, 5, 5, 1), mode="nearest")).reshape(len(vectors), -1)


def detail_similarity(paths: list[str], i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: correlation of the images at DETAIL_SIDE px, and of their edges (each image decoded once)."""
    if len(i) == 0:
        return np.zeros(0), np.zeros(0)
    needed = np.unique(np.concatenate([i, j]))
    rows = {int(k): r for r, k in enumerate(needed)}
    raw = np.stack([detail_vector(paths[k]) for k in needed])
    a = np.array([rows[int(k)] for k in i])
    b = np.array([rows[int(k)] for k in j])
    plain, edges = unit_rows(raw), unit_rows(edge_rows(raw))
    return np.einsum("ij,ij->i", plain[a], plain[b]), np.einsum("ij,ij->i", edges[a], edges[b])


def near_duplicates(
    prints: list[Fingerprint],
    max_bits: int = NEAR_BITS,
    min_correlation: float = NEAR_CORRELATION,
    advance: Callable[[int], None] = lambda n: None,
    detail_correlation: float = DETAIL_CORRELATION,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, similarity) of confirmed near-duplicate pairs among readable ``prints``.

    Similarity is the 32 px correlation (1.0 for byte-identical files, which always pair).
    """
    readable = np.array([p.reason is None for p in prints], dtype=bool)
    index = np.flatnonzero(readable)
    hashes = np.array([prints[k].phash for k in index], dtype=np.uint64)
    digests = [prints[k].sha256 for k in index]
    vectors = thumbnail_vectors([prints[k] for k in index])
    found_i, found_j, found_s = [], [], []
    for i, j, _ in near_pairs(hashes, max_bits):
        similarity = np.einsum("ij,ij->i", vectors[i], vectors[j])
        same = np.array([digests[a] == digests[b] for a, b in zip(i, j, strict=True)], dtype=bool)
        similarity = np.where(same, 1.0, similarity)
        keep = similarity >= min_correlation
        found_i.append(index[i[keep]])
        found_j.append(index[j[keep]])
        found_s.append(similarity[keep])
        advance(1)
    if not found_i:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    i, j, similarity = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    inexact = similarity < 1.0
    detail, edges = np.ones(len(i)), np.ones(len(i))
    detail[inexact], edges[inexact] = detail_similarity([p.path for p in prints], i[inexact], j[inexact])
    keep = (detail >= detail_correlation) & (edges >= EDGE_CORRELATION)
    return i[keep], j[keep], detail[keep].astype(float)


def search_blocks(n: int) -> int:
    """How many blocks :func:`near_pairs` yields for ``n`` hashes (for a progress bar)."""
    return -(-n // block_rows(n))
