#!/usr/bin/env bash
# Issue 13's figures in one GPU call (H200; repo root): LPIPS per precision, training step per method and
# precision (without and with LPIPS), inference FPS, render.py and metrics.py on a 500-frame test split,
# peak training memory on a 2000-frame subject. LPIPS timing uses a seeded random VGG16 when the real
# weights are not in torch's hub cache (timing does not depend on the weights' values).
# Usage: OUT=/dir STAGES="build lpips tests steps render viewer memory train quality" bash bench/gpu_speed.sh
# The lpips stage, the --with_lpips steps, memory and train need the lpips package and render the
# imageio-ffmpeg binary: on an offline device carry lpips' wheel unzipped onto PYTHONPATH (pip may install
# into another Python) and the ffmpeg binary xz-compressed (bench/NOTES.md, session 5).
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"; W=${WORK:-/tmp/gpu_speed}; mkdir -p "$W"
L=$W/run_logs; mkdir -p "$L"  # per-run logs stay here; $OUT gets the summaries
STAGES=${STAGES:-"build lpips tests steps render memory"}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH=$PWD:$PWD/submodules/simple-knn:$PWD/submodules/diff-gaussian-rasterization:${PYTHONPATH:-}
has() { [[ " $STAGES " == *" $1 "* ]]; }
DS=(--data_root "$W/ds" --tracking_root "$W/tr")
if [ ! -f "$W/ds/s600/synthetic.json" ]; then
  python -m preprocessing.synthetic_subject --idname s600 "${DS[@]}" --frames 600 --size 512 > "$L/gen600.log" 2>&1 &
  GEN=$!
fi
python -m preprocessing.synthetic_subject --idname s16 "${DS[@]}" --frames 16 --size 512 > "$L/gen16.log" 2>&1
if has build; then
  python setup.py build_ext --inplace > "$L/build.log" 2>&1 || { tail -30 "$L/build.log"; exit 1; }
fi
if [ ! -f "$W/home/hub/checkpoints/vgg16-397923af.pth" ]; then
  python -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; from bench_lpips import write_random_vgg; write_random_vgg(Path('$W/home'))"
fi
export TORCH_HOME=$W/home GAUSSIAN_NO_DOWNLOAD=1
if has lpips; then python bench/bench_lpips.py --json "$OUT/lpips.json" 2>&1; fi
if has tests; then
  python -m pytest -q -m cuda -p no:cacheprovider tests ${TEST_K:+-k "$TEST_K"} > "$OUT/cuda_tests.log" 2>&1
  tail -3 "$OUT/cuda_tests.log"
fi
if has steps; then
  for m in baseline ours; do
    flag=(); [ "$m" = ours ] && flag=(--ours)
    for p in ${STEP_PRECISIONS:-fp32 tf32 bf16}; do
      for l in ${STEP_VARIANTS:-plain --with_lpips}; do
        [ "$l" = plain ] && l=""
        python bench/bench_train_step.py --idname s16 "${DS[@]}" --test_num 4 --eval_num 4 "${flag[@]}" \
          --precision "$p" $l --steps 100 --warmup 20 > "$L/step_${m}_${p}${l}.log" 2>&1
        grep -h "RESULT\|inference\|peak\|Error" "$L/step_${m}_${p}${l}.log" | tr '\n' ' '; echo
      done
    done
  done | tee "$OUT/steps.txt"
  python bench/bench_train_step.py --idname s16 "${DS[@]}" --test_num 4 --eval_num 4 --precision tf32 \
    --steps 50 --profile > "$L/step_profile_baseline.log" 2>&1; tail -14 "$L/step_profile_baseline.log" > "$OUT/profile.txt"
fi
[ -n "${GEN:-}" ] && wait "$GEN"
if has render; then
  R=(--idname s600 "${DS[@]}" --log_root "$W/logs" --test_num 500 --eval_num 50)
  for m in ${METHODS:-baseline ours}; do
    flag=(); [ "$m" = ours ] && flag=(--ours)
    python train.py "${R[@]}" "${flag[@]}" --iterations 2000 --skip_test --overwrite \
      > "$L/train2k_$m.log" 2>&1; tail -2 "$L/train2k_$m.log"
    s=$(date +%s.%N); python render.py -m "$W/logs/s600_$m" > "$L/render_$m.log" 2>&1; e=$(date +%s.%N)
    tail -c 1500 "$L/render_$m.log" | tr '\r' '\n' | tail -8
    echo "render.py $m: $(awk "BEGIN{print $e - $s}") s wall (process)"; grep -h "rendered and written" "$L/render_$m.log"
    s=$(date +%s.%N); python metrics.py -m "$W/logs/s600_$m" > "$L/metrics_$m.log" 2>&1; e=$(date +%s.%N)
    echo "metrics.py $m: $(awk "BEGIN{print $e - $s}") s wall (process)"; tail -1 "$L/metrics_$m.log"
  done | tee "$OUT/render.txt"
fi
if has viewer; then
  for m in ${METHODS:-baseline ours}; do
    python bench/bench_viewer.py -m "$W/logs/s600_$m" 2>&1 | grep viewer
  done | tee "$OUT/viewer.txt"
fi
if has memory; then
  python - "$W" <<'PY'
import os, sys, shutil
from pathlib import Path
w = Path(sys.argv[1]); src, dst = w / "ds" / "s600", w / "ds" / "s2000"
tsrc, tdst = w / "tr" / "s600" / "checkpoint", w / "tr" / "s2000" / "checkpoint"
if not dst.exists():
    for sub in ("imgs", "alpha", "parsing"):
        (dst / sub).mkdir(parents=True)
    tdst.mkdir(parents=True)
    shutil.copytree(src / "flame", dst / "flame")
    for k in range(2000):
        s = k % 600
        os.symlink(src / "imgs" / f"{s:05d}.png", dst / "imgs" / f"{k:05d}.png")
        os.symlink(src / "alpha" / f"{s:05d}.png", dst / "alpha" / f"{k:05d}.png")
        for kind in ("neckhead", "mouth"):
            os.symlink(src / "parsing" / f"{s:05d}_{kind}.png", dst / "parsing" / f"{k:05d}_{kind}.png")
        os.symlink(tsrc / f"{s:05d}.frame", tdst / f"{k:05d}.frame")
PY
  for m in ${MEM_METHODS:-baseline ours}; do
    flag=(); [ "$m" = ours ] && flag=(--ours)
    python train.py --idname s2000 "${DS[@]}" --log_root "$W/logs" --test_num 100 --eval_num 10 --preload device \
      "${flag[@]}" --iterations 300 --lpips_start 100 --skip_test --overwrite > "$L/mem2000_$m.log" 2>&1
    echo "2000 frames, $m: $(grep -h 'peak GPU' "$L/mem2000_$m.log")"
  done | tee "$OUT/memory.txt"
fi
if has train; then
  for m in ${TRAIN_METHODS:-baseline ours}; do
    flag=(); [ "$m" = ours ] && flag=(--ours)
    s=$(date +%s.%N)
    python train.py --idname s600 "${DS[@]}" --log_root "$W/logs" --test_num 500 --logname "full_$m" \
      "${flag[@]}" --iterations 30000 --skip_test --overwrite --precision "${FULL_PRECISION:-tf32}" \
      > "$L/train30k_$m.log" 2>&1
    e=$(date +%s.%N)
    echo "train.py 30k $m (${FULL_PRECISION:-tf32}, LPIPS from 15000): $(awk "BEGIN{print $e - $s}") s wall (process)"
    tail -c 3000 "$L/train30k_$m.log" | tr '\r' '\n' | tail -12 > "$OUT/train30k_$m.log"
  done | tee "$OUT/train30k.txt"
fi
if has quality; then
  for m in ${QUALITY_METHODS:-ours baseline}; do
    flag=(); [ "$m" = ours ] && flag=(--ours)
    for p in fp32 tf32; do
      python train.py --idname s600 "${DS[@]}" --log_root "$W/logs" --test_num 500 --eval_num 100 \
        --logname "q_${m}_$p" "${flag[@]}" --iterations 10000 --eval_every 10000 --overwrite --precision "$p" \
        --lambda_lpips 0 > "$L/quality_${m}_$p.log" 2>&1
      python -c "import json,sys; d=json.load(open('$W/logs/s600_q_${m}_$p/train_log.json')); e=d['evaluations'][-1]; print('$m $p 10k: PSNR %.3f SSIM %.4f (%d views)' % (e['PSNR'], e['SSIM'], e['num_views']))"
    done
  done | tee "$OUT/quality.txt"
fi
