"""Serving benchmark: `vit serve` against raw onnxruntime and the servers users pick instead.

    python scripts/bench_serve.py MODEL IMAGES_DIR [--make-model] [--duration 8] [--rounds 3] [--requests 10000]

MODEL is a `vit export` ONNX file (``--make-model`` writes a randomly initialised model there
first, ``--make-preset`` 224 (timm vit_tiny_patch16_224, default) or recipe (the 32 px CIFAR-10
recipe model), with its ``.int8.onnx`` sibling (``--make-int8-method``) and a ``.plain.onnx``
plain torch.onnx.export of the same weights: enough for speed). The peers (LitServe, the naive
FastAPI + onnxruntime server, FastAPI + torch) serve ``--peer-model``, by default that plain
export when it exists: what a user of another tool deploys.
IMAGES_DIR holds JPEGs, e.g. CIFAR-10's test split (docs/BENCHMARKS.md, "Data": IMAGES_DIR
``~/.cache/vit-data/cifar10/test``). They are upscaled to
~320 px JPEGs in a cache folder and posted as multipart ``file`` bodies, the same bytes to
every server, by `wrk` (Debian's; a separate, low-overhead process) at each concurrency.
In one run, interleaved by concurrency (the servers not being measured are paused with
SIGSTOP): raw onnxruntime (batch sweep 1-32, before and after), `vit serve` (fp32 and int8),
LitServe with batching on and off, a naive FastAPI + onnxruntime server and FastAPI + torch
eager (``scripts/bench_peers.py``). ``--rounds N`` repeats all of that N times, each round
with its own raw onnxruntime sweep, batch-1 latency and decode time; the report
(``scripts/bench_serve_report.py``) shows medians of per-round ratios. ``--baseline-ref REF``
adds `vit serve` as of git commit REF (exported to the cache folder) as one more system, so a
change is measured against its parent side by side (the report gives the per-round ratios and
the c=1 p50 difference). Then `vit serve`'s resident
memory over ``--requests`` requests (a fifth of them malformed) and the disk size of a
serving-only install.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_load import CACHE, PIN, prepare_images, write_manifest, wrk  # noqa: E402
from bench_serve_report import report  # noqa: E402

from serve.engine import Engine  # noqa: E402
from serve.instances import warm_up  # noqa: E402
from serve.preprocess import decode_image  # noqa: E402

CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_model(path: Path, images_dir: Path, preset: str = "224", int8_method: str = "auto") -> None:
    """A random-init model (``bench_infer.py``'s preset) through the real exporter: ``path`` (fp32),
    its ``.int8.onnx`` (the method `vit export` kept, calibrated on 64 of ``images_dir``'s JPEGs)
    and its ``.plain.onnx`` (a plain torch.onnx.export, what a user of other tools deploys).
    For speed only."""
    import onnx
    from bench_infer import PRESETS, build_net, flat_sample, model_config, model_name, plain_export

    from serve.preprocess import Preprocessing
    from vit.export import export_net

    net = build_net(preset)
    size = PRESETS[preset]["img_size"]
    pre = Preprocessing(input_size=(size, size), crop_pct=PRESETS[preset]["crop_pct"])
    report = export_net(
        net,
        path,
        labels=CIFAR_LABELS,
        preprocessing=pre,
        model_name=model_name(preset),
        model_config=model_config(preset),
        check_data=flat_sample(images_dir, CACHE / "calibration"),
        quantize="int8",
        int8_method=int8_method,
    )
    print(report.format(), flush=True)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    plain_export(net, size, plain_path(path), {**props, "vit.optimizations": "[]"})


def plain_path(model: Path) -> Path:
    return model.with_name(model.name.removesuffix(".onnx") + ".plain.onnx")


def images_per_second(
    engine: Engine, arrays: list[np.ndarray], batch: int, callers: int = 1, seconds: float = 2.0
) -> float:
    """Throughput of ``callers`` threads each running batches of ``batch`` for >= ``seconds`` and
    96 images: one caller on the session with all threads, several each on its instance's
    session (as `vit serve` runs a lone request and its batch workers; the session with all
    threads when the engine has no instance sessions)."""
    x = np.stack([arrays[i % len(arrays)] for i in range(batch)])
    engine.infer(x)

    def call_repeatedly(instance: int | None) -> int:
        runs, start = 0, time.perf_counter()
        while runs * batch < 96 or time.perf_counter() - start < seconds:
            engine.infer(x, instance=instance)
            runs += 1
        return runs * batch

    start = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        instances = range(callers) if callers > 1 else [None]
        images = sum(pool.map(call_repeatedly, instances))
    return images / (time.perf_counter() - start)


class RawOrt:
    """onnxruntime alone on preprocessed arrays, in this process, with the server's session options."""

    def __init__(self, model: Path, images: list[bytes], cpus: set[int] | None) -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)  # the servers' cores; the engine sizes its threads from this
        # Spinning threads, as onnxruntime's default and `vit serve`'s lone requests run: the
        # fastest single call, so the reference is raw onnxruntime at its best.
        self.engine = Engine(model, device="cpu", spinning=True)
        self.images = images
        self.arrays = self.decode()
        warm_up(self.engine, 32, instances=2)  # the sessions of `vit serve --instances 2`

    def decode(self) -> list[np.ndarray]:
        pre = self.engine.metadata.preprocessing
        return [pre(decode_image(d, preprocessing=pre)) for d in self.images]

    def sweep(self) -> dict[str, Any]:
        """img/s by batch size 1-32 (one call at a time, all threads), and with two calls at a time
        on two single-threaded sessions as `vit serve --instances 2` runs its batches."""
        sweep = {batch: images_per_second(self.engine, self.arrays, batch) for batch in (1, 2, 4, 8, 16, 32)}
        two = {batch: images_per_second(self.engine, self.arrays, batch, callers=2) for batch in (1, 2, 4, 8)}
        return {"sweep": sweep, "best": max(sweep.values()), "two_callers": two}

    def measure(self) -> dict[str, Any]:
        """The sweep, the median batch-1 latency and the decode + preprocess time per image
        (median of 3 passes over the images), measured last: the c=1 runs come next."""
        sweep = self.sweep()
        one = np.stack(self.arrays[:1])
        latencies = []
        for _ in range(30):
            t = time.perf_counter()
            self.engine.infer(one)
            latencies.append((time.perf_counter() - t) * 1000)
        passes = []
        for _ in range(3):
            t = time.perf_counter()
            self.decode()
            passes.append((time.perf_counter() - t) / len(self.images) * 1000)
        return {**sweep, "b1_ms": statistics.median(latencies), "decode_ms": statistics.median(passes)}


def start(name: str, command: list[str], port: int, ready_path: str, root: Path = ROOT) -> subprocess.Popen:
    """Start one server with ``root`` (a source tree) first on its import path; wait until ready."""
    log = open(CACHE / f"{name}.log", "w")  # noqa: SIM115 (kept open for the process's life)
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(  # own process group: paused and resumed as a whole
        [*PIN["server"], *command],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited; see {CACHE / (name + '.log')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{name} did not become ready")


def source_at(ref: str) -> tuple[str, Path]:
    """(short hash, folder) of the repository's tree at git ``ref``, exported once into the cache."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    folder = CACHE / f"source-{sha}"
    if not (folder / "serve").is_dir():
        staging = Path(tempfile.mkdtemp(dir=CACHE))
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(staging)], input=archive, check=True)
        staging.rename(folder)
    return sha, folder


def measure(
    process: subprocess.Popen, url: str, manifest: Path, concurrency: int, seconds: float
) -> dict[str, Any]:
    """Resume one server, warm it up, let it drain, measure with wrk, pause it again."""
    signal_group(process, signal.SIGCONT)
    warm = wrk(url, manifest, concurrency, 2)
    # wrk leaves up to `concurrency` requests in the server when it stops: let the server finish
    # them (1 s + 1.5x their time at the warm-up's rate), or the measured run starts behind a
    # full queue and its first requests' latency counts it.
    time.sleep(1.0 + 1.5 * concurrency / max(warm["rps"], 1.0))
    result = wrk(url, manifest, concurrency, seconds)
    signal_group(process, signal.SIGSTOP)
    return result


def signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    """Signal a server and its children (LitServe's workers), e.g. SIGSTOP while others are measured:
    an idle LitServe polls its queues (7.7 % of 2 cores measured), which would tax whoever runs."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_run(url: str, manifest: Path, pid: int, requests: int) -> dict[str, Any]:
    """RSS sampled after each phase until ``requests`` requests (malformed included) were served."""
    samples, served, non_2xx = [rss_mb(pid)], 0, 0
    while served < requests:
        result = wrk(url, manifest, 8, 5)
        served += result["requests"]
        non_2xx += result["non_2xx"]
        samples.append(rss_mb(pid))
    return {"requests": served, "non_2xx": non_2xx, "rss_mb": samples}


def install_size() -> float:
    """MB on disk of `pip install` of the project without extras (the serving deployment)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "site"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), str(ROOT)],
            check=True,
            capture_output=True,
        )
        return sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 1e6


def peer_system(
    kind: str, model: Path, port: int, ready: str, *extra: str
) -> tuple[list[str], int, str, str]:
    """(command, port, request path, readiness path) of one ``scripts/bench_peers.py`` server."""
    command = [sys.executable, "scripts/bench_peers.py", kind, str(model), "--port", str(port), *extra]
    return command, port, "/predict", ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images_dir", type=Path)
    parser.add_argument(
        "--make-model", action="store_true", help="write a random vit_tiny 224 to MODEL if missing"
    )
    parser.add_argument(
        "--int8", type=Path, help="int8 model (default: MODEL's .int8.onnx sibling if present)"
    )
    parser.add_argument(
        "--peer-model",
        type=Path,
        help="the file LitServe, the naive and the torch servers get (default: MODEL's .plain.onnx "
        "sibling, the plain torch.onnx.export --make-model writes, if present; else MODEL)",
    )
    parser.add_argument(
        "--make-preset", default="224", help="--make-model's bench_infer.py preset (224, recipe, 32)"
    )
    parser.add_argument(
        "--make-int8-method",
        default="auto",
        choices=["auto", "dynamic", "static"],
        help="--make-model's `vit export --int8-method` (auto judges a random model by agreement)",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat all measurements; the report gives per-round medians"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--images", type=int, default=64, help="distinct images posted")
    parser.add_argument("--size", type=int, default=320, help="short side of the posted JPEGs")
    parser.add_argument("--requests", type=int, default=10_000, help="requests in the memory run (0: skip)")
    parser.add_argument(
        "--baseline-ref", help="also serve with `vit serve` as of this git commit (e.g. HEAD~1), side by side"
    )
    parser.add_argument("--skip", nargs="*", default=[], help="systems to leave out (e.g. torch litserve)")
    parser.add_argument(
        "--raw-body",
        action="store_true",
        help="send `vit serve` the JPEG as the body (image/jpeg) instead of multipart (peers keep multipart)",
    )
    parser.add_argument("--no-install-size", action="store_true")
    parser.add_argument(
        "--server-cpus", help="pin servers and raw ORT to these cores (taskset list, e.g. 0,1)"
    )
    parser.add_argument("--client-cpus", help="pin the load generator to these cores (e.g. 2,3)")
    parser.add_argument("--out", type=Path, default=CACHE / "bench_serve.json")
    args = parser.parse_args(argv)
    cpus = {int(c) for c in args.server_cpus.split(",")} if args.server_cpus else None
    PIN["server"] = ["taskset", "-c", args.server_cpus] if args.server_cpus else []
    PIN["client"] = ["taskset", "-c", args.client_cpus] if args.client_cpus else []
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    if args.make_model and not args.model.exists():
        make_model(args.model, args.images_dir.expanduser(), args.make_preset, args.make_int8_method)
    int8 = args.int8 or args.model.with_name(args.model.name.removesuffix(".onnx") + ".int8.onnx")
    peer = args.peer_model or (plain_path(args.model) if plain_path(args.model).exists() else args.model)
    images = prepare_images(args.images_dir.expanduser(), args.images, args.size)
    CACHE.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    serve_cmd = [python, "-m", "serve", "--device", "cpu", "--log-level", "warning", "--no-access-log"]
    systems: dict[str, tuple[list[str], int, str, str]] = {
        "vit serve": ([*serve_cmd, str(args.model), "--port", "8110"], 8110, "/v1/classify", "/readyz"),
        "vit serve int8": ([*serve_cmd, str(int8), "--port", "8111"], 8111, "/v1/classify", "/readyz"),
        "LitServe batch": peer_system(
            "litserve", peer, 8112, "/health", "--max-batch-size", "32", "--batch-timeout", "0.005"
        ),
        "LitServe no batch": peer_system("litserve", peer, 8113, "/health"),
        "FastAPI+ORT naive": peer_system("naive", peer, 8114, "/docs"),
        "FastAPI+torch eager": peer_system("torch", peer, 8115, "/docs"),
        # No model: what HTTP alone costs a request here (the ceiling for any server on it).
        "floor FastAPI": peer_system("floor", peer, 8117, "/docs"),
        "floor ASGI": peer_system("floor-asgi", peer, 8118, "/"),
    }
    roots: dict[str, Path] = {}
    if args.baseline_ref:
        sha, roots[f"vit serve@{args.baseline_ref}"] = source_at(args.baseline_ref)
        print(f"baseline: vit serve at {args.baseline_ref} ({sha})", flush=True)
        command = [*serve_cmd, str(args.model), "--port", "8116"]
        systems = {
            "vit serve": systems.pop("vit serve"),
            f"vit serve@{args.baseline_ref}": (command, 8116, "/v1/classify", "/readyz"),
            **systems,
        }
    skip = {s.lower() for s in args.skip}
    systems = {k: v for k, v in systems.items() if not any(s in k.lower() for s in skip)}
    if not int8.exists():
        systems.pop("vit serve int8", None)

    results: dict[str, Any] = {
        "model": str(args.model),
        "peer_model": str(peer),
        "cpus": args.server_cpus or os.cpu_count(),
        "load": os.getloadavg(),
    }
    print(f"raw onnxruntime on {args.model.name} ...", flush=True)
    raw = RawOrt(args.model, images, cpus)
    results["raw_before"] = raw.measure()
    rounds: list[dict[str, Any]] = []
    results["rounds"] = rounds
    processes = {}
    try:
        for name, (command, port, _, ready) in systems.items():
            processes[name] = start(
                name.replace(" ", "_").replace("@", "_at_"), command, port, ready, roots.get(name, ROOT)
            )
            if name.startswith("vit serve"):  # the batch size its warm-up measured as fastest
                described = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=10).json()
                results.setdefault("run_batch_size", {})[name] = described["run_batch_size"]
                results.setdefault("instances", {})[name] = described["batching"]["instances"]
            signal_group(processes[name], signal.SIGSTOP)
        manifests = {
            name: write_manifest(
                name.replace(" ", "_"), path, images, raw=args.raw_body and name.startswith("vit serve")
            )
            for name, (_, _, path, _) in systems.items()
        }
        for index in range(args.rounds):
            # Each round has its own raw onnxruntime sweep (all servers paused), so every server
            # number is compared with raw inference measured minutes, not a quarter hour, away.
            current: dict[str, Any] = {
                "raw": results["raw_before"] if index == 0 else raw.measure(),
                "servers": {},
            }
            rounds.append(current)
            for concurrency in args.concurrency:
                for name, (_, port, _, _) in systems.items():  # interleaved: every system at this c, in turn
                    result = measure(
                        processes[name],
                        f"http://127.0.0.1:{port}",
                        manifests[name],
                        concurrency,
                        args.duration,
                    )
                    current["servers"].setdefault(name, {})[concurrency] = result
                    # Partial results survive a cut-off run.
                    args.out.write_text(json.dumps(results, indent=1))
                    print(
                        f"round {index + 1} {name:22s} c={concurrency:<3d} {result['rps']:7.1f} req/s  "
                        f"p50 {result['p50_us'] / 1000:7.1f} ms  p99 {result['p99_us'] / 1000:7.1f} ms  "
                        f"non-2xx {result['non_2xx']}",
                        flush=True,
                    )
        if args.requests and "vit serve" in processes:
            bad = write_manifest("memory", "/v1/classify", images, malformed=True)
            signal_group(processes["vit serve"], signal.SIGCONT)
            results["memory"] = memory_run(
                "http://127.0.0.1:8110", bad, processes["vit serve"].pid, args.requests
            )
            print(f"memory: {results['memory']}", flush=True)
    finally:
        for process in processes.values():
            signal_group(process, signal.SIGCONT)
            signal_group(process, signal.SIGTERM)
        for process in processes.values():
            process.wait(30)
    results["raw_after"] = raw.measure()
    if not args.no_install_size:
        results["install_mb"] = install_size()
    args.out.write_text(json.dumps(results, indent=1))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
