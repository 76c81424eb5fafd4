// One frame's Gaussians in two small kernels and one GEMV (inference: no gradients).
//
// flame_joints (one warp): FLAME's per-frame joint work of docs/maths.md section 3 -- the five 6D rotations to
// matrices, the pose feature (R_j - I, j = 1..4), the joints moved by the expression, the kinematic chain and
// the skinning transforms A_j = G_j [I | -J_j] -- which the eager path spends ~20 launches on. It writes the
// coefficients [expression (zero-padded to 100), pose feature (36)] of the one blendshape GEMV the caller runs
// for v_posed, and A (5, 12).
//
// frame_gaussians: the Gaussians from the unskinned mesh in one pass. Per Gaussian, one
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
constexpr int N_EXPR_MAX = 100;  // FLAME's expression blendshapes
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

// Row-major rotation (rows b1, b2, b3) from the 6 numbers of its first two rows, F.normalize's eps as in
// utils.rotations.rot6d_to_matrix.
__device__ void rot6d_rows(const float* a, float* R) {
  const float n1 = fmaxf(sqrtf(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]), 1e-12f);
  const float b1[3] = {a[0] / n1, a[1] / n1, a[2] / n1};
  const float d = b1[0] * a[3] + b1[1] * a[4] + b1[2] * a[5];
  const float u[3] = {a[3] - d * b1[0], a[4] - d * b1[1], a[5] - d * b1[2]};
  const float n2 = fmaxf(sqrtf(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]), 1e-12f);
  const float b2[3] = {u[0] / n2, u[1] / n2, u[2] / n2};
  R[0] = b1[0], R[1] = b1[1], R[2] = b1[2];
  R[3] = b2[0], R[4] = b2[1], R[5] = b2[2];
  R[6] = b1[1] * b2[2] - b1[2] * b2[1];
  R[7] = b1[2] * b2[0] - b1[0] * b2[2];
  R[8] = b1[0] * b2[1] - b1[1] * b2[0];
}

// One warp. pose_head (2, 6): joints 0-1 (global rotation, neck); pose_tail (3, 6): joints 2-4 (jaw, eyes);
// expression (K,); J_rest (5, 3); J_dirs (>= K, 15) the joints' expression directions; parents (5,) int64
// with -1 for the root, each parent before its children. coeffs (136,) and A (5, 12) written.
__global__ void flame_joints_kernel(int K, const float* __restrict__ pose_head, const float* __restrict__ pose_tail,
                                    const float* __restrict__ expression, const float* __restrict__ J_rest,
                                    const float* __restrict__ J_dirs, const int64_t* __restrict__ parents,
                                    float* __restrict__ coeffs, float* __restrict__ A) {
  __shared__ float s_R[JOINTS][9];
  __shared__ float s_J[JOINTS * 3];
  const int lane = threadIdx.x;
  if (lane < JOINTS) rot6d_rows(lane < 2 ? pose_head + 6 * lane : pose_tail + 6 * (lane - 2), s_R[lane]);
  if (lane < JOINTS * 3) {  // J = J_rest + expression @ J_dirs[:K]
    float acc = 0.f;
    for (int k = 0; k < K; k++) acc = fmaf(expression[k], J_dirs[k * JOINTS * 3 + lane], acc);
    s_J[lane] = J_rest[lane] + acc;
  }
  for (int k = lane; k < N_EXPR_MAX; k += 32) coeffs[k] = k < K ? expression[k] : 0.f;
  __syncwarp();
  for (int e = lane; e < 36; e += 32) {  // pose feature: (R_j - I) of joints 1..4, row-major
    const int j = 1 + e / 9, rc = e % 9;
    coeffs[N_EXPR_MAX + e] = s_R[j][rc] - ((rc % 4) == 0 ? 1.f : 0.f);
  }
  if (lane == 0) {  // the chain, in index order (parents first): G_j = G_parent [R_j | J_j - J_parent]
    float G[JOINTS][12];
    for (int j = 0; j < JOINTS; j++) {
      const int p = (int)parents[j];
      float t[3];
      for (int r = 0; r < 3; r++) t[r] = s_J[3 * j + r] - (p >= 0 ? s_J[3 * p + r] : 0.f);
      for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 3; c++) {
          G[j][4 * r + c] = p < 0 ? s_R[j][3 * r + c]
                                  : G[p][4 * r] * s_R[j][c] + G[p][4 * r + 1] * s_R[j][3 + c] +
                                        G[p][4 * r + 2] * s_R[j][6 + c];
        }
        G[j][4 * r + 3] = p < 0 ? t[r] : G[p][4 * r] * t[0] + G[p][4 * r + 1] * t[1] + G[p][4 * r + 2] * t[2] +
                                             G[p][4 * r + 3];
      }
    }
    for (int j = 0; j < JOINTS; j++)
      for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 3; c++) A[12 * j + 4 * r + c] = G[j][4 * r + c];
        A[12 * j + 4 * r + 3] = G[j][4 * r + 3] - (G[j][4 * r] * s_J[3 * j] + G[j][4 * r + 1] * s_J[3 * j + 1] +
                                                   G[j][4 * r + 2] * s_J[3 * j + 2]);
      }
  }
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

std::vector<torch::Tensor> flame_joints(const torch::Tensor& pose_head, const torch::Tensor& pose_tail,
                                        const torch::Tensor& expression, const torch::Tensor& J_rest,
                                        const torch::Tensor& J_dirs, const torch::Tensor& parents) {
  const torch::Device device = expression.device();
  for (auto [t, name] : {std::pair{&pose_head, "pose_head"}, {&pose_tail, "pose_tail"}, {&expression, "expression"},
                         {&J_rest, "J_rest"}, {&J_dirs, "J_dirs"}})
    check(*t, name, torch::kFloat32, device);
  check(parents, "parents", torch::kInt64, device);
  const int64_t K = expression.numel();
  TORCH_CHECK(pose_head.numel() == 12 && pose_tail.numel() == 18, "flame_joints: pose_head must hold 2 and "
              "pose_tail 3 6D rotations");
  TORCH_CHECK(K <= N_EXPR_MAX && J_dirs.dim() == 2 && J_dirs.size(0) >= K && J_dirs.size(1) == JOINTS * 3,
              "flame_joints: expression must have <= 100 values and J_dirs be (>= K, 15)");
  TORCH_CHECK(J_rest.numel() == JOINTS * 3 && parents.numel() == JOINTS, "flame_joints: 5 joints expected");
  const c10::cuda::CUDAGuard guard(device);
  auto coeffs = torch::empty({N_EXPR_MAX + 36}, expression.options());
  auto A = torch::empty({JOINTS, 12}, expression.options());
  flame_joints_kernel<<<1, 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
      (int)K, pose_head.data_ptr<float>(), pose_tail.data_ptr<float>(), expression.data_ptr<float>(),
      J_rest.data_ptr<float>(), J_dirs.data_ptr<float>(), parents.data_ptr<int64_t>(), coeffs.data_ptr<float>(),
      A.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {coeffs, A};
}
