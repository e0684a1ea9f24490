#!/usr/bin/env bash
# One GPU, both backends, both models: training and inference images/s, GFLOP/s and model FLOP
# utilisation (MFU), in float32 and mixed_bfloat16, plus TensorFlow without XLA. About 6 minutes on an
# H100 (each run is capped at 75 s, 7 runs), all written to one JSON file:
#
#   bash bench/gpu.sh [OUT.json]            (default bench-gpu.json)
#
# MFU divides the training GFLOP/s by the GPU's dense peak for the precision: PEAK_TFLOPS_BF16 and
# PEAK_TFLOPS_FP32 override the table below (float32 matmuls use TF32 tensor cores on both backends).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-gpu.json}
work=$(mktemp -d)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$gpu" in
  *H100*|*H200*) bf16=989; fp32=495 ;;   # SXM dense: BF16 989 TFLOP/s, TF32 495 TFLOP/s
  *A100*) bf16=312; fp32=156 ;;
  *) bf16=0; fp32=0 ;;
esac
bf16=${PEAK_TFLOPS_BF16:-$bf16}
fp32=${PEAK_TFLOPS_FP32:-$fp32}

run() {  # NAME BACKEND MODEL PRECISION [extra bench options]
  local name=$1 backend=$2 model=$3 precision=$4; shift 4
  local peak=$fp32; [ "$precision" = float32 ] || peak=$bf16
  local batch=256; [ "$model" = efficientnet ] && batch=64
  echo "== $name"
  KERAS_BACKEND=$backend timeout 75 python run.py bench --model "$model" --batch-size "$batch" \
    --precision "$precision" --peak-tflops "$peak" --parts train,infer --steps 20 --repeats 3 \
    --json "$work/$name.json" "$@" 2>&1 | tail -3 || echo "$name: failed or timed out"
}

for backend in tensorflow jax; do
  run "$backend-cnn-float32" "$backend" cnn float32
  run "$backend-cnn-bf16" "$backend" cnn mixed_bfloat16
  run "$backend-efficientnet-bf16" "$backend" efficientnet mixed_bfloat16
done
run "tensorflow-cnn-bf16-noxla" tensorflow cnn mixed_bfloat16 --jit-compile off

python - "$work" "$out" "$gpu" <<'PY'
import json, pathlib, sys
work, out, gpu = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
runs = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
pathlib.Path(out).write_text(json.dumps({"gpu": gpu, "runs": runs}, indent=2))
for name, r in runs.items():
    t, i = r.get("train", {}), r.get("infer", {})
    print(f"{name:<32} train {t.get('images_per_second', 0):9.1f} img/s  MFU {t.get('mfu', float('nan')):6.1%}"
          f"  infer {i.get('images_per_second', 0):9.1f} img/s")
print(f"outputs: {out}")
PY
