#!/usr/bin/env bash
# One GPU session: build the rasterizer, run every CUDA-marked test, bench the rasterizer, break a training
# step down (bench_train_step.py --profile), then train each method ALONE at full size (512x512, uv_size 128)
# on a 64-frame synthetic subject, render its test split and score it.
#
# Usage (CUDA machine, repo root):
#   OUT=/some/dir [STAGES="tests bench step train"] [METHODS="baseline ours"] [STEP_METHODS=...] \
#       bash bench/gpu_full_run.sh [iters]
# STEP_EAGER_METHODS also benches those methods' steps with --no_cuda_graphs.
# FRAMES, SIZE, UV and EXTRA (more train.py flags) shrink it for a dry run on a CPU.
# The work folder (subject, build, runs) defaults to .devbuild/gpu_work, which git ignores, so a second call
# on a still-warm machine reuses the subject and the build. Logs go to $OUT/logs.tgz; the key figures to
# $OUT/summary.txt and stdout.
set -u
ITERS=${1:-30000}
STAGES=${STAGES:-"tests bench step train"}
METHODS=${METHODS:-"baseline ours"}
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
W=${WORK:-$PWD/.devbuild/gpu_work}; L="$W/out_logs"; mkdir -p "$L"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH=$PWD:$PWD/submodules/simple-knn:$PWD/submodules/diff-gaussian-rasterization:${PYTHONPATH:-}
export RASTER_ORACLE_DIR=${RASTER_ORACLE_DIR:-$PWD/.devdata}
trap 'tar czf "$OUT/logs.tgz" -C "$L" . 2>/dev/null' EXIT
has() { [[ " $STAGES " == *" $1 "* ]]; }
say() { echo "$*" | tee -a "$OUT/summary.txt"; }

say "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $(python -c 'import torch; print("torch", torch.__version__)'); commit $(git rev-parse --short HEAD 2>/dev/null)"
python -m preprocessing.synthetic_subject --idname s512 --data_root "$W/ds" --tracking_root "$W/tr" \
    --frames ${FRAMES:-64} --size ${SIZE:-512} --resolution 64 --supersample 2 > "$L/gen.log" 2>&1 &
GEN=$!
t0=$(date +%s)
python setup.py build_ext --inplace > "$L/build.log" 2>&1 || { tail -40 "$L/build.log"; exit 1; }
say "build: $(( $(date +%s) - t0 )) s"
if has tests; then
  python -m pytest -q -m cuda -p no:cacheprovider $(grep -l "mark.cuda" tests/*.py | grep -v preprocessing) \
      2>&1 | tee "$L/gpu_tests.log" | tail -4
fi
has bench && python bench/bench_rasterizer.py 2>&1 | tee "$L/bench.log" | tail -8
t0=$(date +%s)
wait $GEN || { tail -20 "$L/gen.log"; exit 1; }
say "subject ready (waited $(( $(date +%s) - t0 )) s)"
COMMON=(--idname s512 --data_root "$W/ds" --tracking_root "$W/tr" --log_root "$W/logs" --test_num 12
        --eval_num 6 --uv_size ${UV:-128} ${EXTRA:-})
flag_of() { [ "$1" = ours ] && echo --ours; }
if has step; then
  for m in ${STEP_METHODS:-$METHODS}; do
    python bench/bench_train_step.py "${COMMON[@]}" $(flag_of "$m") --steps 50 --warmup 20 --profile \
        2>&1 | grep -v "^\(USDT\|ERROR\|WARNING\)" | tee "$L/step_$m.log" | tail -22
  done
  for m in ${STEP_EAGER_METHODS:-}; do  # the same without CUDA graphs, for comparison in the same call
    python bench/bench_train_step.py "${COMMON[@]}" $(flag_of "$m") --steps 50 --warmup 20 --no_cuda_graphs \
        2>&1 | tee "$L/step_${m}_eager.log" | tail -11
  done
fi
if has train; then
  for m in $METHODS; do  # one after the other: each method alone on the GPU
    rm -rf "$W/logs/s512_$m"  # a fresh run: no checkpoints of an earlier call
    s=$(date +%s)
    timeout "${TRAIN_TIMEOUT:-400}" python train.py "${COMMON[@]}" $(flag_of "$m") --iterations "$ITERS" \
        --lambda_lpips 0 --eval_every 2500 --ckpt_every 10000 --grid_every 0 > "$L/train_$m.log" 2>&1
    say "train $m: rc=$? wall=$(( $(date +%s) - s )) s"
    grep "^\[eval" "$L/train_$m.log" | tail -3 | tee -a "$OUT/summary.txt"
    python - "$W/logs/s512_$m/train_log.json" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
d = json.load(open(sys.argv[1])); last = d["losses"][-1]
print(f"  {d['config']['n_gaussians']} Gaussians, {last['its_per_s']:.1f} it/s over {last['iteration']} its "
      f"({1000 / last['its_per_s']:.2f} ms a step, evaluations and checkpoints included)")
PY
    s=$(date +%s)
    python render.py "${COMMON[@]}" $(flag_of "$m") --no_video > "$L/render_$m.log" 2>&1 || tail -5 "$L/render_$m.log"
    python metrics.py -m "$W/logs/s512_$m" > "$L/metrics_$m.log" 2>&1 || tail -5 "$L/metrics_$m.log"
    say "render + metrics $m: $(( $(date +%s) - s )) s; $(python -c "import json, sys; d = json.load(open(sys.argv[1]))
print({k: d.get(k) for k in ('PSNR', 'SSIM', 'LPIPS', 'num_views')})" "$W/logs/s512_$m/results.json" 2>&1)"
    cp "$W/logs/s512_$m/results.json" "$L/results_$m.json" 2>/dev/null
    cp "$W/logs/s512_$m/train_log.json" "$L/trainlog_$m.json" 2>/dev/null
  done
fi
