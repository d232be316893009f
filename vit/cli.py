"""The ``vit`` command.

``fit``, ``validate`` and ``test`` are LightningCLI (YAML ``--config``, dotted overrides,
``--print_config``); the other subcommands are plain argparse programs in their own modules,
imported only when called (``vit serve`` never imports torch).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
import warnings
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
    "doctor": ("vit.doctor", "find duplicates, leaks, conflicts and likely label errors in a folder"),
}
DEFAULT_ROOT = "runs/vit"
DEFAULT_MAX_EPOCHS = 100  # without a time limit; with one, training runs until the time is spent
# Known-harmless messages, silenced where they arise (everything else still shows):
KNOWN_HARMLESS_WARNINGS = (
    r"LightningCLI's args parameter is intended",  # vit calls the CLI as a function, deliberately
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's pytree copy on torch >= 2.9
    r"Precision bf16-mixed is not supported by the model summary",  # it counts params in fp32
)
KNOWN_HARMLESS_INFO = ("💡 Tip:",)  # Lightning's litlogger/litmodels advertisements


class _DropKnownInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(KNOWN_HARMLESS_INFO)


def quiet_known_messages() -> None:
    """Silence :data:`KNOWN_HARMLESS_WARNINGS` and the Lightning tips; real warnings stay."""
    for message in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownInfo) for f in logger.filters):
            logger.addFilter(_DropKnownInfo())


def parse_duration(text: str, flag: str = "--budget") -> str:
    """``90s``, ``30m``, ``1h30m``, ``2d`` or ``DD:HH:MM:SS`` -> Lightning's ``DD:HH:MM:SS``."""
    if re.fullmatch(r"\d+:\d\d:\d\d:\d\d", text):
        return text
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text.lower()):
        raise ValueError(f"{flag}: cannot read {text!r}; use e.g. 30m, 1h30m, 90s or DD:HH:MM:SS")
    seconds = int(sum(float(n) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[u] for n, u in parts))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def argument_value(argv: list[str], key: str) -> str | None:
    """The value of ``--KEY`` in ``argv`` (either ``--KEY X`` or ``--KEY=X``)."""
    for index, arg in enumerate(argv):
        if arg == f"--{key}" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"--{key}="):
            return arg.split("=", 1)[1]
    return None


def automatic_defaults(argv: list[str]) -> dict[str, Any]:
    """Defaults from the data for ``vit fit --data.root DIR`` without a config or model settings
    (vit.autoconfig); with ``--model.pretrained`` as the only model setting, fine-tuning defaults.

    They become the parser's defaults (``set_defaults``), so anything the user typed still wins.
    """
    root = argument_value(argv, "data.root")
    user_keys = {a.split("=", 1)[0][2:] for a in argv if a.startswith("--")}
    model_keys = {k for k in user_keys if k.startswith("model.")} - {"model.pretrained", "model.size"}
    if not argv or argv[0] != "fit" or root is None or "config" in user_keys or model_keys:
        return {}
    from vit.autoconfig import finetune_defaults, suggest_defaults

    pretrained = argument_value(argv, "model.pretrained")
    # remember=True: the data module takes this folder scan instead of walking the folder again
    if pretrained:
        chosen = finetune_defaults(root, pretrained, remember=True)
    else:
        chosen = suggest_defaults(root, remember=True, budget_seconds=budget_seconds(argv))
    reason = chosen.pop("_reason", None)
    MEASURED["seconds"] = chosen.pop("_measure_seconds", 0.0)
    suggested = {k: v for k, v in chosen.items() if k not in user_keys}
    print(
        f"vit fit: no config given; {'fine-tuning ' if pretrained else ''}defaults chosen from the data: "
        + ", ".join(f"{k}={v}" for k, v in suggested.items())
    )
    if reason:
        print(f"vit fit: {reason}")
    return suggested


# Seconds spent measuring model sizes before the run (vit.sizing): taken off the time limit.
MEASURED = {"seconds": 0.0}


def duration_seconds(duration: str) -> int:
    """Lightning's ``DD:HH:MM:SS`` -> seconds."""
    days, hours, minutes, seconds = (int(part) for part in duration.split(":"))
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def budget_seconds(argv: list[str]) -> int | None:
    """The time limit given on the command line (``--budget`` or ``--trainer.max_time``), if any."""
    for key in ("budget", "trainer.max_time"):
        text = argument_value(argv, key)
        if text and text.lower() not in ("null", "none"):
            return duration_seconds(parse_duration(text, f"--{key}"))
    return None


def resolve_size(config: Any, budget: int | None) -> None:
    """``--model.size NAME|auto`` (with a preset): set the architecture keys of that rung.

    ``auto`` sizes from the budget on this machine (vit.sizing); without a time limit it keeps
    the configured architecture, since there is nothing to size against.
    """
    from vit.autoconfig import choose_patch_size, scan
    from vit.sizing import MeasuredThroughput, choose, ladder_for, rung_named

    size, model = config.model.get("size"), config.model
    if not size:
        return
    if model.get("pretrained"):
        raise ValueError(
            "--model.size: the --model.pretrained weights fix the architecture; give one of the two"
        )
    img_size = int(model.img_size)
    if size == "auto":
        if not budget:
            print("vit fit: --model.size auto without a time limit (--budget): the configured model is kept")
            return
        stats = scan(config.data.root, remember=True)
        family, ladder = ladder_for(img_size)
        speed = MeasuredThroughput(
            img_size,
            int(model.patch_size or choose_patch_size(img_size)),
            stats.classes,
            config.data.batch_size,
        )
        choice = choose(ladder, speed, budget, stats.train_images, [config.trainer.precision], family)
        MEASURED["seconds"] += speed.seconds
        rung = choice.rung
        print(f"vit fit: {choice.reason(budget, stats.train_images)}")
    else:
        rung = rung_named(size, img_size)
    for key, value in rung.settings().items():
        name = key.removeprefix("model.")
        if name == "model_kwargs":
            value = {**(model.get("model_kwargs") or {}), **value}
        if name != "size":
            setattr(model, name, value)


def pretrained_data_settings(config: Any) -> dict[str, Any]:
    """The pretrained weights' preprocessing for the ``data.*`` keys still at their defaults."""
    from vit.data import ImageFolderDataModule
    from vit.pretrained import pretrained_settings

    spec = config.model.get("pretrained")
    if not spec:
        return {}
    defaults = inspect_defaults(ImageFolderDataModule)
    chosen = {}
    for key, value in pretrained_settings(spec, config.model.model_name).items():
        name = key.removeprefix("data.")
        current = config.data.get(name)
        if key.startswith("data.") and _same(current, defaults.get(name)) and not _same(current, value):
            chosen[name] = value
    return chosen


def inspect_defaults(cls: type) -> dict[str, Any]:
    import inspect

    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return [float(x) for x in a] == [float(x) for x in b]
    return a == b


def run_lightning(argv: list[str]) -> int:
    from lightning.pytorch.cli import LightningCLI

    from vit.callbacks import BestAndLastCheckpoint
    from vit.data import ImageFolderDataModule
    from vit.model import ViTClassifier
    from vit.pretrained import PretrainedUnavailable

    quiet_known_messages()
    MEASURED["seconds"] = 0.0
    automatic = automatic_defaults(argv)

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
            parser.set_defaults(automatic)  # vit fit --data.root DIR: defaults from the data

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand]
            trainer = config.trainer
            if config.get("budget"):
                trainer.max_time = parse_duration(config.budget)
            elif isinstance(trainer.max_time, str):
                trainer.max_time = parse_duration(trainer.max_time, "--trainer.max_time")
            limit = duration_seconds(trainer.max_time) if isinstance(trainer.max_time, str) else None
            if self.subcommand == "fit":
                resolve_size(config, limit)
            if limit and MEASURED["seconds"] >= 1:
                # Measuring the sizes was part of the budget: the training gets the rest.
                left = max(limit - round(MEASURED["seconds"]), 60)
                trainer.max_time = parse_duration(f"{left}s")
                print(f"vit fit: {round(MEASURED['seconds'])} s of the budget spent measuring model sizes")
            if trainer.max_time and trainer.max_epochs in (None, DEFAULT_MAX_EPOCHS):
                # A time limit (--budget or Lightning's own --trainer.max_time) ends the run and the
                # schedule is laid over it; an epoch limit the user set still ends it if sooner.
                trainer.max_epochs = -1
            preprocessing = pretrained_data_settings(config)
            if preprocessing:
                for key, value in preprocessing.items():
                    setattr(config.data, key, value)
                print("vit fit: preprocessing of the pretrained weights: "
                      + ", ".join(f"data.{k}={v}" for k, v in preprocessing.items()))  # fmt: skip
            if trainer.logger in (None, True):
                trainer.logger = default_loggers(trainer.default_root_dir or DEFAULT_ROOT)
            if self.subcommand == "fit":  # per-class table, confusion matrix and curves.png, once
                trainer.callbacks = [*(trainer.callbacks or []), {"class_path": "vit.callbacks.RunReport"}]
            if self.subcommand == "fit":  # temperature of best/last on the val split (docs/TRUST.md)
                calibrate = {"class_path": "vit.trustfit.CalibrateAtFitEnd"}
                trainer.callbacks = [*(trainer.callbacks or []), calibrate]
            if trainer.enable_progress_bar is not False and importlib.util.find_spec("rich"):
                bar = {"class_path": "lightning.pytorch.callbacks.RichProgressBar"}
                trainer.callbacks = [*(trainer.callbacks or []), bar]

        def before_fit(self) -> None:
            # Log at least once an epoch: on a small folder an epoch has fewer batches than
            # Lightning's 50 (which it warns about, and then logs no training step at all).
            data, trainer = self.datamodule, self.trainer
            per_epoch = len(data.splits.train) // max(data.hparams.batch_size * trainer.world_size, 1)
            if 0 < per_epoch < trainer.log_every_n_steps:
                trainer.log_every_n_steps = per_epoch

    try:
        ViTCLI(
            ViTClassifier,
            ImageFolderDataModule,
            args=argv,
            trainer_defaults={"max_epochs": DEFAULT_MAX_EPOCHS},
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"default_env": False},
            seed_everything_default=0,
        )
    except PretrainedUnavailable as exc:  # before anything is written: nothing to clean up
        print(f"vit {argv[0]}: {exc}", file=sys.stderr)
        return 2
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
