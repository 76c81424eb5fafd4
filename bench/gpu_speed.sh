#!/usr/bin/env bash
# Issue 13's figures in one GPU call (H200; repo root). The figures and their table against the targets
# come from bench/speed_table.py (stages raster lpips steps render memory train; it makes its own synthetic
# subjects and writes $OUT/<stage>.json and $OUT/speed_table.json); this script adds the extension build,
# the CUDA tests, the viewer timing and the quality check of the fast paths against the plain ones over seeds.
# Usage: OUT=/dir STAGES="build tests startup raster lpips steps render viewer memory train quality frame_kernel" \
#   bash bench/gpu_speed.sh
# LPIPS timing uses a seeded random VGG16 when the real weights are not in torch's hub cache (the cost does
# not depend on the weights' values). render needs the imageio-ffmpeg binary and lpips the lpips package: on
# an offline device carry them (bench/NOTES.md, session 5) and put them on PYTHONPATH.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"; W=${WORK:-/tmp/gpu_speed}; mkdir -p "$W"
L=$W/run_logs; mkdir -p "$L"  # per-run logs stay here; $OUT gets the summaries
STAGES=${STAGES:-"build tests raster lpips steps render memory"}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} GAUSSIAN_NO_DOWNLOAD=1
export PYTHONPATH=$PWD:$PWD/submodules/simple-knn:$PWD/submodules/diff-gaussian-rasterization:$PWD/submodules/fused-ops:${PYTHONPATH:-}
# the device image caches no bytecode for torch's modules: keep the compiled files between the processes
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$W/pycache}
has() { [[ " $STAGES " == *" $1 "* ]]; }
if has build; then
  python setup.py build_ext --inplace > "$L/build.log" 2>&1 || { tail -30 "$L/build.log"; exit 1; }
fi
if has tests; then
  python -m pytest -q -m cuda -p no:cacheprovider tests ${TEST_K:+-k "$TEST_K"} > "$OUT/cuda_tests.log" 2>&1
  tail -3 "$OUT/cuda_tests.log"
fi
if has startup; then  # a train.py process outside its steps: imports, set-up, exit; torch._dynamo imported?
  [ -f "$W/ds/s16/synthetic.json" ] || python -m preprocessing.synthetic_subject --idname s16 \
    --data_root "$W/ds" --tracking_root "$W/tr" --frames 16 --size 512 > "$L/gen16.log" 2>&1
  export TORCH_HOME=${TORCH_HOME:-$W/vgg}  # LPIPS' VGG16: a seeded random one where the real one is absent
  [ -f "$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth" ] || python -c "import sys; sys.path.insert(0, 'bench')
from pathlib import Path; from bench_lpips import write_random_vgg; write_random_vgg(Path('$TORCH_HOME'))"
  for lp in 0 0.05; do  # without and with the LPIPS term (its model is built at set-up)
    python bench/bench_startup.py --idname s16 --data_root "$W/ds" --tracking_root "$W/tr" --test_num 4 \
      --lambda_lpips $lp --json "$OUT/startup_lpips$lp.json" 2>&1 | tee "$OUT/startup_lpips$lp.txt"
  done
fi
if has frame_kernel; then  # the one-pass frame (fast path frame_kernel): its CUDA test, then inference off / on
  python -m pytest -q -m cuda -p no:cacheprovider tests/test_avatar.py -k frame > "$OUT/frame_kernel_test.log" 2>&1
  tail -1 "$OUT/frame_kernel_test.log"
  [ -f "$W/ds/s16/synthetic.json" ] || python -m preprocessing.synthetic_subject --idname s16 \
    --data_root "$W/ds" --tracking_root "$W/tr" --frames 16 --size 512 > "$L/gen16.log" 2>&1
  for m in baseline ours; do
    flag=(); [ "$m" = ours ] && flag=(--ours)
    for fk in 0 1; do
      python bench/bench_train_step.py --idname s16 --data_root "$W/ds" --tracking_root "$W/tr" --test_num 4 \
        --eval_num 4 "${flag[@]}" --steps 30 --warmup 10 --frame_kernel $fk 2>&1 | grep "whole-frame" \
        | sed "s/^/$m frame_kernel=$fk: /"
    done
  done | tee "$OUT/frame_kernel.txt"
fi
TABLE=()
for st in raster lpips steps render memory train; do has "$st" && TABLE+=("$st"); done
if [ ${#TABLE[@]} -gt 0 ]; then
  RASTER_ORACLE_DIR=${RASTER_ORACLE_DIR:-$PWD/.devdata} python bench/speed_table.py --out "$OUT" --work "$W" \
    --stages "${TABLE[@]}" --precision "${PRECISION:-tf32}" 2>&1 | tee "$OUT/table.txt"
fi
if has viewer; then  # on the runs the render stage trained
  for m in ${METHODS:-baseline ours}; do
    python bench/bench_viewer.py -m "$W/logs/s600_$m" 2>&1 | grep viewer
  done | tee "$OUT/viewer.txt"
fi
if has quality; then  # issue 13's "quality must not move": every fast path on (the default) against all off
  # (--precision fp32 --no_fused_kernels), seed by seed (bench_seeds.py --paired), 10k iterations without LPIPS
  # (bench_seeds' runs use none unless a kind turns it on; the default loss starts it at 15000 anyway).
  # QUALITY_LOSS adds kind options, each "+--flag=value", e.g. "+--lambda_lpips=0.05+--lpips_start=9000" to
  # train the float16 LPIPS trunk too; the plain path's fp32 LPIPS step is slow (about 27 ms at 512 px on the
  # H200, session 23), so keep its stretch short. Both methods side by side on the GPU, each result written as
  # its runs finish; join the JSONs of separate calls with bench_seeds.py --merge.
  export TORCH_HOME=${TORCH_HOME:-$W/vgg}  # a seeded random VGG16 where the real one is absent (see above)
  [ -f "$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth" ] || python -c "import sys; sys.path.insert(0, 'bench')
from pathlib import Path; from bench_lpips import write_random_vgg; write_random_vgg(Path('$TORCH_HOME'))"
  Q=(--frames 300 --size 512 --test_num 100 --novel_views 0 --iterations 10000 --work "$W/quality" --no_novel)
  python bench/bench_seeds.py "${Q[@]}" --subject_only > "$L/quality_subject.log" 2>&1  # before both processes
  LQ=${QUALITY_LOSS:-}; [ -z "$LQ" ] || [[ $LQ == +* ]] || LQ="+$LQ"  # (kind options start with +)
  pids=()
  for m in ${QUALITY_METHODS:-ours baseline}; do
    plain="$m+--precision=fp32+--no_fused_kernels$LQ"
    python bench/bench_seeds.py "${Q[@]}" --seeds ${QUALITY_SEEDS:-0 1 2 3} --kinds "$plain" "$m$LQ" \
      --paired "$plain" --out "$OUT/quality_$m.json" > "$L/quality_$m.log" 2>&1 &
    pids+=("$!:$m")
  done
  for p in "${pids[@]}"; do  # the JSON keeps the pairs finished so far, also where a process failed
    wait "${p%%:*}" || { echo "quality ${p#*:}: bench_seeds failed; its log:"; tail -20 "$L/quality_${p#*:}.log"; }
  done
  for m in ${QUALITY_METHODS:-ours baseline}; do grep -E "test PSNR" "$L/quality_$m.log"; done \
    | tee "$OUT/quality.txt"
fi
