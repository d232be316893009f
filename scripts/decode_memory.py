"""Peak memory and time of decode + preprocess per image, this tree against an earlier commit.

Each image is decoded in a fresh process (so one case's freed memory cannot hide the next
one's), the peak resident set is reset just before (``/proc/self/clear_refs``) and read after
(``VmHWM``); the growth is what one upload costs the server. The earlier code runs under an
address-space cap, so a case that would take tens of gigabytes ends in MemoryError instead of
the OOM killer.

    .venv/bin/python scripts/decode_memory.py [--against HEAD~1]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIDE = 6324  # 6324^2 = 39.99 Mpx: just under the server's default --max-pixels
MAX_PIXELS = 40_000_000
CAP_BYTES = 4 << 30  # the earlier code's address-space cap


def smooth(mode: str, width: int, height: int) -> Image.Image:
    """A gradient image of ``mode`` (compresses well, as a hostile upload would)."""
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    plane = (x * 0.7 + y * 0.3) * np.ones((height, 1), np.float32)
    if mode == "I;16":
        return Image.fromarray((plane * 65535).astype(np.uint16))
    if mode == "F":
        return Image.fromarray(plane * 1000)
    grey = Image.fromarray((plane * 255).astype(np.uint8))
    rgb = Image.merge("RGB", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey))
    if mode == "RGBA":
        rgb.putalpha(grey)
        return rgb
    if mode == "LA":
        la = grey.convert("LA")
        la.putalpha(grey.transpose(Image.Transpose.FLIP_TOP_BOTTOM))
        return la
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return rgb.convert(mode)


CASES = {  # name: (mode, width, height, format)
    "strip 1 x 200,000": ("L", 1, 200_000, "PNG"),
    "strip 1 x 40,000,000": ("L", 1, 40_000_000, "PNG"),
    "40 Mpx RGB JPEG": ("RGB", SIDE, SIDE, "JPEG"),
    "40 Mpx RGB PNG": ("RGB", SIDE, SIDE, "PNG"),
    "40 Mpx RGB WebP": ("RGB", SIDE, SIDE, "WEBP"),
    "40 Mpx RGBA PNG": ("RGBA", SIDE, SIDE, "PNG"),
    "40 Mpx LA PNG": ("LA", SIDE, SIDE, "PNG"),
    "40 Mpx P+transparency PNG": ("P", SIDE, SIDE, "PNG"),
    "40 Mpx I;16 PNG": ("I;16", SIDE, SIDE, "PNG"),
    "40 Mpx F TIFF": ("F", SIDE, SIDE, "TIFF"),
}


def write_cases(folder: Path) -> None:
    for i, (name, (mode, width, height, fmt)) in enumerate(CASES.items()):
        image = smooth(mode, width, height)
        options = {"transparency": 0} if mode == "P" else {}
        options |= {"compress_level": 6} if fmt == "PNG" else {}
        options |= {"compression": "tiff_deflate"} if fmt == "TIFF" else {}
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        (folder / f"{i}.img").write_bytes(buffer.getvalue())
        print(f"  {name}: {len(buffer.getvalue()):,} bytes", file=sys.stderr)


def status(field: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(module_path: str, image_path: str, cap: bool) -> None:
    """Decode + preprocess one file; print {peak growth, seconds, outcome} as JSON."""
    spec = importlib.util.spec_from_file_location("preprocess_under_test", module_path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    data = Path(image_path).read_bytes()
    pre = module.Preprocessing(input_size=(224, 224))
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = status("VmRSS")
    start = time.perf_counter()
    try:
        pre(module.decode_image(data, max_pixels=MAX_PIXELS, preprocessing=pre))
        outcome = "decoded"
    except module.ImageTooLargeError:
        outcome = "413"
    except MemoryError:
        outcome = f"MemoryError (cap {CAP_BYTES >> 30} GB)"
    except Exception as exc:  # what a server would answer 500 for
        outcome = type(exc).__name__
    seconds = time.perf_counter() - start
    print(json.dumps({"growth": status("VmHWM") - base, "seconds": seconds, "outcome": outcome}))


def measure(module_path: Path, image_path: Path, cap: bool) -> dict:
    argv = [sys.executable, __file__, "--child", str(module_path), str(image_path)]
    result = subprocess.run(argv + (["--cap"] if cap else []), capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        return {"growth": float("nan"), "seconds": float("nan"), "outcome": f"exit {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="git revision of the earlier serve/preprocess.py")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--cap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, cap=args.cap)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        earlier = folder / "earlier_preprocess.py"
        earlier.write_text(
            subprocess.run(
                ["git", "show", f"{args.against}:serve/preprocess.py"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        print("writing the images", file=sys.stderr)
        write_cases(folder)
        print(
            f"| image ({MAX_PIXELS:,} px limit, 224 px model) | {args.against}: peak MB, s | this tree: peak MB, s |"
        )
        print("|---|---|---|")
        for i, name in enumerate(CASES):
            old = measure(earlier, folder / f"{i}.img", cap=True)
            new = measure(ROOT / "serve" / "preprocess.py", folder / f"{i}.img", cap=False)
            cells = [f"{r['growth'] / 1e6:,.0f} MB, {r['seconds']:.2f} s, {r['outcome']}" for r in (old, new)]
            print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
