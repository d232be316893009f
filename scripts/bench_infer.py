"""Inference benchmark: what `vit export` writes against a plain torch.onnx.export and torch eager.

    python scripts/bench_infer.py [--presets recipe 224] [--rounds 2] [--seconds 2] [--threads 2]
        [--compile] [--int8-variants [NAME ...]] [--checkpoint CKPT --data ~/.cache/vit-data/cifar10]

Presets: ``recipe`` (configs/cifar10.yaml's model: vit_resstem_nano_patch4_32, 32 px), ``32``
(configs/vit-tiny-32.yaml: plain ViT, img 32, patch 4, dim 192, depth 6) and ``224`` (timm
vit_tiny_patch16_224), randomly initialised (speed does not depend on the weights; the weights
are perturbed so that no two tensors are equal, as in a trained model). Engines, same weights:

- ``torch`` / ``torch-passive``: eager PyTorch (passive: OMP_WAIT_POLICY=PASSIVE);
- ``ort-plain``: the plain ``torch.onnx.export(net, x, dynamo=True)`` a user of any other tool
  deploys, with onnxruntime's default optimisations;
- ``ort-fp32``: `vit export`'s fp32 file (fused graph, vit/optimize.py);
- ``ort-int8``: `vit export --quantize int8`'s file (the method it kept); ``ort-int8-dynamic`` and
  ``ort-int8-static``: both methods, whichever was kept.

Every onnxruntime engine runs with the server's session options (no spinning) and ``--threads``
intra-op threads, so the files are compared, not the settings. Every measurement runs in its own
process (``--worker``), and the engines are interleaved round by round (A,B,C,A,B,C) so that load
drift on a shared machine hits them alike. Throughput is batch / median call latency after
warm-up; the table gives the median over rounds and the ratios to torch eager and to the plain
export measured in the same run. On a shared machine the calls are also grouped into >= 0.3 s
windows and /proc/stat tells how much CPU other processes used in each: the "quiet" columns are
the median over windows where that was under 10% (n/a when there was no such window).

Calibration images for static int8: 64 CIFAR-10 test images from ``--data`` (flattened, so the
export fits no OOD statistics on a random model). With ``--checkpoint`` (a 32 px CIFAR-10 model
from ``vit fit``), the checkpoint is exported (plain, fp32, both int8 methods; calibrated on
``--data``/train) and every file is evaluated on the test split through ``vit eval``'s code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS: dict[str, dict[str, Any]] = {
    "recipe": {
        "model": "vit_resstem_nano_patch4_32",
        "img_size": 32,
        "patch_size": 4,
        "embed_dim": 128,
        "depth": 2,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "crop_pct": 1.0,
    },
    "32": {"img_size": 32, "patch_size": 4, "embed_dim": 192, "depth": 6, "num_heads": 3, "crop_pct": 1.0},
    "224": {"img_size": 224, "crop_pct": 0.875},
}
MODEL_NAME = "vit_tiny_patch16_224"
CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# torch-passive: torch eager with OMP_WAIT_POLICY=PASSIVE, the OpenMP counterpart of the
# no-spinning setting the onnxruntime sessions use (it matters when the cores are shared)
ENGINES = [
    "torch",
    "torch-passive",
    "ort-plain",
    "ort-fp32",
    "ort-int8",
    "ort-int8-dynamic",
    "ort-int8-static",
]
# alternatives to vit.quantize's defaults, measured with --int8-variants
INT8_VARIANTS: dict[str, dict[str, Any]] = {
    "int8-dynamic": {"method": "dynamic"},  # both methods at their defaults, always written
    "int8-static": {"method": "static"},
    "int8-pc": {"method": "dynamic", "per_channel": True},
    "int8-rr": {"method": "dynamic", "reduce_range": True},
    "int8-u8": {"method": "dynamic", "weight_type": "QUInt8"},
    "int8-conv": {"method": "dynamic", "op_types": ["MatMul", "Gemm", "Conv"]},
    "static-entropy": {"method": "static", "calibration": "entropy"},
    "static-percentile": {"method": "static", "calibration": "percentile"},
    "static-pt": {"method": "static", "per_channel": False},
    "static-all-ops": {"method": "static", "op_types": []},  # [] = every operator onnxruntime quantizes
}


def model_name(preset: str) -> str:
    return PRESETS[preset].get("model", MODEL_NAME)


def build_net(preset: str) -> Any:
    import timm
    import torch

    import vit.stems  # noqa: F401 (registers the conv-stem models)

    torch.manual_seed(0)
    net = timm.create_model(model_name(preset), pretrained=False, num_classes=10, **model_config(preset))
    with torch.no_grad():  # distinct values: timm's zero/one inits would share ONNX initializers
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return net.eval()


def plain_export(net: Any, size: int, path: Path, props: dict[str, str]) -> None:
    """What a user of any other tool deploys: torch.onnx.export with a dynamic batch, nothing else
    (the vit metadata is copied in so that the servers of bench_serve.py can read it)."""
    import onnx
    import torch

    from vit.onnxfile import to_onnx

    with torch.inference_mode():
        model = to_onnx(net, (size, size), ["logits"], 20)
    # logits only: no OOD score output (and so no OOD rule) in the plain graph
    props = {k: v for k, v in props.items() if k != "vit.ood"}
    props["vit.outputs"] = json.dumps({"logits": "logits", "attention": None})
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def write_variants(fp32: Path, variants: list[str], calibration: Any) -> None:
    """``NAME.<variant>.onnx`` beside ``fp32``: int8 with other settings, metadata copied."""
    import onnx

    from vit.quantize import quantize_dynamic_int8, quantize_static_int8

    props = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    for variant in variants:
        options = dict(INT8_VARIANTS[variant])
        if options.pop("method") == "static":
            if options.get("op_types") == []:
                options["op_types"] = None
            model = quantize_static_int8(fp32, calibration, **options)
        else:
            model = quantize_dynamic_int8(fp32, **options)
        onnx.helper.set_model_props(model, {**props, "vit.precision": "int8"})
        onnx.save(model, str(fp32.with_suffix(f".{variant}.onnx")))


def flat_sample(images: Path, folder: Path, n: int = 64) -> Path:
    """``n`` JPEGs spread over ``images`` (any layout) copied into one flat ``folder``: check and
    calibration images without class folders, so no OOD statistics are fitted on a random model."""
    import shutil

    if not folder.is_dir():
        files = sorted(images.rglob("*.jpg"))
        if not files:
            raise SystemExit(f"no JPEGs under {images}: unzip the CIFAR-10 folders first")
        staging = folder.with_name(folder.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shutil.copy(files[i * len(files) // n], staging / f"{i:03d}.jpg")
        staging.rename(folder)
    return folder


def model_config(preset: str) -> dict[str, Any]:
    return {k: v for k, v in PRESETS[preset].items() if k not in ("crop_pct", "model")}


def prepare(work: Path, presets: list[str], variants: list[str], data: Path) -> None:
    """Random-init weights (for torch), the plain export and `vit export`'s files (for onnxruntime)."""
    import onnx
    import torch

    from serve.preprocess import Preprocessing
    from vit.export import export_net
    from vit.verify import load_check_inputs

    folder = flat_sample(data / "test", work / "calibration")
    for preset in presets:
        fp32 = work / f"{preset}.onnx"
        size = PRESETS[preset]["img_size"]
        pre = Preprocessing(input_size=(size, size), crop_pct=PRESETS[preset]["crop_pct"])
        if not fp32.with_suffix(".plain.onnx").exists():  # --work DIR: reuse an earlier run's exports
            net = build_net(preset)
            torch.save(net.state_dict(), work / f"{preset}.pt")
            report = export_net(
                net, fp32, labels=CIFAR_LABELS, preprocessing=pre, model_name=model_name(preset),
                model_config=model_config(preset), check_data=folder, quantize="int8",
            )  # fmt: skip
            print(report.format(), file=sys.stderr)
            props = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
            plain_export(net, size, fp32.with_suffix(".plain.onnx"), {**props, "vit.optimizations": "[]"})
        missing = [
            v
            for v in ["int8-dynamic", "int8-static", *variants]
            if not fp32.with_suffix(f".{v}.onnx").exists()
        ]
        if missing:
            write_variants(fp32, missing, load_check_inputs(folder, CIFAR_LABELS, pre, 64).images)


def worker(engine: str, preset: str, batch: int, threads: int, seconds: float, work: Path) -> dict[str, Any]:
    """One measurement in this process: median latency of ``batch`` images after warm-up."""
    import numpy as np

    size = PRESETS[preset]["img_size"]
    images = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    started = time.perf_counter()
    if engine in ("torch", "torch-passive", "torch-compile"):
        import torch

        torch.set_num_threads(threads)
        net = build_net(preset)
        net.load_state_dict(torch.load(work / f"{preset}.pt"))
        model = torch.compile(net) if engine == "torch-compile" else net
        tensor = torch.from_numpy(images)

        def run() -> None:
            with torch.inference_mode():
                model(tensor)
    else:
        from vit.classifier import open_session

        name = engine.removeprefix("ort-")
        fp32 = work / f"{preset}.onnx"
        path = fp32 if name == "fp32" else fp32.with_suffix(f".{name}.onnx")
        session = open_session(path, "cpu", threads)

        def run() -> None:
            session.run(None, {"images": images})

    run()  # first call: allocation (and compilation for torch.compile)
    first_call = time.perf_counter() - started
    warm_until = time.perf_counter() + 0.5
    while time.perf_counter() < warm_until:
        run()
    times: list[float] = []
    quiet: list[float] = []  # img/s of windows in which other processes used < 10% of the CPUs
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        window_start, before, calls = time.perf_counter(), cpu_usage(), 0
        while time.perf_counter() - window_start < 0.3 or not calls:  # /proc/stat ticks are 10 ms
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
            calls += 1
        elapsed, after = time.perf_counter() - window_start, cpu_usage()
        if before and after and foreign_share(before, after) < 0.1:
            quiet.append(batch * calls / elapsed)
    latency = statistics.median(times)
    return {
        "latency_ms": 1000 * latency,
        "img_s": batch / latency,
        "quiet_img_s": quiet,
        "calls": len(times),
        "setup_s": first_call,
    }


def cpu_usage() -> tuple[float, float, float] | None:
    """(machine busy s, machine total s, this process's CPU s) now; None off Linux."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz, own.user + own.system


def foreign_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Share of all CPUs that other processes used between two :func:`cpu_usage` readings."""
    busy, total, own = (a - b for a, b in zip(after, before, strict=True))
    return max(busy - own, 0.0) / max(total, 1e-9)


def measure(args: argparse.Namespace, work: Path, engines: list[str]) -> list[dict[str, Any]]:
    results = []
    for round_ in range(args.rounds):
        for preset in args.presets:
            for batch in args.batches:
                for engine in engines:
                    command = [sys.executable, __file__, "--worker", engine, preset, str(batch)]
                    command += [
                        "--threads",
                        str(args.threads),
                        "--seconds",
                        str(args.seconds),
                        "--work",
                        str(work),
                    ]
                    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                    if engine == "torch-passive":
                        env["OMP_WAIT_POLICY"] = "PASSIVE"
                    done = subprocess.run(command, capture_output=True, text=True, env=env)
                    if done.returncode:
                        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
                    out = done.stdout
                    row = {"round": round_, "preset": preset, "batch": batch, "engine": engine}
                    results.append({**row, **json.loads(out.strip().splitlines()[-1])})
                    print(f"  {row} {results[-1]['img_s']:.1f} img/s", file=sys.stderr)
    return results


def summarise(
    results: list[dict[str, Any]], engines: list[str], presets: list[str], batches: list[int]
) -> str:
    """Median over rounds, and the median of the quiet windows (other processes < 10% CPU)."""
    lines = [
        "| preset | batch | engine | img/s | p50 latency ms | vs torch | vs ort-plain "
        "| quiet img/s (windows) | quiet vs ort-plain | img/s per round |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for preset in presets:
        for batch in batches:
            rows = {
                e: [r for r in results if (r["preset"], r["batch"], r["engine"]) == (preset, batch, e)]
                for e in engines
            }
            speed = {e: statistics.median(r["img_s"] for r in rows[e]) for e in engines}
            windows = {e: [w for r in rows[e] for w in r["quiet_img_s"]] for e in engines}
            quiet = {e: statistics.median(windows[e]) if windows[e] else None for e in engines}
            for e in engines:
                latency = statistics.median(r["latency_ms"] for r in rows[e])
                spread = ", ".join(f"{r['img_s']:.1f}" for r in rows[e])
                q, q0 = quiet[e], quiet["ort-plain"]
                quiet_text = f"{q:.1f} ({len(windows[e])})" if q else "n/a (0)"
                ratio = f"{q / q0:.2f}x" if q and q0 else "n/a"
                lines.append(
                    f"| {preset} | {batch} | {e} | {speed[e]:.1f} | {latency:.1f} | "
                    f"{speed[e] / speed['torch']:.2f}x | {speed[e] / speed['ort-plain']:.2f}x | "
                    f"{quiet_text} | {ratio} | {spread} |"
                )
    return "\n".join(lines)


def accuracy(
    checkpoint: Path, data: Path, work: Path, threads: int, limit: int | None, variants: list[str]
) -> str:
    """The plain export, `vit export`'s fp32 and int8 files (both methods, calibrated and checked on
    256 images of ``data``/train) of ``checkpoint``, evaluated on ``data``'s test split."""
    import numpy as np
    import onnx

    from vit.checkpoint import load_checkpoint
    from vit.classifier import OnnxClassifier
    from vit.evaluate import evaluate, select_samples
    from vit.export import export_model
    from vit.verify import load_check_inputs

    report = export_model(checkpoint, work / "trained.onnx", check_data=data / "train", quantize="int8")
    print(report.format(), file=sys.stderr)
    loaded = load_checkpoint(checkpoint)
    props = {p.key: p.value for p in onnx.load(str(report.output)).metadata_props}
    size = loaded.preprocessing.input_size[0]
    plain_export(
        loaded.net, size, report.output.with_suffix(".plain.onnx"), {**props, "vit.optimizations": "[]"}
    )
    calibration = load_check_inputs(data / "train", loaded.labels, loaded.preprocessing, 256).images
    variants = ["int8-dynamic", "int8-static", *variants]
    write_variants(report.output, variants, calibration)
    lines = ["| file | top-1 | top-5 | n | eval s |", "|---|---:|---:|---:|---:|"]
    top1 = {}
    files = {"plain": report.output.with_suffix(".plain.onnx")}
    files.update({f"{f.precision} ({f.method})": f.path for f in report.files if f.precision != "fp16"})
    files.update({v: report.output.with_suffix(f".{v}.onnx") for v in variants})
    for name, path in files.items():
        classifier = OnnxClassifier.open(path, "cpu", threads)
        samples = select_samples(data, "test", classifier.labels)
        if limit and limit < len(samples):
            samples = [samples[i] for i in np.linspace(0, len(samples) - 1, limit).round().astype(int)]
        started = time.perf_counter()
        result = evaluate(classifier, samples, batch_size=64)
        top1[name] = result.top1
        lines.append(
            f"| {name} | {100 * result.top1:.2f}% | {100 * result.top5:.2f}% | {result.n} | "
            f"{time.perf_counter() - started:.0f} |"
        )
    lines.append("")
    base = next(n for n in top1 if n.startswith("fp32"))
    lines += [f"{n} - {base} top-1: {100 * (top1[n] - top1[base]):+.2f} points" for n in top1 if n != base]
    return "\n".join(lines)


def machine() -> str:
    flags = ""
    if Path("/proc/cpuinfo").exists():
        text = Path("/proc/cpuinfo").read_text()
        model = next(
            (line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line), "?"
        )
        found = sorted(
            {
                f
                for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")
                if f" {f}" in text
            }
        )
        flags = f"{model}, {os.cpu_count()} cores, {'/'.join(found)}"
    import onnxruntime
    import torch

    return f"{flags}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["recipe", "224"], choices=list(PRESETS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (inductor; slow to start)")
    parser.add_argument(
        "--int8-variants", nargs="*", choices=list(INT8_VARIANTS), help="also these int8 settings"
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="32 px CIFAR-10 checkpoint for the int8 accuracy delta"
    )
    parser.add_argument("--data", type=Path, default=Path.home() / ".cache" / "vit-data" / "cifar10")
    parser.add_argument("--eval-limit", type=int, help="evaluate on this many test images (default: all)")
    parser.add_argument("--work", type=Path, help="folder for the exported models (default: temporary)")
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "PRESET", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, preset, batch = args.worker
        print(json.dumps(worker(engine, preset, int(batch), args.threads, args.seconds, args.work)))
        return 0
    with tempfile.TemporaryDirectory(prefix="vit-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.time()
        print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at start", flush=True)
        variants = list(INT8_VARIANTS) if args.int8_variants == [] else (args.int8_variants or [])
        prepare(work, args.presets, variants, args.data.expanduser())
        extra = [f"ort-{v}" for v in variants if f"ort-{v}" not in ENGINES]
        engines = ENGINES + extra + (["torch-compile"] if args.compile else [])
        results = measure(args, work, engines)
        print(f"\n{args.threads} threads, {args.rounds} rounds, {args.seconds:g} s per measurement")
        print(summarise(results, engines, args.presets, args.batches))
        if args.checkpoint:
            print("\n" + accuracy(args.checkpoint, args.data, work, args.threads, args.eval_limit, variants))
        print(f"\nload average {os.getloadavg()[0]:.1f} at end; total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
