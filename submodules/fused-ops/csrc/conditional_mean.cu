// HyperGaussians' conditional mean (docs/maths.md section 5), fused: eight lanes per (Gaussian, block) system
// computes b = L21^T (z - mu_i), solves L11^T x = b by back substitution and writes mu_o - x; the backward
// recomputes x, solves L11 gb = -dL/dout by forward substitution and writes every parameter's gradient.
// Unfused, this is an einsum (tens of thousands of 1 x m products, which cuBLAS runs as FP32 GEMV kernels),
// a batched triangular solve and its backward's batched outer products: ~0.25 ms of a training step at
// N = 10.9k; here two kernels.
//
// Storage (all float32, contiguous), S = N * G systems, n = the padded block size (<= MAX_N), m = latent size:
//   mean (N, G, n + m) = (mu_o, mu_i); log_diag (N, G, n); lower (N, G, n(n-1)/2), the strictly lower entries
//   of L11 row by row ((1,0), (2,0), (2,1), ...); l21 (N, G, m, n); z (N, m); out (N, G, n).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <vector>

namespace {

constexpr int MAX_N = 8;
constexpr int WARP = 32;
constexpr int LANES = 8;  // lanes per system: four systems a warp (a warp each took 0.022 ms for the forward at
                          // N = 10.9k x 3 blocks, m = 32, H200: shuffle- and latency-bound, session 21)
constexpr int THREADS = 128;  // sixteen systems per block
static_assert(MAX_N <= LANES && WARP % LANES == 0, "a system's output entries are written one lane each");

// Position of L11's entry (r, c), r > c, in the row-major strictly-lower storage.
__device__ __forceinline__ int lower_at(int r, int c) { return r * (r - 1) / 2 + c; }

// Sum over a system's LANES lanes (aligned groups of a warp; every lane of the warp takes part).
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int offset = LANES / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// LANES lanes per system, over the latent dimensions j (so that they read L21's rows, and write their
// gradients, as contiguous memory): b = L21^T (z - mu_i) summed over the group, then x = L11^{-T} b by
// back substitution in every lane (n <= 8). Entries beyond n stay 0.
__device__ __forceinline__ void solve_mean(int lane, int n, int m, const float* __restrict__ mu,
                                           const float* __restrict__ ld, const float* __restrict__ lo,
                                           const float* __restrict__ L21, const float* __restrict__ zk,
                                           float (&x)[MAX_N]) {
  float b[MAX_N];
#pragma unroll
  for (int i = 0; i < MAX_N; i++) b[i] = 0.f;
  for (int j = lane; j < m; j += LANES) {
    const float d = zk[j] - mu[n + j];
    const float* row = L21 + (size_t)j * n;
#pragma unroll
    for (int i = 0; i < MAX_N; i++)
      if (i < n) b[i] = fmaf(row[i], d, b[i]);
  }
#pragma unroll
  for (int i = 0; i < MAX_N; i++)
    if (i < n) b[i] = group_sum(b[i]);  // n and m are the same in every lane: the shuffles stay convergent
#pragma unroll
  for (int i = MAX_N - 1; i >= 0; i--) {
    float acc = 0.f;
    if (i < n) {
      acc = b[i];
#pragma unroll
      for (int j = i + 1; j < MAX_N; j++)
        if (j < n) acc = fmaf(-lo[lower_at(j, i)], x[j], acc);
      acc /= expf(ld[i]);
    }
    x[i] = acc;
  }
}

// A lane group's system and its inputs. Groups of a partly filled last warp (valid false) compute system S-1
// (the shuffles need every lane of the warp) and write nothing; warps wholly past the last system return early
// (past_end).
struct System {
  bool valid;
  int s, lane;
  const float *mu, *ld, *lo, *L21, *zk;
};

__device__ __forceinline__ bool past_end(int S) {
  const int64_t sys = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / LANES;
  return sys - threadIdx.x % WARP / LANES >= S;
}

__device__ __forceinline__ System system_of(int S, int G, int n, int m, const float* mean, const float* log_diag,
                                            const float* lower, const float* l21, const float* z) {
  const int64_t sys = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / LANES;
  System y;
  y.valid = sys < S;
  y.s = y.valid ? (int)sys : S - 1;
  y.lane = threadIdx.x % LANES;
  y.mu = mean + (size_t)y.s * (n + m);
  y.ld = log_diag + (size_t)y.s * n;
  y.lo = lower + (size_t)y.s * (n * (n - 1) / 2);
  y.L21 = l21 + (size_t)y.s * m * n;
  y.zk = z + (size_t)(y.s / G) * m;
  return y;
}

__global__ void conditional_mean_forward_kernel(int S, int G, int n, int m, const float* __restrict__ mean,
                                                const float* __restrict__ log_diag, const float* __restrict__ lower,
                                                const float* __restrict__ l21, const float* __restrict__ z,
                                                float* __restrict__ out) {
  if (past_end(S)) return;
  const System y = system_of(S, G, n, m, mean, log_diag, lower, l21, z);
  float x[MAX_N];
  solve_mean(y.lane, n, m, y.mu, y.ld, y.lo, y.L21, y.zk, x);
  float* o = out + (size_t)y.s * n;
#pragma unroll
  for (int i = 0; i < MAX_N; i++)
    if (y.valid && i < n && y.lane == i) o[i] = y.mu[i] - x[i];
}

// With gb = L11^{-1} (-dL/dout) (the gradient of b): dL/dL21[j][i] = gb_i d_j, dL/dmu_i[j] = -sum_i L21[j][i]
// gb_i, dL/dL11[r][c] = -gb_c x_r (r > c), dL/dlog_diag[i] = -gb_i x_i exp(log_diag[i]), dL/dmu_o = dL/dout.
// dL/dz (summed over a Gaussian's blocks) is -sum_g dL/dmu_i: the caller forms it from g_mean.
__global__ void conditional_mean_backward_kernel(int S, int G, int n, int m, const float* __restrict__ grad_out,
                                                 const float* __restrict__ mean, const float* __restrict__ log_diag,
                                                 const float* __restrict__ lower, const float* __restrict__ l21,
                                                 const float* __restrict__ z, float* __restrict__ g_mean,
                                                 float* __restrict__ g_log_diag, float* __restrict__ g_lower,
                                                 float* __restrict__ g_l21) {
  if (past_end(S)) return;
  const System y = system_of(S, G, n, m, mean, log_diag, lower, l21, z);
  const int s = y.s, lane = y.lane, nl = n * (n - 1) / 2;
  const float *mu = y.mu, *ld = y.ld, *lo = y.lo, *L21 = y.L21, *zk = y.zk;
  const float* go = grad_out + (size_t)s * n;
  float x[MAX_N];
  solve_mean(lane, n, m, mu, ld, lo, L21, zk, x);
  if (!y.valid) return;  // past the shuffles: nothing more to do for a padding group
  float gb[MAX_N];
#pragma unroll
  for (int i = 0; i < MAX_N; i++) {  // forward substitution: L11 gb = -grad_out (every lane)
    float acc = 0.f;
    if (i < n) {
      acc = -go[i];
#pragma unroll
      for (int j = 0; j < i; j++) acc = fmaf(-lo[lower_at(i, j)], gb[j], acc);
      acc /= expf(ld[i]);
    }
    gb[i] = acc;
  }
  float* gm = g_mean + (size_t)s * (n + m);
  float* gl21 = g_l21 + (size_t)s * m * n;
#pragma unroll
  for (int i = 0; i < MAX_N; i++) {  // the block's own entries, one lane each
    if (i < n && lane == i) {
      gm[i] = go[i];
      g_log_diag[(size_t)s * n + i] = -gb[i] * x[i] * expf(ld[i]);
#pragma unroll
      for (int c = 0; c < i; c++) g_lower[(size_t)s * nl + lower_at(i, c)] = -gb[c] * x[i];
    }
  }
  for (int j = lane; j < m; j += LANES) {
    const float d = zk[j] - mu[n + j];
    const float* row = L21 + (size_t)j * n;
    float* grow = gl21 + (size_t)j * n;
    float gd = 0.f;
#pragma unroll
    for (int i = 0; i < MAX_N; i++) {
      if (i < n) {
        grow[i] = gb[i] * d;
        gd = fmaf(row[i], gb[i], gd);
      }
    }
    gm[n + j] = -gd;
  }
}

void check(const torch::Tensor& t, const char* name, const torch::Device& device, std::vector<int64_t> shape) {
  TORCH_CHECK(t.device() == device, "fused_ops: ", name, " is on ", t.device(), ", mean on ", device);
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, "fused_ops: ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "fused_ops: ", name, " must be contiguous");
  TORCH_CHECK(t.sizes() == torch::IntArrayRef(shape), "fused_ops: ", name, " must have shape ",
              torch::IntArrayRef(shape), ", got ", t.sizes());
}

struct Sizes {
  int64_t N, G, n, m;
};

Sizes check_inputs(const torch::Tensor& mean, const torch::Tensor& log_diag, const torch::Tensor& lower,
                   const torch::Tensor& l21, const torch::Tensor& z) {
  TORCH_CHECK(mean.is_cuda() && mean.dim() == 3, "fused_ops: mean must be a (N, G, n + m) CUDA tensor");
  TORCH_CHECK(log_diag.dim() == 3 && z.dim() == 2, "fused_ops: log_diag must be (N, G, n), z (N, m)");
  const Sizes s{mean.size(0), mean.size(1), log_diag.size(2), z.size(1)};
  TORCH_CHECK(s.n >= 1 && s.n <= MAX_N, "fused_ops: block size ", s.n, " is not in 1..", MAX_N);
  TORCH_CHECK(s.N * s.G < (int64_t)1 << 31, "fused_ops: too many systems");
  const auto device = mean.device();
  check(mean, "mean", device, {s.N, s.G, s.n + s.m});
  check(log_diag, "log_diag", device, {s.N, s.G, s.n});
  check(lower, "lower", device, {s.N, s.G, s.n * (s.n - 1) / 2});
  check(l21, "l21", device, {s.N, s.G, s.m, s.n});
  check(z, "z", device, {s.N, s.m});
  return s;
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "fused_ops: launch of ", what, " failed: ", cudaGetErrorString(err));
}

}  // namespace

torch::Tensor conditional_mean_forward(const torch::Tensor& mean, const torch::Tensor& log_diag,
                                       const torch::Tensor& lower, const torch::Tensor& l21, const torch::Tensor& z) {
  const Sizes s = check_inputs(mean, log_diag, lower, l21, z);
  const c10::cuda::CUDAGuard guard(mean.device());
  torch::Tensor out = torch::empty({s.N, s.G, s.n}, mean.options());
  const int S = (int)(s.N * s.G);
  if (S == 0) return out;
  conditional_mean_forward_kernel<<<(unsigned)(((int64_t)S * LANES + THREADS - 1) / THREADS), THREADS, 0, c10::cuda::getCurrentCUDAStream()>>>(
      S, (int)s.G, (int)s.n, (int)s.m, mean.data_ptr<float>(), log_diag.data_ptr<float>(), lower.data_ptr<float>(),
      l21.data_ptr<float>(), z.data_ptr<float>(), out.data_ptr<float>());
  check_launch("conditional_mean_forward");
  return out;
}

std::vector<torch::Tensor> conditional_mean_backward(const torch::Tensor& grad_out, const torch::Tensor& mean,
                                                     const torch::Tensor& log_diag, const torch::Tensor& lower,
                                                     const torch::Tensor& l21, const torch::Tensor& z) {
  const Sizes s = check_inputs(mean, log_diag, lower, l21, z);
  check(grad_out, "grad_out", mean.device(), {s.N, s.G, s.n});
  const c10::cuda::CUDAGuard guard(mean.device());
  torch::Tensor g_mean = torch::empty_like(mean), g_log_diag = torch::empty_like(log_diag);
  torch::Tensor g_lower = torch::empty_like(lower), g_l21 = torch::empty_like(l21);
  const int S = (int)(s.N * s.G);
  if (S > 0) {
    conditional_mean_backward_kernel<<<(unsigned)(((int64_t)S * LANES + THREADS - 1) / THREADS), THREADS, 0,
                                       c10::cuda::getCurrentCUDAStream()>>>(
        S, (int)s.G, (int)s.n, (int)s.m, grad_out.data_ptr<float>(), mean.data_ptr<float>(),
        log_diag.data_ptr<float>(), lower.data_ptr<float>(), l21.data_ptr<float>(), z.data_ptr<float>(),
        g_mean.data_ptr<float>(), g_log_diag.data_ptr<float>(), g_lower.data_ptr<float>(), g_l21.data_ptr<float>());
    check_launch("conditional_mean_backward");
  }
  return {g_mean, g_log_diag, g_lower, g_l21};
}
