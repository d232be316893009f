"""``vit doctor DIR``: what is wrong with an image folder before training on it.

One read of every file (:mod:`vit.doctor_hash`) finds unreadable files, byte-identical copies and
near copies; the split ``vit fit`` would make (:func:`vit.folder.discover`) says which copies
are leaks between train/val/test and which pictures sit under two classes. A quick model's
out-of-sample probabilities (:mod:`vit.doctor_labels`) give likely label errors (cleanlab)
and outliers. The result is a terminal summary, ``report.json`` and a self-contained
``index.html`` (:mod:`vit.doctor_html`). ``vit fit`` runs the cheap part (:func:`fit_warning`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.preprocess import DEFAULT_MAX_PIXELS
from vit.arguments import parse_or_exit_code
from vit.doctor_features import DEFAULT_FEATURES
from vit.doctor_hash import (
    NEAR_BITS,
    NEAR_CORRELATION,
    Fingerprint,
    connected_groups,
    fingerprint_all,
    near_duplicates,
    search_blocks,
)
from vit.folder import SPLIT_NAMES, DataError, Splits, discover

KINDS = ("unreadable", "duplicate", "near_duplicate", "leak", "conflict", "label", "outlier")
STRICT_KINDS = ("unreadable", "leak", "conflict")
SPLIT_MODES = ("auto", "none")
SMALL_FRACTION = 0.5  # "much smaller than the model input": shorter side under half of it
IMBALANCE_FRACTION = 0.1


@dataclass
class Issue:
    """One finding; ``paths`` are relative to the folder, a group lists every member."""

    kind: str
    paths: list[str]
    score: float
    given: str | None = None
    suggested: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "paths": self.paths, "score": round(float(self.score), 4)}
        if self.given is not None:
            data["given"] = self.given
        if self.suggested is not None:
            data["suggested"] = self.suggested
        return data


@dataclass
class Item:
    """One file of the folder: where it is, its split and class, and its fingerprint."""

    path: str  # as found on disk
    relative: str
    split: str
    label: int
    print: Fingerprint | None = None


@dataclass
class Report:
    root: str
    classes: list[str]
    items: list[Item]
    issues: list[Issue] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # unreadable file -> why
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found = Counter(issue.kind for issue in self.issues)
        return {kind: found.get(kind, 0) for kind in KINDS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "images": len(self.items),
            "issues": [issue.to_dict() for issue in self.issues],
            "facts": self.facts,
            "reasons": self.reasons,
        }

    def strict_failures(self) -> int:
        return sum(1 for issue in self.issues if issue.kind in STRICT_KINDS)


@contextmanager
def stage(name: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr for one stage (only on a terminal); yields ``advance(n)``."""
    if not enabled or total <= 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(name, total=total)
        yield lambda n: bar.advance(task, n)


def folder_items(
    root: Path, split: str = "auto", val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[Item]]:
    """Classes and every file with the split ``vit fit`` would give it (``split="none"``: one pool)."""
    splits: Splits = discover(root, val_fraction=val_fraction, seed=seed)
    items = []
    for name in SPLIT_NAMES:
        for path, label in getattr(splits, name):
            relative = Path(path).relative_to(root).as_posix()
            items.append(Item(path, relative, name if split == "auto" else "all", label))
    items.sort(key=lambda item: item.relative)
    return splits.classes, items


def group_issues(items: list[Item], i: np.ndarray, j: np.ndarray, similarity: np.ndarray) -> list[Issue]:
    """Duplicates, near duplicates, leaks and conflicts from the confirmed pairs ``i``-``j``.

    Byte-identical files in one split and class are a ``duplicate``. Every connected group of
    exact or near copies is a ``conflict`` when it spans classes, a ``leak`` when it spans
    splits (both when both), else a ``near_duplicate`` when it holds more than one distinct file.
    """
    issues: list[Issue] = []
    by_digest: dict[tuple[str, str, int], list[int]] = {}
    for index, item in enumerate(items):
        if item.print is not None and item.print.reason is None:
            by_digest.setdefault((item.print.sha256, item.split, item.label), []).append(index)
    for members in by_digest.values():
        if len(members) > 1:
            issues.append(Issue("duplicate", [items[m].relative for m in members], 1.0))
    weakest: dict[int, float] = {}
    groups = connected_groups(len(items), i, j)
    member_group = {m: g for g, members in enumerate(groups) for m in members}
    for a, s in zip(i, similarity, strict=True):
        g = member_group[int(a)]
        weakest[g] = min(weakest.get(g, 1.0), float(s))
    for g, members in enumerate(groups):
        paths = [items[m].relative for m in members]
        splits = {items[m].split for m in members}
        labels = {items[m].label for m in members}
        if len(labels) > 1:
            issues.append(Issue("conflict", paths, weakest[g]))
        if len(splits) > 1:
            issues.append(Issue("leak", paths, weakest[g]))
        digests = {items[m].print.sha256 for m in members if items[m].print is not None}
        if len(labels) == 1 and len(splits) == 1 and len(digests) > 1:
            issues.append(Issue("near_duplicate", paths, weakest[g]))
    return issues


def folder_facts(classes: list[str], items: list[Item], input_side: int | None) -> dict[str, Any]:
    """Class counts and imbalance, small images, colour modes, EXIF rotations (facts, not errors)."""
    readable = [item for item in items if item.print is not None and item.print.reason is None]
    per_class = Counter(classes[item.label] for item in items)
    largest = max(per_class.values(), default=0)
    sides = [min(item.print.width, item.print.height) for item in readable]
    if input_side is None:
        from vit.autoconfig import choose_img_size

        input_side = choose_img_size(int(np.median(sides))) if sides else 224
    return {
        "classes": {name: per_class.get(name, 0) for name in classes},
        "splits": dict(Counter(item.split for item in items)),
        "small_classes": sorted(n for n, c in per_class.items() if c < IMBALANCE_FRACTION * largest),
        "model_input": input_side,
        "small_images": sum(1 for s in sides if s < SMALL_FRACTION * input_side),
        "modes": dict(Counter(item.print.mode for item in readable).most_common()),
        "exif_rotated": sum(1 for item in readable if item.print.exif_rotated),
        "median_size": [
            int(np.median([it.print.width for it in readable])),
            int(np.median([it.print.height for it in readable])),
        ]
        if readable
        else None,
    }


def examine(
    root: str | Path,
    *,
    split: str = "auto",
    val_fraction: float = 0.1,
    seed: int = 0,
    model: str | None = None,
    budget: float = 300.0,
    labels: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    near_bits: int = NEAR_BITS,
    near_correlation: float = NEAR_CORRELATION,
    workers: int | None = None,
    progress: bool = False,
) -> Report:
    """Every check on the folder ``root``; ``budget`` (seconds) bounds the label check."""
    root = Path(root).expanduser()
    if split not in SPLIT_MODES:
        raise DataError(f"--split must be one of {', '.join(SPLIT_MODES)}, got {split!r}")
    classes, items = folder_items(root, split, val_fraction, seed)
    report = Report(str(root), classes, items)
    with stage("reading and hashing", len(items), progress) as advance:
        prints = fingerprint_all([item.path for item in items], max_pixels, workers, advance)
    for item, fp in zip(items, prints, strict=True):
        item.print = fp
        if fp.reason is not None:
            report.issues.append(Issue("unreadable", [item.relative], 1.0))
            report.reasons[item.relative] = fp.reason
    with stage("near-duplicate search", search_blocks(len(items)), progress) as advance:
        i, j, similarity = near_duplicates(prints, near_bits, near_correlation, advance, near_correlation)
    report.issues += group_issues(items, i, j, similarity)
    input_side = None
    if labels:
        from vit.doctor_labels import label_and_outlier_issues

        found, notes, input_side = label_and_outlier_issues(
            report, model=model, budget=budget, progress=progress
        )
        report.issues += found
        report.notes += notes
    report.facts = folder_facts(classes, items, input_side)
    order = {kind: k for k, kind in enumerate(KINDS)}
    report.issues.sort(key=lambda issue: (order[issue.kind], -issue.score, issue.paths))
    return report


# -- the `vit fit` start-up check -------------------------------------------------------------
def quick_counts(splits: Splits, workers: int = 2) -> dict[str, int]:
    """Unreadable files (already found by the scan), extra exact copies within a split (any class),
    and groups of exact copies shared between splits."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    def digest(path: str) -> str:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()

    samples = [(path, name, label) for name in SPLIT_NAMES for path, label in getattr(splits, name)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # hashlib releases the GIL
        digests = list(pool.map(digest, [path for path, _, _ in samples], chunksize=256))
    groups: dict[str, list[str]] = {}
    for (_, name, _), value in zip(samples, digests, strict=True):
        groups.setdefault(value, []).append(name)
    duplicates = leaks = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        if len(set(members)) > 1:
            leaks += 1
        duplicates += sum(n - 1 for n in Counter(members).values())  # extra copies within a split
    return {"unreadable": len(splits.skipped), "duplicates": duplicates, "leaks": leaks}


def fit_warning(splits: Splits, root: str, val_fraction: float = 0.1, seed: int = 0) -> str | None:
    """The one line ``vit fit`` prints at start when the cheap checks find something, else None."""
    counts = quick_counts(splits)
    if not any(counts.values()):
        return None
    options = "" if (val_fraction, seed) == (0.1, 0) else f" --val-fraction {val_fraction} --seed {seed}"
    return (
        f"WARNING vit doctor: {counts['unreadable']} unreadable, {counts['duplicates']} exact duplicate(s), "
        f"{counts['leaks']} exact copy group(s) shared between splits; "
        f"full report: vit doctor {root}{options} -o doctor-report"
    )


def log_fit_warning(stage: str | None, splits: Splits, root: str, val_fraction: float, seed: int) -> None:
    """At the start of ``vit fit`` (``stage == "fit"``), log :func:`fit_warning`'s line if there is one."""
    if stage != "fit":
        return
    from lightning.pytorch.utilities import rank_zero_info

    line = fit_warning(splits, root, val_fraction, seed)
    if line:
        rank_zero_info(line)


# -- the command ----------------------------------------------------------------------------
def parse_budget(text: str) -> float:
    from vit.cli import parse_duration

    days, hours, minutes, seconds = (int(part) for part in parse_duration(text).split(":"))
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "root", metavar="DIR", help="image folder: DIR/<class>/… or DIR/{train,val,test}/<class>/…"
    )
    parser.add_argument(
        "--split",
        choices=SPLIT_MODES,
        default="auto",
        help="auto: the split `vit fit` makes (folders, or the seeded val fraction); none: one pool, no leak check",
    )
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as `vit fit --data.val_fraction`")
    parser.add_argument("--seed", type=int, default=0, help="as `vit fit --data.seed`")
    parser.add_argument(
        "--model",
        metavar="CKPT|NAME|auto|none",
        default="auto",
        help="features for labels and outliers: a vit checkpoint, or pretrained weights by name "
        "(timm tag or hf-hub:ORG/NAME; downloaded on a miss where there is internet); auto: "
        f"{DEFAULT_FEATURES} if it is in the local Hugging Face cache, else none; none: quick "
        "k-means features",
    )
    parser.add_argument("--budget", default="5m", help="time for the label check (e.g. 5m, 90s)")
    parser.add_argument("--no-labels", action="store_true", help="skip the label and outlier checks")
    parser.add_argument("-o", "--output", default="doctor-report", metavar="REPORT_DIR")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 on any unreadable file, leak or conflict"
    )
    parser.add_argument(
        "--near-bits", type=int, default=NEAR_BITS, help="candidate phash distance (of 64 bits)"
    )
    parser.add_argument(
        "--near-correlation",
        type=float,
        default=NEAR_CORRELATION,
        help="confirming pixel correlation at 16 and 32 px (0.97 for tiny, low-detail images such as digits)",
    )
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="as `vit fit --data.max_pixels`"
    )
    parser.add_argument("--workers", type=int, default=None, help="reading processes (default: up to 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        budget = parse_budget(args.budget)
        report = examine(
            args.root,
            split=args.split,
            val_fraction=args.val_fraction,
            seed=args.seed,
            model=args.model,
            budget=budget,
            labels=not args.no_labels,
            max_pixels=args.max_pixels,
            near_bits=args.near_bits,
            near_correlation=args.near_correlation,
            workers=args.workers,
            progress=sys.stderr.isatty(),
        )
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"vit doctor: {exc}", file=sys.stderr)
        return 2
    from vit.doctor_html import format_summary, write_report

    json_path, html_path = write_report(report, Path(args.output))
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(format_summary(report))
        print(f"report: {json_path} and {html_path}")
    return 1 if args.strict and report.strict_failures() else 0
