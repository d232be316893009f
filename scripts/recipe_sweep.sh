#!/usr/bin/env bash
# Epoch-matched sweep of CIFAR-10 recipe candidates, all runs side by side on one machine.
#
#   [PARALLEL=4] bash scripts/recipe_sweep.sh DATA_ROOT OUT_DIR [SECONDS] [VARIANTS_FILE]
#
# Accuracy after N epochs does not depend on the hardware, so the CPU recipe can be tuned on a
# GPU: each candidate trains for the number of epochs it gets through in 30 minutes on the
# 2-core development machine (its measured training img/s x 1800 s / 50,000), validating on
# DATA_ROOT/val every epoch. The winner is then confirmed on the CPU itself with
# scripts/cifar_recipe.sh. VARIANTS_FILE (default scripts/recipe_sweep.txt) has one candidate
# per line: NAME EPOCHS [vit fit arguments on top of configs/cifar10.yaml]. PARALLEL runs
# (default 4) train at a time: without MPS a GPU time-slices between processes, and twelve
# small runs side by side each ran at about 1/10 of one run's speed. Every run is stopped
# after SECONDS (default 240); the summary shows how far each got.
set -uo pipefail
root=${1:?DATA_ROOT with train/ and val/}; out=${2:?OUT_DIR}; seconds=${3:-240}
variants=${4:-scripts/recipe_sweep.txt}
vit=(python3 -m vit)
mkdir -p "$out"

# Decode the cache once before the runs start (they share it; same data geometry).
"${vit[@]}" fit --config configs/cifar10.yaml --data.root "$root" --budget null \
  --trainer.fast_dev_run 1 --trainer.enable_progress_bar false > "$out/cache.log" 2>&1

parallel=${PARALLEL:-4}
while read -r name epochs args; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  while (( $(jobs -rp | wc -l) >= parallel )); do wait -n; done
  # shellcheck disable=SC2086  # the variant's arguments are meant to split
  timeout "$seconds" "${vit[@]}" fit --config configs/cifar10.yaml --data.root "$root" \
    --budget null --trainer.max_epochs "$epochs" --trainer.check_val_every_n_epoch 1 \
    --trainer.enable_progress_bar false --trainer.default_root_dir "/tmp/sweep/$name" \
    $args > "$out/$name.log" 2>&1 < /dev/null &
done < "$variants"
wait

echo "| variant | epochs planned | epochs done | last val top-1 | best val top-1 |"
echo "|---|---:|---:|---:|---:|"
while read -r name epochs args; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  csv=$(ls /tmp/sweep/"$name"/logs/version_*/metrics.csv 2>/dev/null | tail -n 1)
  if [ -n "$csv" ]; then
    cp "$csv" "$out/$name.csv"
    python3 scripts/accuracy_curve.py "$csv" --summary "$name | $epochs"
  else
    echo "| $name | $epochs | 0 | - | - |"
  fi
done < "$variants"
