"""The load side of scripts/bench_serve.py: request bodies on disk and `wrk` runs.

Every server gets the same bytes: multipart ``file`` bodies of real JPEGs, replayed
round-robin by ``scripts/bench_wrk.lua`` from a manifest, with `wrk` in its own process.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "vit-bench"
BOUNDARY = "vitbenchboundary7MA4YWxkTrZu0gW"


def prepare_images(images_dir: Path, count: int, size: int) -> list[bytes]:
    """``count`` JPEGs spread over the folder, upscaled to ``size`` px on the short side (cached)."""
    out = CACHE / f"images-{size}"
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not sources:
        raise SystemExit(f"{images_dir}: no JPEG or PNG images")
    chosen = sources[:: max(1, len(sources) // count)][:count]
    result = []
    for i, source in enumerate(chosen):
        target = out / f"{i:04d}.jpg"
        if not target.exists():
            image = Image.open(source).convert("RGB")
            scale = size / min(image.size)
            image.resize(
                (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
            ).save(target, quality=90)
        result.append(target.read_bytes())
    return result


def multipart(data: bytes, name: str = "image.jpg") -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
    return head.encode() + b"Content-Type: image/jpeg\r\n\r\n" + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def write_manifest(
    name: str, path: str, images: list[bytes], malformed: bool = False, raw: bool = False
) -> Path:
    """Bodies on disk plus the manifest bench_wrk.lua reads; ``malformed`` mixes in 1 bad of 5;
    ``raw``: the JPEG bytes as the body (``Content-Type: image/jpeg``) instead of multipart."""
    folder = CACHE / "bodies" / name
    folder.mkdir(parents=True, exist_ok=True)
    form = f"multipart/form-data; boundary={BOUNDARY}"
    bad = [
        (path, "image/jpeg", b"\xff\xd8\xff\xe0 truncated jpeg"),  # 400
        (path, "text/plain", b"not an image"),  # 415
        (path + "?top_k=0", form, None),  # 422
        (path, form, b"--" + BOUNDARY.encode() + b"\r\nbroken multipart"),  # 400/422
    ]
    lines = []
    for i, data in enumerate(images):
        body = folder / f"{i:04d}.body"
        body.write_bytes(data if raw else multipart(data))
        lines.append(f"POST\t{path}\t{'image/jpeg' if raw else form}\t{body}")
        if malformed and i % 4 == 3:
            target, content_type, payload = bad[(i // 4) % len(bad)]
            extra = folder / f"{i:04d}.bad"
            extra.write_bytes(payload if payload is not None else multipart(data))
            lines.append(f"POST\t{target}\t{content_type}\t{extra}")
    manifest = folder / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


PIN: dict[str, list[str]] = {"server": [], "client": []}  # taskset prefixes from --server-cpus/--client-cpus


def wrk(url: str, manifest: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    threads = min(2, concurrency)
    command = [
        *PIN["client"],
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
    ]
    command += ["-s", str(ROOT / "scripts" / "bench_wrk.lua"), url, "--", str(manifest)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result
