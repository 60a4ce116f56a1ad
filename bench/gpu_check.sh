#!/usr/bin/env bash
# The GPU check of the README's "Speed" section, on one CUDA GPU in under 10 minutes:
#   1. bench_detection.py: facenet-pytorch's MTCNN.detect vs the kit's detection vs the whole build, on the GPU;
#   2. bench_backbones.py: matmul rate, training and embedding images/s of every backbone at the gpu profile's size;
#   3. gpu_check.py: the gpu profile's build, plain/SE/CBAM trained for a few epochs (AMP, channels_last) and
#      evaluated on LFW (unmasked and masked-unmasked pairs), with the peak GPU memory.
#
#   bash bench/gpu_check.sh [OUT]        # OUT: where the reports go (default reports/gpu/bench)
#
# On a machine without the datasets beside the checkout (the device tool's machine), pack a subset first, here:
#   .venv/bin/python bench/gpu_check.py --pack .gpu_data --lfw-folds 1 --celeba-identities 150   # 42 MB
# and, when facenet-pytorch is not installed there, its wheel into .whl/ (pip download --no-deps facenet-pytorch==2.5.3);
# name both folders in .git/info/exclude and carry them. The script uses them when they are there.
# EPOCHS (default 3) and PYTHON (default .venv/bin/python, else python3) can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-reports/gpu/bench}
mkdir -p "$out"
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$python" -c "import facenet_pytorch" 2>/dev/null; then
  compgen -G ".whl/*.whl" >/dev/null || { echo "gpu_check: facenet-pytorch is missing and .whl/ holds no wheel" >&2; exit 2; }
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/maskstudy_site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/maskstudy_site"
fi
data=()
if [ -d .gpu_data/lfw ]; then
  data=(--lfw .gpu_data/lfw --celeba .gpu_data/celeba)
fi
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA GPU is visible to $python; this check needs one (the CPU path: python bench/gpu_check.py --device cpu)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$out/nvidia_smi.csv" || true
began=$(date +%s)
{
  echo "== detection ($(date -u +%FT%TZ))"
  timeout 150 "$python" bench/bench_detection.py "${data[@]}" --device cuda --no-compare --images 384 --celeba-images 128 \
    --batch-size 128 --rounds 2 --threads 8 --out "$out" || echo "detection benchmark failed or timed out"
  echo "== backbones ($(( $(date +%s) - began )) s)"
  timeout 150 "$python" bench/bench_backbones.py --profile gpu --device cuda --quick --out "$out" \
    || echo "backbone benchmark failed or timed out"
  echo "== gpu profile: build, training, evaluation ($(( $(date +%s) - began )) s)"
  "$python" bench/gpu_check.py "${data[@]}" --out "$out" --work /tmp/maskstudy_gpu_check --lfw-folds 1 \
    --epochs "${EPOCHS:-3}"
  echo "== done in $(( $(date +%s) - began )) s"
} 2>&1 | tee "$out/gpu_check.log"
