// LPIPS' per-layer distance (lpips: unit-normalise the features over channels, square the difference,
// weight the channels by the layer's linear head) for one pair of feature maps, per pixel, fused: one warp
// per pixel reads both images' channel vectors once (channels-last maps: a pixel's channels are contiguous).
// Unfused it is ~10 passes over each C x H x W map forward and as many backward (the elementwise half of
// LPIPS' cost at 512 x 512, bench/NOTES.md session 6). Only the first map gets a gradient (the render's;
// the ground truth's branch has none).
//   d_p = sum_c w_c (a_c / (|a| + eps) - b_c / (|b| + eps))^2,  a, b: (P, C) rows of pixel p
//   dd_p/da_k = du_k / (|a| + eps) - a_k (a . du) / (|a| (|a| + eps)^2),  du_c = 2 w_c (u_c - v_c)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

namespace {

constexpr int THREADS = 256;  // 8 pixels a block

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__global__ void lpips_distance_forward_kernel(int64_t P, int C, const float* __restrict__ a,
                                              const float* __restrict__ b, const float* __restrict__ w, float eps,
                                              float* __restrict__ d) {
  const int64_t p = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (p >= P) return;  // whole warps leave together
  const float* ap = a + p * C;
  const float* bp = b + p * C;
  float sa = 0.f, sb = 0.f;
  for (int c = lane; c < C; c += 32) {
    sa = fmaf(ap[c], ap[c], sa);
    sb = fmaf(bp[c], bp[c], sb);
  }
  const float na = sqrtf(warp_sum(sa)) + eps, nb = sqrtf(warp_sum(sb)) + eps;
  float acc = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float diff = ap[c] / na - bp[c] / nb;
    acc = fmaf(w[c] * diff, diff, acc);
  }
  acc = warp_sum(acc);
  if (lane == 0) d[p] = acc;
}

__global__ void lpips_distance_backward_kernel(int64_t P, int C, const float* __restrict__ grad_d,
                                               const float* __restrict__ a, const float* __restrict__ b,
                                               const float* __restrict__ w, float eps, float* __restrict__ grad_a) {
  const int64_t p = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (p >= P) return;
  const float* ap = a + p * C;
  const float* bp = b + p * C;
  float* gp = grad_a + p * C;
  float sa = 0.f, sb = 0.f;
  for (int c = lane; c < C; c += 32) {
    sa = fmaf(ap[c], ap[c], sa);
    sb = fmaf(bp[c], bp[c], sb);
  }
  const float r = sqrtf(warp_sum(sa));
  const float na = r + eps, nb = sqrtf(warp_sum(sb)) + eps;
  const float g = grad_d[p];
  float dot = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float du = 2.f * w[c] * (ap[c] / na - bp[c] / nb) * g;
    dot = fmaf(ap[c], du, dot);
  }
  dot = warp_sum(dot);
  // an all-zero feature vector has no direction: its normalised form is 0 whatever the scale, so only the
  // first term remains (torch's autograd would give NaN there, from sqrt's derivative at 0)
  const float radial = r > 0.f ? dot / (r * na * na) : 0.f;
  for (int c = lane; c < C; c += 32) {
    const float du = 2.f * w[c] * (ap[c] / na - bp[c] / nb) * g;
    gp[c] = du / na - ap[c] * radial;
  }
}

// The same two kernels for C % 4 == 0 and 16-byte aligned rows (every VGG layer): GROUP lanes per pixel,
// float4 loads, reductions within the group. One warp per pixel (above) spent most of its time in shuffles
// at C = 64 (0.65 ms forward + backward a step over the five layers at 512 x 512, H200, session 17).
constexpr int GROUP = 8;

__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = GROUP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float dot4(float4 x, float4 y) { return x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w; }

__global__ void lpips_distance_forward_vec_kernel(int64_t P, int C4, const float4* __restrict__ a,
                                                  const float4* __restrict__ b, const float4* __restrict__ w,
                                                  float eps, float* __restrict__ d) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t p = t / GROUP;
  const int q = (int)(t % GROUP);
  const bool valid = p < P;  // no early exit: the group's shuffles need every lane of the warp
  const float4* ap = a + (valid ? p : 0) * C4;
  const float4* bp = b + (valid ? p : 0) * C4;
  float sa = 0.f, sb = 0.f;
  for (int c = q; c < C4; c += GROUP) {
    const float4 x = ap[c], y = bp[c];
    sa += dot4(x, x);
    sb += dot4(y, y);
  }
  const float ia = 1.f / (sqrtf(group_sum(sa)) + eps), ib = 1.f / (sqrtf(group_sum(sb)) + eps);
  float acc = 0.f;
  for (int c = q; c < C4; c += GROUP) {
    const float4 x = ap[c], y = bp[c], wc = w[c];
    const float4 e = make_float4(x.x * ia - y.x * ib, x.y * ia - y.y * ib, x.z * ia - y.z * ib, x.w * ia - y.w * ib);
    acc += wc.x * e.x * e.x + wc.y * e.y * e.y + wc.z * e.z * e.z + wc.w * e.w * e.w;
  }
  acc = group_sum(acc);
  if (valid && q == 0) d[p] = acc;
}

__global__ void lpips_distance_backward_vec_kernel(int64_t P, int C4, const float* __restrict__ grad_d,
                                                   const float4* __restrict__ a, const float4* __restrict__ b,
                                                   const float4* __restrict__ w, float eps,
                                                   float4* __restrict__ grad_a) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t p = t / GROUP;
  const int q = (int)(t % GROUP);
  const bool valid = p < P;
  const int64_t row = (valid ? p : 0) * C4;
  const float4* ap = a + row;
  const float4* bp = b + row;
  float sa = 0.f, sb = 0.f;
  for (int c = q; c < C4; c += GROUP) {
    const float4 x = ap[c], y = bp[c];
    sa += dot4(x, x);
    sb += dot4(y, y);
  }
  const float r = sqrtf(group_sum(sa));
  const float na = r + eps, ia = 1.f / na, ib = 1.f / (sqrtf(group_sum(sb)) + eps);
  const float g2 = 2.f * (valid ? grad_d[p] : 0.f);
  float dot = 0.f;
  for (int c = q; c < C4; c += GROUP) {
    const float4 x = ap[c], y = bp[c], wc = w[c];
    dot += x.x * wc.x * (x.x * ia - y.x * ib) + x.y * wc.y * (x.y * ia - y.y * ib) +
           x.z * wc.z * (x.z * ia - y.z * ib) + x.w * wc.w * (x.w * ia - y.w * ib);
  }
  dot = group_sum(dot) * g2;
  const float radial = r > 0.f ? dot / (r * na * na) : 0.f;  // see the one-warp kernel
  if (!valid) return;  // past the last shuffle
  for (int c = q; c < C4; c += GROUP) {
    const float4 x = ap[c], y = bp[c], wc = w[c];
    float4 out;
    out.x = g2 * wc.x * (x.x * ia - y.x * ib) * ia - x.x * radial;
    out.y = g2 * wc.y * (x.y * ia - y.y * ib) * ia - x.y * radial;
    out.z = g2 * wc.z * (x.z * ia - y.z * ib) * ia - x.z * radial;
    out.w = g2 * wc.w * (x.w * ia - y.w * ib) * ia - x.w * radial;
    grad_a[row + c] = out;
  }
}

bool vectorisable(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& w) {
  const auto aligned = [](const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  return a.size(1) % 4 == 0 && aligned(a) && aligned(b) && aligned(w);
}

int64_t blocks_for_groups(int64_t P) { return (P * GROUP + THREADS - 1) / THREADS; }

void check(const torch::Tensor& t, const char* name, const torch::Tensor& like) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
              "fused_ops.lpips_distance: ", name, " must be a contiguous float32 tensor on ", like.device());
}

int64_t blocks_for(int64_t P) { return (P * 32 + THREADS - 1) / THREADS; }

}  // namespace

// a, b: (P, C) (the channels-last maps viewed as rows of pixels); w: (C,) -> (P,) per-pixel distances.
torch::Tensor lpips_distance_forward(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& w,
                                     double eps) {
  TORCH_CHECK(a.dim() == 2 && b.sizes() == a.sizes() && w.dim() == 1 && w.size(0) == a.size(1),
              "fused_ops.lpips_distance: a and b must be (P, C) and w (C,), got ", a.sizes(), ", ", b.sizes(), ", ",
              w.sizes());
  check(a, "a", a);
  check(b, "b", a);
  check(w, "w", a);
  const c10::cuda::CUDAGuard guard(a.device());
  torch::Tensor d = torch::empty({a.size(0)}, a.options());
  const int64_t P = a.size(0);
  if (P == 0) return d;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (vectorisable(a, b, w))
    lpips_distance_forward_vec_kernel<<<(unsigned)blocks_for_groups(P), THREADS, 0, stream>>>(
        P, (int)a.size(1) / 4, reinterpret_cast<const float4*>(a.data_ptr<float>()),
        reinterpret_cast<const float4*>(b.data_ptr<float>()), reinterpret_cast<const float4*>(w.data_ptr<float>()),
        (float)eps, d.data_ptr<float>());
  else
    lpips_distance_forward_kernel<<<(unsigned)blocks_for(P), THREADS, 0, stream>>>(
        P, (int)a.size(1), a.data_ptr<float>(), b.data_ptr<float>(), w.data_ptr<float>(), (float)eps,
        d.data_ptr<float>());
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "fused_ops.lpips_distance: launch failed: ", cudaGetErrorString(err));
  return d;
}

// grad_d: (P,) -> the gradient with respect to a, (P, C).
torch::Tensor lpips_distance_backward(const torch::Tensor& grad_d, const torch::Tensor& a, const torch::Tensor& b,
                                      const torch::Tensor& w, double eps) {
  TORCH_CHECK(grad_d.dim() == 1 && grad_d.size(0) == a.size(0), "fused_ops.lpips_distance: grad_d must be (P,)");
  check(grad_d, "grad_d", a);
  const c10::cuda::CUDAGuard guard(a.device());
  torch::Tensor grad_a = torch::empty_like(a);
  const int64_t P = a.size(0);
  if (P == 0) return grad_a;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (vectorisable(a, b, w) && reinterpret_cast<uintptr_t>(grad_a.data_ptr()) % 16 == 0)
    lpips_distance_backward_vec_kernel<<<(unsigned)blocks_for_groups(P), THREADS, 0, stream>>>(
        P, (int)a.size(1) / 4, grad_d.data_ptr<float>(), reinterpret_cast<const float4*>(a.data_ptr<float>()),
        reinterpret_cast<const float4*>(b.data_ptr<float>()), reinterpret_cast<const float4*>(w.data_ptr<float>()),
        (float)eps, reinterpret_cast<float4*>(grad_a.data_ptr<float>()));
  else
    lpips_distance_backward_kernel<<<(unsigned)blocks_for(P), THREADS, 0, stream>>>(
        P, (int)a.size(1), grad_d.data_ptr<float>(), a.data_ptr<float>(), b.data_ptr<float>(), w.data_ptr<float>(),
        (float)eps, grad_a.data_ptr<float>());
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "fused_ops.lpips_distance: launch failed: ", cudaGetErrorString(err));
  return grad_a;
}
