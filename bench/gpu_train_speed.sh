#!/usr/bin/env bash
# Training-step and render throughput of each method ALONE on one GPU at full size (512x512, uv_size 128).
# Usage (CUDA machine, repo root): OUT=/dir bash bench/gpu_train_speed.sh [iterations]
set -u
ITERS=${1:-3000}
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"; W=${WORK:-/tmp/gpu_speed}; mkdir -p "$W"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH=$PWD:$PWD/submodules/simple-knn:$PWD/submodules/diff-gaussian-rasterization:${PYTHONPATH:-}
python -m preprocessing.synthetic_subject --idname s512 --data_root "$W/ds" --tracking_root "$W/tr" \
    --frames 16 --size 512 --resolution 64 --supersample 1 > "$OUT/gen.log" 2>&1 &
python setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
wait || exit 1
for m in baseline ours; do
  flag=(); [ "$m" = ours ] && flag=(--ours)
  python train.py --idname s512 --data_root "$W/ds" --tracking_root "$W/tr" --log_root "$W/logs" --test_num 4 \
      --eval_num 4 --uv_size 128 "${flag[@]}" --iterations "$ITERS" --lambda_lpips 0 --eval_every "$ITERS" \
      --log_every 500 --grid_every 0 --ckpt_every 0 > "$OUT/train_$m.log" 2>&1 || tail -5 "$OUT/train_$m.log"
  python - "$W/logs/s512_$m/train_log.json" "$m" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); last = d["losses"][-1]; ev = d["evaluations"][-1]
print(f"{sys.argv[2]:9s} {d['config']['n_gaussians']} Gaussians: {last['its_per_s']:.1f} it/s "
      f"({1000 / last['its_per_s']:.2f} ms/step over {last['iteration']} its), eval FPS {ev['FPS']:.0f}, "
      f"PSNR {ev['PSNR']:.2f}")
PY
done
