"""The model card: ``MODEL.card.md`` beside every exported ``MODEL.onnx``, its facts also in the metadata.

Sections follow Hugging Face model cards (YAML header, model details, training data and
procedure, evaluation, uses and limits). The facts are gathered before the ONNX export
(:func:`card_facts`, stored as ``vit.card``); the export check results and the int8 delta are
measured on the written files, so they are in the card only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serve.metadata import ModelMetadata
from vit.atomic import write_atomic


def card_path(onnx_path: Path) -> Path:
    """``model.onnx`` -> ``model.card.md`` in the same folder."""
    return onnx_path.with_name(f"{onnx_path.name.removesuffix('.onnx')}.card.md")


def card_facts(
    metadata: ModelMetadata,
    info: dict[str, Any],
    counts: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """JSON-ready facts: classes and counts, validation metrics, OOD rule, model, training.

    ``info`` is the checkpoint's ``vit`` entry (``training`` facts from the end of ``vit fit``;
    ``hyper_parameters``/``data``: the run's settings); ``counts`` are per-class training images
    of ``--check-data`` (used when the checkpoint has none); ``extra``: e.g. per-class accuracy.
    """
    training = dict(info.get("training") or {})
    if not training.get("class_counts") and counts:
        training["class_counts"] = counts
    calibration = metadata.calibration
    ood = metadata.ood
    facts: dict[str, Any] = {
        "model": {"name": metadata.model_name, "config": metadata.model_config},
        "classes": list(metadata.labels),
        "training": training,
        "settings": {
            part: _settings(info.get(key)) for part, key in (("model", "hyper_parameters"), ("data", "data"))
        },
        "preprocessing": metadata.preprocessing.to_dict(),
        "calibration": calibration.to_dict() if calibration else None,
        "ood": ood.to_dict() if ood else None,
    }
    facts.update(extra or {})
    return facts


def _settings(values: Any) -> dict[str, Any]:
    """The run's settings without what the card shows elsewhere (labels, preprocessing) or Lightning's own keys."""
    skip = {"class_names", "preprocessing"}
    return {k: v for k, v in dict(values or {}).items() if not k.startswith("_") and k not in skip}


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.2f}%"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def _check_rows(report: Any) -> list[list[Any]]:
    rows = []
    for f in report.files:
        c = f.comparison
        rows.append(
            [
                f.path.name,
                f.precision,
                f"{f.size_bytes / 1e6:.2f} MB",
                f.reference,
                f"{c.max_abs_diff:.2e}",
                _pct(c.top1_agreement),
                _pct(c.accuracy),
            ]
        )
    return rows


def render_card(facts: dict[str, Any], report: Any = None) -> str:
    """The card's Markdown; ``report`` (:class:`vit.verify.ExportReport`) adds the export check."""
    model, training = facts["model"], facts.get("training") or {}
    calibration, ood = facts.get("calibration"), facts.get("ood")
    after = ((calibration or {}).get("metrics") or {}).get("after") or {}
    before = ((calibration or {}).get("metrics") or {}).get("before") or {}
    pre = facts["preprocessing"]
    lines = [
        "---",
        "library_name: onnx",
        "pipeline_tag: image-classification",
        "tags: [vision-transformer, image-classification, onnx, vit]",
        "metrics: [accuracy, ece, nll, brier]",
        "---",
        "",
        f"# Model card: {model['name']}",
        "",
        "## Model details",
        "",
        f"- Architecture: timm `{model['name']}`, config `{model['config']}`",
    ]
    if facts.get("parameters"):
        lines.append(f"- Parameters: {facts['parameters']:,}")
    if report is not None:
        lines.append(f"- Weights SHA-256: `{report.metadata.weights_sha256}`")
        lines.append(f"- Exported: {report.metadata.exported_at}")
    lines += ["", "## Classes and training data", ""]
    counts = training.get("class_counts") or {}
    lines += _table(
        ["class", "training images"], [[name, counts.get(name, "n/a")] for name in facts["classes"]]
    )
    if facts.get("image_sizes"):
        lines += ["", f"Training image sizes (width x height): {facts['image_sizes']}"]
    lines += ["", "## Training procedure", ""]
    for key in ("epochs", "steps", "max_epochs", "budget_seconds", "train_seconds", "best_val_top1"):
        if training.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: {training[key]}")
    settings = facts.get("settings") or {}
    for part in ("model", "data"):
        if settings.get(part):
            lines.append(f"- {part} settings: `{settings[part]}`")
    lines += ["", "## Evaluation (validation split)", ""]
    if calibration:
        lines.append(f"Measured on the {calibration['fitted_on'] or 'validation split'}.")
        lines.append("")
        lines += _table(
            ["metric", "before calibration", "after calibration"],
            [
                ["top-1", _pct(before.get("top1")), _pct(after.get("top1"))],
                ["ECE (15 bins)", _pct(before.get("ece")), _pct(after.get("ece"))],
                ["NLL", f"{before.get('nll', float('nan')):.4f}", f"{after.get('nll', float('nan')):.4f}"],
                [
                    "Brier",
                    f"{before.get('brier', float('nan')):.4f}",
                    f"{after.get('brier', float('nan')):.4f}",
                ],
            ],
        )
        lines += ["", f"Temperature: {calibration['temperature']:.4f} (scores are softmax(logits / T))."]
    else:
        lines.append("No validation metrics: exported without `--check-data` and no temperature fitted.")
    per_class = facts.get("per_class_accuracy") or {}
    if per_class:
        lines += ["", *_table(["class", "val accuracy"], [[k, _pct(v)] for k, v in per_class.items()])]
    lines += ["", "## Out-of-distribution flag", ""]
    if ood:
        lines += [
            f"- Score: `{ood['method']}` (higher = less like the training data)"
            + (f", graph output `{ood['output']}`" if ood.get("output") else ""),
            f"- Threshold: {ood['threshold']:.6g}, chosen so that {_pct(ood['accept_rate'])} of the "
            f"validation images are accepted ({ood['fitted_on']}); above it an answer is flagged "
            '"unknown". A server can override it (`--ood-threshold`).',
        ]
    else:
        lines.append("None: exported without `--check-data`; every answer names one of the classes.")
    lines += ["", "## Preprocessing", "", f"`{pre}`"]
    if report is not None:
        lines += ["", "## Export check", "", f"On {report.inputs.source}:", ""]
        header = ["file", "precision", "size", "compared with", "max abs logit diff", "top-1 agreement"]
        lines += _table([*header, "accuracy"], _check_rows(report))
        int8 = next((f for f in report.files if f.precision == "int8"), None)
        if int8 is not None and report.files[0].comparison.accuracy is not None:
            delta = (int8.comparison.accuracy or 0.0) - (report.files[0].comparison.accuracy or 0.0)
            lines += ["", f"int8 delta: {100 * delta:+.2f} points of accuracy against the fp32 file."]
    lines += [
        "",
        "## Limits",
        "",
        f"- The model knows only these {len(facts['classes'])} classes; images of anything else get the "
        "closest of them"
        + (
            ", unless the OOD flag marks them unknown (it also rejects some known images: see the "
            "accept rate above)."
            if ood
            else "; this file has no OOD flag to catch them."
        ),
        f"- Inputs are resized to {pre.get('input_size')} ({pre.get('crop_mode')} crop); detail lost at "
        "that size is invisible to the model"
        + (f"; training images were {facts['image_sizes']}." if facts.get("image_sizes") else "."),
        "- Validation numbers come from the same source as the training data; other cameras, "
        "lighting or styles may score lower and be less well calibrated.",
        "",
    ]
    return "\n".join(lines)


def write_card(path: Path, facts: dict[str, Any], report: Any = None) -> Path:
    """Write the card atomically; returns its path."""
    write_atomic(path, render_card(facts, report).encode())
    return path
