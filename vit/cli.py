"""The ``vit`` command.

``fit``, ``validate`` and ``test`` are LightningCLI (YAML ``--config``, dotted overrides,
``--print_config``); the other subcommands are plain argparse programs in their own modules,
imported only when called (``vit serve`` never imports torch).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

LIGHTNING_COMMANDS = ("fit", "validate", "test")
# subcommand -> (module, one-line help); each module has main(argv: list[str]) -> int
TOOL_COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("vit.export", "export a checkpoint to one self-describing ONNX file"),
    "predict": ("vit.predict", "classify images with an ONNX file or a checkpoint"),
    "eval": ("vit.evaluate", "accuracy, per-class table and confusion matrix on a folder"),
    "explain": ("vit.explain", "attention-rollout overlays for images"),
    "serve": ("serve.cli", "HTTP server for an ONNX file (torch-free)"),
    "demo": ("vit.demo", "digits demo: data set, training, export, prediction"),
}
DEFAULT_ROOT = "runs/vit"
DEFAULT_MAX_EPOCHS = 100  # without --budget; with it, training runs until the budget is spent


def parse_duration(text: str) -> str:
    """``90s``, ``30m``, ``1h30m``, ``2d`` or ``DD:HH:MM:SS`` -> Lightning's ``DD:HH:MM:SS``."""
    if re.fullmatch(r"\d+:\d\d:\d\d:\d\d", text):
        return text
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text.lower()):
        raise ValueError(f"--budget: cannot read {text!r}; use e.g. 30m, 1h30m, 90s or DD:HH:MM:SS")
    seconds = int(sum(float(n) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[u] for n, u in parts))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def data_root_argument(argv: list[str]) -> str | None:
    """The value of ``--data.root`` in ``argv`` (either ``--data.root X`` or ``--data.root=X``)."""
    for index, arg in enumerate(argv):
        if arg == "--data.root" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--data.root="):
            return arg.split("=", 1)[1]
    return None


def with_automatic_defaults(argv: list[str]) -> list[str]:
    """``vit fit --data.root DIR`` with no config and no model settings: defaults from the data.

    The suggestions (vit.autoconfig) come first, so anything the user typed still wins.
    """
    root = data_root_argument(argv)
    user_keys = {a.split("=", 1)[0][2:] for a in argv if a.startswith("--")}
    if (
        argv[0] != "fit"
        or root is None
        or "config" in user_keys
        or any(k.startswith("model.") for k in user_keys)
    ):
        return argv
    from vit.autoconfig import suggest_defaults

    suggested = {k: v for k, v in suggest_defaults(root).items() if k not in user_keys}
    print(
        "vit fit: no config given; defaults chosen from the data: "
        + ", ".join(f"{k}={v}" for k, v in suggested.items())
    )
    extra = [item for key, value in suggested.items() for item in (f"--{key}", str(value))]
    return [argv[0], *extra, *argv[1:]]


def run_lightning(argv: list[str]) -> int:
    from lightning.pytorch.cli import LightningCLI

    from vit.callbacks import BestAndLastCheckpoint
    from vit.data import ImageFolderDataModule
    from vit.model import ViTClassifier

    class ViTCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_argument(
                "--budget",
                type=str | None,
                default=None,
                help="train for this long (e.g. 30m); the LR schedule is laid out over the budget",
            )
            parser.link_arguments("model.img_size", "data.img_size")
            parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
            parser.link_arguments("data.preprocessing_dict", "model.preprocessing", apply_on="instantiate")
            # `best` by val top-1 and `last`, in a fixed folder so `--ckpt_path last` finds them.
            parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.monitor": "val/acc1",
                    "checkpoint.mode": "max",
                    "checkpoint.filename": "best",
                    "checkpoint.save_last": True,
                    "checkpoint.enable_version_counter": False,
                    "trainer.default_root_dir": DEFAULT_ROOT,
                }
            )
            parser.link_arguments(
                "trainer.default_root_dir",
                "checkpoint.dirpath",
                compute_fn=lambda root: str(Path(root or DEFAULT_ROOT) / "checkpoints"),
            )

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand]
            trainer = config.trainer
            if config.get("budget"):
                trainer.max_time = parse_duration(config.budget)
                trainer.max_epochs = (
                    -1 if trainer.max_epochs in (None, DEFAULT_MAX_EPOCHS) else trainer.max_epochs
                )
            if trainer.logger in (None, True):
                trainer.logger = default_loggers(trainer.default_root_dir or DEFAULT_ROOT)
            if trainer.enable_progress_bar is not False and importlib.util.find_spec("rich"):
                bar = {"class_path": "lightning.pytorch.callbacks.RichProgressBar"}
                trainer.callbacks = [*(trainer.callbacks or []), bar]

    ViTCLI(
        ViTClassifier,
        ImageFolderDataModule,
        args=with_automatic_defaults(argv),
        trainer_defaults={"max_epochs": DEFAULT_MAX_EPOCHS},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": False},
        seed_everything_default=0,
    )
    return 0


def default_loggers(root: str) -> list[dict[str, Any]]:
    """CSV always; TensorBoard too when it is installed. Both under ``root/logs/version_N``."""
    loggers = [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": root, "name": "logs"}}
    ]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(
            {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": root, "name": "logs"},
            }
        )
    return loggers


def usage() -> str:
    lines = ["usage: vit COMMAND [options]", "", "commands:"]
    lines += [f"  {c:<9} LightningCLI {c} (see `vit {c} --help`)" for c in LIGHTNING_COMMANDS]
    lines += [f"  {c:<9} {text}" for c, (_, text) in TOOL_COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        return run_lightning(argv)
    if command in TOOL_COMMANDS:
        module = importlib.import_module(TOOL_COMMANDS[command][0])
        return int(module.main(rest) or 0)
    print(f"vit: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
