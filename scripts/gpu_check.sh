#!/usr/bin/env bash
# The one prepared GPU check (about 10 minutes on an H100), run on a lent GPU machine:
#   1. environment (card, torch, onnxruntime providers);
#   2. the CIFAR-10 GPU recipe (configs/cifar10-gpu.yaml) for BUDGET, validating on the 10k test
#      images every epoch -> accuracy vs minutes and time to 90% (scripts/accuracy_curve.py);
#   3. `vit export` of the GPU-trained checkpoint, self-checked against PyTorch;
#   4. onnxruntime CUDA provider parity and speed when the machine's onnxruntime has it;
#   and, as phase "sweep", the epoch-matched sweep of CPU-recipe candidates
#   (scripts/recipe_sweep.sh, SWEEP_SECONDS per run, default 220).
# usage: [PHASES="sweep recipe"] [FIT_ARGS="--model.x y"] bash scripts/gpu_check.sh CIFAR_ZIP OUT_DIR [BUDGET]
# PHASES (default "recipe") lets one lent machine run them as separate calls; the
# unpacked data and the decoded cache in /tmp and ~/.cache are reused while the machine is warm.
set -uo pipefail
zip=${1:?cifar10-jpeg.zip}; out=${2:?output folder}; budget=${3:-5m}
phases=${PHASES:-recipe}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/env.txt"
python3 -c "
import torch, onnxruntime as ort, timm, lightning
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))
print('onnxruntime', ort.__version__, ort.get_available_providers())
print('timm', timm.__version__, 'lightning', lightning.__version__)" | tee -a "$out/env.txt"

data=/tmp/vit-data root=/tmp/cifar10-gpu
mkdir -p "$data" "$root"
[ -d "$data/cifar10/test" ] || python3 -m zipfile -e "$zip" "$data"   # the GPU image has no unzip
# Validation = the 10k test images, so the curve is test accuracy (nothing is tuned on it here).
ln -sfn "$data/cifar10/train" "$root/train"
ln -sfn "$data/cifar10/test" "$root/val"
if [[ " $phases " == *" sweep "* ]]; then
  bash scripts/recipe_sweep.sh "$root" "$out/sweep" "${SWEEP_SECONDS:-220}" | tee "$out/sweep.txt"
fi
[[ " $phases " == *" recipe "* ]] || exit 0
rm -rf /tmp/run  # a warm machine keeps the last call's run: start clean (logs/version_0)
start=$(date +%s)
# FIT_ARGS: extra `vit fit` arguments for a variant of the preset (word-split on purpose).
# shellcheck disable=SC2086
python3 -m vit fit --config configs/cifar10-gpu.yaml --data.root "$root" --budget "$budget" \
  --trainer.default_root_dir /tmp/run --trainer.enable_progress_bar false ${FIT_ARGS:-} > "$out/train.log" 2>&1
echo "fit exit $? after $(( $(date +%s) - start )) s (cache build included)" | tee -a "$out/env.txt"
cp /tmp/run/logs/version_0/metrics.csv "$out/metrics.csv"
python3 scripts/accuracy_curve.py "$out/metrics.csv" --target 0.90 | tee "$out/curve.txt"

mkdir -p /tmp/check && for c in "$data"/cifar10/test/*/; do
  mkdir -p "/tmp/check/$(basename "$c")"; ls "$c" | head -20 | while read -r f; do cp "$c$f" "/tmp/check/$(basename "$c")/"; done
done
python3 -m vit export /tmp/run/checkpoints/last.ckpt -o /tmp/model.onnx --check-data /tmp/check \
  > "$out/export.log" 2>&1; echo "export exit $?" | tee -a "$out/env.txt"
python3 scripts/gpu_ort.py /tmp/model.onnx /tmp/check | tee "$out/ort.txt"
