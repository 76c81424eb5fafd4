// One frame's Gaussians from FLAME's unskinned mesh in one pass (inference: no gradients). Per Gaussian, one
// thread: skins its triangle's three corners (linear blend skinning with the five joints' 3x4 transforms,
// then the two eyelid shapes), interpolates them at its barycentrics (the base position, docs/maths.md
// section 4) and composes the deformation heads' outputs onto it (section 5): mean = base + d_xyz, rotation =
// normalize(q (x) (exp(d_rot0), d_rot1..3)), scale = exp(log_scale * exp(d_scale)). The eager path spends
// ~25 launches on this (blend matmul, skinning, eyelids, corner gather, interpolation, quaternion product,
// normalisation, exponentials), each a few microseconds at 14.5k Gaussians.
//
// Inputs (float32, contiguous unless a row stride is given): v_posed (V, 3), transforms (5, 12) (row-major
// 3x4 each), lbs_weights (V, 5), eyelid_dirs (2, V * 3), eyelids (2,), vertex_ids (N, 3) int64, bary (N, 3),
// d_xyz (N, 3), d_rot (N, 4), d_scale (N, 3) with row strides (views of the heads' (N, 10) output),
// rotation (N, 4), log_scale (N, 3), all on one device. Outputs: means (N, 3), rotations (N, 4), scales (N, 3).
// Vertex ids are trusted (the avatar's embedding made them within 0..V-1).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <vector>

namespace {

constexpr int JOINTS = 5;
constexpr int THREADS = 128;  // ~85 blocks at N = 10.9k: every SM gets one
static_assert(THREADS >= JOINTS * 12, "the block loads the joints' transforms one element a thread");

struct Rows {  // a (N, k) float view with its row stride
  const float* p;
  int64_t stride;
  __device__ __forceinline__ float at(int64_t n, int k) const { return p[n * stride + k]; }
};

__global__ void __launch_bounds__(THREADS)
frame_gaussians_kernel(int64_t N, int64_t V, const float* __restrict__ v_posed, const float* __restrict__ transforms,
                       const float* __restrict__ lbs_weights, const float* __restrict__ eyelid_dirs,
                       const float* __restrict__ eyelids, const int64_t* __restrict__ vertex_ids,
                       const float* __restrict__ bary, Rows d_xyz, Rows d_rot, Rows d_scale,
                       const float* __restrict__ rotation, const float* __restrict__ log_scale,
                       float* __restrict__ means, float* __restrict__ rotations, float* __restrict__ scales) {
  __shared__ float s_A[JOINTS * 12];
  __shared__ float s_lid[2];
  if (threadIdx.x < JOINTS * 12) s_A[threadIdx.x] = transforms[threadIdx.x];
  if (threadIdx.x < 2) s_lid[threadIdx.x] = eyelids[threadIdx.x];
  __syncthreads();
  const int64_t n = (int64_t)blockIdx.x * THREADS + threadIdx.x;
  if (n >= N) return;

  float base[3] = {0.f, 0.f, 0.f};
#pragma unroll
  for (int k = 0; k < 3; k++) {
    const int64_t v = vertex_ids[3 * n + k];
    float T[12];
#pragma unroll
    for (int e = 0; e < 12; e++) T[e] = 0.f;
#pragma unroll
    for (int j = 0; j < JOINTS; j++) {
      const float w = lbs_weights[v * JOINTS + j];
#pragma unroll
      for (int e = 0; e < 12; e++) T[e] = fmaf(w, s_A[j * 12 + e], T[e]);
    }
    const float x = v_posed[3 * v], y = v_posed[3 * v + 1], z = v_posed[3 * v + 2];
    const float b = bary[3 * n + k];
#pragma unroll
    for (int r = 0; r < 3; r++) {
      const float p = T[4 * r] * x + T[4 * r + 1] * y + T[4 * r + 2] * z + T[4 * r + 3] +
                      s_lid[0] * eyelid_dirs[3 * v + r] + s_lid[1] * eyelid_dirs[3 * V + 3 * v + r];
      base[r] = fmaf(b, p, base[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < 3; r++) means[3 * n + r] = base[r] + d_xyz.at(n, r);

  // q1 (x) q2 with q2 = (exp(d_rot0), d_rot1, d_rot2, d_rot3), w first; then normalised (F.normalize, eps 1e-12)
  const float w1 = rotation[4 * n], x1 = rotation[4 * n + 1], y1 = rotation[4 * n + 2], z1 = rotation[4 * n + 3];
  const float w2 = expf(d_rot.at(n, 0)), x2 = d_rot.at(n, 1), y2 = d_rot.at(n, 2), z2 = d_rot.at(n, 3);
  const float qw = w1 * w2 - (x1 * x2 + y1 * y2 + z1 * z2);
  const float qx = w1 * x2 + w2 * x1 + (y1 * z2 - z1 * y2);
  const float qy = w1 * y2 + w2 * y1 + (z1 * x2 - x1 * z2);
  const float qz = w1 * z2 + w2 * z1 + (x1 * y2 - y1 * x2);
  const float inv = 1.f / fmaxf(sqrtf(qw * qw + qx * qx + qy * qy + qz * qz), 1e-12f);
  rotations[4 * n] = qw * inv;
  rotations[4 * n + 1] = qx * inv;
  rotations[4 * n + 2] = qy * inv;
  rotations[4 * n + 3] = qz * inv;
#pragma unroll
  for (int r = 0; r < 3; r++) scales[3 * n + r] = expf(log_scale[3 * n + r] * expf(d_scale.at(n, r)));
}

void check(const torch::Tensor& t, const char* name, torch::ScalarType type, const torch::Device& device,
           bool contiguous = true) {
  TORCH_CHECK(t.is_cuda() && t.device() == device, "frame_gaussians: ", name, " must be on ", device);
  TORCH_CHECK(t.scalar_type() == type, "frame_gaussians: ", name, " has dtype ", t.scalar_type());
  TORCH_CHECK(!contiguous || t.is_contiguous(), "frame_gaussians: ", name, " must be contiguous");
}

Rows rows(const torch::Tensor& t, int64_t N, int64_t k, const char* name, const torch::Device& device) {
  check(t, name, torch::kFloat32, device, false);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.size(1) == k && t.stride(1) == 1, "frame_gaussians: ", name,
              " must be (", N, ", ", k, ") with unit column stride");
  return Rows{t.data_ptr<float>(), t.stride(0)};
}

}  // namespace

std::vector<torch::Tensor> frame_gaussians(const torch::Tensor& v_posed, const torch::Tensor& transforms,
                                           const torch::Tensor& lbs_weights, const torch::Tensor& eyelid_dirs,
                                           const torch::Tensor& eyelids, const torch::Tensor& vertex_ids,
                                           const torch::Tensor& bary, const torch::Tensor& d_xyz,
                                           const torch::Tensor& d_rot, const torch::Tensor& d_scale,
                                           const torch::Tensor& rotation, const torch::Tensor& log_scale) {
  const int64_t V = v_posed.size(0), N = vertex_ids.size(0);
  const torch::Device device = v_posed.device();
  for (auto [t, name] : {std::pair{&v_posed, "v_posed"}, {&transforms, "transforms"}, {&lbs_weights, "lbs_weights"},
                         {&eyelid_dirs, "eyelid_dirs"}, {&eyelids, "eyelids"}, {&bary, "bary"},
                         {&rotation, "rotation"}, {&log_scale, "log_scale"}})
    check(*t, name, torch::kFloat32, device);
  check(vertex_ids, "vertex_ids", torch::kInt64, device);
  TORCH_CHECK(v_posed.dim() == 2 && v_posed.size(1) == 3, "frame_gaussians: v_posed must be (V, 3)");
  TORCH_CHECK(transforms.numel() == JOINTS * 12, "frame_gaussians: transforms must hold 5 3x4 matrices");
  TORCH_CHECK(lbs_weights.dim() == 2 && lbs_weights.size(0) == V && lbs_weights.size(1) == JOINTS,
              "frame_gaussians: lbs_weights must be (V, 5)");
  TORCH_CHECK(eyelid_dirs.dim() == 2 && eyelid_dirs.size(0) == 2 && eyelid_dirs.size(1) == 3 * V,
              "frame_gaussians: eyelid_dirs must be (2, 3V)");
  TORCH_CHECK(eyelids.numel() == 2, "frame_gaussians: eyelids must hold 2 values");
  TORCH_CHECK(vertex_ids.dim() == 2 && vertex_ids.size(1) == 3 && bary.sizes() == vertex_ids.sizes(),
              "frame_gaussians: vertex_ids and bary must be (N, 3)");
  TORCH_CHECK(rotation.dim() == 2 && rotation.size(0) == N && rotation.size(1) == 4,
              "frame_gaussians: rotation must be (N, 4)");
  TORCH_CHECK(log_scale.dim() == 2 && log_scale.size(0) == N && log_scale.size(1) == 3,
              "frame_gaussians: log_scale must be (N, 3)");
  const Rows rx = rows(d_xyz, N, 3, "d_xyz", device), rr = rows(d_rot, N, 4, "d_rot", device),
             rs = rows(d_scale, N, 3, "d_scale", device);
  const c10::cuda::CUDAGuard guard(v_posed.device());
  auto means = torch::empty({N, 3}, v_posed.options());
  auto rotations = torch::empty({N, 4}, v_posed.options());
  auto scales = torch::empty({N, 3}, v_posed.options());
  if (N > 0) {
    frame_gaussians_kernel<<<(unsigned)((N + THREADS - 1) / THREADS), THREADS, 0,
                             c10::cuda::getCurrentCUDAStream()>>>(
        N, V, v_posed.data_ptr<float>(), transforms.data_ptr<float>(), lbs_weights.data_ptr<float>(),
        eyelid_dirs.data_ptr<float>(), eyelids.data_ptr<float>(), vertex_ids.data_ptr<int64_t>(),
        bary.data_ptr<float>(), rx, rr, rs, rotation.data_ptr<float>(), log_scale.data_ptr<float>(),
        means.data_ptr<float>(), rotations.data_ptr<float>(), scales.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {means, rotations, scales};
}
