"""onnxruntime on the GPU: CUDA provider parity with the CPU provider, and speed, for one ONNX file.

usage: python scripts/gpu_ort.py MODEL.onnx IMAGE_DIR
Prints a line saying so when the installed onnxruntime has no CUDA provider.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serve.metadata import ModelMetadata
from serve.preprocess import decode_image


def throughput(session: ort.InferenceSession, batch: np.ndarray, seconds: float = 3.0) -> tuple[float, float]:
    """(images/s, ms per batch) over ``seconds`` after warm-up."""
    for _ in range(3):
        session.run(None, {"images": batch})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"images": batch})
        runs += 1
    elapsed = time.perf_counter() - start
    return runs * len(batch) / elapsed, 1000 * elapsed / runs


def main() -> None:
    model, images_dir = sys.argv[1], Path(sys.argv[2])
    providers = ort.get_available_providers()
    cpu = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_props(cpu.get_modelmeta().custom_metadata_map)
    files = sorted(p for p in images_dir.rglob("*") if p.is_file())[:256]
    batch = np.stack([meta.preprocessing(decode_image(p, preprocessing=meta.preprocessing)) for p in files])
    print(f"providers available: {providers}; {len(batch)} real images")
    cpu_logits = cpu.run(None, {"images": batch})[0]
    if "CUDAExecutionProvider" not in providers:
        print("CUDAExecutionProvider not available in this onnxruntime build: CUDA parity not measured")
    else:
        cuda = ort.InferenceSession(model, providers=["CUDAExecutionProvider"])
        cuda_logits = cuda.run(None, {"images": batch})[0]
        agree = float(np.mean(cuda_logits.argmax(1) == cpu_logits.argmax(1)))
        print(
            f"CUDA vs CPU provider: max |logit diff| {np.abs(cuda_logits - cpu_logits).max():.2e}, "
            f"top-1 agreement {100 * agree:.2f}%"
        )
        for size in (1, 32, 256):
            rate, latency = throughput(
                cuda, batch[:size] if size <= len(batch) else np.resize(batch, (size, *batch.shape[1:]))
            )
            print(f"CUDA b{size}: {rate:9.0f} img/s, {latency:7.2f} ms/batch")
    for size in (1, 32):
        rate, latency = throughput(cpu, batch[:size])
        print(f"CPU  b{size}: {rate:9.0f} img/s, {latency:7.2f} ms/batch")


if __name__ == "__main__":
    main()
