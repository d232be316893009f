"""The LightningModule: a timm Vision Transformer with loss, optimiser, schedule and metrics."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from vit.pretrained import create_pretrained, is_named, load_pretrained, timm_name
from vit.report import format_per_class_table, write_confusion_matrix_png
from vit.schedule import ProgressScheduler, describe_limits, run_progress
from vit.stems import has_conv_stem  # importing vit.stems registers the conv-stem models with timm

CHECKPOINT_KEY = "vit"  # checkpoint[CHECKPOINT_KEY] = {"labels", "preprocessing", "model"}
DIVERGENCE_CHECK_EVERY = 25  # steps between checks that the loss is still finite
# ViTClassifier's arguments that go to timm.create_model under the same name (None: keep the
# named model's value); everything else timm takes comes through model_kwargs.
ARCHITECTURE = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "drop_rate",
                "drop_path_rate")  # fmt: skip


def timm_config(
    num_classes: int, model_kwargs: dict[str, Any] | None = None, **architecture: Any
) -> dict[str, Any]:
    """Keyword arguments for ``timm.create_model``: the set ``architecture`` values, the class
    count and ``model_kwargs`` (which win), in one flow as timm's ``build_model_with_cfg`` takes them."""
    unknown = set(architecture) - set(ARCHITECTURE)
    if unknown:
        raise TypeError(f"timm_config: unknown architecture argument(s) {sorted(unknown)}")
    config = {k: v for k, v in architecture.items() if v is not None}
    return {**config, "num_classes": num_classes, **(model_kwargs or {})}


class ViTClassifier(pl.LightningModule):
    """Image classifier around any timm ViT-family model (``vit_*``, ``deit_*``, …).

    Args:
        model_name: timm model name; the overrides below replace its architecture values.
        img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio: architecture overrides.
        drop_rate, drop_path_rate: dropout before the head and stochastic depth.
        model_kwargs: any other ``timm.create_model`` keyword (e.g. ``global_pool``).
        pretrained: local weights (timm .pth/.safetensors or a vit .ckpt), ``timm`` (the default
            pretrained tag of ``model_name``), a timm tag or ``hf-hub:ORG/NAME`` (vit.pretrained);
            the head and position embeddings are adapted.
        class_names, preprocessing: linked from the data by the CLI; stored in checkpoints.
        num_classes: only needed when ``class_names`` is not given.
        optimizer: timm optimizer name; weight decay skips norms, biases, pos-embed, cls-token.
        lr, weight_decay: optimiser settings (lr is the peak after warmup).
        layer_decay: layer-wise LR decay (timm): block ``i`` of ``L`` trains at
            ``lr * layer_decay ** (L + 1 - i)``, the head at ``lr``; None for one LR.
        freeze_backbone: fraction of the run (progress) during which only the head trains.
        warmup: fraction of the run (steps or time budget) spent in linear warmup.
        min_lr_ratio: final LR as a fraction of ``lr`` at the end of the cosine.
        label_smoothing: applied to hard and mixed targets alike.
        mixup_alpha, cutmix_alpha, mixup_prob: timm Mixup/CutMix (off when both alphas are 0).
        mixup_off: progress after which Mixup/CutMix is switched off.
        ema_decay: keep a timm EMA of the weights (validated and exported instead of the raw ones).
        size: a rung of vit.sizing's ladders (``nano``, ``micro``, …) or ``auto`` (from the
            ``--budget`` on this machine); ``vit fit`` turns it into the architecture arguments
            above before the model is built, and it is kept here as the record of that choice.
    """

    def __init__(
        self,
        model_name: str = "vit_tiny_patch16_224",
        img_size: int = 224,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        model_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        class_names: list[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        num_classes: int | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        layer_decay: float | None = None,
        freeze_backbone: float = 0.0,
        warmup: float = 0.05,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_off: float = 0.9,
        ema_decay: float | None = None,
        size: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if class_names is None and num_classes is None:
            raise ValueError("model: give class_names (linked from the data) or num_classes")
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        n = len(self.class_names)
        architecture = {k: self.hparams[k] for k in ARCHITECTURE}
        self.model_config = timm_config(n, model_kwargs, **architecture)
        if pretrained and is_named(pretrained):
            self.net = create_pretrained(timm_name(model_name, pretrained), **self.model_config)
            rank_zero_info(
                f"pretrained {pretrained}: {self.net.pretrained_cfg.get('hf_hub_id')} loaded by timm"
            )
        else:
            self.net = timm.create_model(model_name, pretrained=False, **self.model_config)
            if pretrained:
                rank_zero_info(load_pretrained(self.net, Path(pretrained), self.class_names))
        # The name export rebuilds the network from: the architecture (a tag or hub name resolved).
        self.architecture = (getattr(self.net, "pretrained_cfg", None) or {}).get("architecture", model_name)
        # Conv stems train faster with channels-last tensors, the layout oneDNN's and cuDNN's
        # convolutions prefer: faster training where the convs are a large share of a step
        # (docs/BENCHMARKS.md, "Training speed"). Plain patchify models keep
        # the default layout.
        self.channels_last = has_conv_stem(self.net)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.ema = ModelEmaV3(self.net, decay=ema_decay, use_warmup=True) if ema_decay else None
        if self.ema is not None:
            # The EMA copy is updated by hand, never by the optimiser, and stays in eval mode:
            # keep it out of the trainable-parameter count and Lightning's eval-mode warning.
            self.ema.requires_grad_(False)
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=mixup_prob,
                label_smoothing=label_smoothing,
                num_classes=n,
            )
        self.soft_loss = SoftTargetCrossEntropy()
        top5 = min(5, n)
        self.val_acc1 = MulticlassAccuracy(num_classes=n, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes=n, top_k=top5, average="micro")
        self.val_confusion = MulticlassConfusionMatrix(num_classes=n)
        self.test_acc1 = MulticlassAccuracy(num_classes=n, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes=n, top_k=top5, average="micro")
        self.test_confusion = MulticlassConfusionMatrix(num_classes=n)
        self.last_val_confusion: Any = None  # numpy, from the latest validation (vit.callbacks.RunReport)
        self._limits_reported = False
        self._frozen = False
        self._train_start, self._start_step = time.monotonic(), 0

    # -- model ---------------------------------------------------------------------------
    @property
    def eval_net(self) -> torch.nn.Module:
        """The weights that are validated and exported: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._layout(images))

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the memory layout the network's weights use (a no-op when they match)."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def progress(self) -> float:
        """Fraction of the run done (vit.schedule.run_progress): steps or time, whichever ends first."""
        return 0.0 if self._trainer is None else run_progress(self._trainer, self.global_step)

    def _freeze(self, frozen: bool) -> None:
        """Train only the classifier head (``frozen``) or the whole network."""
        head = {id(p) for p in self.net.get_classifier().parameters()}
        for parameter in self.net.parameters():
            if id(parameter) not in head:
                parameter.requires_grad_(not frozen)
        self._frozen = frozen

    # -- steps ---------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        frozen = self.progress() < self.hparams.freeze_backbone
        if frozen != self._frozen:
            self._freeze(frozen)
            rank_zero_info("backbone frozen: training the head only" if frozen else "backbone unfrozen")
        if self.mixup is not None and self.mixup.mixup_enabled and self.progress() >= self.hparams.mixup_off:
            self.mixup.mixup_enabled = False
        if self.mixup is not None and self.mixup.mixup_enabled and images.shape[0] % 2 == 0:
            images, soft_targets = self.mixup(images, targets)
            loss = self.soft_loss(self(images), soft_targets)
        else:
            loss = F.cross_entropy(self(images), targets, label_smoothing=self.hparams.label_smoothing)
        if batch_idx % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss):  # a sync: not every step
            raise FloatingPointError(
                f"training diverged: loss is {loss.item()} at step {self.global_step}; "
                "lower --model.lr, lengthen --model.warmup or set --trainer.gradient_clip_val"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, prog_bar=False)
        return loss

    def on_train_start(self) -> None:
        self._train_start = time.monotonic()
        self._start_step = self.global_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.net, step=self.global_step)
        steps = self.global_step - self._start_step
        # Once warmup is over (and at least 5 steps were timed), say which limit the schedule
        # follows: with both a step and a time limit, the one the measured speed reaches first.
        if not self._limits_reported and steps >= 5 and self.progress() >= self.hparams.warmup:
            self._limits_reported = True
            rank_zero_info(describe_limits(self.trainer, self.global_step))

    def _evaluate(self, batch: Any, prefix: str) -> None:
        images, targets = batch
        logits = self.eval_net(self._layout(images))
        loss = F.cross_entropy(logits, targets)
        acc1, acc5, confusion = (getattr(self, f"{prefix}_{m}") for m in ("acc1", "acc5", "confusion"))
        acc1.update(logits, targets)
        acc5.update(logits, targets)
        confusion.update(logits, targets)
        n = images.shape[0]
        self.log(f"{prefix}/loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log(f"{prefix}/acc1", acc1, prog_bar=True, batch_size=n)
        self.log(f"{prefix}/acc5", acc5, batch_size=n)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _report(self, confusion_metric: MulticlassConfusionMatrix, stage: str) -> None:
        """Per-class table and confusion matrix of this evaluation; during fit only kept (the
        best validation's is reported once, at the end: vit.callbacks.RunReport)."""
        confusion = confusion_metric.compute().cpu().numpy()  # a collective call under DDP
        confusion_metric.reset()
        if self.trainer.sanity_checking:
            return
        self.last_val_confusion = confusion if stage == "val" else self.last_val_confusion
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank must ask
        if self.trainer.state.fn == TrainerFn.FITTING or not self.trainer.is_global_zero:
            return
        rank_zero_info(
            format_per_class_table(confusion, self.class_names, title=f"{stage} per-class accuracy")
        )
        if log_dir:
            path = Path(log_dir) / f"confusion_matrix_{stage}.png"
            write_confusion_matrix_png(confusion, self.class_names, path)
            rank_zero_info(f"confusion matrix: {path}")

    def on_validation_epoch_end(self) -> None:
        self._report(self.val_confusion, "val")
        if self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking:
            # Wall-clock training minutes so far (validations included): the x axis of a budget
            # curve. Lightning's Timer (time limits; restored on resume), else this run's clock.
            timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
            seconds = timer.time_elapsed("train") if timer else time.monotonic() - self._train_start
            self.log("train/minutes", seconds / 60.0)

    def on_test_epoch_end(self) -> None:
        self._report(self.test_confusion, "test")

    # -- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = create_optimizer_v2(
            self.net, opt=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay, layer_decay=hp.layer_decay
        )
        scheduler = ProgressScheduler(optimizer, self.progress, hp.warmup, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoint contract (read by vit.checkpoint without this class) --------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "labels": self.class_names,
            "preprocessing": self.hparams.preprocessing,
            "model": {"name": self.architecture, "config": self.model_config},
            "weights": "ema" if self.ema is not None else "net",
        }
