#!/usr/bin/env bash
# One GPU session: build the rasterizer, run every CUDA-marked test, bench the rasterizer, then train both
# methods at full size (512x512, uv_size 128) on a synthetic subject, render the test split and score it.
# Usage (on a CUDA machine, from the repo root): OUT=/some/dir bash bench/gpu_full_run.sh [iterations]
set -u
ITERS=${1:-30000}
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
W=${WORK:-/tmp/gpu_work}; mkdir -p "$W"
export RASTER_ORACLE=${RASTER_ORACLE:-$PWD/.devdata/head_scene.pt} RASTER_ORACLE_DIR=${RASTER_ORACLE_DIR:-$PWD/.devdata}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__)"
python -m preprocessing.synthetic_subject --idname s512 --data_root "$W/ds" --tracking_root "$W/tr" \
    --frames 64 --size 512 --resolution 64 --supersample 2 > "$OUT/gen.log" 2>&1 &
GEN=$!
t0=$(date +%s)
python setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python -m pytest -q -m cuda -p no:cacheprovider $(grep -l "mark.cuda" tests/*.py | grep -v preprocessing) \
    2>&1 | tee "$OUT/gpu_tests.log" | tail -8
python bench/bench_rasterizer.py 2>&1 | tee "$OUT/bench.log" | tail -12
wait $GEN || { tail -20 "$OUT/gen.log"; exit 1; }
COMMON=(--idname s512 --data_root "$W/ds" --tracking_root "$W/tr" --log_root "$W/logs" --test_num 12
        --eval_num 6 --uv_size 128)
for m in baseline ours; do
  flag=(); [ "$m" = ours ] && flag=(--ours)
  ( s=$(date +%s)
    timeout "${TRAIN_TIMEOUT:-330}" python train.py "${COMMON[@]}" "${flag[@]}" --iterations "$ITERS" \
        --lambda_lpips 0 --eval_every 2500 --ckpt_every 10000 > "$OUT/train_$m.log" 2>&1
    echo "train $m: rc=$? wall=$(( $(date +%s) - s )) s" >> "$OUT/summary.txt" ) &
done
wait
cat "$OUT/summary.txt"
for m in baseline ours; do
  flag=(); [ "$m" = ours ] && flag=(--ours)
  python render.py "${COMMON[@]}" "${flag[@]}" --no_video > "$OUT/render_$m.log" 2>&1 || tail -5 "$OUT/render_$m.log"
  python metrics.py -m "$W/logs/s512_$m" > "$OUT/metrics_$m.log" 2>&1 || tail -5 "$OUT/metrics_$m.log"
  cp "$W/logs/s512_$m/results.json" "$OUT/results_$m.json" 2>/dev/null
  cp "$W/logs/s512_$m/train_log.json" "$OUT/trainlog_$m.json" 2>/dev/null
  echo "== $m"; cat "$OUT/results_$m.json" 2>/dev/null; grep -E "it/s|s/it" "$OUT/train_$m.log" | tail -1 | tr '\r' '\n' | tail -1
done
