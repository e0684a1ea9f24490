#!/usr/bin/env bash
# One GPU, under 8 minutes, one JSON file. Runs on a fresh GPU machine after the GPU install of docs/performance.md
# command, with nothing else prepared (the photo folder is generated on the way):
#
#   bash bench/gpu.sh [OUT.json]            (default bench-gpu.json)
#
# 1. The bare step: training and inference images/s, GFLOP/s and model FLOP utilisation (MFU) of both
#    models in mixed_bfloat16 on both backends, with augmentation inside the step (the default) and,
#    for the CNN, without it (--augment-on host leaves the step bare): their ratio is what device
#    augmentation costs the GPU.
# 2. The real input pipeline: a `fit` on a generated folder of 800x600 photo-like JPEGs with device
#    augmentation and with host augmentation, while nvidia-smi samples GPU utilisation every 200 ms; the
#    pipeline part reports images/s and CPU-ms per image of each kind of pass.
#
# MFU divides the training GFLOP/s by the GPU's dense peak for the precision: PEAK_TFLOPS_BF16
# overrides the table below. Each run is capped (timeout) so that the whole script stays under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-gpu.json}
work=$(mktemp -d)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$gpu" in
  *H100*|*H200*) bf16=989 ;;   # SXM dense BF16 TFLOP/s
  *A100*) bf16=312 ;;
  *) bf16=0 ;;
esac
bf16=${PEAK_TFLOPS_BF16:-$bf16}
images=${GPU_BENCH_IMAGES:-1280}  # generated training photos (+20% validation), made once in the cache

run() {  # NAME SECONDS BACKEND MODEL [extra bench options]
  local name=$1 seconds=$2 backend=$3 model=$4; shift 4
  local batch=256; [ "$model" = efficientnet ] && batch=64
  echo "== $name"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
    > "$work/$name.smi" 2>/dev/null &
  local smi=$!
  KERAS_BACKEND=$backend timeout "$seconds" python run.py bench --model "$model" --batch-size "$batch" \
    --precision mixed_bfloat16 --peak-tflops "$bf16" --steps 20 --repeats 3 \
    --json "$work/$name.json" "$@" 2>&1 | tail -4 || echo "$name: failed or timed out"
  kill "$smi" 2>/dev/null
}

python -c "from inat_keras.data.synthetic import cached_photo_folder as f; print('photos:', f($images))"
run jax-cnn-step            45 jax cnn --parts train,infer
run jax-cnn-step-bare       35 jax cnn --parts train --augment-on host
run jax-efficientnet-step   70 jax efficientnet --parts train,infer
run tensorflow-cnn-step     50 tensorflow cnn --parts train,infer
run tensorflow-cnn-step-bare 40 tensorflow cnn --parts train --augment-on host
run jax-cnn-fit-device      90 jax cnn --parts train,pipeline,fit --images "$images" --repeats 2
run jax-cnn-fit-host        80 jax cnn --parts train,fit --images "$images" --repeats 2 --augment-on host

python - "$work" "$out" "$gpu" <<'PY'
import json, pathlib, statistics, sys
work, out, gpu = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
runs = {}
for path in sorted(work.glob("*.json")):
    report = json.loads(path.read_text())
    samples = [line.split(",") for line in (work / f"{path.stem}.smi").read_text().splitlines() if "," in line]
    busy = [float(u) for u, _ in samples]
    report["gpu_utilisation"] = {"mean_percent": statistics.mean(busy) if busy else None, "samples": len(busy),
                                 "peak_memory_mib": max((float(m) for _, m in samples), default=None)}
    runs[path.stem] = report
pathlib.Path(out).write_text(json.dumps({"gpu": gpu, "runs": runs}, indent=2))
for name, r in runs.items():
    t, f, u = r.get("train", {}), r.get("fit", {}), r["gpu_utilisation"]
    print(f"{name:<26} step {t.get('images_per_second', 0):9.1f} img/s  MFU {t.get('mfu', float('nan')):6.1%}"
          f"  fit {f.get('train_images_per_second', 0):9.1f} img/s  GPU busy {u['mean_percent'] or 0:5.1f}%")
print(f"outputs: {out}")
PY
