"""Server settings: one dataclass, filled from defaults, ``VIT_SERVE_*`` variables and flags.

Precedence is flag > environment variable > default. Every field is both a flag
(``--max-batch-size``) and a variable (``VIT_SERVE_MAX_BATCH_SIZE``); the table in
docs/SERVING.md is this file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "VIT_SERVE_"
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _opt(help: str, **kwargs: Any) -> dict[str, Any]:
    return {"metadata": {"help": help, **kwargs}}


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; validated in :meth:`__post_init__`."""

    model: Path = field(default=Path(""), **_opt("ONNX file written by `vit export`", positional=True))
    host: str = field(default="127.0.0.1", **_opt("interface to listen on"))
    port: int = field(default=8000, **_opt("TCP port"))
    device: str = field(default="auto", **_opt("auto (CUDA when available), cpu or cuda", choices=DEVICES))
    max_batch_size: int = field(default=32, **_opt("most images taken from the queue as one batch"))
    run_batch_size: int = field(
        default=0, **_opt("most images per onnxruntime call (0: on CPU the fastest, measured at warm-up)")
    )
    max_wait_ms: float = field(default=5.0, **_opt("longest wait for a batch to fill, in ms"))
    threads: int = field(default=0, **_opt("onnxruntime intra-op threads (0: one per core)"))
    instances: int = field(
        default=0,
        **_opt("inference calls running at once, like Triton's instance count (0: 2 on CPU, 1 on CUDA)"),
    )
    spin: bool = field(
        default=True,
        **_opt(
            "with several instances, let the lone-request session's threads spin between operators "
            "(lowest c=1 latency on dedicated cores; --no-spin where other work shares the cores)"
        ),
    )
    preprocess_threads: int = field(default=2, **_opt("threads that decode and preprocess images"))
    max_queue: int = field(default=256, **_opt("images waiting for inference before 503"))
    api_key: str | None = field(default=None, **_opt("require this key (Bearer or X-API-Key)"))
    model_name: str | None = field(
        default=None, **_opt("name in responses and /v2 URLs (default: file stem)")
    )
    max_body_bytes: int = field(default=10 * 1024 * 1024, **_opt("largest request body, bytes (413)"))
    max_pixels: int = field(default=40_000_000, **_opt("largest decoded image, pixels (413)"))
    max_images: int = field(default=32, **_opt("most images in one request (413)"))
    request_timeout_s: float = field(default=30.0, **_opt("per-request deadline, seconds (504)"))
    log_level: str = field(default="info", **_opt("log level", choices=LOG_LEVELS))
    access_log: bool = field(default=True, **_opt("one JSON line per request on stderr"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        positive = ("max_batch_size", "max_queue", "max_body_bytes", "max_pixels", "max_images")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and request_timeout_s > 0")
        if min(self.threads, self.run_batch_size, self.instances) < 0 or self.preprocess_threads < 1:
            raise ValueError("threads, instances and run_batch_size must be >= 0, preprocess_threads >= 1")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")

    @property
    def name(self) -> str:
        """The model's public name: ``model_name`` or the file stem."""
        return self.model_name or self.model.stem or "model"

    def with_model(self, path: str | Path) -> Settings:
        return replace(self, model=Path(path))


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _field_type(name: str) -> type:
    """The scalar type behind a field's annotation (``str | None`` -> ``str``)."""
    kinds = {"Path": Path, "str": str, "int": int, "float": float, "bool": bool}
    annotation = str(next(f.type for f in fields(Settings) if f.name == name))
    return kinds[annotation.split("|")[0].strip()]


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def build_parser(prog: str = "vit serve") -> argparse.ArgumentParser:
    """argparse built from the dataclass fields, so flags, env names and help never drift."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a vit ONNX file over HTTP (torch-free). Every flag can also be set "
        f"with an environment variable {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}PORT=9000).",
    )
    for f in fields(Settings):
        meta = f.metadata
        kind = _field_type(f.name)
        default = None if f.default is MISSING else f.default
        shown = "none, required" if meta.get("positional") else default
        help_text = f"{meta['help']} [env {env_var(f.name)}; default {shown}]"
        if meta.get("positional"):
            parser.add_argument(f.name, nargs="?", default=None, help=help_text)
        elif kind is bool:
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=kind,
                default=None,
                choices=meta.get("choices"),
                help=help_text,
            )
    return parser


def load_settings(argv: list[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Flags over ``VIT_SERVE_*`` variables over defaults; ``ValueError`` names the bad one."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if args.get(f.name) is not None:
            values[f.name] = args[f.name]
            continue
        raw = environ.get(env_var(f.name))
        if raw is None or raw == "":
            continue
        kind = _field_type(f.name)
        try:
            values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
        except ValueError as exc:
            raise ValueError(f"{env_var(f.name)}={raw!r}: {exc}") from exc
    if not str(values.get("model", "")):
        raise ValueError(f"no model file given: pass MODEL or set {env_var('model')}")
    return Settings(**values)
