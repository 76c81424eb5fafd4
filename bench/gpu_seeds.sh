#!/usr/bin/env bash
# Issue 11's seed table in one GPU call (repo root): bench_seeds.py for each kind in $KINDS over $SEEDS at
# full size (300 frames at 512 px, 100 test frames, 30 with novel views, 10k iterations), one process per
# kind and seed pair side by side on the GPU (quality only; the timings in the JSON are then not alone).
# Each process writes its JSON to $OUT after every run and its log to $WORK (the device tool brings back
# only a few files: keep $OUT to the JSONs). The GPU is the limit: N processes take about as long as one
# running the N runs in turn (H200: about 35 s per 10k-iteration baseline run, 41 s for --ours).
# Usage: OUT=/dir KINDS="baseline baseline+--ema_decay=0.999" SEEDS="0 1 2 3" bash bench/gpu_seeds.sh
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"; W=${WORK:-/tmp/gpu_seeds}; mkdir -p "$W"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONPATH=$PWD:$PWD/submodules/simple-knn:$PWD/submodules/diff-gaussian-rasterization:${PYTHONPATH:-}
echo "start $(date +%T)"
python -c "
from pathlib import Path; from preprocessing.synthetic_subject import make_synthetic_subject
w = Path('$W'); make_synthetic_subject(w / 'data', w / 'track', 's', n_frames=300, image_size=512, seed=0, novel_views=30)
" > "$W/gen.log" 2>&1 &  # the subject renders on the CPU cores while nvcc builds the extension
GEN=$!
python setup.py build_ext --inplace > "$W/build.log" 2>&1 || { tail -30 "$W/build.log"; exit 1; }
echo "extension built $(date +%T)"
wait $GEN || { tail -20 "$W/gen.log"; exit 1; }
echo "subject generated $(date +%T)"
read -ra SD <<< "${SEEDS:-0 1 2 3}"
for kind in ${KINDS:-baseline baseline+--ema_decay=0.999}; do
  for ((i = 0; i < ${#SD[@]}; i += ${PER_PROCESS:-2})); do
    seeds=("${SD[@]:i:${PER_PROCESS:-2}}"); tag=$(echo "${kind}_${seeds[*]}" | tr -c 'a-zA-Z0-9_.\n' '_')
    python bench/bench_seeds.py --device cuda --frames 300 --size 512 --test_num 100 --novel_views 30 \
      --iterations ${ITERATIONS:-10000} --seeds "${seeds[@]}" --kinds "$kind" --work "$W" \
      --out "$OUT/seeds_$tag.json" > "$W/seeds_$tag.log" 2>&1 &
  done
done
wait
echo "all done $(date +%T)"
grep -h "test PSNR" "$W"/seeds_*.log
