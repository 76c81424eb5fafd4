#!/usr/bin/env bash
# one-off device call (session 9): build, CUDA tests of the changes, step timings with the baseline's
# default prior, full-size novel-view renders with and without it (seed 0) as a contact sheet
set -u
export PYTHONPATH=$PWD:$PWD/submodules/simple-knn:$PWD/submodules/diff-gaussian-rasterization:$PWD/.devwheels/pyextra
export TORCH_CUDA_ARCH_LIST=9.0 RASTER_ORACLE_DIR=$PWD/.devdata GAUSSIAN_NO_DOWNLOAD=1 PYTHONUNBUFFERED=1 GIT_COMMIT=${GIT_COMMIT:-session9}
W=/tmp/w; mkdir -p $W
echo "start $(date +%T)"
python -c "
from pathlib import Path; from preprocessing.synthetic_subject import make_synthetic_subject
w = Path('$W'); make_synthetic_subject(w / 'data', w / 'track', 's', n_frames=300, image_size=512, seed=0, novel_views=30)
" > $W/gen.log 2>&1 &
GEN=$!
python setup.py build_ext --inplace > $W/build.log 2>&1 || { tail -30 $W/build.log; exit 1; }
echo "built $(date +%T)"
timeout 150 python -m pytest -m cuda -q -rs tests/test_raster_cuda.py tests/test_avatar.py tests/test_raster_oracle.py > $OUT/pytest_cuda.txt 2>&1
echo "tests $(date +%T)"; tail -n 3 $OUT/pytest_cuda.txt
python bench/speed_table.py --out $OUT/speed --stages steps > $W/speed.log 2>&1
echo "speed $(date +%T)"; grep -E "inference|step" $W/speed.log | head -8
wait $GEN || { tail -20 $W/gen.log; exit 1; }
echo "subject $(date +%T)"
for k in "baseline" "baseline+--lambda_normal_offset=0"; do
  python bench/bench_seeds.py --device cuda --frames 300 --size 512 --test_num 100 --novel_views 30 --iterations 10000 \
    --seeds 0 --kinds "$k" --work $W --out $W/seeds_$(echo $k | tr -c 'a-z0-9\n' '_').json > $W/seeds_$(echo $k | tr -c 'a-z0-9\n' '_').log 2>&1 &
done
wait; echo "seeds $(date +%T)"; grep -h "test PSNR" $W/seeds_*.log
python - <<'PY'
import os, numpy as np
from pathlib import Path
from PIL import Image
logs = Path('/tmp/w/logs'); runs = ['baseline_lambda_normal_offset0_seed0', 'baseline_seed0']
views = ['yaw-45', 'yaw-30', 'pitch-15', 'yaw+30', 'yaw+45']
for idx in (3, 17):
    rows = []
    for v in views:
        d = logs / runs[0] / 'frames_novel_views' / v
        f = sorted(os.listdir(d / 'renders'))[idx]
        ims = [np.array(Image.open(d / 'gt' / f).convert('RGB'))]
        ims += [np.array(Image.open(logs / r / 'frames_novel_views' / v / 'renders' / f).convert('RGB')) for r in runs]
        rows.append(np.concatenate(ims, 1)[64:448])
    Image.fromarray(np.concatenate(rows, 0)).save(os.environ['OUT'] + f'/sheet_novel_{idx}.png')
print('sheets written')
PY
timeout 120 python bench/bench_lpips.py --random_weights --precisions tf32 --compile --compile_mode reduce-overhead --reps 30 > $OUT/lpips_compile_graph.txt 2>&1
echo "lpips $(date +%T)"; grep -E "torch.compile|fwd\+bwd" $OUT/lpips_compile_graph.txt | tail -n 3
echo "end $(date +%T)"
