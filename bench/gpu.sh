#!/usr/bin/env bash
# The whole speed benchmark at 224 px on a GPU machine, in ~3 minutes on an H100.
# Needs torch, torchvision, pillow, numpy, pandas only (no Ray, no Optuna). Try it first on a CPU:
#   bash bench/gpu.sh --small
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
python bench/speed.py --compile "$@" 2>&1 | tee "${OUT:-/tmp}/bench-gpu.txt"
