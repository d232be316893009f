"""Step 1 of ``vit export``: what to export and check against, decided before a file is written.

The metadata (labels, preprocessing, model, versions, weights hash), the extras fitted on the
check data (calibration, OOD score: :mod:`vit.trustfit`), the module to export with its output
names, the check inputs and PyTorch's reference outputs on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from serve.metadata import ModelMetadata
from serve.preprocess import Preprocessing
from vit.verify import CheckInputs, generated_inputs, load_check_inputs, run_torch


def weights_sha256(net: torch.nn.Module) -> str:
    """SHA-256 of the state dict tensors' bytes in sorted key order: the model's version."""
    digest = hashlib.sha256()
    state = net.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous().reshape(-1)
        digest.update(memoryview(tensor.view(torch.uint8).numpy()))
    return digest.hexdigest()


def framework_versions() -> dict[str, str]:
    import onnxruntime
    import PIL
    import timm

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        versions["vit"] = importlib.metadata.version("vit")
    return versions


@dataclass
class Plan:
    """What the export writes and checks against: decided before any file is written."""

    net: torch.nn.Module  # the eval-mode network (the PyTorch reference)
    module: torch.nn.Module  # what is exported: the net, or a wrapper adding outputs
    names: list[str]  # the module's output names
    metadata: ModelMetadata
    inputs: CheckInputs
    reference: list[np.ndarray]  # PyTorch's outputs on the check inputs
    facts: dict[str, Any] = field(default_factory=dict)  # the model card's


def plan_export(
    net: torch.nn.Module,
    *,
    labels: list[str],
    preprocessing: Preprocessing,
    model_name: str,
    model_config: dict[str, Any] | None,
    check_data: str | Path | None,
    check_limit: int,
    with_attention: bool,
    ood_accept: float,
    checkpoint_info: dict[str, Any] | None,
    log: Callable[[str], None],
) -> Plan:
    """Step 1: the metadata (and the extras fitted on the check data), the module, the check inputs."""
    module, names = net, ["logits"]
    if with_attention:
        from vit.attention import WithAttention

        module, names = WithAttention(net).eval(), ["logits", "attention"]
    metadata = ModelMetadata(
        labels=list(labels),
        preprocessing=preprocessing,
        model_name=model_name,
        model_config=dict(model_config or {}),
        weights_sha256=weights_sha256(net),
        versions=framework_versions(),
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        outputs={"logits": "logits", "attention": "attention" if with_attention else None},
    )
    # Metadata extras computed before stamping: each step may add outputs to the module too.
    from vit.trustfit import prepare_trust  # temperature, OOD score, card facts (docs/TRUST.md)

    trust = prepare_trust(net, module, names, metadata, check_data, ood_accept, checkpoint_info, log)
    module, names, metadata = trust.module, trust.names, trust.metadata
    if check_data is not None:
        inputs = load_check_inputs(Path(check_data), metadata.labels, preprocessing, check_limit)
    else:
        inputs = generated_inputs(preprocessing)
    if with_attention:  # reference rollout from the hooks route, independent of the wrapper
        from vit.attention import rollout_torch

        reference = run_torch(lambda x: (net(x), rollout_torch(net, x)), inputs.images)
    else:
        reference = run_torch(net, inputs.images)
    return Plan(net, module, names, metadata, inputs, reference, trust.facts)
