"""Measure `vit doctor`: speed on CIFAR-10, precision/recall on folders with injected problems.

    python scripts/bench_doctor.py speed  [--cifar ~/.cache/vit-data/cifar10]
    python scripts/bench_doctor.py dups   [--source cifar|digits] [--per-class 200]
    python scripts/bench_doctor.py labels [--source cifar|digits] [--per-class 200] [--budget 5m] [--learner kmeans|vit|knn] [--model CKPT|NAME] [--split test]

``dups`` builds train/val folders, runs the doctor once on the clean folder (what it finds there
is already in the data, e.g. CIFAR's own near duplicates, and is left out of the precision),
then injects byte copies, re-encoded + resized copies, slightly cropped copies, cross-split
copies and copies under a second class, and scores each kind. ``labels`` moves 5% of a flat
folder's images into a wrong class and scores the label issues.
"""

from __future__ import annotations

import argparse
import io
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vit.doctor import examine  # noqa: E402

CIFAR = Path("~/.cache/vit-data/cifar10").expanduser()
DUP_KINDS = ("duplicate", "near_duplicate", "leak", "conflict")


def source_images(source: str, split: str, per_class: int, cifar: Path) -> dict[str, list[Image.Image]]:
    """class -> images: CIFAR-10 files or scikit-learn's digits (8x8, shown at 32 px, grey)."""
    if source == "cifar":
        out = {}
        for folder in sorted((cifar / split).iterdir()):
            files = sorted(folder.glob("*.jpg"))[:per_class]
            out[folder.name] = [Image.open(f).convert("RGB") for f in files]
        return out
    from sklearn.datasets import load_digits

    digits = load_digits()
    half = len(digits.target) // 2
    index = {"train": range(half), "test": range(half, len(digits.target))}.get(
        split, range(len(digits.target))
    )
    out: dict[str, list[Image.Image]] = {}
    for k in index:
        pixels = (digits.images[k] * (255 / 16)).astype(np.uint8)
        out.setdefault(str(digits.target[k]), []).append(
            Image.fromarray(pixels, "L").resize((32, 32), Image.NEAREST)
        )
    return {c: images[:per_class] for c, images in sorted(out.items())}


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)


def reencoded(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    side = int(rng.choice([24, 40, 48, 64, 96]))
    buffer = io.BytesIO()
    image.convert("RGB").resize((side, side), Image.BICUBIC).save(
        buffer, "JPEG", quality=int(rng.integers(50, 91))
    )
    return Image.open(io.BytesIO(buffer.getvalue()))


def cropped(image: Image.Image) -> Image.Image:
    width, height = image.size
    return image.crop((1, 0, width, height - 1))  # one pixel off two sides (3% at 32 px)


def pairs_of(issue, items) -> list[tuple[str, str]]:
    """The pairs an issue asserts: all of a duplicate group, those across splits/classes for leak/conflict."""
    where = {p: items[p] for p in issue.paths}
    pairs = []
    for a, b in itertools.combinations(sorted(issue.paths), 2):
        (sa, ca), (sb, cb) = where[a], where[b]
        across = {"leak": sa != sb, "conflict": ca != cb}.get(issue.kind, True)
        if across:
            pairs.append((a, b))
    return pairs


def bench_dups(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    ext = ".jpg" if args.source == "cifar" else ".png"
    root = Path(tempfile.mkdtemp(prefix="doctor-dups-")) / "data"
    train = source_images(args.source, "train", args.per_class, args.cifar)
    val = source_images(args.source, "test", max(2, args.per_class // 4), args.cifar)
    classes = sorted(train)
    for split, images in (("train", train), ("val", val)):
        for c in classes:
            for i, image in enumerate(images[c]):
                save(image, root / split / c / f"{i:04d}{ext}")
    tick = time.monotonic()
    base = examine(root, labels=False, near_correlation=args.near_correlation)
    base_seconds = time.monotonic() - tick
    items = {it.relative: (it.split, base.classes[it.label]) for it in base.items}
    known = {pair for issue in base.issues if issue.kind in DUP_KINDS for pair in pairs_of(issue, items)}
    # injections: each uses its own source images so that truths do not overlap
    pool = [(c, i) for c in classes for i in range(len(train[c]))]
    order = rng.permutation(len(pool))
    plan = {
        "byte copy (duplicate)": args.each,
        "re-encoded + resized (near_duplicate)": args.each,
        "1 px crop (near_duplicate)": args.each,
        "copy in val (leak)": args.each,
        "re-encoded copy in val (leak)": args.each,
        "copy under another class (conflict)": args.each,
    }
    truth: dict[str, list[tuple[str, str]]] = {}
    origin: dict[str, str] = {}
    cursor = 0
    for name, count in plan.items():
        truth[name] = []
        for _ in range(count):
            c, i = pool[order[cursor]]
            cursor += 1
            source = f"train/{c}/{i:04d}{ext}"
            image = train[c][i]
            if name.startswith("byte"):
                target = f"train/{c}/copy{i:04d}{ext}"
                shutil.copy(root / source, root / target)
            elif name.startswith("re-encoded + resized"):
                target = f"train/{c}/reenc{i:04d}.jpg"
                save(reencoded(image, rng), root / target)
            elif name.startswith("1 px"):
                target = f"train/{c}/crop{i:04d}{ext}"
                save(cropped(image), root / target)
            elif name == "copy in val (leak)":
                target = f"val/{c}/leak{i:04d}{ext}"
                shutil.copy(root / source, root / target)
            elif name.startswith("re-encoded copy in val"):
                target = f"val/{c}/leakre{i:04d}.jpg"
                save(reencoded(image, rng), root / target)
            else:
                other = classes[(classes.index(c) + 1 + int(rng.integers(len(classes) - 1))) % len(classes)]
                target = f"train/{other}/conflict{i:04d}{ext}"
                shutil.copy(root / source, root / target)
            origin[target] = source
            truth[name].append(tuple(sorted((source, target))))
    tick = time.monotonic()
    report = examine(root, labels=False, near_correlation=args.near_correlation)
    seconds = time.monotonic() - tick
    items = {it.relative: (it.split, report.classes[it.label]) for it in report.items}

    def root_of(path: str) -> str:
        return origin.get(path, path)

    def true_pair(a: str, b: str) -> bool:
        ra, rb = root_of(a), root_of(b)
        return ra == rb or tuple(sorted((ra, rb))) in known

    expected_kind = {
        "byte": "duplicate",
        "re-encoded +": "near_duplicate",
        "1 px": "near_duplicate",
        "copy in val": "leak",
        "re-encoded copy in val": "leak",
        "copy under": "conflict",
    }
    found = {
        kind: {pair for issue in report.issues if issue.kind == kind for pair in pairs_of(issue, items)}
        for kind in DUP_KINDS
    }
    print(f"| {args.source} injected | images | kind | injected | recall |")
    print("|---|---|---|---|---|")
    for name, pairs in truth.items():
        kind = next(v for k, v in expected_kind.items() if name.startswith(k))
        hit = sum(1 for p in pairs if p in found[kind])
        print(f"| {name} | {len(report.items)} | {kind} | {len(pairs)} | {100 * hit / len(pairs):.1f}% |")
    print()
    print("| kind | reported pairs (not in the clean folder) | true | precision |")
    print("|---|---|---|---|")
    for kind in DUP_KINDS:
        new = [p for p in found[kind] if p not in known]
        true = sum(1 for p in new if true_pair(*p))
        print(f"| {kind} | {len(new)} | {true} | {100 * true / max(len(new), 1):.1f}% |")
    goal = [p for name, pairs in truth.items() if not name.startswith("1 px") for p in pairs]
    goal_hit = sum(1 for p in goal if any(p in found[k] for k in DUP_KINDS))
    reported = [p for k in DUP_KINDS for p in found[k] if p not in known]
    print(
        f"\nall kinds except crops: recall {100 * goal_hit / len(goal):.1f}%, precision "
        f"{100 * sum(true_pair(*p) for p in reported) / max(len(reported), 1):.1f}%; clean folder: "
        f"{len(base.items)} images, {len(known)} pairs already there, {base_seconds:.1f} s; injected run {seconds:.1f} s"
    )


def bench_labels(args: argparse.Namespace) -> None:
    from vit.doctor import parse_budget

    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="doctor-labels-")) / "data"
    split = args.split or ("train" if args.source == "cifar" else "all")
    images = source_images(args.source, split, args.per_class, args.cifar)
    classes = sorted(images)
    ext = ".jpg" if args.source == "cifar" else ".png"
    everything = [(c, i) for c in classes for i in range(len(images[c]))]
    moved_index = set(rng.choice(len(everything), round(0.05 * len(everything)), replace=False).tolist())
    truth = {}
    for n, (c, i) in enumerate(everything):
        target_class = c
        if n in moved_index:
            target_class = classes[
                (classes.index(c) + 1 + int(rng.integers(len(classes) - 1))) % len(classes)
            ]
        relative = f"{target_class}/{c}-{i:04d}{ext}"
        save(images[c][i], root / relative)
        if n in moved_index:
            truth[relative] = c
    budget = parse_budget(args.budget)
    tick = time.monotonic()
    if args.learner == "vit":
        flagged, suggested = vit_kfold_issues(root, budget)
    else:
        if args.learner == "knn" and args.model is None:
            raise SystemExit("--learner knn needs --model")
        report = examine(root, budget=budget, model=args.model, labels=args.learner == "kmeans")
        if args.learner == "knn":  # the doctor's label check with k-NN votes instead
            from vit.doctor_labels import label_and_outlier_issues

            report.issues = label_and_outlier_issues(report, args.model, budget, learner="knn")[0]
        found = [i for i in report.issues if i.kind == "label"]
        flagged = {i.paths[0] for i in found}
        suggested = {i.paths[0]: i.suggested for i in found}
    seconds = time.monotonic() - tick
    hit = flagged & set(truth)
    right = sum(1 for p in hit if suggested[p] == truth[p])
    print("| data | images | moved | learner | flagged | recall | precision | right suggestion | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.source} | {len(everything)} | {len(truth)} | {args.learner} | {len(flagged)} | "
        f"{100 * len(hit) / len(truth):.1f}% | {100 * len(hit) / max(len(flagged), 1):.1f}% | "
        f"{100 * right / max(len(hit), 1):.1f}% | {seconds:.0f} s |"
    )


def vit_kfold_issues(root: Path, budget: float, folds: int = 5) -> tuple[set[str], dict[str, str]]:
    """The alternative quick model: the project's ViT (automatic defaults' small-image model), k-fold."""
    import lightning.pytorch as pl
    import torch
    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import StratifiedKFold

    from vit.augment import normalize
    from vit.autoconfig import SMALL_IMAGE_MODEL
    from vit.doctor_features import thumbnails
    from vit.folder import discover
    from vit.model import ViTClassifier

    splits = discover(root)
    samples = sorted(splits.train + splits.val)
    paths = [p for p, _ in samples]
    labels = np.array([label for _, label in samples])
    pixels = torch.from_numpy(thumbnails(paths)).permute(0, 3, 1, 2).contiguous()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    probs = np.zeros((len(paths), len(splits.classes)))
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=0).split(paths, labels):
        model = ViTClassifier(
            model_name=SMALL_IMAGE_MODEL, img_size=32, patch_size=4, num_classes=len(splits.classes)
        )
        x, y = pixels[train], torch.from_numpy(labels[train])

        def batch(index, x=x, y=y):
            images = x[index]
            flip = torch.rand(len(index)) < 0.5
            images[flip] = images[flip].flip(-1)
            return normalize(images, mean, std), y[index]

        loader = torch.utils.data.DataLoader(
            range(len(train)), batch_size=64, shuffle=True, collate_fn=batch, drop_last=True
        )
        trainer = pl.Trainer(
            max_time={"seconds": budget / folds - 5},
            max_epochs=-1,
            precision="bf16-mixed",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
        )
        trainer.fit(model, loader)
        model.eval()
        with torch.inference_mode():
            logits = model(normalize(pixels[held], mean, std)).float()
        probs[held] = torch.softmax(logits, 1).numpy()
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    relative = [Path(p).relative_to(root).as_posix() for p in paths]
    return {relative[k] for k in ranked}, {
        relative[k]: splits.classes[int(np.argmax(probs[k]))] for k in ranked
    }


def bench_speed(args: argparse.Namespace) -> None:
    tick = time.monotonic()
    report = examine(args.cifar, labels=False, progress=sys.stderr.isatty())
    seconds = time.monotonic() - tick
    counts = report.counts()
    print(
        "| folder | images | time (2 processes) | duplicate | near_duplicate | leak | conflict | unreadable |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| CIFAR-10 train+test | {len(report.items)} | {seconds:.1f} s | {counts['duplicate']} | "
        f"{counts['near_duplicate']} | {counts['leak']} | {counts['conflict']} | {counts['unreadable']} |"
    )
    if args.output:
        from vit.doctor_html import write_report

        write_report(report, args.output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("speed", "dups", "labels"))
    parser.add_argument("--cifar", type=Path, default=CIFAR)
    parser.add_argument("--source", choices=("cifar", "digits"), default="cifar")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--each", type=int, default=40, help="injections of each kind (dups)")
    parser.add_argument("--budget", default="5m")
    parser.add_argument(
        "--near-correlation", type=float, default=0.9, help="dups: vit doctor --near-correlation"
    )
    parser.add_argument(
        "--learner",
        choices=("kmeans", "vit", "knn"),
        default="kmeans",
        help="kmeans: what `vit doctor` does (logistic regression on --model features when given); "
        "vit: the project's ViT k-fold; knn: k-NN votes on --model features",
    )
    parser.add_argument("--model", default=None, help="a vit checkpoint for the label check")
    parser.add_argument(
        "--split",
        default=None,
        help="labels: the source split (default: CIFAR train; `test` with --model: images it never saw)",
    )
    parser.add_argument("-o", "--output", type=Path, default=None, help="speed: write the report here")
    args = parser.parse_args()
    {"speed": bench_speed, "dups": bench_dups, "labels": bench_labels}[args.mode](args)


if __name__ == "__main__":
    main()
