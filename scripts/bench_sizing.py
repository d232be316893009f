"""Training speed of every rung of vit.sizing's ladders, fp32 against bf16 side by side, and the
rung each budget chooses from those speeds.

    python scripts/bench_sizing.py [--img-size 32] [--batch-size 128] [--rounds 3] [--images 50000]
        [--budgets 5m 30m 1h 2h] [--variants]

Rounds are interleaved (every rung and precision once per round) so the load of a shared
machine hits them alike; the table gives the median img/s per rung and the bf16 / fp32 ratio,
then the choice `vit fit --budget B` makes for a folder of ``--images`` training images (the
rule of docs/TRAINING_RECIPES.md, "The model grows with the budget"). Nothing is cached.
``--variants`` measures variants of the small-image nano instead (the recipe's stem and MLP,
each of the rung's changes alone, more blocks, more width), which chose the rungs' shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_infer import machine  # noqa: E402

from vit.autoconfig import choose_patch_size, cpu_has_bf16  # noqa: E402
from vit.cli import duration_seconds, parse_duration  # noqa: E402
from vit.sizing import SMALL_IMAGES, Rung, choose, ladder_for, machine_key, train_speed  # noqa: E402


def nano_variants() -> list[Rung]:
    """The nano rung as it is, the recipe's nano, each change alone, and dearer capacity."""
    nano = SMALL_IMAGES[0]
    change = dataclasses.replace
    return [
        nano,
        change(nano, name="recipe nano (1 residual, MLP 2)", stage_blocks=1, mlp_ratio=2.0),
        change(nano, name="2 residual, MLP 2", mlp_ratio=2.0),
        change(nano, name="1 residual, MLP 4", stage_blocks=1),
        change(nano, name="recipe nano, 4 blocks", stage_blocks=1, mlp_ratio=2.0, depth=4),
        change(nano, name="recipe nano, width 160, 3 blocks", stage_blocks=1, mlp_ratio=2.0,
               embed_dim=160, depth=3, num_heads=5, stem_width=40),
        SMALL_IMAGES[1],
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument(
        "--patch-size", type=int, default=None, help="default: the automatic path's for --img-size"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--images", type=int, default=50_000, help="training images of the folder to size for"
    )
    parser.add_argument("--budgets", nargs="+", default=["5m", "30m", "1h", "2h"])
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--variants", action="store_true", help="variants of the nano instead of the ladder")
    args = parser.parse_args(argv)
    size = args.img_size
    patch = args.patch_size or choose_patch_size(size)
    family, ladder = ladder_for(size)
    if args.variants:
        family, ladder = "nano variants", nano_variants()
    precisions = ["32-true"]
    if not args.no_bf16 and (cpu_has_bf16() or torch.cuda.is_available()):
        precisions.append("bf16-mixed")
    print(f"machine: {machine()}\nthroughput cache key: {machine_key()}")
    nets = {r.name: r.build(size, patch, args.classes) for r in ladder}
    runs: dict[tuple[str, str], list[float]] = {(r.name, p): [] for r in ladder for p in precisions}
    for round_ in range(args.rounds):
        for rung in ladder:
            for precision in precisions:
                speed = train_speed(nets[rung.name], size, args.batch_size, precision, args.steps)
                runs[rung.name, precision].append(speed)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    median = {key: statistics.median(values) for key, values in runs.items()}
    print(
        f"\n{family}, {size} px, patch {patch}, batch {args.batch_size}: training img/s (median of {args.rounds})"
    )
    header = (
        "| rung | params | " + " | ".join(precisions) + (" | bf16 / fp32 |" if len(precisions) > 1 else " |")
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for rung in ladder:
        params = sum(p.numel() for p in nets[rung.name].parameters()) / 1e6
        cells = [f"{median[rung.name, p]:.0f}" for p in precisions]
        ratio = (
            f" | {median[rung.name, 'bf16-mixed'] / median[rung.name, '32-true']:.2f}x"
            if len(precisions) > 1
            else ""
        )
        print(f"| {rung.name} | {params:.2f}M | " + " | ".join(cells) + ratio + " |")
    if args.variants:
        return 0
    print(f"\nchoice for {args.images} training images:")
    for budget in args.budgets:
        seconds = duration_seconds(parse_duration(budget))
        chosen = choose(ladder, lambda r, p: median[r.name, p], seconds, args.images, precisions, family)
        print(f"- --budget {budget}: {chosen.rung.name} {chosen.precision}, {chosen.epochs:.1f} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
