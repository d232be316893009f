"""Server settings: one pydantic-settings class, filled from defaults, ``VIT_SERVE_*`` and flags.

Precedence is flag > environment variable > default. Every field is both a flag
(``--max-batch-size``) and a variable (``VIT_SERVE_MAX_BATCH_SIZE``): the flags are generated
from the fields, so names, types and help never drift; the table in docs/SERVING.md is this
file (a test keeps them in step).
"""

from __future__ import annotations

import argparse
import logging
import os
import types
import typing
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "VIT_SERVE_"
Device = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
log = logging.getLogger("serve")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return Field(default=default, description=help, json_schema_extra=extra or None)


class Settings(BaseSettings):
    """Everything the server can be told; pydantic validates types, :meth:`_check` the ranges."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    model: Path = _opt(Path(""), "ONNX file written by `vit export`", positional=True)
    host: str = _opt("127.0.0.1", "interface to listen on")
    port: int = _opt(8000, "TCP port")
    device: Device = _opt("auto", "auto (CUDA when available), cpu or cuda")
    max_batch_size: int = _opt(32, "most images taken from the queue as one batch")
    run_batch_size: int = _opt(
        0, "most images per onnxruntime call (0: on CPU the fastest, measured at warm-up)"
    )
    max_wait_ms: float = _opt(5.0, "longest wait for a batch to fill, in ms")
    threads: int = _opt(0, "onnxruntime intra-op threads (0: one per core)")
    instances: int = _opt(
        0, "inference calls running at once, like Triton's instance count (0: 2 on CPU, 1 on CUDA)"
    )
    spin: bool = _opt(
        True,
        "with several instances, let the lone-request session's threads spin between operators "
        "(lowest c=1 latency on dedicated cores; --no-spin where other work shares the cores)",
    )
    preprocess_threads: int = _opt(2, "threads that decode and preprocess images")
    max_queue: int = _opt(256, "images waiting for inference before 503")
    api_key: str | None = _opt(
        None, "require this key (Bearer or X-API-Key); visible in the process list: prefer --api-key-file"
    )
    api_key_file: Path | None = _opt(
        None, "read the API key from this file (not visible in the process list)"
    )
    admin_key: str | None = _opt(None, "a separate key for /v1/admin/* (default: the API key)")
    model_name: str | None = _opt(None, "name in responses and /v2 URLs (default: file stem)")
    model_dir: Path | None = _opt(
        None, "folder that /v1/admin/reload may load from (default: the starting model's folder)"
    )
    max_body_bytes: int = _opt(10 * 1024 * 1024, "largest request body, bytes (413)")
    max_pixels: int = _opt(40_000_000, "largest image at any decoding stage, pixels (413)")
    max_images: int = _opt(32, "most images in one request (413)")
    image_formats: str = _opt(
        "JPEG,PNG,WEBP,BMP,GIF,TIFF",
        "Pillow formats that are decoded, comma-separated; any other upload is 415",
    )
    max_outputs: int = _opt(8, "most entries in an Open Inference Protocol request's inputs/outputs (400)")
    request_timeout_s: float = _opt(30.0, "per-request deadline, seconds (504)")
    max_header_bytes: int = _opt(16384, "largest request head (line + headers), bytes (431)")
    header_timeout_s: float = _opt(
        10.0, "seconds a connection may take to send its request head before it is closed"
    )
    timeout_keep_alive_s: float = _opt(5.0, "idle keep-alive connections close after this many seconds")
    limit_concurrency: int = _opt(1000, "most connections and tasks at once; more get 503 (0: no limit)")
    docs: bool = _opt(True, "serve /docs and /redoc (from package files, no CDN)")
    ood_threshold: float | None = _opt(
        None, "out-of-distribution score above which an image is 'unknown' (default: the file's)"
    )
    log_level: LogLevel = _opt("info", "log level")
    access_log: bool = _opt(True, "one JSON line per request on stderr")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        positive = (
            "max_batch_size",
            "max_queue",
            "max_body_bytes",
            "max_pixels",
            "max_images",
            "max_outputs",
            "max_header_bytes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and request_timeout_s > 0")
        if self.header_timeout_s <= 0 or self.timeout_keep_alive_s <= 0:
            raise ValueError("header_timeout_s and timeout_keep_alive_s must be > 0")
        if min(self.threads, self.run_batch_size, self.instances, self.limit_concurrency) < 0:
            raise ValueError("threads, instances, run_batch_size and limit_concurrency must be >= 0")
        if self.preprocess_threads < 1:
            raise ValueError("preprocess_threads must be >= 1")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not self.formats:
            raise ValueError("image_formats must name at least one Pillow format")
        return self

    @cached_property
    def formats(self) -> tuple[str, ...]:
        """``image_formats`` as Pillow format names (upper case); parsed once, read per image."""
        return tuple(f.strip().upper() for f in self.image_formats.split(",") if f.strip())

    @property
    def name(self) -> str:
        """The model's public name: ``model_name`` or the starting file's stem (stable across reloads)."""
        return self.model_name or self.model.stem or "model"

    @property
    def reload_dir(self) -> Path:
        """The folder reloads may load from: ``model_dir`` or the starting model's folder."""
        return (self.model_dir or self.model.parent).resolve()

    @cached_property
    def key(self) -> str | None:
        """The API key: ``api_key``, or the first line of ``api_key_file`` (read once)."""
        if self.api_key:
            return self.api_key
        if self.api_key_file is not None:
            return read_key_file(self.api_key_file)
        return None

    @cached_property
    def admin(self) -> str | None:
        """The key for admin routes: ``admin_key``, else the API key."""
        return self.admin_key or self.key

    def with_model(self, path: str | Path) -> Settings:
        return self.model_copy(update={"model": Path(path)})


def read_key_file(path: Path) -> str:
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"api_key_file {path}: cannot read it ({exc.strerror})") from exc
    if not key:
        raise ValueError(f"api_key_file {path}: the file is empty")
    return key


def _scalar(annotation: Any) -> Any:
    """The type behind ``X | None`` (or the Literal itself)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def build_parser(prog: str = "vit serve") -> argparse.ArgumentParser:
    """argparse built from the fields, so flags, env names and help never drift."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a vit ONNX file over HTTP (torch-free). Every flag can also be set "
        f"with an environment variable {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}PORT=9000).",
    )
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra or {}
        kind = _scalar(info.annotation)
        positional = bool(extra.get("positional"))  # type: ignore[union-attr]
        shown = "none, required" if positional else info.default
        help_text = f"{info.description} [env {env_var(name)}; default {shown}]"
        flag = "--" + name.replace("_", "-")
        if positional:
            parser.add_argument(name, nargs="?", default=None, help=help_text)
        elif kind is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag, dest=name, choices=typing.get_args(kind), default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    return parser


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """``VIT_SERVE_*`` values, each parsed by its field's type; ``ValueError`` names the variable.

    Read here rather than by pydantic-settings' own source so that an explicit mapping (tests,
    embedding) is honoured and a bad value is reported under the variable's name.
    """
    values: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        raw = environ.get(env_var(name))
        if raw is None or raw == "":
            continue
        kind = _scalar(info.annotation)
        try:
            if kind is bool:
                values[name] = _parse_bool(raw)
            elif typing.get_origin(kind) is Literal:
                values[name] = raw
            else:
                values[name] = kind(raw)
        except ValueError as exc:
            raise ValueError(f"{env_var(name)}={raw!r}: {exc}") from exc
    return values


def describe_error(exc: ValidationError) -> str:
    """pydantic's errors as one line naming each field."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "settings"
        parts.append(f"{where}: {error.get('msg', 'invalid')}".replace("Value error, ", ""))
    return "; ".join(parts)


def load_settings(argv: list[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Flags over ``VIT_SERVE_*`` variables over defaults; ``ValueError`` names the bad one."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    values = _from_environment(environ)
    values.update({name: value for name, value in args.items() if value is not None})
    if not str(values.get("model", "")):
        raise ValueError(f"no model file given: pass MODEL or set {env_var('model')}")
    if "api_key" in {k for k, v in args.items() if v is not None}:
        log.warning("--api-key is visible to every local user in the process list: prefer --api-key-file")
    try:
        # Explicit values only: the environment was read above, under the caller's mapping.
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise ValueError(describe_error(exc)) from None
    _ = settings.key  # an unreadable key file fails now, at start, not on the first request
    return settings
