#!/usr/bin/env bash
# Issue 10's GPU figures in one call (repo root; one or two GPUs): the tracker's speed on 1000 frames at
# 512x512 (bench_tracker.py, landmark, photometric and avatar stages, no detection: the device lacks LiteRT), and
# the avatar trained on each tracker setting against the true tracking at full size
# (bench_tracked_training.py, 200 frames, 7000 iterations, seeds $SEEDS), the settings in parallel
# processes after the speed figure (on the second GPU where there is one; quality only, so sharing a GPU is
# fine). SPEED=0 / TRUTH=0 skip the speed figure / the truth's runs; VARIANTS: ';'-separated
# bench_tracked_training --variant specs (name KEY=VALUE ...; train.FLAG=VALUE sets a train.py option for that
# tracking's avatars); TRUTH_ARGS: train.py options for the truth's avatars (e.g. "--lambda_normal_offset 0").
# Usage: OUT=/dir bash bench/gpu_tracker.sh
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"; W=${WORK:-/tmp/gpu_tracker}; mkdir -p "$W"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH=$PWD:$PWD/submodules/simple-knn:$PWD/submodules/diff-gaussian-rasterization:${PYTHONPATH:-}
python setup.py build_ext --inplace > "$W/build.log" 2>&1 || { tail -30 "$W/build.log"; exit 1; }
NGPU=$(nvidia-smi -L | wc -l); Q=$(( NGPU > 1 ? 1 : 0 ))  # the GPU the quality runs share
SEEDS=${SEEDS:-"0 1 2"}
TT=(python bench/bench_tracked_training.py --size 512 --frames 200 --test_num 50 --iterations 7000
    --model_size full --device cuda --seeds $SEEDS --work "$W/tt")
# the tracker's speed first, alone on the GPU
if [ "${SPEED:-1}" = 1 ]; then
  CUDA_VISIBLE_DEVICES=0 python bench/bench_strip.py --json "$OUT/strip.json" > "$OUT/strip.log" 2>&1
  cat "$OUT/strip.log" | tail -5
  CUDA_VISIBLE_DEVICES=0 python bench/bench_tracker.py --frames 1000 --base_frames 30 --size 512 --device cuda \
    --no_detect --avatar_refine --work "$W/tb" --out "$OUT/tracker_1000.json" > "$OUT/tracker_1000.log" 2>&1
  echo "tracker bench done $(date +%T)"; grep -h "^landmarks\|^photometric\|^avatar" "$OUT/tracker_1000.log" | cut -c1-900
fi
CUDA_VISIBLE_DEVICES=$Q python -c "
from pathlib import Path; from preprocessing.synthetic_subject import make_synthetic_subject
r = Path('$W/tt/f200_s512'); make_synthetic_subject(r / 'd', r / 'truth', 's', n_frames=200, image_size=512, seed=0, resolution=48)
" > "$W/gen.log" 2>&1 || { tail -20 "$W/gen.log"; exit 1; }
echo "subject generated $(date +%T)"
if [ "${TRUTH:-1}" = 1 ]; then
  CUDA_VISIBLE_DEVICES=$Q "${TT[@]}" --truth_only --train_args="${TRUTH_ARGS:-}" --out "$OUT/tt_truth.json" \
    > "$OUT/tt_truth.log" 2>&1 &
fi
IFS=';' read -ra VS <<< "${VARIANTS:-photo photometric=1;photo_light photometric=1 photo.size=128 photo.steps=300 photo.batch=4 photo.uv_size=48}"
for v in "${VS[@]}"; do
  read -ra kv <<< "$v"
  CUDA_VISIBLE_DEVICES=$Q "${TT[@]}" --skip_truth --variant "${kv[@]}" --out "$OUT/tt_${kv[0]}.json" \
    > "$OUT/tt_${kv[0]}.log" 2>&1 &
done
wait
echo "all done $(date +%T)"
for f in "$OUT"/tt_*.log; do echo "== $f"; grep -h "held-out\|^tracking" "$f" | cut -c1-400; done
